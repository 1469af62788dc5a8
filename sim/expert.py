"""The autopilot: pure pursuit on the centerline, using privileged state no camera gives.

It makes demonstrations without a person, labels DAgger data, and is the reference every policy is
compared with. It reads the track and the car's pose directly, never the camera frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .car import CarConfig, CarState
from .track import Track


@dataclass(frozen=True)
class ExpertConfig:
    lookahead_base_m: float = 3.0
    lookahead_gain_s: float = 0.45  # lookahead grows with speed: base + gain * v


def expert_steering(track: Track, car: CarState, s: float, car_cfg: CarConfig,
                    cfg: ExpertConfig = ExpertConfig()) -> float:
    """Steering command in [-1, 1] that steers the rear axle towards a point on the centerline
    `lookahead` metres ahead of arc length `s` (pure pursuit)."""
    lookahead = cfg.lookahead_base_m + cfg.lookahead_gain_s * max(car.speed, 1.0)
    tx, ty = track.point_at(s + lookahead)
    dx, dy = tx - car.x, ty - car.y
    alpha = math.atan2(dy, dx) - car.yaw
    dist = max(math.hypot(dx, dy), 1e-3)
    delta = math.atan2(2.0 * car_cfg.wheelbase_m * math.sin(alpha), dist)
    return max(-1.0, min(1.0, -delta / car_cfg.max_steer_rad))


class Expert:
    """Drives a `DriveEnv` from its privileged state: `expert.act(env)` gives the action array."""

    def __init__(self, cfg: ExpertConfig = ExpertConfig()):
        self.cfg = cfg

    def steering(self, env) -> float:
        e = env.unwrapped
        return expert_steering(e.track, e.car, e.proj.s, e.cfg.car, self.cfg)

    def act(self, env):
        import numpy as np
        e = env.unwrapped
        a = np.zeros(e.action_space.shape, np.float32)
        a[0] = self.steering(env)
        if a.shape[0] > 1:
            a[1] = max(-1.0, min(1.0, 0.5 * (e.cfg.car.cruise_speed_mps - e.car.speed)))
        return a
