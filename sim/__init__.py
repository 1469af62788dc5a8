"""The world: tracks, car, camera, the `E2EDrive-v0` Gymnasium environment and the expert.

`import sim` registers `E2EDrive-v0`. Nothing here imports torch; only `sim.viewer` imports pygame.
"""

from gymnasium.envs.registration import register, registry

from .car import CarConfig, CarState, RaceCarConfig
from .env import TASKS, DriveEnv, EnvConfig
from .errors import UserError
from .expert import Expert, RaceExpert, expert_for, expert_steering
from .render import CAMERA_PRESETS, Camera, CameraConfig, camera_from_name
from .track import Track, TrackError, load_track, load_tracks, parse_spec

# `gym.make_vec(id, num_envs=N)` gives `sim.vector.DriveVectorEnv` (processes, shared memory); the
# "sync" and "async" modes give gymnasium's own vector envs
if "E2EDrive-v0" not in registry:
    register(id="E2EDrive-v0", entry_point="sim.env:DriveEnv", vector_entry_point="sim.vector:DriveVectorEnv")
if "E2EDriveRace-v0" not in registry:
    register(id="E2EDriveRace-v0", entry_point="sim.env:DriveEnv", vector_entry_point="sim.vector:DriveVectorEnv",
             kwargs={"task": "race"})  # race camera

__all__ = [
    "CAMERA_PRESETS", "Camera", "CameraConfig", "CarConfig", "CarState", "DriveEnv", "EnvConfig",
    "Expert", "RaceCarConfig", "RaceExpert", "TASKS", "expert_for", "Track", "UserError", "TrackError", "camera_from_name", "expert_steering", "load_track", "load_tracks",
    "parse_spec",
]
