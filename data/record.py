"""`record --autopilot`: the expert drives each track of a SPEC and every drive is saved to disk.

Noise injection (DART-like): the car executes the expert's steering plus a smooth random perturbation,
while the recorded label stays what the expert wants in the state the car is actually in. The car
wanders off the centre line and the labels show how to come back: the recovery data behavioural
cloning needs (a policy trained on perfect centre-line driving has never seen its own mistakes).
In the race task the throttle gets its own perturbation the same way: the car runs too fast or too
slow for the track ahead, and the throttle labels show how the expert brakes or accelerates back.
That drift moves the speed by a metre per second or so; now and then the race car also holds a random
pedal for a second or two (`PedalExcursions`): braked to a crawl in the middle of a lap, or on full
throttle into a corner, so the data holds what a policy's own speed mistakes lead to (a standstill to
launch from, a corner taken too fast) with the expert's answer as the label.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sim.env import (
    TASKS,
    DriveEnv,
    EnvConfig,
    add_latency_argument,
    add_traffic_density_argument,
    default_camera_name,
    with_traffic_density,
)
from sim.errors import UserError
from sim.expert import expert_for, shifted_labels
from sim.files import check_out_dir
from sim.progress import Progress, table
from sim.render import N_LABELS, camera_from_name
from sim.track import load_track, parse_spec

from .recording import DriveWriter, unique_drive_name

EXAMPLES = """examples:
  python run_drive.py record --autopilot --tracks procedural:0-19 --laps 1 --out data/drives/auto
  python run_drive.py record --autopilot --tracks real:all --laps 1 --noise 0.2 --out data/drives/real
  python run_drive.py record --autopilot --tracks procedural:0-9 --laps 2 --randomise-palette --workers 2 \\
      --out data/drives/rand
  python run_drive.py record --autopilot --tracks procedural:5 --laps 1 --noise 0 --camera dashcam --out /tmp/clean
  python run_drive.py record --autopilot --task race --tracks procedural:0-19 --laps 1 --out data/drives/race
  python run_drive.py record --autopilot --task traffic --tracks procedural:0-19 --laps 1 --out data/drives/traffic

Noise 0 records the expert's clean line; 0.3 (default) adds smooth drifts and pushes whose recoveries
the labels show; 1.0 is rough (the car may leave the track; the env puts it back and marks it)."""


@dataclass(frozen=True)
class NoiseConfig:
    """Shape of the steering perturbation at noise level 1 (everything scales with the level)."""

    ou_sigma: float = 0.6  # Ornstein-Uhlenbeck drift, steering units / sqrt(s)
    ou_theta: float = 1.5  # pull back to zero, 1/s (steady-state std = sigma / sqrt(2 theta) ~ 0.35)
    push_rate_hz: float = 1 / 6  # a longer one-sided push every ~6 s on average
    push_s: tuple[float, float] = (0.4, 1.2)  # push duration range
    push_amp: tuple[float, float] = (0.25, 0.6)  # push size range (steering units)


class SteeringNoise:
    """A smooth random steering perturbation: an OU process plus occasional longer pushes."""

    def __init__(self, level: float, rng: np.random.Generator, dt: float, cfg: NoiseConfig = NoiseConfig()):
        self.level, self.rng, self.dt, self.cfg = float(level), rng, float(dt), cfg
        self.ou = 0.0
        self.push_left = 0.0
        self.push = 0.0

    def __call__(self) -> float:
        if self.level <= 0:
            return 0.0
        c, dt, rng = self.cfg, self.dt, self.rng
        self.ou += -c.ou_theta * self.ou * dt + c.ou_sigma * math.sqrt(dt) * float(rng.standard_normal())
        if self.push_left <= 0 and rng.random() < c.push_rate_hz * dt:
            self.push_left = float(rng.uniform(*c.push_s))
            self.push = float(rng.uniform(*c.push_amp)) * (1 if rng.random() < 0.5 else -1)
        push = 0.0
        if self.push_left > 0:
            self.push_left -= dt
            push = self.push
        return self.level * (self.ou + push)


@dataclass(frozen=True)
class PedalExcursionConfig:
    """Race only, at noise level 1 (the rate scales with the level): the pedal held at a random value."""

    rate_hz: float = 0.5  # at the default noise 0.3: one excursion every ~7 s on average
    hold_s: tuple[float, float] = (0.5, 2.5)  # how long the pedal is held (full braking for 2.5 s stops the car)
    pedal: tuple[float, float] = (-1.0, 1.0)  # the held pedal: braking (< 0) or throttle


class PedalExcursions:
    """Now and then the executed pedal is replaced by a random one held for a while: the car ends up
    far slower or faster than the expert's profile, which the small throttle drift never does."""

    def __init__(self, level: float, rng: np.random.Generator, dt: float,
                 cfg: PedalExcursionConfig = PedalExcursionConfig()):
        self.level, self.rng, self.dt, self.cfg = float(level), rng, float(dt), cfg
        self.left = 0.0
        self.pedal = 0.0

    def __call__(self, pedal: float) -> float:
        """The pedal the car executes: `pedal` (the expert's, drifted), or the held excursion's."""
        if self.level <= 0:
            return pedal
        if self.left <= 0 and self.rng.random() < self.level * self.cfg.rate_hz * self.dt:
            self.left = float(self.rng.uniform(*self.cfg.hold_s))
            self.pedal = float(self.rng.uniform(*self.cfg.pedal))
        if self.left > 0:
            self.left -= self.dt
            return self.pedal
        return pedal


@dataclass(frozen=True)
class DriveResult:
    path: str
    track: str
    frames: int
    laps: int
    off_track_events: int
    driving_s: float
    bytes: int
    wall_s: float


@dataclass
class RecordSummary:
    """What `record_autopilot` made: one `DriveResult` per track, and the totals."""

    drives: list[DriveResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def paths(self) -> list[Path]:
        return [Path(d.path) for d in self.drives]

    @property
    def frames(self) -> int:
        return sum(d.frames for d in self.drives)

    @property
    def driving_s(self) -> float:
        return sum(d.driving_s for d in self.drives)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.drives)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("nan")


# -- one drive (runs in a worker process) --------------------------------------------------------------
_progress_queue = None


def _init_worker(queue) -> None:
    global _progress_queue
    _progress_queue = queue


def record_one(spec: str, laps: int, folder: str, env_cfg: EnvConfig, noise: float, seed: int,
               chunk_steps: int = 100, progress=None, parent_pid: int | None = None) -> DriveResult:
    """The expert drives `spec` for `laps` laps; every frame and label goes to a new drive `folder`.

    `progress(frames)` is called after each chunk; a worker whose parent died (killed recorder) closes
    its drive after the current chunk and stops, so nothing keeps writing behind the user's back."""
    t0 = time.perf_counter()
    env = DriveEnv(config=env_cfg)
    expert = expert_for(env_cfg.task)
    rng = np.random.default_rng(seed)
    perturb = SteeringNoise(noise, rng, env_cfg.car.dt)
    perturb_throttle = SteeringNoise(noise, rng, env_cfg.car.dt)  # race only: the same kind of drift
    excursions = PedalExcursions(noise, rng, env_cfg.car.dt)  # race only: far off the speed profile
    race = env_cfg.task == "race"
    # traffic: label a few shifted views of each frame now, while the other cars' motion is known
    relabel = np.random.default_rng([seed, 2]) if env_cfg.task == "traffic" else None

    def shifted() -> np.ndarray | None:
        return None if relabel is None else shifted_labels(env, expert, relabel)

    obs, info = env.reset(seed=seed, options={"track": spec})
    meta = {
        "source": "autopilot",
        "driver": {"kind": "expert", "noise": noise, "noise_process": NoiseConfig().__dict__, "seed": seed,
                   "throttle_noise": race,
                   **({"pedal_excursions": asdict(PedalExcursionConfig())} if race else {})},
        "task": env_cfg.task,
        "track": spec,
        "track_length_m": float(env.unwrapped.track.length),
        "env": env_cfg.to_dict(),
        "palette": env.unwrapped.palette[:N_LABELS].tolist(),  # RGB per material (randomised or not)
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    last_reported = 0
    with DriveWriter(folder, meta, chunk_steps=chunk_steps) as w:
        while True:
            label = expert.steering(env)
            executed = float(np.clip(label + perturb(), -1.0, 1.0))
            throttle = expert.throttle(env) if race else None
            w.add(obs, label, info, throttle=throttle, executed_steering=executed, shifted_labels=shifted())
            if len(w) - last_reported >= chunk_steps:
                if progress is not None:
                    progress(len(w) - last_reported)
                last_reported = len(w)
                if parent_pid is not None and os.getppid() != parent_pid:
                    raise _Orphaned(folder)  # the writer keeps the chunks, marks the drive unfinished
            action = [executed] + ([excursions(float(np.clip(throttle + perturb_throttle(), -1.0, 1.0)))]
                                   if race else [])
            obs, _reward, terminated, truncated, info = env.step(np.array(action, np.float32))
            if terminated or truncated:
                # The final state gets its label too: it is a valid (frame, steering) pair.
                w.add(obs, expert.steering(env), info, throttle=expert.throttle(env) if race else None,
                      executed_steering=None, shifted_labels=shifted())
                break
    if progress is not None and len(w) > last_reported:
        progress(len(w) - last_reported)
    return DriveResult(path=str(folder), track=spec, frames=w.frames_written, laps=int(info["lap"]),
                       off_track_events=w.meta["summary"]["off_track_events"],
                       driving_s=w.frames_written * env_cfg.car.dt, bytes=w.bytes_written,
                       wall_s=time.perf_counter() - t0)


class _Orphaned(Exception):
    """The recorder that started this worker is gone (killed): stop writing."""


def _worker(spec, laps, folder, env_cfg, noise, seed, chunk_steps, parent_pid) -> DriveResult:
    q = _progress_queue
    try:
        return record_one(spec, laps, folder, env_cfg, noise, seed, chunk_steps,
                          progress=(lambda n: q.put(n)) if q is not None else None, parent_pid=parent_pid)
    except _Orphaned:
        os._exit(0)


# -- many drives -----------------------------------------------------------------------------------------
def record_autopilot(tracks_spec: str, laps: int, out: str | os.PathLike, *, noise: float = 0.3,
                     workers: int | None = None, randomise_palette: bool = False, camera: str | None = None,
                     seed: int = 0, chunk_steps: int = 100, verbose: bool = True,
                     latency_ms: float = 0.0, task: str = "lane",
                     traffic_density: float | None = None) -> RecordSummary:
    """Record one autopilot drive per track of `tracks_spec` into `out/<track>/`, in parallel.
    With `latency_ms` the autopilot's steering takes effect that much later (the labels are what it
    commanded). `traffic_density` (task traffic): other cars per km instead of the default.

    With `verbose`, a progress bar goes to stderr and a summary table to stdout."""
    if not isinstance(laps, int) or laps < 1:
        raise UserError(f"--laps {laps}: must be a whole number >= 1")
    if not (0.0 <= noise <= 1.0) or not math.isfinite(noise):
        raise UserError(f"--noise {noise}: must be between 0.0 and 1.0")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    camera = camera or default_camera_name(task)
    try:
        cam = camera_from_name(camera)
    except ValueError as e:
        raise UserError(f"--camera {camera}: {e}") from None
    specs = parse_spec(tracks_spec)
    lengths = [load_track(s).length for s in specs]  # loads (and validates) every track before any work
    if task not in TASKS:
        raise UserError(f"--task {task}: unknown task (choose from {', '.join(TASKS)})")
    base_cfg = with_traffic_density(EnvConfig(camera=cam, randomise_palette=randomise_palette, off_track="recover",
                                              laps=laps, latency_ms=latency_ms, task=task), traffic_density)
    out = check_out_dir(out)
    taken = {p.name for p in out.iterdir()}
    folders = [str(out / unique_drive_name(s, taken)) for s in specs]
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(specs))]
    jobs = []
    for spec, folder, length, s in zip(specs, folders, lengths, seeds):
        steps_per_lap = length / (base_cfg.car.cruise_speed_mps * base_cfg.car.dt)
        cfg = EnvConfig(**{**base_cfg.__dict__, "track": spec, "max_steps": int(laps * steps_per_lap * 2 + 2000)})
        jobs.append((spec, laps, folder, cfg, float(noise), s, chunk_steps))
    expected = int(sum(laps * n / (base_cfg.car.cruise_speed_mps * base_cfg.car.dt) for n in lengths))
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(jobs)))

    summary = RecordSummary()
    t0 = time.perf_counter()
    bar = Progress(expected, "recording", " frames", stream=sys.stderr if verbose else io.StringIO())
    laps_total = laps * len(jobs)
    with bar:
        def advance(n: int) -> None:
            bar.update(n, drives=f"{len(summary.drives)}/{len(jobs)}")

        def finished(r: DriveResult) -> None:
            summary.drives.append(r)
            bar.update(0, drives=f"{len(summary.drives)}/{len(jobs)}",
                       laps=f"{sum(d.laps for d in summary.drives)}/{laps_total}")

        if workers == 1:
            for job in jobs:
                finished(record_one(*job, progress=advance))
        else:
            ctx = mp.get_context("spawn")  # no fork of a parent that may hold threads or a torch runtime
            queue = ctx.Queue()
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(queue,)) as pool:
                futures = [pool.submit(_worker, *job, os.getpid()) for job in jobs]
                pending = set(futures)
                while pending:
                    while not queue.empty():
                        advance(queue.get())
                    for f in [f for f in pending if f.done()]:
                        pending.discard(f)
                        finished(f.result())
                    time.sleep(0.05)
                while not queue.empty():
                    advance(queue.get())
    summary.wall_s = time.perf_counter() - t0
    summary.drives.sort(key=lambda d: d.path)
    if verbose:
        print(summary_table(summary))
    return summary


def summary_table(summary: RecordSummary) -> str:
    rows = [[Path(d.path).name, d.track, d.frames, d.laps, d.off_track_events, f"{d.driving_s / 60:.2f}",
             f"{d.bytes / 1e6:.2f}"] for d in summary.drives]
    per_drive = table(["drive", "track", "frames", "laps", "off-track", "minutes", "MB"], rows,
                      title="Recorded drives")
    totals = table(["drives", "frames", "minutes of driving", "MB on disk", "bytes/frame", "frames/s recorded"],
                   [[len(summary.drives), summary.frames, f"{summary.driving_s / 60:.2f}",
                     f"{summary.bytes / 1e6:.2f}", f"{summary.bytes / max(summary.frames, 1):.0f}",
                     f"{summary.frames_per_s:.0f}"]], title="Total")
    out_dir = Path(summary.drives[0].path).parent if summary.drives else "-"
    return f"{per_drive}\n\n{totals}\n\nsaved under {out_dir}  (inspect: python run_drive.py inspect {out_dir})"


# -- command line ----------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--autopilot", action="store_true", required=True,
                        help="the expert drives (the only driver of this command; people use `play`)")
    parser.add_argument("--tracks", required=True, metavar="SPEC",
                        help="track SPEC: procedural:0-19, challenge:0-9, a CSV, a folder of CSVs; join with commas")
    parser.add_argument("--laps", type=int, default=1, help="laps per track (default 1)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the drives (one sub-folder per track)")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="noise injection 0.0-1.0 (steering; in the race task the throttle too, with "
                        "pedal excursions); labels stay the expert's (default 0.3)")
    parser.add_argument("--randomise-palette", action="store_true", help="new colours for every drive")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel processes (default min(2, CPU count))")
    parser.add_argument("--camera", help="birdseye (default; race and traffic for those tasks), dashcam, pilotnet, "
                        "or e.g. birdseye:128x128")
    parser.add_argument("--seed", type=int, default=0, help="seed for the noise and palettes (default 0)")
    add_latency_argument(parser)
    add_traffic_density_argument(parser, "default 4; saved with the drives and the card of a policy trained on them")
    parser.add_argument("--task", default="lane", choices=TASKS,
                        help="lane (steering at cruise speed, default), race (steering and throttle) "
                        "or traffic (other cars on the road; the expert overtakes them)")
    parser.add_argument("--chunk-steps", type=int, default=100, help=argparse.SUPPRESS)


def main(args) -> int:
    if args.chunk_steps < 1:
        raise UserError(f"--chunk-steps {args.chunk_steps}: must be >= 1")
    record_autopilot(args.tracks, args.laps, args.out, noise=args.noise, workers=args.workers,
                     randomise_palette=args.randomise_palette, camera=args.camera, seed=args.seed,
                     chunk_steps=args.chunk_steps, latency_ms=args.latency_ms, task=args.task,
                     traffic_density=args.traffic_density)
    return 0
