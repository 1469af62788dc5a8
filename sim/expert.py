"""The autopilot: pure pursuit on the centerline, using privileged state no camera gives.

It makes demonstrations without a person, labels DAgger data, and is the reference every policy is
compared with. It reads the track and the car's pose directly, never the camera frame. With other
cars on the road (task `traffic`) a lateral planner picks the offset from the centerline to drive
at: it predicts where each car ahead will be while we pass it, keeps clear of it on the side that
costs least, and comes back to the centerline once past.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .car import (
    GRAVITY,
    VIEW_ROTATE_DEG,
    VIEW_SHIFT_M,
    CarConfig,
    CarState,
    RaceCarConfig,
    drive_accel,
    shifted_pose,
    understeer_gradient,
)
from .track import Track
from .traffic import Traffic

SHIFTED_LABELS = 2  # traffic recordings: shifted views labelled exactly per frame (training picks one)


@dataclass(frozen=True)
class ExpertConfig:
    lookahead_base_m: float = 3.0
    lookahead_gain_s: float = 0.45  # lookahead grows with speed: base + gain * v
    horizon_s: float = 12.0  # traffic: plan around the cars we reach within this time: every car the
    # camera shows (a shorter horizon made the start of a move depend on the other car's speed,
    # which a frame does not show)
    clearance_m: float = 1.6  # traffic: side gap kept from another car while passing it (wide: a
    # clone that moves aside only ~60% as far as its teacher, as cloning does, still clears the car)...
    curve_clearance_m2: float = 10.0  # ...plus this times the road's curvature (1/m): bends turn the cars
    # against each other, and pure pursuit cuts them
    gap_m: float = 2.5  # traffic: and the gap kept ahead of and behind it
    edge_m: float = 0.6  # traffic: our centre stays this far inside the road edge
    max_shift_m: float = 2.0  # traffic: how far the aim point may lead our offset (smooth, but decisive
    # enough that a clone's steering labels stand out from the lane-keeping ones)
    lateral_speed_mps: float = 1.5  # traffic: about how fast that moves us sideways
    centre_cost: float = 1.0  # traffic: a planned offset costs this per metre from the centerline...
    move_cost: float = 0.3  # ...and this per metre from where we are (keeps the chosen side)


def expert_steering(track: Track, car: CarState, s: float, car_cfg: CarConfig | RaceCarConfig,
                    cfg: ExpertConfig = ExpertConfig(), offset: float = 0.0) -> float:
    """Steering command in [-1, 1] that steers the rear axle towards a point `offset` metres left of
    the centerline `lookahead` metres ahead of arc length `s` (pure pursuit)."""
    lookahead = cfg.lookahead_base_m + cfg.lookahead_gain_s * max(car.speed, 1.0)
    tx, ty = track.point_at(s + lookahead)
    if offset:
        h = track.heading_at(s + lookahead)
        tx, ty = tx - offset * math.sin(h), ty + offset * math.cos(h)
    dx, dy = tx - car.x, ty - car.y
    alpha = math.atan2(dy, dx) - car.yaw
    dist = max(math.hypot(dx, dy), 1e-3)
    delta = math.atan2(2.0 * car_cfg.wheelbase_m * math.sin(alpha), dist)
    return max(-1.0, min(1.0, -delta / car_cfg.max_steer_rad))


def plan_offset(track: Track, traffic: Traffic, s: float, offset: float, speed: float, car_cfg: CarConfig,
                cfg: ExpertConfig = ExpertConfig(), seen_ahead_m: float = math.inf) -> float:
    """The lateral offset (metres, positive left) to drive at now, given the other cars.

    Only the cars at most `seen_ahead_m` ahead count (the camera's reach: a clone has to see the
    cause of every move in its frame). Every one we reach within the horizon blocks the offsets within a car's width plus clearance of
    where it will be while we pass it (its lateral motion is known). Of the free offsets reachable
    without crossing a car already beside us, the cheapest is chosen: near the centerline, near
    where we are. Stateless, so it labels any state a policy drives into (DAgger).
    """
    def road_at(arc: np.ndarray) -> tuple[float, float, float]:
        """(lowest, highest offset we may drive at, sharpest curvature) over arc lengths `arc`."""
        k = np.searchsorted(track.s, arc % track.length, side="right") - 1
        return (-float(track.width_right[k].min()) + cfg.edge_m, float(track.width_left[k].min()) - cfg.edge_m,
                float(np.abs(track.curvature[k]).max()))

    lo, hi, _ = road_at(s + np.arange(0.0, 15.0, 2.5))
    candidates = np.linspace(lo, hi, max(int((hi - lo) / 0.1) + 1, 2)) if hi > lo else np.array([0.0])
    free = np.ones(len(candidates), bool)
    if traffic is not None and traffic.n:
        tc = traffic.cfg
        rel = traffic.relative_s(s)
        reach = tc.length_m / 2 + car_cfg.length_m / 2 + cfg.gap_m
        closing = np.maximum(speed - traffic.speed, 0.5)
        t_in = (rel - reach) / closing
        t_out = (rel + reach) / closing
        near = np.flatnonzero((t_out > 0) & (t_in < cfg.horizon_s) & (rel <= seen_ahead_m))
        # the cars in the order we reach them: each one narrows the free offsets, unless it would
        # close them all (then it is left for later: we pass the nearer ones first)
        for i in near[np.argsort(t_in[near])]:
            dt = np.linspace(max(t_in[i], 0.0), t_out[i], 6)
            where, d = traffic.future_offsets(i, dt)
            road_lo, road_hi, bend = road_at(np.concatenate([where, [s]]))
            sep = tc.width_m / 2 + car_cfg.width_m / 2 + cfg.clearance_m + cfg.curve_clearance_m2 * bend
            clash = (candidates > d.min() - sep) & (candidates < d.max() + sep)
            off_road = (candidates < road_lo) | (candidates > road_hi)
            # the other side of it only if we can get there before we reach it
            late = np.abs(candidates - offset) > cfg.lateral_speed_mps * max(t_in[i] - 0.5, 0.0)
            unreachable = off_road | ((candidates - d.mean()) * (offset - d.mean()) < 0) & late
            blocked = clash | unreachable
            if not (free & ~blocked).any():
                alongside = t_in[i] <= 0  # beside it already: crossing its path would hit it
                if not alongside and (free & ~clash & ~off_road).any():  # room only across: go now
                    free &= ~clash & ~off_road
                elif free.all() or alongside:  # no way past: as far from it as the road allows
                    ours = (candidates - d.mean()) * (offset - d.mean()) >= 0 if alongside else True
                    gap = np.where(off_road | ~(free & ours), -np.inf,
                                   np.maximum(d.min() - candidates, candidates - d.max()))
                    free = gap >= gap.max() - 0.05
                break
            free &= ~blocked
    cost = cfg.centre_cost * np.abs(candidates) + cfg.move_cost * np.abs(candidates - offset)
    cost[~free] = np.inf
    return float(candidates[int(np.argmin(cost))])


class Expert:
    """Drives a `DriveEnv` from its privileged state: `expert.act(env)` gives the action array."""

    def __init__(self, cfg: ExpertConfig = ExpertConfig()):
        self.cfg = cfg

    def target_offset(self, env) -> float:
        """Traffic: the offset (metres, positive left) the planner picks now, from the cars the
        camera shows: centres up to its reach ahead of its centre (the middle of the wheelbase)."""
        e = env.unwrapped
        return self._target(e, e.car, e.proj)

    def steering(self, env) -> float:
        e = env.unwrapped
        return self._steer(e, e.car, e.proj)

    def steering_at(self, env, car: CarState) -> float:
        """The steering with our car at `car` instead, the other cars where they are now: the exact
        label of a view drawn from a shifted pose (training cannot work it out later in traffic:
        the planner needs the other cars' motion, which is not recorded)."""
        e = env.unwrapped
        return self._steer(e, car, e.track.project(car.x, car.y, car.yaw, s_hint=e.proj.s))

    def _target(self, e, car: CarState, proj) -> float:
        seen = e.cfg.camera.view_ahead_m + 0.5 * e.cfg.car.wheelbase_m
        return plan_offset(e.track, e.traffic, proj.s, proj.offset, car.speed, e.cfg.car, self.cfg, seen)

    def _steer(self, e, car: CarState, proj) -> float:
        if getattr(e, "traffic", None) is None:
            return expert_steering(e.track, car, proj.s, e.cfg.car, self.cfg)
        here = proj.offset
        target = self._target(e, car, proj)
        aim = here + max(-self.cfg.max_shift_m, min(self.cfg.max_shift_m, target - here))
        return expert_steering(e.track, car, proj.s, e.cfg.car, self.cfg, offset=aim)

    def act(self, env):
        e = env.unwrapped
        a = np.zeros(e.action_space.shape, np.float32)
        a[0] = self.steering(env)
        if a.shape[0] > 1:
            a[1] = max(-1.0, min(1.0, 0.5 * (e.cfg.car.cruise_speed_mps - e.car.speed)))
        return a


@dataclass(frozen=True)
class RaceExpertConfig:
    """The race autopilot: a minimum-time speed profile along the centerline, pure pursuit to hold it."""

    lateral_grip_use: float = 0.75  # plan corners at this share of the tyres' grip (the rest steers)
    brake_grip_use: float = 0.75  # plan braking at this share of the grip (full braking is ~0.9)
    accel_grip_use: float = 0.85  # plan accelerating out of corners at this share of the front's grip
    curvature_window_m: float = 9.0  # curvature averaged over this much road (centerline noise)
    preview_s: float = 0.35  # aim for the profile's speed this far ahead (the car needs time to brake)
    speed_gain: float = 0.6  # throttle per m/s of speed error
    lookahead_base_m: float = 4.0
    lookahead_gain_s: float = 0.4  # pure pursuit looks further ahead at speed: base + gain * v


def speed_profile(track: Track, car: RaceCarConfig, cfg: RaceExpertConfig = RaceExpertConfig()) -> np.ndarray:
    """The fastest speed (m/s) at each centerline point for a car following the centerline: the
    grip-limited cornering speed, then a forward pass (how fast the car can accelerate out of each
    corner) and a backward pass (how late it can brake into the next), the classic minimum-time
    profile for a fixed line. Combined forces stay inside the friction circle."""
    mu_g = car.grip_asphalt * GRAVITY
    n = len(track)
    ds = float(track.length) / n
    win = max(1, int(round(cfg.curvature_window_m / ds)))
    kernel = np.ones(win) / win
    k = np.abs(np.convolve(np.concatenate([track.curvature[-win:], track.curvature, track.curvature[:win]]),
                           kernel, "same")[win:win + n])
    a_lat = cfg.lateral_grip_use * mu_g
    v_corner = np.minimum(car.max_speed_mps, np.sqrt(a_lat / np.maximum(k, 1e-9)))
    start = int(np.argmin(v_corner))  # the slowest point is fixed by both passes: start there
    order = np.roll(np.arange(n), -start)
    v = v_corner[order].copy()
    kk = k[order]

    def grip_left(speed: float, curv: float, share: float) -> float:
        used = min(speed * speed * curv, share * mu_g)
        return math.sqrt((share * mu_g) ** 2 - used * used)

    # the front tyres carry lr/L of the weight but drive_front_share of the drive: they limit the exit
    front_drive = car.drive_front_share * car.wheelbase_m / car.cg_to_rear_m
    for i in range(1, n):  # forward: accelerate as the engine and the front's remaining grip allow
        u = v[i - 1]
        accel = min(drive_accel(1.0, u, car) - car.drag_per_m * u * u - car.rolling_mps2,
                    grip_left(u, kk[i - 1], cfg.accel_grip_use) / front_drive)
        v[i] = min(v[i], math.sqrt(max(u * u + 2.0 * max(accel, 0.0) * ds, 0.0)))
    nxt = v[0]
    for i in range(n - 1, -1, -1):  # backward: brake as late as the remaining grip allows
        u = nxt
        decel = grip_left(u, kk[i], cfg.brake_grip_use) + car.drag_per_m * u * u
        v[i] = min(v[i], math.sqrt(u * u + 2.0 * decel * ds))
        nxt = v[i]
    out = np.empty(n)
    out[order] = v
    return out


def race_steering(track: Track, car: CarState, s: float, car_cfg: RaceCarConfig,
                  cfg: RaceExpertConfig = RaceExpertConfig()) -> float:
    """Pure pursuit towards the centerline point a speed-dependent distance ahead of arc length `s`,
    plus the wheel angle the tyres' slip asks for at this speed (the car's understeer gradient times
    the lateral acceleration of the pursuit arc)."""
    lookahead = cfg.lookahead_base_m + cfg.lookahead_gain_s * max(car.speed, 1.0)
    tx, ty = track.point_at(s + lookahead)
    dx, dy = tx - car.x, ty - car.y
    alpha = math.atan2(dy, dx) - car.yaw
    curvature = 2.0 * math.sin(alpha) / max(math.hypot(dx, dy), 1e-3)
    delta = math.atan(car_cfg.wheelbase_m * curvature) + understeer_gradient(car_cfg) * car.speed ** 2 * curvature
    return max(-1.0, min(1.0, -delta / car_cfg.max_steer_rad))


class RaceExpert:
    """Drives the race task from privileged state: the speed profile for the throttle, pure pursuit
    (looking further ahead at speed) for the steering. `act(env)` gives [steering, throttle]."""

    def __init__(self, cfg: RaceExpertConfig = RaceExpertConfig()):
        self.cfg = cfg
        self._profiles: dict[tuple[str, str, float, RaceCarConfig], np.ndarray] = {}

    def profile(self, track: Track, car: RaceCarConfig) -> np.ndarray:
        """The speed profile of a track (computed once per track and car)."""
        key = (track.name, track.source, track.length, car)
        if key not in self._profiles:
            if len(self._profiles) > 32:
                self._profiles.clear()
            self._profiles[key] = speed_profile(track, car, self.cfg)
        return self._profiles[key]

    def target_speed(self, track: Track, car_cfg: RaceCarConfig, s: float, speed: float) -> float:
        profile = self.profile(track, car_cfg)
        return float(profile[track.index_at(s + speed * self.cfg.preview_s)])

    def steering(self, env) -> float:
        e = env.unwrapped
        return race_steering(e.track, e.car, e.proj.s, e.cfg.race_car, self.cfg)

    def throttle(self, env) -> float:
        e = env.unwrapped
        target = self.target_speed(e.track, e.cfg.race_car, e.proj.s, e.car.speed)
        return max(-1.0, min(1.0, self.cfg.speed_gain * (target - e.car.speed) + 0.1))

    def act(self, env) -> np.ndarray:
        return np.array([self.steering(env), self.throttle(env)], np.float32)


def expert_for(task: str):
    """The autopilot of a task: `RaceExpert` for racing, `Expert` for lane driving (it overtakes in traffic)."""
    return RaceExpert() if task == "race" else Expert()


def shifted_labels(env, expert: Expert, rng: np.random.Generator, n: int = SHIFTED_LABELS) -> np.ndarray:
    """`n` viewpoint shifts of the present moment, each with the expert's steering from there: (n, 3)
    rows of shift (m, left), turn (rad, CCW) and steering, drawn as training draws its shifts.
    Recorded beside traffic frames, so a view drawn again from a shifted pose has its exact label."""
    e = env.unwrapped
    c = e.car
    out = np.empty((n, 3))
    for k in range(n):
        shift = rng.uniform(-VIEW_SHIFT_M, VIEW_SHIFT_M)
        turn = math.radians(rng.uniform(-VIEW_ROTATE_DEG, VIEW_ROTATE_DEG))
        x, y, yaw = shifted_pose(c.x, c.y, c.yaw, shift, turn)
        out[k] = shift, turn, expert.steering_at(env, CarState(x, y, yaw, c.speed))
    return out


def task_expert_steering(task: str, track: Track, car: CarState, s: float, env_cfg) -> float:
    """The autopilot's steering for a pose of either task, without an env (relabelling shifted views)."""
    if task == "race":
        return race_steering(track, car, s, env_cfg.race_car)
    return expert_steering(track, car, s, env_cfg.car)
