"""`run_drive.py dagger`: DAgger with the expert (Ross, Gordon & Bagnell 2011).

Behavioural cloning only ever sees the expert's own states; once the policy drifts a little it is
somewhere no demonstration showed, and its errors compound. DAgger lets the *policy* drive, asks the
expert what it would have done in every state the policy reached, adds those frames to the data and
retrains; repeat. Each iteration here:

1. the current policy drives every track of `--tracks` (optionally blended with the expert,
   executed = beta * expert + (1 - beta) * policy, beta_i = beta0 * decay^i); leaving the track
   puts the car back on the centerline (env off_track="recover"; those frames are marked);
2. every frame is saved with `DriveWriter` (source "dagger"): label = `Expert().steering(env)`
   in that very state, executed_steering = what the car got;
3. the new drives join the data (the start drives plus every earlier iteration);
4. the policy is retrained, warm-started from the current one, for `--minutes-per-iter`;
5. it drives the held-out `--eval-tracks` in closed loop.

The baseline is plain BC given the same number of frames and the same training: each iteration the
autopilot (with the noise injection of the start drives) records exactly as many frames on the same
tracks as the policy drove, and a BC policy is retrained on its own aggregate in the same way.
Both arms train with the start policy's own training settings; `--no-augment` turns off the
viewpoint-shift and mirror augmentation (synthetic recoveries, PilotNet's side cameras) in both, the
classical comparison: then the only recovery data is what DAgger collects.

Output folder: data/ (start drives linked in, dagger_NN/ drives), bc_data/ (likewise, bc_NN/),
models/dagger_NN and models/bc_NN (policies), dagger.json, completion.png.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from data.recording import DriveWriter, find_drives, read_meta, unique_drive_name
from sim.env import EnvConfig
from sim.errors import UserError
from sim.expert import expert_for, shifted_labels
from sim.files import atomic_savefig
from sim.progress import Progress, table
from sim.render import N_LABELS
from sim.track import load_track, parse_spec

from .drive import BlendDriver, Drive, DriveHooks, drive_jobs, max_steps_for

EXAMPLES = """examples:
  python run_drive.py record --autopilot --tracks procedural:0-3 --laps 1 --out data/drives/few
  python run_drive.py train --data data/drives/few --out data/models/few --minutes 3
  python run_drive.py dagger --data data/drives/few --model data/models/few --tracks procedural:0-3 \\
      --iterations 3 --minutes-per-iter 2 --eval-tracks procedural:1000-1009 --out data/reports/dagger
  python run_drive.py dagger --data data/drives/few --model data/models/few --tracks procedural:4-7 \\
      --iterations 5 --beta0 0.5 --no-baseline --out data/reports/dagger_mix
  python run_drive.py train --data data/drives/few --out data/models/few_plain --minutes 3 --no-augment
  python run_drive.py dagger --data data/drives/few --model data/models/few_plain --tracks procedural:4-9 \\
      --iterations 3 --minutes-per-iter 1.5 --no-augment --out data/reports/dagger_plain

The policy drives, the expert labels every frame it visits, the frames join the data, the policy is
retrained from where it was, and it is evaluated on held-out tracks; the table compares it with
plain BC given the same number of (autopilot) frames and the same training."""

REPORT_FILE = "dagger.json"
PLOT_FILE = "completion.png"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DaggerConfig:
    """Everything that shapes a DAgger run; saved in dagger.json."""

    iterations: int = 3
    minutes_per_iter: float | None = 2.0  # training budget per iteration (or epochs_per_iter)
    epochs_per_iter: int | None = None
    beta0: float = 0.0  # share of the expert in the executed steering at iteration 1
    beta_decay: float = 0.5  # beta_i = beta0 * decay^(i - 1)
    laps: int = 1  # laps the policy drives per track per iteration
    max_steps: int | None = None  # cap on steps per drive (None: three expert lap times)
    eval_tracks: str = "procedural:1000-1009"
    eval_laps: int = 1
    baseline: bool = True  # also train plain BC on as many autopilot frames
    seed: int = 0
    batch: int = 8  # tracks driven in lock step, one policy call for all
    no_augment: bool = False  # plain BC in both arms: no viewpoint-shift/mirror/light augmentation

    def beta(self, iteration: int) -> float:
        """Expert share of the executed steering in `iteration` (1-based)."""
        return float(self.beta0 * self.beta_decay ** (iteration - 1))


# -- driving: the policy steers, the expert labels --------------------------------------------------
class _DaggerRecorder(DriveHooks):
    """Saves every frame the policy reached, labelled with what the expert would have done there."""

    def __init__(self, policy, out: Path, beta: float, iteration: int, seed: int, names: dict[int, str],
                 on_frames=None):
        self.policy, self.out, self.beta, self.iteration, self.seed = policy, out, beta, iteration, seed
        self.names, self.on_frames = names, on_frames
        self.expert = expert_for(policy.env_config().task)
        # traffic: shifted views labelled now, while the other cars' motion is known (as `record` does)
        self.relabel = np.random.default_rng([seed, iteration, 2]) if policy.env_config().task == "traffic" else None
        self.writers: dict[int, DriveWriter] = {}
        self.rows: list[dict] = []

    def _add(self, d: Drive, executed: np.ndarray | None) -> None:
        label = self.expert.act(d.env)
        self.writers[d.index].add(d.obs, float(label[0]), d.info,
                                  throttle=float(label[1]) if label.shape[0] > 1 else None,
                                  executed_steering=None if executed is None else float(executed[0]),
                                  shifted_labels=None if self.relabel is None else
                                  shifted_labels(d.env, self.expert, self.relabel))

    def started(self, d: Drive) -> None:
        cfg = d.env.unwrapped.cfg
        meta = {
            "source": "dagger",
            "driver": {"kind": "policy", "policy": str(getattr(self.policy, "folder", "")),
                       "labels": "expert (sim.expert.Expert)", "beta": self.beta, "iteration": self.iteration,
                       "seed": self.seed + d.index},
            "track": d.spec,
            "track_length_m": float(d.env.unwrapped.track.length),
            "env": cfg.to_dict(),
            "palette": d.env.unwrapped.palette[:N_LABELS].tolist(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.writers[d.index] = DriveWriter(self.out / self.names[d.index], meta)

    def before_step(self, d: Drive, action: np.ndarray) -> None:
        self._add(d, action)
        if self.on_frames:
            self.on_frames(1)

    def finished(self, d: Drive) -> None:
        self._add(d, None)  # the final state is a valid (frame, label) pair too; nothing was executed there
        writer = self.writers.pop(d.index)
        writer.close()
        s = writer.meta["summary"]
        self.rows.append({"path": str(writer.folder), "track": d.spec, "frames": writer.frames_written,
                          "interventions": int(s.get("interventions", 0)), "laps": int(d.info["lap"])})
        if self.on_frames:
            self.on_frames(1, drives=f"{len(self.rows)}/{len(self.names)}")

    def abort(self) -> None:
        """Keep what was driven of the open drives, marked unfinished."""
        for writer in self.writers.values():
            writer.abort()


def dagger_drives(policy, tracks_spec: str, out: str | os.PathLike, *, beta: float = 0.0, laps: int = 1,
                  seed: int = 0, max_steps: int | None = None, batch: int = 8, iteration: int = 0,
                  verbose: bool = True) -> list[dict]:
    """The `policy` drives every track of `tracks_spec` (blended with the expert by `beta`); every
    frame goes to a drive `out/<track>/` with the expert's steering as its label. Returns one row per
    drive: path, track, frames, interventions, laps."""
    if not 0.0 <= beta <= 1.0:
        raise UserError(f"--beta0 {beta}: the expert's share must be between 0 and 1")
    specs = parse_spec(tracks_spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = replace(policy.env_config(), off_track="recover", laps=laps, throttle=False, random_start=False)
    taken = {p.name for p in out.iterdir()}
    names = {i: unique_drive_name(spec, taken) for i, spec in enumerate(specs)}
    expected = 0.0
    for spec in specs:
        length = load_track(spec).length
        steps = max_steps if max_steps is not None else max_steps_for(cfg, length, laps)
        expected += min(steps, laps * length / (cfg.car.cruise_speed_mps * cfg.car.dt)) + 1
    with contextlib.ExitStack() as stack:
        stream = sys.stderr if verbose else stack.enter_context(open(os.devnull, "w"))
        bar = stack.enter_context(Progress(expected, f"dagger {iteration}: policy drives", " frames", stream=stream))
        recorder = _DaggerRecorder(policy, out, beta, iteration, seed, names, on_frames=bar.update)
        try:
            drive_jobs(BlendDriver(policy, beta), list(enumerate(specs)), cfg, laps, seed, batch=batch,
                       hooks=[recorder], max_steps=max_steps)
        except BaseException:
            recorder.abort()
            raise
    return sorted(recorder.rows, key=lambda r: r["path"])


# -- the baseline: as many autopilot frames, recorded like the start data ---------------------------
def bc_drives(dagger_rows: list[dict], out: str | os.PathLike, env_cfg: EnvConfig, noise: float, seed: int,
              verbose: bool = True) -> list[dict]:
    """For each DAgger drive, an autopilot drive on the same track with exactly as many frames (no
    lap limit, stopped by max_steps), with the start data's noise injection."""
    from data.record import record_one

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    taken = {p.name for p in out.iterdir()}
    rows = []
    total = sum(r["frames"] for r in dagger_rows)
    with contextlib.ExitStack() as stack:
        stream = sys.stderr if verbose else stack.enter_context(open(os.devnull, "w"))
        bar = stack.enter_context(Progress(total, "baseline: autopilot records", " frames", stream=stream))
        for k, d in enumerate(dagger_rows):
            cfg = replace(env_cfg, track=d["track"], off_track="recover", laps=None, throttle=False,
                          random_start=False, max_steps=max(1, d["frames"] - 1))
            folder = out / unique_drive_name(d["track"], taken)
            r = record_one(d["track"], 1, str(folder), cfg, noise, seed + k, progress=bar.update)
            rows.append({"path": r.path, "track": r.track, "frames": r.frames,
                         "interventions": r.off_track_events, "laps": r.laps})
    return rows


# -- the run ------------------------------------------------------------------------------------------
def _link_drives(src_root: Path, dst: Path) -> list[Path]:
    """Hard-link (or copy, across file systems) every drive under `src_root` into `dst/<name>`: the
    start data joins the aggregate without being copied or touched (drive files are only ever
    replaced, never rewritten, so a link is safe)."""
    paths = find_drives(src_root)
    dst.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    out = []
    for p in paths:
        rel = p.relative_to(src_root).as_posix() if p != src_root else p.name
        name = unique_drive_name(rel.replace("/", "_") or p.name, taken)
        target = dst / name
        target.mkdir()
        for f in sorted(p.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                try:
                    os.link(f, target / f.name)
                except OSError:
                    shutil.copy2(f, target / f.name)
        out.append(target)
    return out


def _count_frames(root: Path) -> int:
    n = 0
    for p in find_drives(root):
        try:
            n += int(read_meta(p).get("summary", {}).get("frames", 0))
        except UserError:
            pass
    return n


def _start_noise(data_dir: Path) -> float:
    """The noise injection the start drives were recorded with (0.3, `record`'s default, if unknown)."""
    levels = []
    for p in find_drives(data_dir):
        try:
            drv = read_meta(p).get("driver") or {}
            if isinstance(drv.get("noise"), (int, float)):
                levels.append(float(drv["noise"]))
        except UserError:
            pass
    return float(np.median(levels)) if levels else 0.3


def _check_args(data_dir: Path, model_dir: Path, out: Path, cfg: DaggerConfig) -> None:
    if cfg.iterations < 1:
        raise UserError(f"--iterations {cfg.iterations}: must be at least 1")
    if cfg.minutes_per_iter is None and cfg.epochs_per_iter is None:
        raise UserError("give --minutes-per-iter or --epochs-per-iter")
    if cfg.minutes_per_iter is not None and not (cfg.minutes_per_iter > 0 and math.isfinite(cfg.minutes_per_iter)):
        raise UserError(f"--minutes-per-iter {cfg.minutes_per_iter}: must be a positive number")
    if cfg.epochs_per_iter is not None and cfg.epochs_per_iter < 1:
        raise UserError(f"--epochs-per-iter {cfg.epochs_per_iter}: must be at least 1")
    if not (0.0 <= cfg.beta0 <= 1.0):
        raise UserError(f"--beta0 {cfg.beta0}: the expert's share must be between 0 and 1")
    if not (0.0 <= cfg.beta_decay <= 1.0):
        raise UserError(f"--beta-decay {cfg.beta_decay}: must be between 0 and 1")
    if cfg.laps < 1 or cfg.eval_laps < 1:
        raise UserError("--laps and --eval-laps must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UserError(f"--max-steps {cfg.max_steps}: must be at least 1")
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir}: folder not found")
    if not find_drives(data_dir):
        raise UserError(f"--data {data_dir}: no recorded drives in this folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; choose a new one")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: parent folder {out.parent} does not exist")
    if out.resolve() == data_dir.resolve() or data_dir.resolve() in out.resolve().parents:
        raise UserError(f"--out {out}: must lie outside --data {data_dir}")


def _train_config(card: dict, no_augment: bool):
    """How both arms retrain: as the start policy was trained (its card), without augmentation when
    asked. Returns the settings and whether the start policy was trained with augmentation."""
    from .dataset import NO_AUGMENT
    from .train import TrainConfig

    train_cfg = TrainConfig(arch=card["arch"])
    saved = (card.get("training") or {}).get("config")
    if isinstance(saved, dict):
        try:
            train_cfg = TrainConfig.from_dict(saved)
        except (TypeError, ValueError):
            pass
    start_augmented = train_cfg.augment != NO_AUGMENT
    if no_augment:
        train_cfg = replace(train_cfg, augment=NO_AUGMENT)
    return train_cfg, start_augmented


def _retrain(data: Path, folder: Path, init_from: Path, train_cfg, cfg: DaggerConfig, device: str,
             verbose: bool) -> Path:
    """One arm's policy for this iteration: trained on its aggregate, warm-started from its last one."""
    from .train import train

    folder.parent.mkdir(exist_ok=True)
    train(data, folder, minutes=cfg.minutes_per_iter, epochs=cfg.epochs_per_iter, cfg=train_cfg, device=device,
          init_from=init_from, verbose=verbose)
    return folder


def run_dagger(data_dir: str | os.PathLike, model_dir: str | os.PathLike, tracks_spec: str,
               out_dir: str | os.PathLike, cfg: DaggerConfig = DaggerConfig(), *, device: str = "cpu",
               verbose: bool = True, **overrides) -> dict:
    """Run `cfg.iterations` DAgger iterations from the policy in `model_dir` and the drives in
    `data_dir` (and the BC baseline beside it); write everything under `out_dir` and return the
    report (also written to `out_dir/dagger.json`). `overrides` replace fields of `cfg`."""
    import torch

    from .evaluate import PolicyDriver, evaluate
    from .model import load_policy
    cfg = replace(cfg, **overrides)
    data_dir, model_dir, out = Path(data_dir), Path(model_dir), Path(out_dir)
    start = load_policy(model_dir, device=device)  # a bad policy folder fails before any work
    parse_spec(tracks_spec)
    parse_spec(cfg.eval_tracks)
    _check_args(data_dir, model_dir, out, cfg)
    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    train_cfg, start_augmented = _train_config(start.card, cfg.no_augment)
    if cfg.no_augment and start_augmented:
        say(f"note: {model_dir} was trained with augmentation (synthetic recoveries); for plain BC from the "
            f"start, train it with `train --no-augment`")
    noise = _start_noise(data_dir)
    # Driving and evaluating feed a few frames at a time: one thread per process is as fast on an idle
    # CPU and 3-10x faster on a busy one, where a second thread waits for a shared core.
    caller_threads = torch.get_num_threads()
    drive_threads = 1 if torch.device(device).type == "cpu" else caller_threads
    torch.set_num_threads(drive_threads)
    out.mkdir(exist_ok=True)
    arms = ["dagger", "bc"] if cfg.baseline else ["dagger"]
    roots = {"dagger": out / "data", "bc": out / "bc_data"}
    for arm in arms:  # each arm's aggregate starts from the start drives
        _link_drives(data_dir, roots[arm] / "start")
    start_frames = _count_frames(roots["dagger"])

    def evaluate_policy(folder: Path, label: str) -> dict:
        rep = evaluate(PolicyDriver(folder, device=device), cfg.eval_tracks, cfg.eval_laps, seed=cfg.seed,
                       show_progress=verbose, command=f"dagger {label}")
        return rep["summary"]

    report = {
        "format_version": FORMAT_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["run_drive.py", *sys.argv[1:]]) if verbose else "run_dagger",
        "start_model": str(model_dir), "start_data": str(data_dir), "tracks": tracks_spec, "config": asdict(cfg),
        "train_config": asdict(train_cfg), "start_augmented": start_augmented, "baseline_noise": noise,
        "iterations": [],
    }
    say(f"DAgger from {model_dir} ({start_frames:,} start frames): {cfg.iterations} iteration(s) on {tracks_spec}, "
        f"evaluated on {cfg.eval_tracks}" + (", with the plain-BC baseline" if cfg.baseline else ""))
    s0 = evaluate_policy(model_dir, "start")
    report["iterations"].append(_row(0, start_frames, 0, None, s0, s0 if cfg.baseline else None, str(model_dir),
                                     str(model_dir) if cfg.baseline else None, []))
    _save(out, report, cfg.baseline, verbose=False)
    current = {"dagger": model_dir, "bc": model_dir}
    for it in range(1, cfg.iterations + 1):
        beta = cfg.beta(it)
        policy = load_policy(current["dagger"], device=device)
        drives = dagger_drives(policy, tracks_spec, roots["dagger"] / f"dagger_{it:02d}", beta=beta, laps=cfg.laps,
                               seed=cfg.seed + 1000 * it, max_steps=cfg.max_steps, batch=cfg.batch, iteration=it,
                               verbose=verbose)
        if cfg.baseline:
            bc_drives(drives, roots["bc"] / f"bc_{it:02d}", start.env_config(), noise, cfg.seed + 1000 * it,
                      verbose=verbose)
        summaries = {}
        for arm in arms:
            say(f"\n[{arm} {it}/{cfg.iterations}] training on {_count_frames(roots[arm]):,} frames, "
                f"warm start from {current[arm]}")
            current[arm] = _retrain(roots[arm], out / "models" / f"{arm}_{it:02d}", current[arm],
                                    replace(train_cfg, seed=train_cfg.seed + it), cfg, device, verbose)
            torch.set_num_threads(drive_threads)  # train() takes every core for itself
            summaries[arm] = evaluate_policy(current[arm], f"{arm} {it}")
        report["iterations"].append(_row(it, _count_frames(roots["dagger"]), sum(d["frames"] for d in drives), beta,
                                         summaries["dagger"], summaries.get("bc"), str(current["dagger"]),
                                         str(current["bc"]) if cfg.baseline else None, drives,
                                         _count_frames(roots["bc"]) if cfg.baseline else None))
        _save(out, report, cfg.baseline, verbose=False)
    report["wall_minutes"] = (time.perf_counter() - t0) / 60
    torch.set_num_threads(caller_threads)
    _save(out, report, cfg.baseline, verbose=verbose)
    return report


def _row(it: int, frames: int, new_frames: int, beta: float | None, dag: dict, bc: dict | None,
         model: str, bc_model: str | None, drives: list[dict], bc_frames: int | None = None) -> dict:
    def pick(s: dict | None) -> dict | None:
        if s is None:
            return None
        return {k: s.get(k) for k in ("laps_attempted", "laps_completed", "completion_rate", "route_completion",
                                      "off_track_per_km", "interventions", "mean_abs_cte_m", "autonomy_pct")}

    return {"iteration": it, "frames": frames, "new_frames": new_frames, "beta": beta,
            "drive_interventions": sum(d["interventions"] for d in drives), "dagger": pick(dag), "bc": pick(bc),
            "model": model, "bc_model": bc_model, "drives": drives, "bc_frames": bc_frames}


def results_table(report: dict) -> str:
    """Per iteration: frames, the DAgger policy's closed-loop figures, and plain BC's beside them."""
    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 100:.0f}%"

    def clean(s):
        return "-" if s is None else f"{s['laps_completed']}/{s['laps_attempted']}"

    headers = ["iter", "frames", "new", "beta", "interv. while driving", "DAgger clean", "DAgger route",
               "BC clean", "BC route"]
    rows = []
    for r in report["iterations"]:
        d, b = r["dagger"], r.get("bc")
        rows.append([str(r["iteration"]), f"{r['frames']:,}", f"{r['new_frames']:,}",
                     "-" if r["beta"] is None else f"{r['beta']:.2f}", str(r["drive_interventions"]),
                     clean(d), pct(d["route_completion"]), clean(b), pct(b["route_completion"] if b else None)])
    plain = "; no augmentation in either arm" if report["config"].get("no_augment") else ""
    return table(headers, rows, title=f"DAgger vs plain BC on {report['config']['eval_tracks']} "
                                      f"(clean laps / laps; route = share driven before the first intervention"
                                      f"{plain})")


def plot_completion(report: dict, path: Path) -> Path:
    """Clean-lap rate and route completion per iteration, DAgger against BC; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = report["iterations"]
    x = [r["iteration"] for r in its]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, (key, name) in enumerate((("completion_rate", "clean-lap rate"), ("route_completion", "route completion"))):
        ax[k].plot(x, [100 * (r["dagger"][key] or 0) for r in its], "o-", label="DAgger")
        if any(r.get("bc") for r in its):
            ax[k].plot(x, [100 * (r["bc"][key] or 0) if r.get("bc") else None for r in its], "s--",
                       label="plain BC, same frames")
        ax[k].set_xlabel("iteration (0 = start policy)")
        ax[k].set_ylabel(f"{name} (%)")
        ax[k].set_ylim(-3, 103)
        ax[k].set_xticks(x)
        ax[k].set_xticklabels([f"{i}\n{r['frames'] / 1000:.0f}k fr" for i, r in zip(x, its)])
        ax[k].grid(alpha=0.3)
        ax[k].legend()
    fig.suptitle(f"held-out tracks {report['config']['eval_tracks']}")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    return path


def _save(out: Path, report: dict, baseline: bool, verbose: bool) -> None:
    from .evaluate import write_json
    from .metrics import json_safe

    write_json(out / REPORT_FILE, json_safe(report))
    plot_completion(report, out / PLOT_FILE)
    if verbose:
        print("\n" + results_table(report))
        print(f"\nreport: {out / REPORT_FILE}  plot: {out / PLOT_FILE}  "
              f"last policy: {report['iterations'][-1]['model']}")


# -- command line --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DaggerConfig()
    parser.add_argument("--data", required=True, metavar="DIR", help="the drives the start policy learned from")
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="the start policy (made by `train`)")
    parser.add_argument("--tracks", required=True, metavar="SPEC", help="tracks the policy drives each iteration")
    parser.add_argument("--iterations", type=int, default=d.iterations, help="DAgger iterations (default %(default)s)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes-per-iter", type=float, help=f"training minutes per iteration (default "
                        f"{d.minutes_per_iter:g})")
    budget.add_argument("--epochs-per-iter", type=int, help="training epochs per iteration instead of minutes")
    parser.add_argument("--beta0", type=float, default=d.beta0,
                        help="expert's share of the executed steering in iteration 1 (default 0: the policy drives)")
    parser.add_argument("--beta-decay", type=float, default=d.beta_decay,
                        help="beta_i = beta0 * decay^(i-1) (default %(default)s)")
    parser.add_argument("--laps", type=int, default=d.laps, help="laps per track per iteration (default 1)")
    parser.add_argument("--max-steps", type=int, help="cap on steps per drive (default: three expert lap times)")
    parser.add_argument("--eval-tracks", default=d.eval_tracks, metavar="SPEC",
                        help="held-out tracks for the closed-loop evaluation (default %(default)s)")
    parser.add_argument("--eval-laps", type=int, default=d.eval_laps, help="laps per evaluation track (default 1)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain-BC baseline (half the work)")
    parser.add_argument("--no-augment", action="store_true",
                        help="plain BC: no viewpoint-shift/mirror augmentation in either arm, so the only recovery "
                             "data is what DAgger collects (default: train as the start policy was trained; "
                             "train that one with `train --no-augment` too)")
    parser.add_argument("--out", required=True, metavar="DIR", help="a new folder for drives, policies and report")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of drives and training (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def main(args: argparse.Namespace) -> int:
    minutes = args.minutes_per_iter
    if minutes is None and args.epochs_per_iter is None:
        minutes = DaggerConfig.minutes_per_iter
    cfg = DaggerConfig(iterations=args.iterations, minutes_per_iter=minutes, epochs_per_iter=args.epochs_per_iter,
                       beta0=args.beta0, beta_decay=args.beta_decay, laps=args.laps, max_steps=args.max_steps,
                       eval_tracks=args.eval_tracks, eval_laps=args.eval_laps, baseline=not args.no_baseline,
                       seed=args.seed, no_augment=args.no_augment)
    run_dagger(args.data, args.model, args.tracks, args.out, cfg, device=args.device)
    return 0
