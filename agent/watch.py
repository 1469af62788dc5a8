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

from sim.env import TASKS, EnvConfig, add_latency_argument, add_traffic_density_argument, with_traffic_density
from sim.errors import UserError
from sim.expert import expert_for
from sim.progress import table
from sim.track import parse_spec
from sim.viewer import Hud, KeyboardSteering, WindowSession, is_key_down, run_window

from .metrics import autonomy_pct
from .model import single_thread_inference

EXAMPLES = """examples:
  python run_drive.py watch --model data/models/pilot --track procedural:1000
  python run_drive.py watch --model data/models/pilot --track real:spa --laps 2
  python run_drive.py watch --model data/models/pilot --track challenge:0-9 --laps 1 --speed 4
  python run_drive.py watch --model data/models/pilot.onnx      # an exported policy, in onnxruntime
  python run_drive.py watch --model data/models/race --task race --track challenge:3   # Up/Down: pedal
  python run_drive.py watch --model data/models/traffic --task traffic --track procedural:1000   # other cars

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
    parser.add_argument("--model", required=True, help="policy folder (made by `train`) or .onnx (made by `export`)")
    parser.add_argument("--track", default="procedural:1000", help="track SPEC (default procedural:1000, "
                        "never trained on); several tracks are driven one after another")
    parser.add_argument("--laps", type=int, default=0, help="laps per track (default 0: drive until Esc)")
    parser.add_argument("--speed", type=int, default=1, choices=SPEEDS, help="start at this speed-up")
    parser.add_argument("--saliency", action="store_true", help="show what the network looks at in the inset")
    parser.add_argument("--randomise-palette", action="store_true", help="new colours on every track")
    add_latency_argument(parser)
    add_traffic_density_argument(parser, "default 4, as eval, also for a policy whose drives had another")
    parser.add_argument("--task", choices=TASKS, help="check the policy's task (its card says it: lane, race or traffic)")


def main(args: argparse.Namespace) -> int:
    if args.laps < 0:
        raise UserError(f"--laps {args.laps}: must be 0 (until Esc) or a positive number of laps")
    parse_spec(args.track)
    from .model import load_policy
    policy = load_policy(args.model)
    if args.task and policy.env_config().task != args.task:
        raise UserError(f"--task {args.task}: {args.model} is a {policy.env_config().task} policy (its card says so)")
    cfg = replace(policy.env_config(), track=args.track, laps=args.laps or None, off_track="recover",
                  max_steps=HOUR_STEPS, random_start=False, randomise_palette=args.randomise_palette,
                  latency_ms=args.latency_ms)
    cfg = with_traffic_density(cfg, args.traffic_density, standard=True)
    policy.check_env(cfg)
    saliency = saliency_overlay(policy) if args.saliency else None
    result = watch(cfg, policy, saliency=saliency, speedup=args.speed)
    print_summary(result, Path(args.model))
    return 0


def saliency_overlay(policy) -> Callable[[np.ndarray], np.ndarray]:
    """frame -> RGB picture of what the network looks at, from agent/saliency.py."""
    from . import saliency

    saliency.require_gradients(policy)
    return lambda frame: saliency.saliency_overlay(policy, frame)


class _WatchSession(WindowSession):
    """`watch` in the window loop: the policy drives; T, Space or a steering key hands the wheel to
    the person, T gives it back."""

    speeds = SPEEDS

    def __init__(self, policy, hud, on_step, saliency):
        self.policy, self.hud, self.on_step, self.saliency = policy, hud, on_step, saliency
        self.result = WatchResult()
        self.run: TrackRun | None = None

    def open(self, env, viewer) -> None:
        self.env = env
        self.expert = expert_for(env.unwrapped.cfg.task)
        self.keys = KeyboardSteering(env.unwrapped.cfg.car.dt)

    def begin(self, spec: str, obs: np.ndarray, info: dict) -> None:
        self.run = TrackRun(track=spec)
        self.keys.reset()
        self.hud.person_driving = False

    def handle(self, event, command: str | None) -> None:
        hud, run = self.hud, self.run
        if command == "takeover":
            hud.person_driving = not hud.person_driving
            run.takeovers += hud.person_driving
        elif self.keys.handle(event) and is_key_down(event) and not hud.person_driving \
                and self.keys.held & {"left", "right"}:
            hud.person_driving = True  # steering takes over too
            run.takeovers += 1

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        hud = self.hud
        if hasattr(self.policy, "act_batch"):  # a loaded policy: steering, and throttle in the race task
            action = np.asarray(self.policy.act_batch(obs[None]), np.float32).reshape(-1)
        else:
            action = np.array([self.policy.steer(obs)], np.float32)
        hud.policy_steering = float(action[0])
        hud.expert_steering = float(self.expert.steering(self.env))
        if hud.person_driving:
            steer = self.keys.update()
        else:
            steer = self.keys.value = hud.policy_steering  # a takeover starts where the wheel is
        hud.steering = steer
        if len(action) < 2:
            return np.array([steer], np.float32)
        # race: the policy's throttle, or the person's pedal (Up/Down, W/S) while they drive
        hud.throttle = self.keys.throttle() if hud.person_driving else float(np.clip(action[1], -1, 1))
        return np.array([steer, hud.throttle], np.float32)

    def stepped(self, obs: np.ndarray, info: dict) -> None:
        hud = self.hud
        self.result.steps += 1
        if info["lap_completed"]:
            self.run.lap_times.append(info["last_lap_time"])
        if self.on_step is not None:
            self.on_step({"person": hud.person_driving, "steering": hud.steering, "policy": hud.policy_steering,
                          "expert": hud.expert_steering, "info": info})

    def frame(self, obs: np.ndarray, info: dict) -> None:
        run = self.run
        run.seconds, run.laps, run.off_track = info["time"], info["lap"], info["off_track_count"]
        self.hud.interventions = run.interventions
        self.hud.inset_overlay = self.saliency(obs) if self.saliency is not None else None

    def end(self, outcome: str, info: dict) -> None:
        if self.run.seconds > 0:
            self.result.runs.append(self.run)


def watch(cfg: EnvConfig, policy, *, realtime: bool = True, clock=None,
          event_source: Callable[[], list] | None = None,
          person: Callable[[np.ndarray, dict], None] | None = None,
          on_step: Callable[[dict], None] | None = None,
          saliency: Callable[[np.ndarray], np.ndarray] | None = None,
          speedup: int = 1, max_steps: int | None = None) -> WatchResult:
    """Let `policy` (a loaded policy, or anything with `.steer(frame)`) drive the tracks of `cfg.track`
    in a window.

    `person(obs, info)` runs before each window frame's events are read; `on_step(row)` sees every
    env step (who drove, the commands, the info). `max_steps` bounds the session (tests)."""
    hud = Hud(mode="watch", input_name="keyboard", laps_target=cfg.laps, person_driving=False,
              speedup=speedup if speedup in SPEEDS else 1)
    session = _WatchSession(policy, hud, on_step, saliency)
    with single_thread_inference():
        session.result.quit = run_window(cfg, session, hud, title="E2E Drive - watch", realtime=realtime,
                                         clock=clock, event_source=event_source, person=person,
                                         max_steps=max_steps)
    return session.result


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
