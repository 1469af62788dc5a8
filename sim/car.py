"""The car: a kinematic bicycle stepped at a fixed dt. Plain float math, no pygame, no torch.

Conventions used across the project: x east, y north, yaw counter-clockwise from +x. A steering
command of -1 turns fully left, +1 fully right (as in CarRacing and on a keyboard: Left is negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CarConfig:
    """Vehicle and controller settings; saved beside every recording and policy."""

    dt: float = 0.05  # 20 Hz control
    wheelbase_m: float = 2.6
    length_m: float = 4.4
    width_m: float = 1.9
    max_steer_rad: float = 0.5  # ~29 deg: tightest turn ~4.8 m radius
    max_steer_rate_rad_s: float = 2.5  # full lock to full lock in 0.4 s
    cruise_speed_mps: float = 14.0  # ~50 km/h, held by the speed controller
    max_speed_mps: float = 30.0
    max_accel_mps2: float = 4.0
    max_brake_mps2: float = 8.0
    speed_gain: float = 1.5  # P-gain of the cruise controller (1/s)
    drag: float = 0.02  # speed-proportional loss when coasting with throttle control


@dataclass(frozen=True)
class CarState:
    """Pose of the rear-axle centre, speed and the actual steering angle of the front wheels."""

    x: float
    y: float
    yaw: float
    speed: float
    steer: float = 0.0

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        return (self.x, self.y, self.yaw, self.speed, self.steer)


def step(state: CarState, steering: float, cfg: CarConfig, throttle: float | None = None) -> CarState:
    """Advance one control period.

    `steering` in [-1, 1] sets the target wheel angle; the wheels move towards it no faster than the
    steering-rate limit. With `throttle` None the cruise controller holds `cruise_speed_mps`;
    otherwise throttle in [-1, 1] accelerates (>0) or brakes (<0).
    """
    steering = min(1.0, max(-1.0, float(steering)))
    target = -steering * cfg.max_steer_rad  # positive wheel angle turns left (CCW)
    max_delta = cfg.max_steer_rate_rad_s * cfg.dt
    steer = state.steer + min(max_delta, max(-max_delta, target - state.steer))
    if throttle is None:
        accel = cfg.speed_gain * (cfg.cruise_speed_mps - state.speed)
        accel = min(cfg.max_accel_mps2, max(-cfg.max_brake_mps2, accel))
    else:
        throttle = min(1.0, max(-1.0, float(throttle)))
        accel = throttle * (cfg.max_accel_mps2 if throttle >= 0 else cfg.max_brake_mps2)
        accel -= cfg.drag * state.speed
    speed = min(cfg.max_speed_mps, max(0.0, state.speed + accel * cfg.dt))
    # integrate with the mid-step speed and heading (second-order accurate, cheap)
    v = 0.5 * (state.speed + speed)
    yaw_rate = v * math.tan(steer) / cfg.wheelbase_m
    mid_yaw = state.yaw + 0.5 * yaw_rate * cfg.dt
    x = state.x + v * math.cos(mid_yaw) * cfg.dt
    y = state.y + v * math.sin(mid_yaw) * cfg.dt
    yaw = (state.yaw + yaw_rate * cfg.dt + math.pi) % (2 * math.pi) - math.pi
    return CarState(x=x, y=y, yaw=yaw, speed=speed, steer=steer)


def steering_for_curvature(curvature: float, cfg: CarConfig) -> float:
    """The steering command that drives a circle of the given curvature (1/m, positive = left)."""
    return max(-1.0, min(1.0, -math.atan(curvature * cfg.wheelbase_m) / cfg.max_steer_rad))


def with_speed(cfg: CarConfig, speed: float) -> CarConfig:
    return replace(cfg, cruise_speed_mps=speed)
