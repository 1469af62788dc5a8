"""`run_drive.py play`: drive yourself in a window; every drive is recorded for behavioural cloning.

The loop is one function, `play()`, with hooks so tests run the very same code fast: `realtime=False`
skips the 20 Hz clock, `person(obs, info)` is called before each step's events are read (a scripted
person posts pygame key events there), and `on_record` sees exactly what goes to disk.
With `--assist MODEL_DIR` the policy drives and touching the steering takes over (HG-DAgger): only the
frames the person steers are recorded, with their steering as the label and `correction=True`.
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from sim.env import (
    TASKS,
    EnvConfig,
    add_latency_argument,
    add_traffic_density_argument,
    default_camera_name,
    with_traffic_density,
)
from sim.errors import UserError
from sim.files import check_out_dir
from sim.progress import table
from sim.render import camera_from_name
from sim.track import load_track, parse_spec
from sim.viewer import Hud, WindowSession, make_input, run_window

EXAMPLES = """examples:
  python run_drive.py play --track procedural:3 --out data/drives/me
  python run_drive.py play --track real:monza --out data/drives/me --input mouse
  python run_drive.py play --track procedural:0-9 --laps 1 --out data/drives/me   # a lap on each of 10 tracks
  python run_drive.py play --track procedural:3 --out data/drives/fix --assist data/models/pilot
  python run_drive.py play --task race --track procedural:3 --out data/drives/race_me
  python run_drive.py play --task traffic --track procedural:3 --out data/drives/traffic   # pass the other cars

keys: arrows or WASD steer; Up/Down or W/S accelerate and brake (--task race, --throttle), ramped
      like the steering; a gamepad's right and left triggers do the same; P pause,
      R restart the lap (closes this drive, starts a new one), Esc or closing the window saves and quits.
Leaving the track puts the car back on the centerline; those frames are marked (intervention) in the drive."""

HOUR_STEPS = 20 * 3600


@dataclass
class PlayResult:
    """What a play session left on disk and how it ended."""

    drives: list[Path] = field(default_factory=list)
    frames: int = 0
    laps: int = 0
    off_track: int = 0
    takeovers: int = 0
    quit: bool = False  # ended by Esc / closing the window (not by finishing the laps)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--track", default="procedural:3", help="track SPEC (default procedural:3); several "
                        "tracks are driven one after another")
    parser.add_argument("--out", required=True, help="folder for the drives (each drive is a subfolder)")
    parser.add_argument("--input", default="auto", choices=("auto", "keyboard", "mouse", "gamepad"),
                        help="steering device (auto: a gamepad if connected, else the keyboard)")
    parser.add_argument("--camera", default=None, help="the network's camera: birdseye (default), dashcam, "
                        "pilotnet, or NAME:WxH")
    parser.add_argument("--laps", type=int, default=0, help="laps per track, then the next track / the end "
                        "(default 0: drive until Esc)")
    parser.add_argument("--throttle", action="store_true", help="control the speed yourself (Up/Down)")
    add_latency_argument(parser)
    add_traffic_density_argument(parser, "default 4")
    parser.add_argument("--task", default="lane", choices=TASKS,
                        help="lane (default), race (a car with grip, from a standing start, throttle and brake) "
                        "or traffic (other cars to overtake)")
    parser.add_argument("--assist", metavar="MODEL_DIR", default=None,
                        help="the policy drives; steer to take over and record corrections (HG-DAgger)")


def main(args: argparse.Namespace) -> int:
    if args.laps < 0:
        raise UserError(f"--laps {args.laps}: must be 0 (until Esc) or a positive number of laps")
    policy = None
    camera = None
    if args.assist:
        from agent.model import load_policy  # torch only when asked for
        policy = load_policy(args.assist)
        camera = policy.env_config().camera
    if args.camera:
        try:
            camera = camera_from_name(args.camera)
        except ValueError as e:
            raise UserError(f"--camera: {e}") from None
    cfg = EnvConfig(track=args.track, throttle=args.throttle, laps=args.laps or None, off_track="recover",
                    max_steps=HOUR_STEPS, latency_ms=args.latency_ms, task=args.task,
                    camera=camera or camera_from_name(default_camera_name(args.task)))
    cfg = with_traffic_density(cfg, args.traffic_density)
    if policy is not None:
        policy.check_env(cfg)
    result = play(cfg, Path(args.out), input_name=args.input, policy=policy)
    print_summary(result, Path(args.out))
    return 0


def drive_folder(out: Path, track_name: str) -> Path:
    """A new, unused folder name for a drive: play_<date-time>_<track>[-n]."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"play_{stamp}_{re.sub(r'[^A-Za-z0-9._-]+', '-', track_name).strip('-')}"
    folder, n = out / base, 2
    while folder.exists():
        folder, n = out / f"{base}-{n}", n + 1
    return folder


class _PlaySession(WindowSession):
    """`play` in the window loop: the person steers (or, with a policy, takes over by steering) and
    every drive is recorded."""

    speeds = (1,)

    def __init__(self, cfg: EnvConfig, out: Path, input_name: str, policy, hud, on_record):
        self.cfg, self.out, self.input_name, self.policy, self.hud = cfg, out, input_name, policy, hud
        self.on_record = on_record
        self.result = PlayResult()
        self.writer = None
        self.was_person = False

    def open(self, env, viewer) -> None:
        self.env = env
        try:
            self.control = make_input(self.input_name, self.cfg.car.dt, viewer.world_px)
        except ValueError as e:
            raise UserError(f"--input: {e}") from None
        self.hud.input_name = self.control.kind

    def begin(self, spec: str, obs: np.ndarray, info: dict) -> None:
        from data.recording import DriveWriter
        policy = self.policy
        self.control.reset()
        meta = {"source": "assist" if policy is not None else self.control.kind,
                "driver": {"input": self.control.kind, "person": True,
                           **({"policy": str(getattr(policy, "folder", ""))} if policy is not None else {})},
                "track": spec, "env": replace(self.cfg, track=spec).to_dict()}
        self.writer = DriveWriter(drive_folder(self.out, self.env.unwrapped.track.name), meta)
        self.was_person = False

    def handle(self, event, command: str | None) -> None:
        self.control.handle(event)

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        hud, control, policy = self.hud, self.control, self.policy
        if policy is not None:
            hud.policy_steering = float(policy.steer(obs))
        hud.person_driving = policy is None or control.touched
        if hud.person_driving:
            steer = float(control.update())
        else:
            steer = hud.policy_steering
            if control.kind == "keyboard":
                control.value = steer  # a takeover starts from the wheel's position
        throttle = float(control.throttle()) if self.cfg.action_dim == 2 else None
        if policy is not None and hud.person_driving and not self.was_person:
            self.result.takeovers += 1
        self.was_person = hud.person_driving
        if hud.person_driving:
            self.writer.add(obs, steer, info, throttle=throttle, executed_steering=steer,
                            correction=policy is not None)
            if self.on_record is not None:
                self.on_record(obs, steer, info, policy is not None)
        hud.steering, hud.throttle = steer, throttle
        return np.array([steer] + ([throttle] if throttle is not None else []), np.float32)

    def stepped(self, obs: np.ndarray, info: dict) -> None:
        self.hud.interventions = self.result.takeovers + info["off_track_count"]
        self.hud.drives_saved = len(self.result.drives)

    def end(self, outcome: str, info: dict) -> None:
        writer, result = self.writer, self.result
        writer.close()
        result.off_track += info["off_track_count"]
        result.laps += info["lap"]
        if len(writer) == 0:  # nothing driven (e.g. Esc at once): leave no empty drive behind
            shutil.rmtree(writer.folder, ignore_errors=True)
        else:
            result.drives.append(writer.folder)
            result.frames += len(writer)


def play(cfg: EnvConfig, out: Path, *, input_name: str = "keyboard", policy=None, realtime: bool = True,
         clock=None, event_source: Callable[[], list] | None = None,
         person: Callable[[np.ndarray, dict], None] | None = None,
         on_record: Callable[[np.ndarray, float, dict, bool], None] | None = None,
         max_steps: int | None = None) -> PlayResult:
    """Drive the tracks of `cfg.track` in a window and record every drive under `out`.

    `policy` (anything with `.steer(frame)`) turns on assist mode. `max_steps` bounds the whole session
    (tests); `clock` is anything with `.tick(fps)`.
    """
    load_track(parse_spec(cfg.track)[0])  # a bad track fails before the folder is made
    check_out_dir(out)
    mode = "assist" if policy is not None else "play"
    hud = Hud(mode=mode, recording=True, laps_target=cfg.laps, person_driving=policy is None)
    session = _PlaySession(cfg, out, input_name, policy, hud, on_record)
    threads = nullcontext()
    if policy is not None:
        from agent.model import single_thread_inference
        threads = single_thread_inference()
    with threads:
        try:
            session.result.quit = run_window(cfg, session, hud, title=f"E2E Drive - {mode}", realtime=realtime,
                                             clock=clock, event_source=event_source, person=person,
                                             max_steps=max_steps)
        except BaseException:
            if session.writer is not None:
                session.writer.abort()
            raise
    return session.result


def print_summary(result: PlayResult, out: Path) -> None:
    """Where the drives are, a row per drive, and one summary line."""
    if not result.drives:
        print(f"no drive recorded (nothing was driven); {out} is unchanged")
        return
    from data.recording import read_meta
    rows, total_bytes = [], 0
    for d in result.drives:
        s = read_meta(d).get("summary", {})
        total_bytes += s.get("bytes", 0)
        rows.append((str(d), s.get("frames", 0), s.get("duration_s") or 0.0, s.get("laps", 0),
                     s.get("off_track_events", 0), s.get("corrections", 0)))
    print(table(("drive", "frames", "seconds", "laps", "off-track", "corrections"), rows))
    seconds = sum(r[2] for r in rows)
    print(f"saved {len(result.drives)} drive(s) under {out}: {result.frames} frames, {seconds:.1f} s of driving, "
          f"{result.laps} lap(s), {result.off_track} off-track, {total_bytes / 1e6:.2f} MB"
          + (f", {result.takeovers} takeover(s)" if result.takeovers else ""))
