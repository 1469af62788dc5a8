"""Closed-loop evaluation: a driver (the expert, or a policy that sees only camera frames) drives
laps of every track in a SPEC; we measure it (agent/metrics.py), print a table, write JSON, and
optionally a video and trajectory plots.

Leaving the track is an intervention: the env (off_track="recover") puts the car back on the
centerline, the lap no longer counts as clean, and the drive goes on. The tracks are driven by the
shared lock-step loop (agent/drive.py: one batched forward pass for several tracks); `workers` splits
the tracks over processes. `--expert` never imports torch.

In the race task the expert always drives the same tracks too: each track reports the expert's lap
time and the policy's lap time over it (clean laps only), and the plots add speed along the lap.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import queue as queue_mod
import re
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sim.env import TASKS, EnvConfig, add_latency_argument, add_traffic_density_argument, with_traffic_density
from sim.errors import UserError
from sim.files import atomic_savefig
from sim.files import write_json as write_json_file
from sim.looks import LOOKS, LookConfig, look_from_name
from sim.progress import Progress, table
from sim.track import load_track, parse_spec

from .drive import Drive, DriveHooks, ExpertDriver, PolicyDriver, drive_jobs
from .metrics import drive_metrics, json_safe, lap_time_ratios, summarise, summarise_ratios

FORMAT_VERSION = 1
VIDEO_FRAMES = 1200  # a minute at 20 Hz: the start of the first lap of the first track

EXAMPLES = """examples:
  python run_drive.py eval --expert --tracks procedural:0-99 --laps 1 --json out/expert.json
  python run_drive.py eval --expert --task traffic --tracks procedural:0-19,challenge:0-19,real:all
  python run_drive.py eval --model data/models/pilot --tracks procedural:1000-1019 --laps 1 --compare-expert
  python run_drive.py eval --model data/models/pilot.onnx --tracks procedural:1000-1004   # in onnxruntime
  python run_drive.py eval --model data/models/pilot --tracks real:all --workers 2 \\
      --video out/drive.mp4 --plot out/plots --json out/real.json
  python run_drive.py eval --model data/models/pilot --tracks procedural:1000-1004 --latency-ms 300
  python run_drive.py eval --model data/models/pilot --tracks procedural:1000-1004 --look dusk
  python run_drive.py eval --expert --task race --tracks procedural:0-99,challenge:0-19,real:all
  python run_drive.py eval --model data/models/race --tracks challenge:0-19 --plot out/race_plots

Each lap starts on the start line; leaving the track is an intervention (the car is put back on the
centerline and the lap is not clean). Metrics: laps_completed = clean laps; route_completion = share
of each lap driven before its first intervention; autonomy = 100 * (1 - interventions * 6 s / time)."""


class _Video:
    """The mp4 of the drive: world view with the camera inset, and a panel with the driver's steering
    beside the expert's. Written under a temporary name, renamed when closed."""

    PANEL_W = 220

    def __init__(self, path: Path, max_frames: int, driver_name: str, fps: int, owner: int, info: dict):
        import cv2
        self.cv2 = cv2
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}.mp4")
        self.max_frames = max_frames
        self.driver_name = driver_name
        self.fps = fps
        self.writer = None
        self.frames = 0
        self.done = False
        self.interventions = 0
        self.owner = owner  # index of the drive filmed
        self.info = info  # the env info of the frame about to be written

    def add(self, env, steering: float, expert_steering: float, saliency: np.ndarray | None = None,
            throttle: float | None = None) -> None:
        if self.done:
            return
        cv2 = self.cv2
        info = self.info
        world = env.unwrapped.world_view()
        h = world.shape[0]
        panel = np.full((h, self.PANEL_W, 3), 24, np.uint8)
        font = cv2.FONT_HERSHEY_SIMPLEX
        white = (235, 235, 235)

        def bar(y: int, value: float, colour: tuple, label: str) -> None:
            x0, x1 = 14, self.PANEL_W - 14
            mid = (x0 + x1) // 2
            cv2.putText(panel, f"{label} {value:+.2f}", (x0, y - 8), font, 0.5, colour, 1, cv2.LINE_AA)
            cv2.rectangle(panel, (x0, y), (x1, y + 16), (70, 70, 70), -1)
            end = round(mid + value * (x1 - mid))
            cv2.rectangle(panel, (min(mid, end), y), (max(mid, end), y + 16), colour, -1)
            cv2.line(panel, (mid, y - 3), (mid, y + 19), white, 1)

        bar(40, steering, (80, 170, 255), self.driver_name)
        bar(100, expert_steering, (90, 220, 110), "expert")
        cv2.putText(panel, "steering (-1 left, +1 right)", (14, 140), font, 0.38, white, 1, cv2.LINE_AA)
        if throttle is not None:  # race: the driver's throttle and brake as two vertical bars, on the map
            for i, (name, value, colour) in enumerate((("thr", max(throttle, 0.0), (60, 200, 60)),
                                                        ("brk", max(-throttle, 0.0), (230, 60, 60)))):
                x0, y1 = world.shape[1] - 70 + 32 * i, h - 30
                cv2.rectangle(world, (x0, y1 - 120), (x0 + 22, y1), (40, 40, 40), -1)
                cv2.rectangle(world, (x0, y1 - round(120 * value)), (x0 + 22, y1), colour, -1)
                cv2.putText(world, name, (x0 - 2, y1 + 18), font, 0.45, white, 1, cv2.LINE_AA)
        if info:
            self.interventions += int(bool(info.get("intervention")))
            lines = [info["track"][:22], f"lap {info['lap'] + 1}  {info['lap_time']:.1f} s",
                     f"speed {info['speed'] * 3.6:.0f} km/h", f"cte {info['cte']:+.2f} m",
                     f"interventions {self.interventions}"]
            if env.unwrapped.traffic is not None:
                lines.append(f"collisions {info['collisions']}  passed {info['overtakes']}")
            for i, text in enumerate(lines):
                cv2.putText(panel, text, (14, 170 + 22 * i), font, 0.5, white, 1, cv2.LINE_AA)
        if saliency is not None:  # what the network looks at, under the figures
            side = self.PANEL_W - 40
            img = cv2.resize(saliency, (side, round(side * saliency.shape[0] / saliency.shape[1])),
                             interpolation=cv2.INTER_NEAREST)
            y0 = h - img.shape[0] - 10
            if y0 > 268:  # below the text lines
                panel[y0:y0 + img.shape[0], 14:14 + side] = img
                cv2.putText(panel, "saliency", (14, y0 - 6), font, 0.45, white, 1, cv2.LINE_AA)
        if info and info.get("intervention"):
            cv2.rectangle(world, (0, 0), (world.shape[1] - 1, h - 1), (255, 40, 40), 6)
        frame = np.ascontiguousarray(np.concatenate([world, panel], axis=1)[:, :, ::-1])
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise UserError(f"--video {self.path}: cannot write an mp4 there")
        self.writer.write(frame)
        self.frames += 1
        if self.frames >= self.max_frames:
            self.done = True

    def close(self) -> dict | None:
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)
        return {"path": str(self.path), "frames": self.frames, "fps": self.fps}


class _EvalHooks(DriveHooks):
    """What `eval` does around the driving loop: film one drive, report progress in metres, and turn
    each finished drive's record into its metrics (and trajectory, for the plots)."""

    def __init__(self, driver, laps: int, keep_trajectory: bool, video: dict | None, report=None):
        self.driver, self.laps, self.keep_trajectory, self.video, self.report = \
            driver, laps, keep_trajectory, video, report
        self.results: list[dict] = []
        self.reported_m: dict[int, float] = {}
        self.recorder: _Video | None = None
        self.experts = ExpertDriver()

    def _filming(self, d: Drive) -> bool:
        return self.recorder is not None and self.recorder.owner == d.index

    def started(self, d: Drive) -> None:
        self.reported_m[d.index] = 0.0
        if self.video is not None and d.index == self.video["index"]:
            self.recorder = _Video(Path(self.video["path"]), self.video["max_frames"], self.driver.name,
                                   d.env.metadata["render_fps"], d.index, d.info)

    def before_step(self, d: Drive, action: np.ndarray) -> None:
        if self._filming(d):
            sal = None
            if self.video.get("saliency") and isinstance(self.driver, PolicyDriver):
                from .saliency import saliency_overlay
                sal = saliency_overlay(self.driver.policy, d.obs)
            self.recorder.add(d.env, float(action[0]), self.experts.expert(d.env).steering(d.env), sal,
                              throttle=float(action[1]) if len(action) > 1 else None)

    def after_step(self, d: Drive, action: np.ndarray) -> None:
        if self._filming(d):
            self.recorder.info = d.info
            self.recorder.done = self.recorder.done or d.info["lap_completed"]
        gained = min(max(d.info["progress_m"], 0.0), d.target_m) - self.reported_m[d.index]
        if self.report and gained > 0:
            self.reported_m[d.index] += gained
            self.report(gained, None)

    def finished(self, d: Drive) -> None:
        steps = d.steps()
        track = d.env.unwrapped.track
        result = {"index": d.index, "spec": d.spec, "track": track.name,
                  "metrics": drive_metrics(steps, track.length, self.laps)}
        if self.keep_trajectory:
            result["trajectory"] = {k: steps[k].astype(np.float32 if k in ("x", "y", "cte") else steps[k].dtype)
                                    for k in ("x", "y", "cte", "intervention", "speed", "s", "lap", "collision") if k in steps}
        if self._filming(d):
            result["video"] = self.recorder.close()
            self.recorder = None
        self.results.append(result)
        if self.report:
            self.report(d.target_m - self.reported_m.pop(d.index), result)


def drive_tracks(driver, jobs: Iterable[tuple[int, str]], cfg: EnvConfig, laps: int, seed: int, batch: int = 8,
                 video: dict | None = None, keep_trajectory: bool = False, report=None) -> list[dict]:
    """Drive every (index, spec) job with the shared loop (agent/drive.py) and return one result per
    drive (metrics, and the trajectory or video when asked). `report(metres, done_result)` is called
    as the drives progress."""
    hooks = _EvalHooks(driver, laps, keep_trajectory, video, report)
    drive_jobs(driver, jobs, cfg, laps, seed, batch=batch, hooks=[hooks])
    return hooks.results


def _worker(driver, jobs, cfg, laps, seed, batch, video, keep_trajectory, queue) -> None:
    """A worker process: drives tracks taken from the shared `jobs` queue until it holds None (so a
    worker that drew short tracks takes more), streaming progress and results to `queue`."""
    try:
        driver.prepare_worker()
        pending = [0.0, time.perf_counter()]

        def report(metres: float, result: dict | None) -> None:
            pending[0] += metres
            now = time.perf_counter()
            if result is not None or now - pending[1] > 0.25:
                queue.put(("progress", pending[0], result))
                pending[0], pending[1] = 0.0, now

        drive_tracks(driver, iter(jobs.get, None), cfg, laps, seed, batch, video, keep_trajectory, report)
    except UserError as e:
        queue.put(("error", str(e), None))
    except BaseException:  # noqa: BLE001 -- shown by the parent, which owns the terminal
        queue.put(("crash", traceback.format_exc(), None))
    finally:
        queue.put(("exit", 0.0, None))


def _run(driver, specs: list[str], cfg: EnvConfig, laps: int, seed: int, workers: int, batch: int,
         video: dict | None, keep_trajectory: bool, label: str, show_progress: bool) -> list[dict]:
    """Drive all specs (in this process or `workers` processes) with a progress bar; results in spec order."""
    total_m = sum(laps * load_track(s).length for s in specs)
    jobs = list(enumerate(specs))
    results: list[dict] = []
    clean = [0]
    with contextlib.ExitStack() as stack:
        stream = sys.stderr if show_progress else stack.enter_context(open(os.devnull, "w"))
        bar = stack.enter_context(Progress(total_m / 1000.0, label, unit="km", stream=stream))

        def on_progress(metres: float, result: dict | None) -> None:
            if result is not None:
                results.append(result)
                clean[0] += result["metrics"]["laps_completed"]
                bar.update(metres / 1000.0, tracks=f"{len(results)}/{len(specs)}", clean_laps=clean[0])
            else:
                bar.update(metres / 1000.0)

        workers = max(1, min(workers, len(specs)))
        if workers == 1 or not driver.can_spawn():
            with driver.session():
                drive_tracks(driver, jobs, cfg, laps, seed, batch, video, keep_trajectory, on_progress)
        else:
            _run_processes(driver, jobs, cfg, laps, seed, workers, batch, video, keep_trajectory, on_progress)
    return sorted(results, key=lambda r: r["index"])


def _run_processes(driver, jobs, cfg, laps, seed, workers, batch, video, keep_trajectory, on_progress) -> None:
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    queue, todo = ctx.Queue(), ctx.Queue()
    for job in [*jobs, *[None] * workers]:  # None: no more tracks
        todo.put(job)
    batch = min(batch, -(-len(jobs) // workers))  # no worker takes the others' share at the start
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(driver, todo, cfg, laps, seed, batch, video, keep_trajectory, queue))
             for _ in range(workers)]
    for p in procs:
        p.start()
    error = None
    try:
        running = len(procs)
        while running:
            try:
                kind, value, result = queue.get(timeout=1.0)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):  # killed without a word (out of memory, SIGKILL)
                    codes = ", ".join(str(p.exitcode) for p in procs)
                    raise RuntimeError(f"evaluation worker processes ended unexpectedly (exit codes {codes})") from None
                continue
            if kind == "exit":
                running -= 1
            elif kind == "progress":
                on_progress(value, result)
            elif error is None:
                error = (kind, value)
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    if error is not None:
        if error[0] == "error":
            raise UserError(error[1])
        raise RuntimeError(f"an evaluation worker failed:\n{error[1]}")


# -- plots ------------------------------------------------------------------------------------------
def plot_drive(path: Path, spec: str, trajectory: dict, metrics: dict, title: str) -> Path:
    """A PNG of the track map with the trajectory coloured by |cross-track error| and the
    interventions marked; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    track = load_track(spec)
    left, right = track.edges()
    fig, ax = plt.subplots(figsize=(7, 6.2), dpi=100)
    for edge in (left, right):
        closed = np.vstack([edge, edge[:1]])
        ax.plot(closed[:, 0], closed[:, 1], color="0.55", lw=0.8)
    x, y = trajectory["x"].astype(float), trajectory["y"].astype(float)
    cte = np.abs(trajectory["cte"].astype(float))
    pts = np.stack([x, y], axis=1)
    segs = np.stack([pts[:-1], pts[1:]], axis=1)
    jump = np.hypot(*(pts[1:] - pts[:-1]).T) > 5.0  # do not draw the teleport of an intervention
    vmax = max(1.0, float(np.percentile(cte, 99))) if cte.size else 1.0
    lc = LineCollection(segs[~jump], cmap="viridis", norm=plt.Normalize(0, vmax), linewidths=1.6)
    lc.set_array(cte[1:][~jump])
    ax.add_collection(lc)
    fig.colorbar(lc, ax=ax, fraction=0.04, pad=0.02, label="|cross-track error| (m)")
    hit = np.asarray(trajectory["intervention"], dtype=bool)
    crash = np.asarray(trajectory.get("collision", np.zeros(len(x))), dtype=bool)  # task traffic
    if hit.any():
        ax.scatter(x[hit & ~crash], y[hit & ~crash], marker="x", s=60, color="red", zorder=5,
                   label=f"off the road ({int((hit & ~crash).sum())})")
    if crash.any():
        ax.scatter(x[crash], y[crash], marker="*", s=140, color="orange", edgecolors="black", zorder=6,
                   label=f"collisions ({int(crash.sum())})")
    if hit.any() or crash.any():
        ax.legend(loc="upper right", fontsize=8)
    start = track.point_at(0.0)
    ax.plot(*start, marker="o", color="black", ms=5)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(f"{title}\nclean laps {metrics['laps_completed']}/{metrics['laps_attempted']}, "
                 f"route {metrics['route_completion'] * 100:.0f}%, mean |cte| {metrics['mean_abs_cte_m']:.2f} m, "
                 f"autonomy {metrics['autonomy_pct']:.0f}%"
                 + (f", collisions {metrics['collisions']}, overtakes {metrics['overtakes']}"
                    if "collision" in trajectory else ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path)
    return path


def plot_speed(path: Path, trajectory: dict, expert: dict, title: str, row: dict) -> Path:
    """Race: the driver's speed against the expert's along the first lap (written atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for traj, label, colour in ((expert, "expert", "tab:green"), (trajectory, "driver", "tab:blue")):
        first = np.asarray(traj["lap"]) == 0
        s, v = np.asarray(traj["s"], float)[first], np.asarray(traj["speed"], float)[first] * 3.6
        cut = np.flatnonzero(np.diff(s) < -50.0)  # the finish line wraps s back to 0
        end = cut[0] + 1 if cut.size else len(s)
        ax.plot(s[:end], v[:end], color=colour, lw=1.2 if label == "expert" else 1.5, label=label)
    hit = np.asarray(trajectory["intervention"], bool) & (np.asarray(trajectory["lap"]) == 0)
    if hit.any():
        ax.scatter(np.asarray(trajectory["s"], float)[hit], np.asarray(trajectory["speed"], float)[hit] * 3.6,
                   marker="x", color="red", zorder=5, label="interventions")
    ratio = row.get("mean_lap_time_ratio")
    ax.set_title(title + (f"\nlap time ratio {ratio:.3f}" if ratio is not None and math.isfinite(ratio) else ""),
                 fontsize=9)
    ax.set_xlabel("distance along the lap (m)")
    ax.set_ylabel("speed (km/h)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "track"


# -- the whole evaluation -------------------------------------------------------------------------
def evaluate(driver, tracks_spec: str, laps: int = 1, *, seed: int = 0, randomise_palette: bool = False,
             workers: int = 1, batch: int = 8, video: str | os.PathLike | None = None,
             video_frames: int = VIDEO_FRAMES, plot_dir: str | os.PathLike | None = None,
             compare_expert: bool = False, command: str | None = None, show_progress: bool = True,
             saliency: bool = False, latency_ms: float = 0.0, look: LookConfig | None = None,
             traffic_density: float | None = None) -> dict:
    """Drive `laps` laps of every track in `tracks_spec` with `driver` (ExpertDriver or PolicyDriver)
    and return the report: {"summary", "tracks", "driver", "command", ...} (JSON-ready, NaN as None).
    `latency_ms` delays the driver's actions (sim/env.py); `look` changes the frames (sim/looks.py).
    In task traffic the test has `traffic_density` cars per km, by default the standard density
    whatever the policy's drives had: what a policy is scored on is the test's, not its training's."""
    if laps < 1:
        raise UserError(f"--laps {laps}: must be at least 1")
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be at least 1")
    if video is not None and video_frames < 1:
        raise UserError(f"--video-frames {video_frames}: must be at least 1")
    specs = parse_spec(tracks_spec)
    cfg = replace(driver.env_config(), track=tracks_spec, off_track="recover", laps=laps, throttle=False,
                  randomise_palette=randomise_palette, random_start=False, latency_ms=float(latency_ms),
                  look=look if look is not None else LookConfig())
    cfg = with_traffic_density(cfg, traffic_density, standard=True)
    if isinstance(driver, PolicyDriver):
        driver.policy.check_env(cfg)
        if saliency and video is not None:
            from .saliency import require_gradients
            require_gradients(driver.policy)
    video_job = None if video is None else {"index": 0, "path": str(video), "max_frames": int(video_frames),
                                            "saliency": bool(saliency)}
    keep = plot_dir is not None

    t0 = time.perf_counter()
    results = _run(driver, specs, cfg, laps, seed, workers, batch, video_job, keep, f"eval {driver.name}",
                   show_progress)
    wall = time.perf_counter() - t0
    race = cfg.task == "race"
    expert_results = None
    if isinstance(driver, ExpertDriver):
        if race:  # the expert is its own reference: ratio 1 by definition
            expert_results = results
    elif compare_expert or race:  # race lap times mean something only beside the expert's
        expert_results = _run(ExpertDriver(cfg.task), specs, cfg, laps, seed, workers, batch, None, keep,
                              "eval expert", show_progress)

    rows = []
    for i, r in enumerate(results):
        row = {"track": r["track"], "spec": r["spec"], **r["metrics"]}
        if expert_results is not None and expert_results is not results:
            row["expert"] = expert_results[i]["metrics"]
        if race:
            row.update(lap_time_ratios(r["metrics"], expert_results[i]["metrics"]))
        rows.append(row)
    summary = summarise([r["metrics"] for r in results])
    summary["wall_s"] = wall
    summary["realtime_factor"] = summary["elapsed_s"] / wall if wall > 0 else float("nan")
    summary["mean_speed_mps"] = (summary["distance_km"] * 1000 / summary["elapsed_s"]
                                 if summary["elapsed_s"] > 0 else float("nan"))
    if expert_results is not None and expert_results is not results:
        summary["expert"] = summarise([r["metrics"] for r in expert_results])
    if race:
        summary.update(summarise_ratios(rows))

    report = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(["run_drive.py", *sys.argv[1:]]),
        "driver": driver.describe(),
        "settings": {"tracks": tracks_spec, "laps": laps, "seed": seed, "randomise_palette": randomise_palette,
                     "workers": workers, "batch": batch, "env": cfg.to_dict()},
        "summary": summary,
        "tracks": rows,
    }
    videos = [r["video"] for r in results if r.get("video")]
    if videos:
        report["video"] = videos[0]
    if plot_dir is not None:
        plots = []
        for i, r in enumerate(results):
            path = Path(plot_dir) / f"{r['index']:03d}_{_slug(r['track'])}.png"
            plots.append(str(plot_drive(path, r["spec"], r["trajectory"], r["metrics"],
                                        f"{driver.name} on {r['track']}")))
            if race:
                path = Path(plot_dir) / f"{r['index']:03d}_{_slug(r['track'])}_speed.png"
                plots.append(str(plot_speed(path, r["trajectory"], expert_results[i]["trajectory"],
                                            f"{driver.name} against the expert on {r['track']}", rows[i])))
        report["plots"] = plots
    return json_safe(report)


def format_table(report: dict) -> str:
    """The per-track table and an 'all' row, with the expert's figures beside when compared."""
    compare = "expert" in report["summary"]
    traffic = report.get("settings", {}).get("env", {}).get("task") == "traffic"

    def pct(v):
        return "-" if v is None else f"{v * 100:.0f}%"

    def num(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    race = "mean_lap_time_ratio" in report["summary"]
    headers = ["track", "laps", "clean", "route", "off/km", "|cte| m", "autonomy", "lap s"]
    if race:
        headers += ["km/h", "expert lap s", "lap time ratio"]
    if traffic:
        headers += ["collisions", "coll/km", "overtakes"]
    if compare:
        headers += ["expert clean", "expert |cte| m"]

    def cells(name, r):
        row = [name, str(r["laps_attempted"]), str(r["laps_completed"]), pct(r["route_completion"]),
               num(r["off_track_per_km"]), num(r["mean_abs_cte_m"]), num(r["autonomy_pct"], "{:.1f}%"),
               num(r["mean_lap_time_s"], "{:.1f}")]
        if race:
            speed = r.get("mean_speed_mps")
            row += [num(None if speed is None else speed * 3.6, "{:.0f}"), num(r["expert_lap_time_s"], "{:.1f}"),
                    num(r["mean_lap_time_ratio"], "{:.3f}")]
        if traffic:
            row += [str(r["collisions"]), num(r["collisions_per_km"]), str(r["overtakes"])]
        if compare:
            e = r["expert"]
            row += [f"{e['laps_completed']}/{e['laps_attempted']}", num(e["mean_abs_cte_m"])]
        return row

    rows = [cells(r["track"], r) for r in report["tracks"]]
    rows.append(cells("all", report["summary"]))
    return table(headers, rows, title=f"closed-loop evaluation: {report['driver']['kind']}")


def write_json(path: str | os.PathLike, report: dict) -> Path:
    """Write the report atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_file(path, report, allow_nan=False)


# -- command line -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--expert", action="store_true", help="evaluate the autopilot (no torch needed)")
    who.add_argument("--model", metavar="MODEL", help="a policy folder made by `train`, or a .onnx made by `export` "
                     "(its figures are added to the model card)")
    parser.add_argument("--tracks", default="procedural:1000-1019", metavar="SPEC",
                        help="tracks to drive (default procedural:1000-1019, never used for training)")
    parser.add_argument("--laps", type=int, default=1, help="laps per track (default 1)")
    parser.add_argument("--json", metavar="PATH", help="write the full report as JSON here")
    parser.add_argument("--compare-expert", action="store_true", help="also drive the expert; figures side by side")
    parser.add_argument("--video", metavar="PATH", help="mp4 of the first lap of the first track")
    parser.add_argument("--video-frames", type=int, default=VIDEO_FRAMES,
                        help=f"at most this many video frames (default {VIDEO_FRAMES}, 20 per second)")
    parser.add_argument("--saliency", action="store_true",
                        help="draw what the network looks at (gradient saliency) in the --video panel")
    parser.add_argument("--plot", metavar="DIR", help="one PNG per track: trajectory coloured by |cte|")
    parser.add_argument("--randomise-palette", action="store_true", help="new colours on every track")
    add_latency_argument(parser)
    add_traffic_density_argument(parser, "default 4, also for a policy whose drives had another")
    parser.add_argument("--look", default="default", choices=list(LOOKS),
                        help="an appearance training never saw (sim/looks.py; default: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first track's episode (default 0)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes driving tracks in parallel, each taking the next track from a shared "
                             "queue; up to one per CPU core (default 1)")
    parser.add_argument("--batch", type=int, default=8,
                        help="tracks stepped in lock step per process, one policy call for all (default 8)")
    parser.add_argument("--device", default="cpu", help="device for --model: cpu (default), auto (the GPU when there is one), cuda or cuda:N")
    parser.add_argument("--task", choices=TASKS, help="the task for --expert (default lane); --model uses the "
                        "task in the policy's card")


def main(args: argparse.Namespace) -> int:
    driver = ExpertDriver(args.task or "lane") if args.expert else PolicyDriver(args.model, device=args.device)
    if args.model and args.task and driver.env_config().task != args.task:
        raise UserError(f"--task {args.task}: {args.model} is a {driver.env_config().task} policy (its card says so)")
    report = evaluate(driver, args.tracks, args.laps, seed=args.seed, randomise_palette=args.randomise_palette,
                      workers=args.workers, batch=args.batch, video=args.video, video_frames=args.video_frames,
                      plot_dir=args.plot, compare_expert=args.compare_expert, saliency=args.saliency,
                      latency_ms=args.latency_ms, look=look_from_name(args.look),
                      traffic_density=args.traffic_density)
    print(format_table(report))
    s = report["summary"]
    rc = "-" if s["route_completion"] is None else f"{s['route_completion'] * 100:.1f}%"
    print(f"\nclean laps {s['laps_completed']}/{s['laps_attempted']}, route completion {rc}, "
          f"interventions {s['interventions']}, autonomy {_or_dash(s['autonomy_pct'], '{:.1f}%')}")
    if "mean_lap_time_ratio" in s:
        print(f"race: mean speed {_or_dash(s['mean_speed_mps'], '{:.1f}')} m/s, expert lap time "
              f"{_or_dash(s['expert_lap_time_s'], '{:.1f}')} s, mean lap time ratio "
              f"{_or_dash(s['mean_lap_time_ratio'], '{:.3f}')} over {s['clean_laps_compared']} clean laps")
    if report["settings"]["env"].get("task") == "traffic":
        density = report["settings"]["env"].get("traffic", {}).get("density_per_km")
        print(f"collisions {s['collisions']} ({_or_dash(s['collisions_per_km'], '{:.2f}')} per km), "
              f"overtakes {s['overtakes']}, traffic {_or_dash(density, '{:g}')} cars per km")
    print(f"simulated {s['elapsed_s'] / 60:.1f} min of driving ({s['distance_km']:.1f} km) in {s['wall_s']:.1f} s: "
          f"{_or_dash(s['realtime_factor'], '{:.0f}')}x real time")
    if "video" in report:
        print(f"video: {report['video']['path']} ({report['video']['frames']} frames)")
    if "plots" in report:
        print(f"plots: {Path(args.plot)} ({len(report['plots'])} PNG)")
    if args.json:
        print(f"json: {write_json(args.json, report)}")
    if args.model:
        from .modelcard import record_eval
        try:
            print(f"model card: {record_eval(args.model, report)}")
        except OSError as e:  # a read-only policy folder: the evaluation itself is done and printed
            print(f"warning: could not add the figures to the model card ({e.strerror or e})", file=sys.stderr)
    return 0


def _or_dash(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
