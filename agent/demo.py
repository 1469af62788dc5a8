"""`run_drive.py demo`: the whole tour in one command, on a fresh machine with no display and no data.

Record autopilot drives on built-in procedural tracks, train a policy on them, evaluate it in closed
loop on tracks it never saw (new procedural seeds and a few real circuits) beside the expert, and
write a report folder a person can read: report.md with the tables, the loss curves, trajectory
plots, one video and the evaluation JSON. Everything the demo makes lives in that one folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sim.env import TASKS
from sim.errors import UserError
from sim.files import atomic_write_text

from .evaluate import PolicyDriver, evaluate, write_json
from .modelcard import record_eval

EXAMPLES = """examples:
  python run_drive.py demo                 # ~13 minutes on a 2-core CPU, a few on a GPU
  python run_drive.py demo --quick         # ~2 minutes: the same steps, smaller
  python run_drive.py demo --out /tmp/tour --device cpu
  python run_drive.py demo --task race      # the race task: steering and throttle, lap times vs the expert

It prints where the report is: data/reports/<timestamp>/report.md (open it in any Markdown viewer).
The trained policy is in the report's model/ folder: `python run_drive.py eval --model DIR/model`."""


@dataclass(frozen=True)
class DemoPlan:
    """What one demo does: training tracks, budget, and the unseen tracks it is judged on."""

    train_tracks: str
    train_minutes: float
    arch: str
    eval_procedural: str
    real_circuits: tuple[str, ...]  # built-in circuits (package data), driven as real:NAME
    video_frames: int


FULL = DemoPlan(train_tracks="procedural:0-19", train_minutes=9.0, arch="pilotnet",
                eval_procedural="procedural:1000-1009",
                real_circuits=("Norisring", "Oschersleben", "BrandsHatch", "IMS", "MoscowRaceway"),
                video_frames=1200)
QUICK = DemoPlan(train_tracks="procedural:0-3", train_minutes=0.6, arch="small",
                 eval_procedural="procedural:1000-1001", real_circuits=("Norisring",), video_frames=300)


def _stage(n: int, text: str) -> None:
    print(f"\n== [{n}/4] {text}", flush=True)


def _default_out() -> Path:
    base = Path("data") / "reports" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


def run_demo(out: str | os.PathLike | None = None, quick: bool = False, device: str = "auto",
             minutes: float | None = None, task: str = "lane") -> Path:
    """Record, train, evaluate, report (`task` race: steering and throttle, lap times against the
    expert's). Returns the path of report.md."""
    from data.record import record_autopilot

    from .train import pick_device, train

    plan = QUICK if quick else FULL
    if minutes is not None:
        if not (minutes > 0):
            raise UserError(f"--minutes {minutes}: must be a positive number")
        plan = DemoPlan(**{**plan.__dict__, "train_minutes": float(minutes)})
    train_device = str(pick_device(device))  # a bad --device fails now, not after recording
    out = Path(out) if out is not None else _default_out()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: folder exists and is not empty (the demo writes a fresh report)")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    _stage(1, f"recording autopilot drives on {plan.train_tracks} (the expert, with steering noise)")
    t0 = time.perf_counter()
    rec = record_autopilot(plan.train_tracks, 1, out / "drives", task=task)
    timings["record"] = time.perf_counter() - t0

    _stage(2, f"training a {plan.arch} policy for {plan.train_minutes:g} minutes on {train_device}")
    t0 = time.perf_counter()
    result = train(out / "drives", out / "model", minutes=plan.train_minutes, device=device, arch=plan.arch)
    timings["train"] = time.perf_counter() - t0
    if (out / "model" / "loss_curves.png").is_file():
        shutil.copyfile(out / "model" / "loss_curves.png", out / "loss_curves.png")

    _stage(3, f"closed-loop evaluation on unseen tracks: {plan.eval_procedural} and real circuits")
    driver = PolicyDriver(out / "model", device="cpu")
    evals: list[tuple[str, str, dict]] = []
    t0 = time.perf_counter()
    report = evaluate(driver, plan.eval_procedural, 1, video=out / "drive.mp4", video_frames=plan.video_frames,
                      plot_dir=out / "plots" / "procedural", compare_expert=True,
                      command=f"python run_drive.py eval --model {out / 'model'} --tracks {plan.eval_procedural} "
                              f"--laps 1 --compare-expert --video {out / 'drive.mp4'} --video-frames "
                              f"{plan.video_frames} --plot {out / 'plots' / 'procedural'}")
    write_json(out / "eval_procedural.json", report)
    evals.append(("unseen procedural", "eval_procedural.json", report))
    real_spec = ",".join(f"real:{name}" for name in plan.real_circuits)
    report = evaluate(driver, real_spec, 1, plot_dir=out / "plots" / "real", compare_expert=True,
                      command=f"python run_drive.py eval --model {out / 'model'} --tracks {real_spec} "
                              f"--laps 1 --compare-expert --plot {out / 'plots' / 'real'}")
    write_json(out / "eval_real.json", report)
    evals.append(("real circuits", "eval_real.json", report))
    timings["evaluate"] = time.perf_counter() - t0
    for _name, _file, rep in evals:  # the policy's model card carries its figures, as after `eval`
        record_eval(out / "model", rep)

    _stage(4, "writing the report")
    timings["total"] = time.perf_counter() - t_all
    md = render_report(out, plan, quick, rec, result, evals, timings)
    path = out / "report.md"
    atomic_write_text(path, md)
    print()
    print(summary_table(evals))
    print(f"\nreport: {path}")
    return path


# -- the report -----------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _num(v, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def summary_row(name: str, s: dict) -> list[str]:
    """One group's figures as the report writes them (the test reads them back against the JSON)."""
    e = s.get("expert", {})
    return [name, str(s["tracks"]), f"{s['laps_completed']}/{s['laps_attempted']}", _pct(s["completion_rate"]),
            _pct(s["route_completion"]), _num(s["off_track_per_km"]), _num(s["mean_abs_cte_m"]),
            _num(s["autonomy_pct"], "{:.1f}%"), _num(s["mean_lap_time_s"], "{:.1f}"),
            f"{e.get('laps_completed', '-')}/{e.get('laps_attempted', '-')}", _num(e.get("mean_abs_cte_m"))]


SUMMARY_HEADERS = ["tracks", "n", "clean laps", "completion", "route", "off-track/km", "mean abs cte m", "autonomy",
                   "lap s", "expert clean", "expert cte m"]


def summary_table(evals: list[tuple[str, str, dict]]) -> str:
    from sim.progress import table
    return table(SUMMARY_HEADERS, [summary_row(name, rep["summary"]) for name, _, rep in evals],
                 title="demo: the trained policy on tracks it never saw (expert beside)")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_report(out: Path, plan: DemoPlan, quick: bool, rec, result, evals,
                  timings: dict[str, float]) -> str:
    def rel(p) -> str:
        return Path(p).resolve().relative_to(out.resolve()).as_posix()

    lines = [f"# E2E Drive demo{' (quick)' if quick else ''}: {datetime.now():%Y-%m-%d %H:%M}", "",
             ("A policy learned to steer from camera pixels alone (behavioural cloning of the autopilot), then "
              "drove tracks it never saw in closed loop. Leaving the track is an intervention: the car is put "
              "back on the centerline and the lap is not clean."), "",
             "## Results", "", _md_table(SUMMARY_HEADERS, [summary_row(n, r["summary"]) for n, _, r in evals]), "",
             ("Clean laps: laps with no off-track at all. Route: share of each lap driven before its first "
              "intervention. Autonomy (PilotNet): 100 x (1 - interventions x 6 s / time driven)."), ""]
    lines += ["## What was done", "",
              (f"1. Recorded the autopilot on `{plan.train_tracks}`, one lap each with steering noise: "
               f"{rec.frames:,} frames ({rec.driving_s / 60:.1f} min of driving) in {timings['record']:.0f} s."),
              (f"2. Trained a `{plan.arch}` network for {result.minutes:.1f} min on {result.device}: "
               f"{result.epochs:g} epochs, best validation loss {result.best_val_loss:.4g} (epoch "
               f"{result.best_epoch:g}), {result.frames_per_s:,.0f} frames/s. "
               "Loss curves: [loss_curves.png](loss_curves.png); the policy: [model/](model/)."),
              f"3. Evaluated in closed loop in {timings['evaluate']:.0f} s "
              + ", ".join(f"{n}: {r['summary']['realtime_factor']:.0f}x real time" for n, _, r in evals
                          if r["summary"].get("realtime_factor")) + ".",
              f"\nTotal {timings['total'] / 60:.1f} min.", "",
              "![loss curves](loss_curves.png)", ""]
    for name, json_name, rep in evals:
        lines += [f"## {name}", "", f"Full figures: [{json_name}]({json_name}); reproduce: `{rep['command']}`", ""]
        rows = []
        for t in rep["tracks"]:
            e = t.get("expert", {})
            rows.append([t["track"].rsplit("/", 1)[-1], f"{t['laps_completed']}/{t['laps_attempted']}",
                         _pct(t["route_completion"]), str(t["interventions"]), _num(t["mean_abs_cte_m"]),
                         _num(t["autonomy_pct"], "{:.1f}%"), _num(t["mean_lap_time_s"], "{:.1f}"),
                         f"{e.get('laps_completed', '-')}/{e.get('laps_attempted', '-')}"])
        lines += [_md_table(["track", "clean laps", "route", "interventions", "mean abs cte m", "autonomy", "lap s",
                             "expert clean"], rows), ""]
        if rep.get("plots"):
            lines += ["Trajectories (colour: |cross-track error|, red x: interventions): "
                      + ", ".join(f"[{Path(p).stem}]({rel(p)})" for p in rep["plots"]), "",
                      f"![{Path(rep['plots'][0]).stem}]({rel(rep['plots'][0])})", ""]
        if rep.get("video"):
            v = rep["video"]
            lines += [(f"Video of the first lap ({v['frames']} frames at {v['fps']} fps; the policy's steering "
                       f"beside the expert's): [{rel(v['path'])}]({rel(v['path'])})"), ""]
    lines += ["## Reproduce step by step", "", "```",
              f"python run_drive.py record --autopilot --tracks {plan.train_tracks} --laps 1 --out {out / 'drives'}",
              (f"python run_drive.py train --data {out / 'drives'} --out {out / 'model'} "
               f"--minutes {plan.train_minutes:g} --arch {plan.arch}"),
              *[rep["command"] for _, _, rep in evals], "```", ""]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a ~2-minute version (smaller data, model and eval)")
    parser.add_argument("--out", help="report folder (default data/reports/<timestamp>)")
    parser.add_argument("--device", default="auto", help="training device: auto (GPU if any), cpu, cuda, cuda:N")
    parser.add_argument("--minutes", type=float, help="training minutes (default 9, or 0.6 with --quick)")
    parser.add_argument("--task", default="lane", choices=TASKS, help="lane (default) or race (steering and "
                        "throttle; the evaluation reports lap times against the expert's)")


def main(args: argparse.Namespace) -> int:
    run_demo(args.out, quick=args.quick, device=args.device, minutes=args.minutes, task=args.task)
    return 0
