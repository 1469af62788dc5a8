"""Other cars on the road (task `traffic`): slower cars that drive the track at their own speeds and
lateral positions, some weaving smoothly from side to side. Pure numpy, no torch.

A car lives in track coordinates: arc length `s` and a lateral position `q` in [-1, 1], the share of
the room on its side of the centerline (so it stays on the road where the road narrows). Its lateral
position is a smooth function of time, `q(t) = c + a sin(w t + phi)`, so the expert can predict it
exactly; a car that catches up with the one ahead takes that car's speed and, blending over a couple
of seconds, its lateral motion: cars queue in single file instead of blocking the road side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .track import Track


@dataclass(frozen=True)
class TrafficConfig:
    """The other cars; saved with the env settings beside recordings and policies."""

    density_per_km: float = 4.0  # cars per km of track
    min_cars: int = 2  # at least this many on any track (with density > 0)
    speed_min: float = 0.4  # speeds drawn from this share of the ego car's cruise speed...
    speed_max: float = 0.7  # ...to this one: every car is slower, so the ego car overtakes
    lateral_range: float = 0.7  # |q| at most this: the share of the room on its side a car may use
    weaving_share: float = 0.35  # share of the cars that weave from side to side
    weave_period_s: tuple[float, float] = (8.0, 16.0)
    weave_amplitude: tuple[float, float] = (0.15, 0.3)
    weave_overlap: float = 0.0  # a weaving car crosses the centerline by at most this share of the room
    length_m: float = 4.4
    width_m: float = 1.9
    height_m: float = 1.5  # for the dashcam's boxes
    edge_margin_m: float = 0.4  # a car's side stays this far inside the road edge
    follow_gap_m: float = 12.0  # closer than this (bumper to bumper) a car takes the speed of the one ahead
    blend_s: float = 2.0  # how long a car takes to fall into line behind the one ahead
    first_car_m: tuple[float, float] = (40.0, 100.0)  # the first car ahead of the start (an early overtake)
    clear_behind_m: float = 30.0  # recover mode: a car hit is moved this far behind the ego car
    collision_penalty: float = 10.0  # reward lost per collision

    def __post_init__(self) -> None:
        object.__setattr__(self, "weave_period_s", tuple(float(v) for v in self.weave_period_s))
        object.__setattr__(self, "weave_amplitude", tuple(float(v) for v in self.weave_amplitude))
        object.__setattr__(self, "first_car_m", tuple(float(v) for v in self.first_car_m))
        if self.density_per_km < 0:
            raise ValueError(f"traffic density must be >= 0 cars per km, not {self.density_per_km}")
        if not 0 < self.speed_min <= self.speed_max < 1:
            raise ValueError("traffic speeds must satisfy 0 < speed_min <= speed_max < 1 (slower than the ego car)")
        if not 0 <= self.lateral_range <= 1:
            raise ValueError(f"traffic lateral_range must be in [0, 1], not {self.lateral_range}")
        if not 0 <= self.weave_amplitude[0] <= self.weave_amplitude[1] <= (self.lateral_range + self.weave_overlap) / 2:
            raise ValueError("traffic weave_amplitude must fit in the lateral range: 0 <= min <= max <= "
                             "(lateral_range + weave_overlap) / 2")


MAX_RECORDED_CARS = 12  # cars stored beside each recorded frame: more than a camera's view ever holds


@dataclass
class CarBoxes:
    """Cars to draw: centres (n, 2) in world metres, headings (n,), palette labels (n,), and size."""

    xy: np.ndarray
    yaw: np.ndarray
    label: np.ndarray
    length_m: float
    width_m: float
    height_m: float

    def __len__(self) -> int:
        return len(self.yaw)

    def rows(self, near: tuple[float, float], max_cars: int = MAX_RECORDED_CARS) -> np.ndarray:
        """The cars as recorded beside a frame: (max_cars, 4) float64 rows of x, y, yaw and palette
        label, the nearest to `near` first, NaN rows where there are fewer cars."""
        out = np.full((max_cars, 4), np.nan)
        order = np.argsort(((self.xy - near) ** 2).sum(1), kind="stable")[:max_cars]
        k = len(order)
        out[:k, :2], out[:k, 2], out[:k, 3] = self.xy[order], self.yaw[order], self.label[order]
        return out

    @staticmethod
    def from_rows(rows: np.ndarray, cfg: TrafficConfig) -> CarBoxes | None:
        """The cars recorded beside a frame (`rows`), to draw that frame again; None when there are none."""
        rows = rows[np.isfinite(rows[:, 0])]
        if not len(rows):
            return None
        return CarBoxes(rows[:, :2], rows[:, 2], rows[:, 3].astype(np.int64), cfg.length_m, cfg.width_m, cfg.height_m)


def rectangle_corners(centre, yaw: float, length: float, width: float, ahead: float = 0.0) -> np.ndarray:
    """Corners (4, 2) of an oriented rectangle centred `ahead` metres in front of `centre` along
    `yaw`: front-left, front-right, rear-right, rear-left."""
    c, s = math.cos(yaw), math.sin(yaw)
    f = np.array([c, s])
    left = np.array([-s, c]) * width / 2
    mid = np.asarray(centre, np.float64) + f * ahead
    front, rear = mid + f * length / 2, mid - f * length / 2
    return np.array([front + left, front - left, rear - left, rear + left])


def rectangles_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex quadrilaterals (4, 2): True when their interiors overlap,
    False when a gap (or only a shared edge) separates them."""
    for quad in (a, b):
        for i in range(2):  # a rectangle has two edge directions
            edge = quad[i + 1] - quad[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


class Traffic:
    """The other cars of one episode, stepped with the ego car. Deterministic for a given `rng`."""

    def __init__(self, track: Track, cfg: TrafficConfig, ego_speed_mps: float, start_s: float,
                 rng: np.random.Generator, dt: float):
        self.track, self.cfg, self.dt = track, cfg, dt
        self.time = 0.0
        n = 0 if cfg.density_per_km <= 0 else max(cfg.min_cars, int(round(cfg.density_per_km * track.length / 1000)))
        self.n = n
        length = track.length
        # one car in each slot of the lap ahead of the start (none just behind it); the first one
        # close ahead, so an overtake comes early
        first = rng.uniform(*cfg.first_car_m)
        slot = max(length - first - cfg.clear_behind_m, 0.0) / max(n, 1)
        offsets = first + slot * (np.arange(n) + rng.uniform(0, 0.5, n) * (np.arange(n) > 0))
        self.s = (start_s + offsets) % length
        self.base_speed = ego_speed_mps * rng.uniform(cfg.speed_min, cfg.speed_max, n)
        self.speed = self.base_speed.copy()
        # a weaving car keeps to one side of the road (crossing the centerline at most by
        # `weave_overlap`), so there is always room to pass it on the other side
        weaving = rng.random(n) < cfg.weaving_share
        amp = np.where(weaving, rng.uniform(*cfg.weave_amplitude, n), 0.0)
        side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        lo = np.where(weaving, amp - cfg.weave_overlap, amp - cfg.lateral_range)
        centre = side * rng.uniform(lo, cfg.lateral_range - amp)
        omega = 2 * np.pi / rng.uniform(*cfg.weave_period_s, n)
        phase = rng.uniform(0, 2 * np.pi, n)
        # lateral motion: the current one and, while falling into line, the one being left
        self.motion = np.stack([centre, amp, omega, phase], 1)
        self.old_motion = self.motion.copy()
        self.join_time = np.full(n, -1e9)
        self.colour = rng.integers(0, 4, n)
        # per-point geometry of the track in one table, so a car's pose is one row lookup
        h = track.heading
        room_left = np.maximum(track.width_left - cfg.width_m / 2 - cfg.edge_margin_m, 0.0)
        room_right = np.maximum(track.width_right - cfg.width_m / 2 - cfg.edge_margin_m, 0.0)
        self._table = np.stack([track.xy[:, 0], track.xy[:, 1], track.s, np.cos(h), np.sin(h), h,
                                room_left, room_right], 1)
        self._max_room = float(max(room_left.max(), room_right.max()))
        self._steps = 0
        self._next = np.r_[1:n, 0] if n else np.zeros(0, int)  # in s order, the car ahead of each
        self.line = np.arange(n)  # cars with the same line share one lateral motion (a queue)
        self._blend_until = -1e9  # no car is falling into line before this time
        self._version = 0  # bumped when a lateral motion changes
        self._motion_rows: list | None = None
        self._motion_version = -1
        self._view: dict[float, tuple[int, np.ndarray]] = {}  # radius -> (step, cars maybe in view)

    # -- motion ---------------------------------------------------------------------------------
    def step(self) -> None:
        """Advance every car by one control period (poses are worked out only for the cars looked at)."""
        if self.n == 0:
            return
        self._steps += 1
        if self._steps % 10 == 1:  # queueing changes slowly: check it twice a second
            self._follow()
        self.s += self.speed * self.dt
        self.time += self.dt

    def _follow(self) -> None:
        """A car closer than `follow_gap_m` behind another takes its speed and falls into its line."""
        self.s %= self.track.length
        if self.n < 2:
            return
        order = np.argsort(self.s)
        s = self.s[order]
        ahead = order[self._next]
        gap = s[self._next] - s
        gap[-1] += self.track.length
        close = gap < self.cfg.follow_gap_m + self.cfg.length_m
        if not close.any():
            self.speed[:] = self.base_speed
            return
        self.speed[order] = np.where(close, np.minimum(self.base_speed[order], self.speed[ahead]),
                                     self.base_speed[order])
        for i, j in zip(order[close].tolist(), ahead[close].tolist()):
            if self.line[i] != self.line[j]:
                self.old_motion[i] = (self.q_at(self.time)[i], 0.0, 0.0, 0.0)  # where it is, held
                self.motion[i] = self.motion[j]
                self.line[i] = self.line[j]
                self.join_time[i] = self.time
                self._blend_until = self.time + self.cfg.blend_s
                self._version += 1

    def q_at(self, t: float, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The cars' lateral positions q at time t (exact while no car joins a queue meanwhile)."""
        m = self.motion[idx]
        q = m[:, 0] + m[:, 1] * np.sin(m[:, 2] * t + m[:, 3])
        if t >= self._blend_until:
            return q
        w = np.clip((t - self.join_time[idx]) / self.cfg.blend_s, 0.0, 1.0)
        w = w * w * (3 - 2 * w)  # smoothstep: no jerk at either end of the blend
        o = self.old_motion[idx]
        q_old = o[:, 0] + o[:, 1] * np.sin(o[:, 2] * t + o[:, 3])
        return q_old + w * (q - q_old)

    def _q(self, i: int, t: float) -> float:
        """Car i's q at time t: `q_at` for one car, in plain floats (the few cars in view)."""
        c, a, w, ph = self._motion_rows[i]
        q = c + a * math.sin(w * t + ph)
        if t < self._blend_until:
            b = min(max((t - self.join_time[i]) / self.cfg.blend_s, 0.0), 1.0)
            if b < 1.0:
                c, a, w, ph = self.old_motion[i].tolist()
                q_old = c + a * math.sin(w * t + ph)
                q = q_old + b * b * (3 - 2 * b) * (q - q_old)
        return q

    def future_offsets(self, i: int, ahead_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where car i will be `ahead_s` seconds from now at its present speed: arc lengths and lateral
        offsets (metres). What the expert plans with."""
        t = self.time + np.asarray(ahead_s, np.float64)
        c, a, w, ph = self.motion[i]
        q = c + a * np.sin(w * t + ph)
        if t.min() < self._blend_until:
            b = np.clip((t - self.join_time[i]) / self.cfg.blend_s, 0.0, 1.0)
            c, a, w, ph = self.old_motion[i]
            q_old = c + a * np.sin(w * t + ph)
            q = q_old + b * b * (3 - 2 * b) * (q - q_old)
        s = self.s[i] + self.speed[i] * np.asarray(ahead_s, np.float64)
        return s, self.offsets_at(s, q)

    def offsets_at(self, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Lateral offsets in metres (positive left) for lateral positions q at arc lengths s."""
        g = self._table[np.searchsorted(self.track.s, s % self.track.length, side="right") - 1]
        return q * np.where(q >= 0, g[:, 6], g[:, 7])

    def poses(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """Centres (k, 2) and headings (k,) of the cars `idx`; a weaving car points where it goes.
        Plain float math: there are only ever a few cars in view."""
        xy = np.empty((len(idx), 2))
        yaw = np.empty(len(idx))
        length, t, dt = self.track.length, self.time, self.dt
        if self._motion_rows is None or self._motion_version != self._version:
            self._motion_rows = self.motion.tolist()
            self._motion_version = self._version
        for j, i in enumerate(idx):
            s = float(self.s[i]) % length
            x0, y0, s0, c, sn, h, room_left, room_right = self._table[self.track.index_at(s)].tolist()
            q = self._q(i, t)
            room = room_left if q >= 0 else room_right
            d = q * room
            along = s - s0
            xy[j] = (x0 + along * c - d * sn, y0 + along * sn + d * c)
            yaw[j] = h + math.atan2((d - self._q(i, t - dt) * room) / dt, float(self.speed[i]))
        return xy, yaw

    # -- the ego car ----------------------------------------------------------------------------
    def relative_s(self, ego_s: float) -> np.ndarray:
        """Each car's arc length ahead of the ego car (negative behind), wrapped to half a lap."""
        half = self.track.length / 2
        return (self.s - ego_s + half) % self.track.length - half

    def in_view(self, x: float, y: float, radius_m: float) -> np.ndarray:
        """Indices of the cars that may be within `radius_m` of (x, y), judged by their place on the
        centerline with room for their offset and length; worked out every fifth step with room for
        the motion meanwhile (the camera clips the rest)."""
        cached = self._view.get(radius_m)
        if cached is not None and self._steps - cached[0] < 5:
            return cached[1]
        k = np.searchsorted(self.track.s, self.s % self.track.length, side="right") - 1
        d = self._table[k, :2] - (x, y)
        idx = np.flatnonzero((d * d).sum(1) < (radius_m + self._max_room + self.cfg.length_m + 10.0) ** 2)
        self._view[radius_m] = (self._steps, idx)
        return idx

    def collisions(self, ego_corners: np.ndarray, candidates: np.ndarray) -> list[int]:
        """The cars among `candidates` whose footprint overlaps the ego car's."""
        if not len(candidates):
            return []
        xy, yaw = self.poses(candidates)
        cfg = self.cfg
        return [int(i) for i, c, h in zip(candidates, xy, yaw)
                if rectangles_overlap(ego_corners, rectangle_corners(c, h, cfg.length_m, cfg.width_m))]

    def move_behind(self, i: int, ego_s: float) -> None:
        """Recover mode: the car hit goes `clear_behind_m` behind the ego car, clear of the others."""
        s = ego_s - self.cfg.clear_behind_m
        others = np.delete(self.s, i)
        for _ in range(20):
            gaps = np.abs((others - s + self.track.length / 2) % self.track.length - self.track.length / 2)
            if not others.size or gaps.min() > 2 * self.cfg.length_m:
                break
            s -= 2 * self.cfg.length_m
        self.s[i] = s % self.track.length

    def boxes(self, idx: np.ndarray) -> CarBoxes:
        """What the cameras draw: the cars `idx`."""
        cfg = self.cfg
        xy, yaw = self.poses(idx)
        return CarBoxes(xy, yaw, self.colour[idx], cfg.length_m, cfg.width_m, cfg.height_m)
