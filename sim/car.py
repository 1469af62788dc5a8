"""The cars: a kinematic bicycle (the lane task) and a dynamic bicycle with tyre saturation (the race
task), both stepped at a fixed dt. Plain float math, no pygame, no torch.

Conventions used across the project: x east, y north, yaw counter-clockwise from +x. A steering
command of -1 turns fully left, +1 fully right (as in CarRacing and on a keyboard: Left is negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


VIEW_SHIFT_M = 1.5  # training's viewpoint shifts: up to this far sideways, either way...
VIEW_ROTATE_DEG = 8.0  # ...and turned up to this much


def shifted_pose(x: float, y: float, yaw: float, shift_m: float, rotate_rad: float) -> tuple[float, float, float]:
    """The pose `shift_m` to the LEFT (negative: right) of (x, y, yaw), turned `rotate_rad` CCW (left):
    where training's viewpoint shifts look from."""
    return x - shift_m * math.sin(yaw), y + shift_m * math.cos(yaw), yaw + rotate_rad


@dataclass(frozen=True)
class CarState:
    """Pose of the rear-axle centre, forward speed and the actual steering angle of the front wheels.
    The dynamic (race) car also slides: `lateral_speed` (at the centre of mass, positive left) and
    `yaw_rate` (rad/s, positive CCW); the kinematic car leaves them at 0."""

    x: float
    y: float
    yaw: float
    speed: float
    steer: float = 0.0
    lateral_speed: float = 0.0
    yaw_rate: float = 0.0


def _steer_towards(current: float, steering: float, max_steer: float, max_rate: float, dt: float) -> float:
    """The wheel angle after dt: towards the commanded one, no faster than the steering-rate limit."""
    steering = min(1.0, max(-1.0, float(steering)))
    target = -steering * max_steer  # positive wheel angle turns left (CCW)
    max_delta = max_rate * dt
    return current + min(max_delta, max(-max_delta, target - current))


def step(state: CarState, steering: float, cfg: CarConfig, throttle: float | None = None) -> CarState:
    """Advance one control period.

    `steering` in [-1, 1] sets the target wheel angle; the wheels move towards it no faster than the
    steering-rate limit. With `throttle` None the cruise controller holds `cruise_speed_mps`;
    otherwise throttle in [-1, 1] accelerates (>0) or brakes (<0).
    """
    steer = _steer_towards(state.steer, steering, cfg.max_steer_rad, cfg.max_steer_rate_rad_s, cfg.dt)
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


GRAVITY = 9.81


@dataclass(frozen=True)
class RaceCarConfig:
    """The race car: a dynamic bicycle whose tyres saturate. Each axle's force lies inside a friction
    ellipse (here a circle of radius mu * load), shared by cornering and by braking or driving, so a
    car too fast for a corner runs out of front grip and slides wide (the rear has a little more grip:
    the car understeers at the limit instead of spinning). Saved beside every race recording and policy.
    """

    dt: float = 0.05  # 20 Hz control, as the lane car
    substeps: int = 5  # physics steps per control period: the tyre forces are stiff at low speed
    mass_kg: float = 1200.0
    yaw_inertia_kgm2: float = 1800.0
    cg_to_front_m: float = 1.2  # wheelbase 2.6 m, as the lane car
    cg_to_rear_m: float = 1.4
    length_m: float = 4.4
    width_m: float = 1.9
    max_steer_rad: float = 0.5
    max_steer_rate_rad_s: float = 2.5
    cornering_stiffness_front: float = 60000.0  # N/rad per axle
    cornering_stiffness_rear: float = 80000.0
    grip_asphalt: float = 1.0  # friction coefficient mu
    grip_grass: float = 0.5
    rear_grip_factor: float = 1.08  # the rear holds on a little longer: understeer at the limit
    drive_front_share: float = 0.7  # mostly front-driven: power in a corner pushes wide, no spin
    max_accel_mps2: float = 6.0  # traction-limited launch
    power_w_per_kg: float = 120.0  # power limit: the drive force falls as 1/v
    max_brake_mps2: float = 9.0  # full braking asks for about all the grip there is
    drag_per_m: float = 0.0004  # aerodynamic drag: deceleration = drag * v^2
    rolling_mps2: float = 0.15
    max_speed_mps: float = 34.0  # ~120 km/h: braking for a corner can start within the camera's view
    kinematic_below_mps: float = 3.0  # below this the slip angles are ill-defined: blend to kinematic
    blend_width_mps: float = 2.0

    @property
    def wheelbase_m(self) -> float:
        return self.cg_to_front_m + self.cg_to_rear_m


def drive_accel(throttle: float, speed: float, cfg: RaceCarConfig) -> float:
    """Longitudinal acceleration (m/s^2) the throttle asks for (brake below 0), before grip limits."""
    throttle = min(1.0, max(-1.0, float(throttle)))
    if throttle >= 0.0:
        return throttle * min(cfg.max_accel_mps2, cfg.power_w_per_kg / max(speed, 1e-3))
    return throttle * cfg.max_brake_mps2


def race_step(state: CarState, steering: float, throttle: float, cfg: RaceCarConfig,
              grip: float | None = None) -> CarState:
    """Advance the dynamic bicycle one control period of `cfg.dt`, in `cfg.substeps` explicit steps.

    `grip` is the friction coefficient of the surface under the car (asphalt by default; the env
    passes grass's when the car is off the road). Throttle above 0 drives, below 0 brakes; the car
    never reverses. (Written as one flat loop of float math: it runs 100 times per simulated second.)
    """
    mu = cfg.grip_asphalt if grip is None else float(grip)
    n = cfg.substeps
    h = cfg.dt / n
    lf, lr, m = cfg.cg_to_front_m, cfg.cg_to_rear_m, cfg.mass_kg
    wheelbase = lf + lr
    cap_f = mu * m * GRAVITY * lr / wheelbase
    cap_r = mu * m * GRAVITY * lf / wheelbase * cfg.rear_grip_factor
    c_f, c_r, inertia = cfg.cornering_stiffness_front, cfg.cornering_stiffness_rear, cfg.yaw_inertia_kgm2
    target = -min(1.0, max(-1.0, float(steering))) * cfg.max_steer_rad  # positive wheel angle turns left
    max_delta = cfg.max_steer_rate_rad_s * h
    throttle = min(1.0, max(-1.0, float(throttle)))
    front = cfg.drive_front_share if throttle > 0.0 else lr / wheelbase
    v_kin, blend = cfg.kinematic_below_mps, cfg.blend_width_mps
    x, y, yaw = state.x, state.y, state.yaw
    vx, vy, r, delta = state.speed, state.lateral_speed, state.yaw_rate, state.steer
    for _ in range(n):
        delta += min(max_delta, max(-max_delta, target - delta))
        # longitudinal force: brakes by axle load, drive mostly through the front; clipped by grip
        fx = m * drive_accel(throttle, vx, cfg)
        if vx <= 0.0 and fx < 0.0:
            fx = 0.0  # braking at a standstill does not reverse
        fx_f = min(cap_f, max(-cap_f, fx * front))
        fx_r = min(cap_r, max(-cap_r, fx * (1.0 - front)))
        # what is left of each friction circle holds the car sideways; the tyre force saturates there
        lat_f = math.sqrt(max(cap_f * cap_f - fx_f * fx_f, 1e-6))
        lat_r = math.sqrt(max(cap_r * cap_r - fx_r * fx_r, 1e-6))
        v_safe = vx if vx > 0.5 else 0.5
        fy_f = -lat_f * math.tanh(c_f * (math.atan2(vy + lf * r, v_safe) - delta) / lat_f)
        fy_r = -lat_r * math.tanh(c_r * math.atan2(vy - lr * r, v_safe) / lat_r)
        cd, sd = math.cos(delta), math.sin(delta)
        front_lat = fx_f * sd + fy_f * cd
        resist = cfg.drag_per_m * vx * vx + (cfg.rolling_mps2 if vx > 0.0 else 0.0)
        ax = (fx_f * cd - fy_f * sd + fx_r) / m + vy * r - resist
        ay = (front_lat + fy_r) / m - vx * r
        r += (lf * front_lat - lr * fy_r) / inertia * h
        vx = min(cfg.max_speed_mps, max(0.0, vx + ax * h))
        vy += ay * h
        if vx < v_kin + blend:  # at walking pace the tyre model is ill-conditioned: blend to rolling
            w = max(0.0, (vx - v_kin) / blend)
            r_kin = vx * math.tan(delta) / wheelbase
            r = w * r + (1.0 - w) * r_kin
            vy = w * vy + (1.0 - w) * lr * r_kin
        # the rear axle moves with the body: its lateral speed is vy - lr * r
        c, s = math.cos(yaw), math.sin(yaw)
        v_rear = vy - lr * r
        x += (vx * c - v_rear * s) * h
        y += (vx * s + v_rear * c) * h
        yaw += r * h
    yaw = (yaw + math.pi) % (2 * math.pi) - math.pi
    return CarState(x=x, y=y, yaw=yaw, speed=vx, steer=delta, lateral_speed=vy, yaw_rate=r)


def understeer_gradient(cfg: RaceCarConfig) -> float:
    """Extra wheel angle (rad) per m/s^2 of lateral acceleration the car needs beyond the geometric
    (kinematic) angle, in the tyres' linear range: positive means the car understeers."""
    return cfg.mass_kg / cfg.wheelbase_m * (cfg.cg_to_rear_m / cfg.cornering_stiffness_front
                                            - cfg.cg_to_front_m / cfg.cornering_stiffness_rear)


def grip_limited_speed(curvature: float, mu: float, cfg: RaceCarConfig) -> float:
    """The fastest steady speed around a curve of this curvature (1/m) with friction mu."""
    k = abs(curvature)
    if k < 1e-9:
        return cfg.max_speed_mps
    return min(cfg.max_speed_mps, math.sqrt(mu * GRAVITY / k))
