"""`run_drive.py watch`: a policy drives laps in a window; a person can take over and hand back.

The policy sees only camera frames (through `agent/preprocess.py`, inside `Policy.steer`). T or Space
takes over (so does pressing a steering key): the arrows then steer, smooth as in `play`, and T gives
control back. Every takeover counts as an intervention, and so does leaving the road (the env puts
the car back). +/- run the simulation 1x..8x faster. The loop is `watch()`, with the same hooks as
`data.play.play` so a test posts real key events through it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sim.env import DriveEnv, EnvConfig
from sim.errors import UserError
from sim.expert import Expert
from sim.progress import table
from sim.track import load_track, parse_spec

from .metrics import autonomy_pct
from .model import single_thread_inference

EXAMPLES = """examples:
  python run_drive.py watch --model data/models/pilot --track procedural:1000
  python run_drive.py watch --model data/models/pilot --track real:spa --laps 2
  python run_drive.py watch --model data/models/pilot --track challenge:0-9 --laps 1 --speed 4

keys: T or Space take over / give back (a steering key also takes over), arrows or A/D steer while you
      drive, + and - speed up / slow down (1x..8x), P pause, R restart the lap, Esc quit.
Takeovers and off-track recoveries are interventions; autonomy = 100 x (1 - interventions x 6 s / time)."""

SPEEDS = (1, 2, 4, 8)
HOUR_STEPS = 20 * 3600


@dataclass
class TrackRun:
    """One track's drive in the window."""

    track: str
    seconds: float = 0.0
    laps: int = 0
    lap_times: list[float] = field(default_factory=list)
    takeovers: int = 0
    off_track: int = 0
    person_steps: int = 0

    @property
    def interventions(self) -> int:
        return self.takeovers + self.off_track

    @property
    def autonomy(self) -> float:
        return autonomy_pct(self.interventions, self.seconds)


@dataclass
class WatchResult:
    runs: list[TrackRun] = field(default_factory=list)
    steps: int = 0
    quit: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="policy folder (made by `train`)")
    parser.add_argument("--track", default="procedural:1000", help="track SPEC (default procedural:1000, "
                        "never trained on); several tracks are driven one after another")
    parser.add_argument("--laps", type=int, default=0, help="laps per track (default 0: drive until Esc)")
    parser.add_argument("--speed", type=int, default=1, choices=SPEEDS, help="start at this speed-up")
    parser.add_argument("--saliency", action="store_true", help="show what the network looks at in the inset")
    parser.add_argument("--randomise-palette", action="store_true", help="new colours on every track")


def main(args: argparse.Namespace) -> int:
    if args.laps < 0:
        raise UserError(f"--laps {args.laps}: must be 0 (until Esc) or a positive number of laps")
    parse_spec(args.track)
    from .model import load_policy
    policy = load_policy(args.model)
    cfg = replace(policy.env_config(), track=args.track, laps=args.laps or None, off_track="recover",
                  max_steps=HOUR_STEPS, random_start=False, randomise_palette=args.randomise_palette)
    policy.check_env(cfg)
    saliency = saliency_overlay(policy) if args.saliency else None
    result = watch(cfg, policy, saliency=saliency, speedup=args.speed)
    print_summary(result, Path(args.model))
    return 0


def saliency_overlay(policy) -> Callable[[np.ndarray], np.ndarray]:
    """frame -> RGB picture of what the network looks at, from agent/saliency.py."""
    try:
        from . import saliency
    except ModuleNotFoundError as e:
        if e.name != "agent.saliency":
            raise
        raise UserError("--saliency: saliency maps are not available in this version") from None
    return lambda frame: saliency.saliency_overlay(policy, frame)


def watch(cfg: EnvConfig, policy, *, realtime: bool = True, clock=None,
          event_source: Callable[[], list] | None = None,
          person: Callable[[np.ndarray, dict], None] | None = None,
          on_step: Callable[[dict], None] | None = None,
          saliency: Callable[[np.ndarray], np.ndarray] | None = None,
          speedup: int = 1, max_steps: int | None = None) -> WatchResult:
    """Let `policy` (anything with `.steer(frame)`) drive the tracks of `cfg.track` in a window.

    `person(obs, info)` runs before each window frame's events are read; `on_step(row)` sees every
    env step (who drove, the commands, the info). `max_steps` bounds the session (tests)."""
    import pygame

    from sim.viewer import DriveViewer, Hud, KeyboardSteering, RealTimeClock, command_for

    specs = parse_spec(cfg.track)
    load_track(specs[0])
    if cfg.off_track == "terminate":
        cfg = replace(cfg, off_track="recover")
    env = DriveEnv(config=cfg)
    fps = env.metadata["render_fps"]
    viewer = DriveViewer("E2E Drive - watch", event_source=event_source)
    if realtime and clock is None:
        clock = RealTimeClock()
    keys = KeyboardSteering(cfg.car.dt)
    expert = Expert()
    result = WatchResult()
    hud = Hud(mode="watch", input_name="keyboard", laps_target=cfg.laps, person_driving=False,
              speedup=speedup if speedup in SPEEDS else 1)
    track_i = 0
    with single_thread_inference():
        try:
            while track_i < len(specs) and not result.quit:
                obs, info = env.reset(seed=track_i, options={"track": specs[track_i]})
                run = TrackRun(track=specs[track_i])
                keys.reset()
                hud.person_driving, hud.paused = False, False
                outcome = "done"
                while outcome == "done":
                    if person is not None:
                        person(obs, info)
                    command = None
                    for event in viewer.events():
                        c = command_for(event)
                        if c in ("quit", "restart"):
                            command = c
                        elif c == "pause":
                            hud.paused = not hud.paused
                        elif c == "takeover":
                            hud.person_driving = not hud.person_driving
                            run.takeovers += hud.person_driving
                        elif c in ("faster", "slower"):
                            i = SPEEDS.index(hud.speedup) + (1 if c == "faster" else -1)
                            hud.speedup = SPEEDS[min(max(i, 0), len(SPEEDS) - 1)]
                        elif keys.handle(event) and event.type == pygame.KEYDOWN and not hud.person_driving \
                                and keys.held & {"left", "right"}:
                            hud.person_driving = True  # steering takes over too
                            run.takeovers += 1
                    if command is not None:
                        outcome = command
                        break
                    if hud.paused:
                        viewer.draw(env, info, obs, hud)
                        if clock is not None:
                            clock.tick(fps)
                        continue
                    for _ in range(hud.speedup):
                        hud.policy_steering = float(policy.steer(obs))
                        hud.expert_steering = float(expert.steering(env))
                        if hud.person_driving:
                            steer = keys.update()
                            run.person_steps += 1
                        else:
                            steer = keys.value = hud.policy_steering  # a takeover starts where the wheel is
                        obs, _, terminated, truncated, info = env.step(np.array([steer], np.float32))
                        result.steps += 1
                        hud.steering = steer
                        if info["lap_completed"]:
                            run.lap_times.append(info["last_lap_time"])
                        if on_step is not None:
                            on_step({"person": hud.person_driving, "steering": steer,
                                     "policy": hud.policy_steering, "expert": hud.expert_steering, "info": info})
                        if terminated or truncated:
                            outcome = "next"
                            break
                        if max_steps is not None and result.steps >= max_steps:
                            outcome = "quit"
                            break
                    run.seconds, run.laps, run.off_track = info["time"], info["lap"], info["off_track_count"]
                    hud.interventions = run.interventions
                    hud.inset_overlay = saliency(obs) if saliency is not None else None
                    if not getattr(clock, "behind", False):  # behind real time: skip a draw, keep 20 Hz
                        viewer.draw(env, info, obs, hud)
                    if clock is not None and outcome == "done":
                        clock.tick(fps)
                if run.seconds > 0:
                    result.runs.append(run)
                if outcome == "quit":
                    result.quit = True
                elif outcome == "next":
                    track_i += 1
        finally:
            viewer.close()
            env.close()
    return result


def print_summary(result: WatchResult, model: Path) -> None:
    if not result.runs:
        print("nothing was driven")
        return
    rows = []
    for r in result.runs:
        best = min(r.lap_times) if r.lap_times else float("nan")
        rows.append((r.track, r.laps, best, r.seconds, r.takeovers, r.off_track, f"{r.autonomy:.1f}%"))
    print(table(("track", "laps", "best lap s", "seconds", "takeovers", "off-track", "autonomy"), rows,
                title=f"watch: {model}"))
    seconds = sum(r.seconds for r in result.runs)
    interventions = sum(r.interventions for r in result.runs)
    print(f"{len(result.runs)} track(s), {seconds:.1f} s driven, {sum(r.laps for r in result.runs)} lap(s), "
          f"{interventions} intervention(s), autonomy {autonomy_pct(interventions, seconds):.1f}%")
