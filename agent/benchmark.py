"""`run_drive.py benchmark`: the fixed ladder of levels that scores any policy the same way every time.

Each level is a fixed set of tracks, laps and seeds, driven in closed loop by `evaluate` (the shared
lock-step loop, agent/drive.py), optionally with a latency (sim/env.py) or an unseen look
(sim/looks.py). The ladder depends on the policy's task; `--quick` drives fewer, shorter tracks on
every level. A level's score is its clean-lap rate (times the expert's lap time over the policy's,
capped at 1, in the race task); the overall score is 100 x the mean of the level scores. The JSON
format is documented in docs/benchmark.md and versioned by `PROTOCOL`: change the levels, their
tracks or the scoring, and the version must change too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sim.env import TASKS, add_latency_argument
from sim.errors import UserError
from sim.files import atomic_savefig, atomic_write_text
from sim.looks import look_from_name
from sim.progress import table

from .drive import ExpertDriver, PolicyDriver
from .evaluate import evaluate, write_json
from .metrics import json_safe

PROTOCOL = "e2e-drive-ladder/1"
LATENCY_SWEEP_MS = (0, 100, 200, 300, 400)  # the report's latency plot

PROCEDURAL, PROCEDURAL_QUICK = "procedural:1000-1019", "procedural:1003,procedural:1005,procedural:1006"
LOOK_TRACKS, LOOK_TRACKS_QUICK = "procedural:1000-1004", "procedural:1003,procedural:1005"
LATENCY_TRACKS, LATENCY_TRACKS_QUICK = "procedural:1000-1009", PROCEDURAL_QUICK

EXAMPLES = f"""examples:
  python run_drive.py benchmark --model data/models/pilot --json out/ladder.json --report out/ladder
  python run_drive.py benchmark --model data/models/pilot --quick
  python run_drive.py benchmark --model data/models/pilot.onnx --quick --json out/quick.json
  python run_drive.py benchmark --expert --quick
  python run_drive.py benchmark --model data/models/pilot --quick --levels procedural,latency-200ms

Protocol {PROTOCOL}: every level drives the same tracks with the same seeds on every run, so two runs
give the same numbers (the JSON's "run" part, time and command, is the only thing that differs).
The levels and the JSON format: docs/benchmark.md."""


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: what is driven, and how."""

    name: str
    description: str
    tracks: str
    quick_tracks: str
    laps: int = 1
    seed: int = 0
    latency_ms: float = 0.0
    look: str = "default"


def _look_level(look: str, what: str) -> Level:
    return Level(f"look-{look}", f"unseen look: {what}", LOOK_TRACKS, LOOK_TRACKS_QUICK, look=look)


def _latency_level(ms: int) -> Level:
    return Level(f"latency-{ms}ms", f"actions take effect {ms} ms late", LATENCY_TRACKS, LATENCY_TRACKS_QUICK,
                 latency_ms=float(ms))


_PLACES = (
    Level("procedural", "new seeds of the training generator", PROCEDURAL, PROCEDURAL_QUICK),
    Level("challenge", "hairpins, chicanes, narrow and width-changing roads", "challenge:0-19",
          "challenge:1,challenge:2,challenge:6"),
    Level("real", "the 25 real circuits", "real:all", "real:Norisring"),
)

LADDERS: dict[str, tuple[Level, ...]] = {
    "lane": _PLACES + (
        _look_level("held-out-palette", "sand-to-snow ground, a colour family palette randomisation never draws"),
        _look_level("noise", "sensor noise"),
        _look_level("blur", "a soft lens"),
        _look_level("shadows", "shadow bands across the road"),
        _look_level("dusk", "dim, warm light"),
        _latency_level(100),
        _latency_level(200),
    ),
    # the race and traffic tasks: the same places and a latency; their own figures (lap-time ratio,
    # collisions) come from what `eval` reports for the task
    "race": _PLACES + (_latency_level(100),),
    "traffic": _PLACES + (_look_level("dusk", "dim, warm light"), _latency_level(100)),
}
assert set(LADDERS) == set(TASKS)

LEVEL_KEYS = ("laps_attempted", "laps_completed", "completion_rate", "autonomy_pct", "mean_abs_cte_m",
              "route_completion", "off_track_per_km")
# the task's own figures, from what its `eval` reports
TASK_KEYS = {"lane": (), "race": ("mean_lap_time_ratio",), "traffic": ("collisions", "collisions_per_km")}


def level_score(row: dict) -> float:
    """A level's score in [0, 1]: its clean-lap rate, times min(1, 1 / lap-time ratio) where the task
    has lap times to chase (race). Collisions already spoil a lap in the traffic task."""
    score = row["completion_rate"] or 0.0
    ratio = row.get("mean_lap_time_ratio")
    if ratio:
        score *= min(1.0, 1.0 / ratio)
    return float(score)


def _summary_row(level: Level, task: str, tracks: str, latency_ms: float, summary: dict) -> dict:
    row = {"name": level.name, "description": level.description, "tracks": tracks, "laps": level.laps,
           "seed": level.seed, "latency_ms": latency_ms, "look": level.look}
    row.update({k: summary[k] for k in LEVEL_KEYS})
    row.update({k: summary.get(k) for k in TASK_KEYS[task]})
    row["score"] = level_score(row)
    return row


def pick_levels(task: str, names: str | None, ladder: Sequence[Level] | None = None) -> tuple[Level, ...]:
    """The task's ladder (or `ladder`), or the named levels of it (in ladder order)."""
    ladder = tuple(LADDERS[task] if ladder is None else ladder)
    if not names:
        return ladder
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {lv.name for lv in ladder}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise UserError(f"--levels {names}: unknown level {', '.join(unknown) or '(none given)'} for task "
                        f"{task} (levels: {', '.join(lv.name for lv in ladder)})")
    return tuple(lv for lv in ladder if lv.name in wanted)


def run_benchmark(driver, *, quick: bool = False, levels: str | None = None, workers: int = 1,
                  latency_sweep: bool = False, extra_latency_ms: float = 0.0, show_progress: bool = True,
                  ladder: Sequence[Level] | None = None) -> dict:
    """Drive every level of the ladder of the driver's task and return the benchmark report (see
    docs/benchmark.md). `extra_latency_ms` is added to every level's latency (0 in the protocol).
    With `latency_sweep`, also the figures of LATENCY_SWEEP_MS on the latency levels' tracks (for
    the report's plot; not part of the score). `ladder` replaces the task's ladder (then the report
    is not `complete`: a different protocol)."""
    task = driver.env_config().task
    chosen = pick_levels(task, levels, ladder)
    t0, cpu0 = time.perf_counter(), time.process_time()
    done: dict[tuple, dict] = {}  # (tracks, latency, look) -> eval summary: a setting is driven once

    def drive(tracks: str, laps: int, seed: int, latency_ms: float, look: str, label: str) -> dict:
        key = (tracks, laps, seed, float(latency_ms), look)
        if key not in done:
            if show_progress:
                print(f"{label}: {tracks}", file=sys.stderr)
            report = evaluate(driver, tracks, laps, seed=seed, workers=workers, batch=8, command="benchmark",
                              show_progress=show_progress, latency_ms=latency_ms, look=look_from_name(look))
            done[key] = report["summary"]
        return done[key]

    rows = []
    for level in chosen:
        tracks = level.quick_tracks if quick else level.tracks
        latency = level.latency_ms + extra_latency_ms
        summary = drive(tracks, level.laps, level.seed, latency, level.look, level.name)
        rows.append(_summary_row(level, task, tracks, latency, summary))
    report = {
        "protocol": PROTOCOL,
        "task": task,
        "quick": bool(quick),
        "complete": ladder is None and len(chosen) == len(LADDERS[task]),  # False when --levels picked some
        "extra_latency_ms": float(extra_latency_ms),  # 0 in the protocol
        "score": 100.0 * sum(r["score"] for r in rows) / len(rows),
        "levels": rows,
        "driver": driver.describe(),
    }
    if latency_sweep:
        tracks = LATENCY_TRACKS_QUICK if quick else LATENCY_TRACKS
        sweep = []
        for ms in LATENCY_SWEEP_MS:
            s = drive(tracks, 1, 0, float(ms) + extra_latency_ms, "default", f"latency {ms} ms")
            sweep.append({"latency_ms": ms, **{k: s[k] for k in LEVEL_KEYS}})
        report["latency_sweep"] = {"tracks": tracks, "points": sweep}
    report["run"] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "command": " ".join(["run_drive.py", *sys.argv[1:]]), "wall_s": time.perf_counter() - t0,
                     "cpu_s": time.process_time() - cpu0, "workers": workers}
    return json_safe(report)


# -- output -----------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _num(v, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def level_table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the level table (terminal and Markdown), with the task's own columns."""
    extra = list(TASK_KEYS[report["task"]])
    headers = ["level", "tracks", "clean laps", "completion", "autonomy", "mean |cte| m", *extra, "score"]
    rows = []
    for r in report["levels"]:
        rows.append([r["name"], r["tracks"], f"{r['laps_completed']}/{r['laps_attempted']}", _pct(r["completion_rate"]),
                     _num(r["autonomy_pct"], "{:.1f}%"), _num(r["mean_abs_cte_m"]),
                     *[_num(r.get(k), "{:.0f}" if k == "collisions" else "{:.2f}") for k in extra], f"{r['score']:.2f}"])
    return headers, rows


def format_table(report: dict) -> str:
    headers, rows = level_table_rows(report)
    title = f"benchmark {report['protocol']} ({report['task']}{', quick' if report['quick'] else ''})"
    return table(headers, rows, title=title)


def _plot_levels(path: Path, report: dict) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report["levels"]]
    completion = [100 * (r["completion_rate"] or 0.0) for r in report["levels"]]
    cte = [r["mean_abs_cte_m"] or 0.0 for r in report["levels"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    a.barh(names, completion, color="tab:blue")
    a.set_xlim(0, 100)
    a.set_xlabel("clean laps (%)")
    a.invert_yaxis()
    b.barh(names, cte, color="tab:orange")
    b.set_xlabel("mean |cross-track error| (m)")
    b.invert_yaxis()
    b.set_yticklabels([])
    fig.suptitle(f"{report['protocol']}: score {report['score']:.1f}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path)
    return path


def plot_latency(path: Path, sweep: dict, title: str) -> Path:
    """Clean laps and mean |cte| against latency (the report's latency figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [p["latency_ms"] for p in sweep["points"]]
    fig, a = plt.subplots(figsize=(6, 4), dpi=100)
    a.plot(ms, [100 * (p["completion_rate"] or 0.0) for p in sweep["points"]], "o-", color="tab:blue")
    a.set_xlabel("latency (ms)")
    a.set_ylabel("clean laps (%)", color="tab:blue")
    a.set_ylim(-5, 105)
    b = a.twinx()
    b.plot(ms, [p["mean_abs_cte_m"] or 0.0 for p in sweep["points"]], "s--", color="tab:orange")
    b.set_ylabel("mean |cte| (m)", color="tab:orange")
    b.set_ylim(bottom=0)
    a.set_title(f"{title}\n{sweep['tracks']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path)
    return path


def write_report(folder: str | os.PathLike, report: dict) -> Path:
    """DIR/benchmark.md (table, plots, protocol, command), DIR/benchmark.json, DIR/levels.png and,
    with a latency sweep, DIR/latency.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "benchmark.json", report)
    _plot_levels(folder / "levels.png", report)
    headers, rows = level_table_rows(report)
    d = report["driver"]
    who = d.get("path") or d.get("name") or d.get("kind")
    lines = [f"# Benchmark: {who}", "",
             f"Protocol `{report['protocol']}`, task `{report['task']}`"
             f"{', quick ladder' if report['quick'] else ''}{'' if report['complete'] else ', some levels only'}. "
             f"Score **{report['score']:.1f}** (100 x the mean level score; a level's score is its clean-lap rate"
             f"{', times min(1, 1 / lap-time ratio)' if report['task'] == 'race' else ''}).", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += ["", "![levels](levels.png)", ""]
    if "latency_sweep" in report:
        plot_latency(folder / "latency.png", report["latency_sweep"], f"latency: {who}")
        lines += ["Latency (actions delayed, frames not), not part of the score:", "", "![latency](latency.png)", "",
                  "| latency ms | clean laps | mean \\|cte\\| m |", "|---|---|---|"]
        lines += [f"| {p['latency_ms']} | {p['laps_completed']}/{p['laps_attempted']} | {_num(p['mean_abs_cte_m'])} |"
                  for p in report["latency_sweep"]["points"]]
        lines.append("")
    lines += [f"Command: `{report['run']['command']}` ({report['run']['wall_s']:.0f} s, {report['run']['created']}).",
              "Levels and JSON format: docs/benchmark.md.", ""]
    return atomic_write_text(folder / "benchmark.md", "\n".join(lines))


# -- command line -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="MODEL", help="a policy folder made by `train` (or its .onnx export)")
    who.add_argument("--expert", action="store_true", help="score the autopilot (the reference; no torch)")
    parser.add_argument("--task", default="lane", choices=TASKS, help="with --expert: its task (default lane)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter tracks on every level (minutes)")
    parser.add_argument("--levels", metavar="NAMES", help="only these levels, comma-separated (the score is then "
                        "marked incomplete)")
    parser.add_argument("--json", metavar="PATH", help="write the benchmark JSON here")
    parser.add_argument("--report", metavar="DIR", help="write DIR/benchmark.md with the table and plots, and "
                        f"a latency sweep {'/'.join(map(str, LATENCY_SWEEP_MS))} ms")
    parser.add_argument("--workers", type=int, default=1, help="processes driving tracks (default 1; the numbers "
                        "are the same for the same --workers)")
    parser.add_argument("--device", default="cpu", help="torch device for --model (default cpu)")
    add_latency_argument(parser)  # on top of every level's own: the whole ladder with a slower car


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    driver = ExpertDriver(args.task) if args.expert else PolicyDriver(args.model, device=args.device)
    report = run_benchmark(driver, quick=args.quick, levels=args.levels, workers=args.workers,
                           latency_sweep=args.report is not None, extra_latency_ms=args.latency_ms)
    print(format_table(report))
    run = report["run"]
    print(f"\nscore {report['score']:.1f} ({report['protocol']}{', quick' if report['quick'] else ''}"
          f"{'' if report['complete'] else ', some levels only'}) in {run['wall_s']:.0f} s "
          f"({run['cpu_s']:.0f} s of CPU in this process)")
    if args.json:
        print(f"json: {write_json(args.json, report)}")
    if args.report:
        print(f"report: {write_report(args.report, report)}")
    return 0

