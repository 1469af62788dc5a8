"""The world: tracks, car, camera, the `E2EDrive-v0` Gymnasium environment and the expert.

`import sim` registers `E2EDrive-v0`. Nothing here imports torch; only `sim.viewer` imports pygame.
"""

from gymnasium.envs.registration import register, registry

from .car import CarConfig, CarState
from .env import DriveEnv, EnvConfig
from .errors import UserError
from .expert import Expert, expert_steering
from .render import CAMERA_PRESETS, Camera, CameraConfig, camera_from_name
from .track import Track, TrackError, load_track, load_tracks, parse_spec

if "E2EDrive-v0" not in registry:
    register(id="E2EDrive-v0", entry_point="sim.env:DriveEnv")

__all__ = [
    "CAMERA_PRESETS", "Camera", "CameraConfig", "CarConfig", "CarState", "DriveEnv", "EnvConfig",
    "Expert", "Track", "UserError", "TrackError", "camera_from_name", "expert_steering", "load_track", "load_tracks",
    "parse_spec",
]
