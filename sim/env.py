"""`DriveEnv`, the Gymnasium environment `E2EDrive-v0`: it only wires track, car and camera together.

Tasks: `lane` (the default: a kinematic car at cruise speed, steering only), `race` (a dynamic car
with tyre grip, from a standing start, action [steering, throttle], a speed gauge drawn into the frame)
and `traffic` (the lane task with slower cars to overtake; touching one is a collision).
Observation: the camera frame (H, W, 3) uint8. Action: steering in [-1, 1] (negative = left), or
[steering, throttle] with `throttle=True` or in `race`.
Latency (`latency_ms`): the action given to `step` takes effect that many milliseconds later, rounded
to whole control steps (50 ms at 20 Hz); until then the car obeys the actions given before it (zeros
at the start of an episode). Only the action is delayed: the observation is always the current frame.
Looks (`look`, sim/looks.py): appearance training never saw (held-out palettes, noise, blur, shadows,
dusk), applied to the camera frame after the render and seeded by the reset seed. Reward: metres of progress along the track / 10,
and -10 on every step the car is off the road (once in `terminate` and `recover`, which end or undo
it; each step in `continue`), and -`collision_penalty` per collision in `traffic`. `info` carries what evaluation and recording need; a policy must not read it.
"""

from __future__ import annotations

import argparse
import math
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np

from . import car as carmod
from .car import CarConfig, CarState, RaceCarConfig
from .errors import UserError
from .looks import LookConfig, LookRenderer
from .render import (
    CAMERA_PRESETS,
    Camera,
    CameraConfig,
    default_palette,
    draw_speed_gauge,
    held_out_palette,
    random_palette,
)
from .track import Track, load_track, parse_spec
from .traffic import MAX_RECORDED_CARS, Traffic, TrafficConfig, rectangle_corners

OFF_TRACK_MODES = ("terminate", "recover", "continue")
_NO_CARS = np.full((MAX_RECORDED_CARS, 4), np.nan)  # info["cars"] with none in view (shared: read-only)
_NO_CARS.flags.writeable = False
TASKS = ("lane", "race", "traffic")  # lane: follow the road; race: steer and throttle; traffic: lane plus other cars
RACE_RECOVER_SPEED_MPS = 10.0  # a race car put back on the road goes on at most this fast


def default_camera_name(task: str) -> str:
    """The camera preset commands use for a task when none is asked for: race and traffic have their
    own bird's-eye views reaching further ahead; the lane task keeps `birdseye`."""
    return task if task in ("race", "traffic") else "birdseye"


@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines an episode; saved beside recordings and policies."""

    track: str = "procedural:0-19"  # a track SPEC; each reset picks one (or pass options={"track": ...})
    camera: CameraConfig = field(default_factory=CameraConfig)
    car: CarConfig = field(default_factory=CarConfig)
    throttle: bool = False  # action is [steering, throttle] instead of [steering]
    randomise_palette: bool = False  # new colours every episode (domain randomisation)
    laps: int | None = 1  # episode ends (truncated) after this many laps; None for no limit
    max_steps: int = 20000  # truncation limit
    # Leaving the road: "terminate" ends the episode; "recover" puts the car back on the centerline
    # and goes on (an intervention); "continue" lets it drive on the grass (-10 reward each step off).
    off_track: str = "terminate"
    off_track_margin_m: float = 0.5  # the rear-axle centre (the car's pose) this far past the edge is off track
    random_start: bool = False  # start at a random point of the lap instead of the start line
    task: str = "lane"  # "lane": steer at cruise speed; "race": steer and throttle a car with grip;
    # "traffic": the lane task with other, slower cars on the road
    race_car: RaceCarConfig = field(default_factory=RaceCarConfig)  # the car of the race task
    speed_gauge: bool = True  # race: draw the speed as bars at the frame's sides (the policy's speedometer)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)  # the other cars of task `traffic`
    latency_ms: float = 0.0  # the action takes effect this much later (whole control steps); frames are not delayed
    look: LookConfig = field(default_factory=LookConfig)  # unseen appearance (sim/looks.py); default: none

    def __post_init__(self) -> None:
        if not (self.latency_ms >= 0 and math.isfinite(self.latency_ms)):
            raise ValueError(f"latency_ms must be 0 or more, not {self.latency_ms!r}")
        if self.off_track not in OFF_TRACK_MODES:
            raise ValueError(f"off_track must be one of {OFF_TRACK_MODES}, not {self.off_track!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")

    @property
    def latency_steps(self) -> int:
        """`latency_ms` in whole control steps (rounded to the nearest)."""
        return int(round(self.latency_ms / (1000.0 * self.car.dt)))

    @property
    def action_dim(self) -> int:
        """1 (steering) or 2 (steering, throttle)."""
        return 2 if self.throttle or self.task == "race" else 1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "EnvConfig":
        d = dict(d)
        d["camera"] = CameraConfig(**d.get("camera", {}))
        d["car"] = CarConfig(**d.get("car", {}))
        d["race_car"] = RaceCarConfig(**d.get("race_car", {}))
        d["traffic"] = TrafficConfig(**d.get("traffic", {}))
        d["look"] = LookConfig(**d.get("look", {}))
        return EnvConfig(**d)


def latency_ms_arg(text: str) -> float:
    """argparse type of `--latency-ms`: milliseconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more milliseconds")
    return value


def add_latency_argument(parser: argparse.ArgumentParser) -> None:
    """`--latency-ms`, the same on every command that drives."""
    parser.add_argument("--latency-ms", type=latency_ms_arg, default=0.0, metavar="MS",
                        help="the steering takes effect this much later (whole 50 ms control steps; the "
                             "camera frame is not delayed); default 0")


# cars per km: a car every 20 m (tried: 123 cars on procedural:1 step fine); a cap, so a typo cannot
# ask for millions
MAX_TRAFFIC_DENSITY = 50.0


def add_traffic_density_argument(parser: argparse.ArgumentParser, default_note: str) -> None:
    """`--traffic-density`, the same on every command that drives the traffic task (checked by
    `with_traffic_density`, so a bad value is one `error:` line like every other)."""
    parser.add_argument("--traffic-density", type=float, metavar="CARS_PER_KM",
                        help=f"task traffic: other cars per km of track, 0-{MAX_TRAFFIC_DENSITY:g} ({default_note})")


def with_traffic_density(cfg: EnvConfig, density: float | None, standard: bool = False) -> EnvConfig:
    """`cfg` with `density` cars per km. None: as it is, or with `standard` the default density (what
    `eval`, `watch` and `play` drive whatever a policy's drives had). One clear error for a bad value
    or a task without traffic."""
    if density is None:
        if not (standard and cfg.task == "traffic"):
            return cfg
        density = TrafficConfig().density_per_km
    if not (0.0 <= density <= MAX_TRAFFIC_DENSITY):  # NaN fails too
        raise UserError(f"--traffic-density {density:g}: must be 0 to {MAX_TRAFFIC_DENSITY:g} cars per km")
    if cfg.task != "traffic":
        raise UserError(f"--traffic-density: only for task traffic (this is task {cfg.task}; add --task traffic)")
    return replace(cfg, traffic=replace(cfg.traffic, density_per_km=float(density)))


class DriveEnv(gym.Env):
    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None, config: EnvConfig | None = None, **overrides: Any):
        cfg = config or EnvConfig()
        if isinstance(overrides.get("camera"), str):
            from .render import camera_from_name
            overrides["camera"] = camera_from_name(overrides["camera"])
        if overrides:
            cfg = replace(cfg, **overrides)
        if cfg.task != "lane" and config is None and "camera" not in overrides:
            # made with a task alone: the task's own view
            cfg = replace(cfg, camera=CAMERA_PRESETS[default_camera_name(cfg.task)])
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.cfg = cfg
        self.render_mode = render_mode
        self.metadata = dict(self.metadata, render_fps=int(round(1.0 / cfg.car.dt)))
        self.track_specs = parse_spec(cfg.track)
        cam = cfg.camera
        self.observation_space = gym.spaces.Box(0, 255, (cam.height, cam.width, 3), np.uint8)
        n_act = cfg.action_dim
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n_act,), np.float32)
        self.track: Track | None = None
        self.camera: Camera | None = None
        self._world_cam: Camera | None = None
        self._viewer = None
        self._look: LookRenderer | None = None
        self.palette = default_palette()

    # -- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        spec = options.get("track")
        if spec is None:
            spec = self.track_specs[int(self.np_random.integers(len(self.track_specs)))]
        track = load_track(spec)
        if track is not self.track:
            self.track = track
            self.camera = Camera(track, self.cfg.camera, self.cfg.car.length_m, self.cfg.car.width_m,
                                 self.cfg.car.wheelbase_m)
            self._world_cam = None
        self.palette = random_palette(self.np_random) if self.cfg.randomise_palette else default_palette()
        self.camera.set_palette(self.palette)
        if "start_s" in options:
            s0 = float(options["start_s"]) % track.length
        elif self.cfg.random_start:
            s0 = float(self.np_random.uniform(0, track.length))
        else:
            s0 = 0.0
        self.start_s = s0
        p = track.point_at(s0)
        start_speed = 0.0 if self.cfg.task == "race" else self.cfg.car.cruise_speed_mps
        self.car = CarState(x=float(p[0]), y=float(p[1]), yaw=track.heading_at(s0), speed=start_speed)
        self.steps = 0
        self.time = 0.0
        self.progress = 0.0  # metres driven along the track since the start
        self.laps_completed = 0
        self.lap_start_time = 0.0
        self.last_lap_time = 0.0  # no lap finished yet (NaN would break equality checks)
        self.lap_clean = True
        self.off_track_count = 0
        self._off_road = False
        self.collision_count = 0
        self.overtake_count = 0
        self.proj = track.project(self.car.x, self.car.y, self.car.yaw)
        self.traffic = None
        if self.cfg.task == "traffic":  # drawn last, so the lane task's episodes are unchanged
            rng = np.random.default_rng(int(self.np_random.integers(2**63)))
            self.traffic = Traffic(track, self.cfg.traffic, self.cfg.car.cruise_speed_mps, s0, rng, self.cfg.car.dt)
            self._ahead = self.traffic.relative_s(self.proj.s) > 0
            self._touching = np.zeros(self.traffic.n, bool)
            self._traffic_quiet_until = 0  # before this step no car can be close enough to matter
        # latency: the actions given but not yet applied (the car starts obeying zeros)
        self._pending = deque(np.zeros(self.action_space.shape, np.float32) for _ in range(self.cfg.latency_steps))
        self._look = None
        if not self.cfg.look.is_default:  # drawn last, so every other draw of the episode is unchanged
            rng = np.random.default_rng(int(self.np_random.integers(2**63)))
            if self.cfg.look.palette == "held-out":
                self.palette = held_out_palette(rng)
                self.camera.set_palette(self.palette)
            if self.cfg.look.changes_frames:
                cam = self.cfg.camera
                self._look = LookRenderer(self.cfg.look, rng, cam.width / cam.view_width_m)
        obs = self._observe()
        info = self._info(off_track=False, intervention=False, lap_completed=False)
        if self.traffic is not None:
            info["cars"] = self._observed_car_rows()
        if self.render_mode == "human":
            self.render()
        return obs, info

    def step(self, action):
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != self.action_space.shape or not all(map(math.isfinite, a.tolist())):
            raise ValueError(f"action must be finite with shape {self.action_space.shape}, got {action!r}")
        if self._pending:  # latency: this action waits; the oldest one waiting takes effect now
            self._pending.append(a)
            a = self._pending.popleft()
        if self.cfg.task == "race":
            rc = self.cfg.race_car
            on_road = abs(self.proj.offset) <= self.track.half_width(self.proj.index, self.proj.offset)
            grip = rc.grip_asphalt if on_road else rc.grip_grass
            self.car = carmod.race_step(self.car, float(a[0]), float(a[1]), rc, grip)
        else:
            throttle = float(a[1]) if self.cfg.throttle else None
            self.car = carmod.step(self.car, float(a[0]), self.cfg.car, throttle)
        self.steps += 1
        self.time += self.cfg.car.dt
        track = self.track
        prev_s = self.proj.s
        self.proj = track.project(self.car.x, self.car.y, self.car.yaw, s_hint=prev_s)
        ds = (self.proj.s - prev_s + track.length / 2) % track.length - track.length / 2
        self.progress += ds
        reward = ds / 10.0

        off = abs(self.proj.offset) > track.half_width(self.proj.index, self.proj.offset) + self.cfg.off_track_margin_m
        terminated = False
        intervention = False
        if off:
            if not self._off_road:
                self.off_track_count += 1  # one per time the car leaves the road, in every mode
            self.lap_clean = False
            reward -= 10.0
            if self.cfg.off_track == "terminate":
                terminated = True
            elif self.cfg.off_track == "recover":
                self.place_on_centerline(self.proj.s)
                intervention = True
        self._off_road = off and self.cfg.off_track == "continue"  # "recover" put it back on the road

        collision = overtakes = 0
        if self.traffic is not None:
            collision, overtakes = self._step_traffic()
            if collision:
                self.lap_clean = False
                reward -= self.cfg.traffic.collision_penalty * collision
                if self.cfg.off_track == "terminate":
                    terminated = True
                elif self.cfg.off_track == "recover":
                    intervention = True

        lap_completed = False
        if self.progress >= (self.laps_completed + 1) * track.length:
            lap_completed = True
            self.laps_completed += 1
            self.last_lap_time = self.time - self.lap_start_time
            self.lap_start_time = self.time
        info = self._info(off_track=off, intervention=intervention, lap_completed=lap_completed,
                          collision=collision, overtakes=overtakes)
        if lap_completed:
            self.lap_clean = True  # the next lap starts clean
        truncated = bool(
            (self.cfg.laps is not None and self.laps_completed >= self.cfg.laps)
            or self.steps >= self.cfg.max_steps
        ) and not terminated
        obs = self._observe()
        if self.traffic is not None:
            info["cars"] = self._observed_car_rows()
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), terminated, truncated, info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        picture = self.world_view()
        if self.render_mode == "rgb_array":
            return picture
        if self._viewer is None:
            from .viewer import ImageWindow  # pygame only here
            self._viewer = ImageWindow("E2E Drive", picture.shape[1], picture.shape[0])
        self._viewer.show(picture, fps=self.metadata["render_fps"])
        return None

    def close(self):
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None

    # -- helpers used by the expert, recorders, evaluators and viewers ------------------------------
    def place_on_centerline(self, s: float) -> None:
        """Put the car back on the centerline at arc length s, facing along the track (an
        intervention: the speed is kept so the drive continues smoothly; a race car that slid off
        goes on at most `RACE_RECOVER_SPEED_MPS`, so it does not slide off again at once)."""
        p = self.track.point_at(s)
        speed = self.car.speed
        if self.cfg.task == "race":
            speed = min(speed, RACE_RECOVER_SPEED_MPS)
        self.car = CarState(x=float(p[0]), y=float(p[1]), yaw=self.track.heading_at(s), speed=speed)
        self.proj = self.track.project(self.car.x, self.car.y, self.car.yaw, s_hint=s)

    def visible_cars(self, camera: Camera):
        """The other cars `camera` (on our car) may see; None without traffic."""
        if self.traffic is None:
            return None
        idx = self.traffic.in_view(self.car.x, self.car.y, camera.view_radius_m())
        return self.traffic.boxes(idx) if idx.size else None

    def ego_corners(self) -> np.ndarray:
        """Our car's footprint (4, 2): the rectangle around the middle of the wheelbase."""
        c, car = self.car, self.cfg.car
        centre = (c.x + 0.5 * car.wheelbase_m * math.cos(c.yaw), c.y + 0.5 * car.wheelbase_m * math.sin(c.yaw))
        return rectangle_corners(centre, c.yaw, car.length_m, car.width_m)

    def _step_traffic(self) -> tuple[int, int]:
        """Move the other cars; (new collisions, cars overtaken) this step. A car hit is moved clear
        in recover mode; in the other modes it stays, and touching it again later counts again."""
        traffic = self.traffic
        traffic.step()
        if self.steps < self._traffic_quiet_until:
            return 0, 0
        rel = traffic.relative_s(self.proj.s)
        zone = traffic.cfg.length_m + 10.0
        dist = np.abs(rel)
        close = (dist < zone).nonzero()[0]
        if not close.size:
            # no car can come this close for a while: skip the checks till then (a bound on how
            # fast the gap can close: our top speed plus theirs)
            closing = (self.cfg.car.max_speed_mps + self.cfg.car.cruise_speed_mps) * self.cfg.car.dt
            self._traffic_quiet_until = self.steps + int((dist.min() - zone) / closing) if traffic.n else 1 << 62
            return 0, 0
        reach = traffic.cfg.length_m / 2 + self.cfg.car.length_m / 2 + 1.0
        hits = traffic.collisions(self.ego_corners(), close[np.abs(rel[close]) < reach])
        touching = np.zeros(traffic.n, bool)
        touching[hits] = True
        new = int(np.count_nonzero(touching & ~self._touching))
        self._touching = touching
        if self.cfg.off_track == "recover":
            for i in hits:
                traffic.move_behind(i, self.proj.s)
            self._touching[:] = False
        # an overtake: a car ahead of us last step is behind us now (the cars never pass us)
        ahead = rel[close] > 0
        passed = self._ahead[close] & ~ahead
        passed[np.isin(close, hits)] = False
        self._ahead[close] = ahead
        n_passed = int(np.count_nonzero(passed))
        self.collision_count += new
        self.overtake_count += n_passed
        return new, n_passed

    def world_view(self, size: int = 480, view_m: float = 90.0) -> np.ndarray:
        """A larger heading-up picture of the car on the track, with the camera frame as an inset."""
        if self._world_cam is None or self._world_cam.cfg.width != size:
            wcfg = CameraConfig(width=size, height=size, view_width_m=view_m, car_row=0.68,
                                map_res_m=self.cfg.camera.map_res_m)
            self._world_cam = Camera(self.track, wcfg, self.cfg.car.length_m, self.cfg.car.width_m,
                                     self.cfg.car.wheelbase_m)
        self._world_cam.set_palette(self.palette)
        pic = self._world_cam.render(self.car.x, self.car.y, self.car.yaw, self.visible_cars(self._world_cam)).copy()
        obs = self._obs
        scale = max(1, int(size * 0.3) // max(obs.shape[:2]))
        inset = np.repeat(np.repeat(obs, scale, 0), scale, 1)
        h, w = inset.shape[:2]
        pic[6:6 + h, 6:6 + w] = inset
        pic[4:6, 4:8 + w] = 255
        pic[6 + h:8 + h, 4:8 + w] = 255
        pic[4:8 + h, 4:6] = 255
        pic[4:8 + h, 6 + w:8 + w] = 255
        return pic

    def _observe(self) -> np.ndarray:
        cars = self.visible_cars(self.camera)
        frame = self.camera.render(self.car.x, self.car.y, self.car.yaw, cars)
        self._obs = self._gauge(self._looked(frame))
        self._observed_cars = cars
        return self._obs

    def _observed_car_rows(self) -> np.ndarray:
        """The other cars the last observation was drawn with, as `CarBoxes.rows`: a recording keeps
        them beside the frame, so training can draw it again from a shifted viewpoint."""
        if self._observed_cars is None:
            return _NO_CARS
        return self._observed_cars.rows((self.car.x, self.car.y))

    def _looked(self, frame: np.ndarray) -> np.ndarray:
        """The frame with the episode's look (noise, blur, shadows, light); as it is without one."""
        return frame if self._look is None else self._look.apply(frame, self.progress)

    def _gauge(self, frame: np.ndarray) -> np.ndarray:
        if self.cfg.task == "race" and self.cfg.speed_gauge:
            draw_speed_gauge(frame, self.car.speed / self.cfg.race_car.max_speed_mps)
        return frame

    def _info(self, off_track: bool, intervention: bool, lap_completed: bool, collision: int = 0,
              overtakes: int = 0) -> dict:
        c, p = self.car, self.proj
        return {
            "track": self.track.name,
            "lap": self.laps_completed,
            "lap_completed": lap_completed,
            "lap_clean": self.lap_clean,
            "last_lap_time": self.last_lap_time,
            "lap_time": self.time - self.lap_start_time,
            "progress_m": self.progress,
            "lap_fraction": (self.progress / self.track.length) % 1.0 if self.progress >= 0 else 0.0,
            "s": p.s,
            "cte": p.offset,
            "heading_error": p.heading_error,
            "off_track": bool(off_track),
            "off_track_count": self.off_track_count,
            "intervention": bool(intervention),
            "collision": int(collision),  # cars our car started touching this step (task traffic)
            "collisions": self.collision_count,
            "overtake": int(overtakes),  # cars overtaken this step
            "overtakes": self.overtake_count,
            "speed": c.speed,
            "lateral_speed": c.lateral_speed,
            "yaw_rate": c.yaw_rate,
            "steer_angle": c.steer,
            "x": c.x,
            "y": c.y,
            "yaw": c.yaw,
            "time": self.time,
        }
