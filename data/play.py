"""`run_drive.py play`: drive yourself in a window; every drive is recorded for behavioural cloning.

The loop is one function, `play()`, with hooks so tests run the very same code fast: `realtime=False`
skips the 20 Hz clock, `person(obs, info)` is called before each step's events are read (a scripted
person posts pygame key events there), and `on_record` sees exactly what goes to disk.
With `--assist MODEL_DIR` the policy drives and touching the steering takes over (HG-DAgger): only the
frames the person steers are recorded, with their steering as the label and `correction=True`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from sim.env import DriveEnv, EnvConfig
from sim.errors import UserError
from sim.progress import table
from sim.render import camera_from_name
from sim.track import load_track, parse_spec

EXAMPLES = """examples:
  python run_drive.py play --track procedural:3 --out data/drives/me
  python run_drive.py play --track real:monza --out data/drives/me --input mouse
  python run_drive.py play --track procedural:0-9 --laps 1 --out data/drives/me   # a lap on each of 10 tracks
  python run_drive.py play --track procedural:3 --out data/drives/fix --assist data/models/pilot

keys: arrows or WASD steer (Up/Down accelerate and brake with --throttle), P pause,
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
                    max_steps=HOUR_STEPS, **({"camera": camera} if camera else {}))
    if policy is not None:
        policy.check_env(cfg)
    result = play(cfg, Path(args.out), input_name=args.input, policy=policy)
    print_summary(result, Path(args.out))
    return 0


def check_out_dir(out: Path) -> None:
    """Fail before opening a window when drives could not be saved there."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder is not writable")


def drive_folder(out: Path, track_name: str) -> Path:
    """A new, unused folder name for a drive: play_<date-time>_<track>[-n]."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"play_{stamp}_{re.sub(r'[^A-Za-z0-9._-]+', '-', track_name).strip('-')}"
    folder, n = out / base, 2
    while folder.exists():
        folder, n = out / f"{base}-{n}", n + 1
    return folder


def play(cfg: EnvConfig, out: Path, *, input_name: str = "keyboard", policy=None, realtime: bool = True,
         clock=None, event_source: Callable[[], list] | None = None,
         person: Callable[[np.ndarray, dict], None] | None = None,
         on_record: Callable[[np.ndarray, float, dict, bool], None] | None = None,
         max_steps: int | None = None) -> PlayResult:
    """Drive the tracks of `cfg.track` in a window and record every drive under `out`.

    `policy` (anything with `.steer(frame)`) turns on assist mode. `max_steps` bounds the whole session
    (tests); `clock` is anything with `.tick(fps)`.
    """
    from data.recording import DriveWriter
    from sim.viewer import DriveViewer, Hud, RealTimeClock, command_for, make_input

    specs = parse_spec(cfg.track)
    load_track(specs[0])  # a bad track fails here, before the window opens
    check_out_dir(out)
    if cfg.off_track == "terminate":
        cfg = replace(cfg, off_track="recover")
    env = DriveEnv(config=cfg)
    fps = env.metadata["render_fps"]
    mode = "assist" if policy is not None else "play"
    viewer = DriveViewer(f"E2E Drive - {mode}", event_source=event_source)
    if realtime and clock is None:
        clock = RealTimeClock()
    try:
        control = make_input(input_name, cfg.car.dt, viewer.world_px)
    except ValueError as e:
        viewer.close()
        raise UserError(f"--input: {e}") from None
    result = PlayResult()
    hud = Hud(mode=mode, recording=True, input_name=control.kind, laps_target=cfg.laps,
              person_driving=policy is None)
    steps = 0
    track_i = 0
    threads = nullcontext()
    if policy is not None:
        from agent.model import single_thread_inference
        threads = single_thread_inference()
    with threads:
        try:
            while track_i < len(specs) and not result.quit:
                obs, info = env.reset(seed=track_i, options={"track": specs[track_i]})
                control.reset()
                meta = {"source": "assist" if policy is not None else control.kind,
                        "driver": {"input": control.kind, "person": True,
                                   **({"policy": str(getattr(policy, "folder", ""))} if policy is not None else {})},
                        "track": specs[track_i], "env": replace(cfg, track=specs[track_i]).to_dict()}
                writer = DriveWriter(drive_folder(out, env.unwrapped.track.name), meta)
                hud.paused, was_person = False, False
                outcome = "done"
                while True:
                    if person is not None:
                        person(obs, info)
                    command = None
                    for event in viewer.events():
                        c = command_for(event)
                        if c in ("quit", "restart"):
                            command = c
                        elif c == "pause":
                            hud.paused = not hud.paused
                        else:
                            control.handle(event)
                    if command == "quit":
                        result.quit = True
                        outcome = "quit"
                        break
                    if command == "restart":
                        outcome = "restart"
                        break
                    if hud.paused:
                        viewer.draw(env, info, obs, hud)
                        if clock is not None:
                            clock.tick(fps)
                        continue

                    if policy is not None:
                        hud.policy_steering = float(policy.steer(obs))
                    hud.person_driving = policy is None or control.touched
                    if hud.person_driving:
                        steer = float(control.update())
                    else:
                        steer = hud.policy_steering
                        if control.kind == "keyboard":
                            control.value = steer  # a takeover starts from the wheel's position
                    throttle = float(control.throttle()) if cfg.throttle else None
                    if policy is not None and hud.person_driving and not was_person:
                        result.takeovers += 1
                    was_person = hud.person_driving
                    if hud.person_driving:
                        writer.add(obs, steer, info, throttle=throttle, executed_steering=steer,
                                   correction=policy is not None)
                        if on_record is not None:
                            on_record(obs, steer, info, policy is not None)
                    action = np.array([steer] + ([throttle] if cfg.throttle else []), np.float32)
                    obs, _, terminated, truncated, info = env.step(action)
                    steps += 1
                    hud.steering, hud.throttle = steer, throttle
                    hud.interventions = result.takeovers + info["off_track_count"]
                    hud.drives_saved = len(result.drives)
                    if not getattr(clock, "behind", False):  # behind real time: skip a draw, keep 20 Hz
                        viewer.draw(env, info, obs, hud)
                    if terminated or truncated:
                        break
                    if max_steps is not None and steps >= max_steps:
                        result.quit = True
                        outcome = "quit"
                        break
                    if clock is not None:
                        clock.tick(fps)
                writer.close()
                result.off_track += info["off_track_count"]
                result.laps += info["lap"]
                if len(writer) == 0:  # nothing driven (e.g. Esc at once): leave no empty drive behind
                    shutil.rmtree(writer.folder, ignore_errors=True)
                else:
                    result.drives.append(writer.folder)
                    result.frames += len(writer)
                if outcome == "done":
                    track_i += 1
        finally:
            viewer.close()
            env.close()
    return result


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


# -- a scripted person, for tests and for "human-style" keyboard data ---------------------------------

class ScriptedPerson:
    """Presses and releases arrow keys from what it sees, as a person at a keyboard would.

    It finds the road (grey, unsaturated pixels) in a band of rows ahead of the car in the bird's-eye
    frame, wants a wheel position proportional to how far the road's middle lies off-centre, and
    holds Left or Right until the wheel it feels (info["steer_angle"]) gets there. Events are posted
    with pygame.event.post, so they travel through the real event queue of the loop."""

    def __init__(self, gain: float = 2.2, tolerance: float = 0.08, max_steer_rad: float = 0.5,
                 band: tuple[float, float] = (0.45, 0.6)):
        self.gain, self.tolerance, self.max_steer = gain, tolerance, max_steer_rad
        self.band = band
        self.held: str | None = None

    def wanted(self, frame: np.ndarray) -> float:
        """The steering the road ahead asks for, from the frame alone."""
        h, w = frame.shape[:2]
        rows = frame[int(self.band[0] * h): int(self.band[1] * h)].astype(np.int16)
        grey = (rows.max(-1) - rows.min(-1) < 24) & (rows.mean(-1) > 40)
        cols = np.nonzero(grey.any(0))[0]
        if cols.size == 0:
            return 0.0
        # the stretch of road columns nearest the middle (another bend of the track may also show)
        runs = np.split(cols, np.nonzero(np.diff(cols) > 2)[0] + 1)
        mid = (w - 1) / 2.0
        run = min(runs, key=lambda r: 0 if r[0] <= mid <= r[-1] else min(abs(r[0] - mid), abs(r[-1] - mid)))
        centre = (run[0] + run[-1]) / 2.0
        return float(np.clip(self.gain * (centre - mid) / mid, -1.0, 1.0))

    def keys(self, frame: np.ndarray, info: dict) -> str | None:
        """Which arrow to hold now: "left", "right" or None."""
        wheel = -float(info.get("steer_angle", 0.0)) / self.max_steer  # as a steering command
        want = self.wanted(frame)
        if want < wheel - self.tolerance:
            return "left"
        if want > wheel + self.tolerance:
            return "right"
        return None

    def __call__(self, frame: np.ndarray, info: dict) -> None:
        import pygame
        if info.get("time", 0.0) == 0.0:
            self.held = None  # a new drive: the loop has released every key
        key = self.keys(frame, info)
        if key == self.held:
            return
        code = {"left": pygame.K_LEFT, "right": pygame.K_RIGHT}
        if self.held is not None:
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=code[self.held]))
        if key is not None:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code[key]))
        self.held = key


def scripted_keyboard_drive(track: str, out: str | os.PathLike, laps: int = 1,
                            camera: str = "birdseye", on_record=None, max_steps: int | None = None) -> PlayResult:
    """Keyboard drives by the scripted person through the real play loop, headless and as fast as the
    CPU allows: human-style data (smooth key ramps, some weaving) without a human. Each track of the
    SPEC is driven for `laps` laps; one drive folder per track under `out`."""
    if laps < 1:
        raise UserError(f"laps {laps}: must be at least 1")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    cam = camera_from_name(camera)
    if cam.kind != "birdseye":
        raise UserError(f"camera {camera!r}: the scripted person reads the road from bird's-eye frames only")
    cfg = EnvConfig(track=track, camera=cam, laps=laps, off_track="recover", max_steps=HOUR_STEPS)
    person = ScriptedPerson(max_steer_rad=cfg.car.max_steer_rad)
    return play(cfg, Path(out), input_name="keyboard", realtime=False, person=person, on_record=on_record,
                max_steps=max_steps)
