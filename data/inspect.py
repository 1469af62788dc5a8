"""`inspect`: what is in a folder of recorded drives, before anyone trains on it.

A table per drive (who drove, where, how long, how often it left the track, how the steering is
spread) and text histograms (steering; throttle and speed too for drives with throttle, as in the
race task): a drive that is all straight-ahead steering, or a killed recording
with no frames, shows up here instead of as a mysteriously bad policy. `--json` for scripts,
`--plot` for a picture of the steering histogram and the driven lines on the track maps.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from agent.metrics import count_events
from sim.errors import UserError
from sim.files import atomic_savefig
from sim.progress import table

from .recording import Drive, find_drives, read_drive

EXAMPLES = """examples:
  python run_drive.py inspect data/drives/auto
  python run_drive.py inspect data/drives/auto --json > drives.json
  python run_drive.py inspect data/drives --plot data/reports/drives.png

A corrupt or truncated chunk is reported on stderr and skipped; the rest of the drive is still read."""

BINS = np.linspace(-1.0, 1.0, 21)  # 20 steering (and throttle) bins of 0.1
SPEED_BINS_KMH = np.arange(0.0, 170.0, 10.0)  # 16 speed bins of 10 km/h
RAMP = " .:-=+*#%@"


def drive_stats(d: Drive, root: Path) -> dict:
    """The numbers a person checks before training on a drive (JSON-ready: no NaN, None instead)."""
    n = len(d)
    st = d.state
    off = d.off_track
    events = count_events(off)
    laps = None
    if n:
        frac = float(st["lap_fraction"][-1])
        laps = round(float(st["lap"][-1]) + (frac if math.isfinite(frac) else 0.0), 2)
    counts, _ = np.histogram(np.clip(d.steering, -1, 1), BINS)
    speed_kmh = np.clip(np.nan_to_num(st["speed"]) * 3.6, 0, SPEED_BINS_KMH[-1]) if n else np.zeros(0)
    throttle = None
    if d.throttle is not None:
        throttle = np.histogram(np.clip(np.nan_to_num(d.throttle), -1, 1), BINS)[0].tolist()
    driver = d.meta.get("driver") or {}
    try:
        rel = str(d.path.relative_to(root)) if d.path != root else d.path.name
    except ValueError:
        rel = str(d.path)

    def num(f):
        return round(float(f(d.steering)), 4) if n else None

    return {
        "path": str(d.path),
        "name": rel,
        "frames": n,
        "source": str(d.meta.get("source", "?")),
        "track": str(d.meta.get("track", "?")),
        "noise": driver.get("noise") if isinstance(driver, dict) else None,
        "duration_s": round(d.duration_s, 2),
        "laps": laps,
        "off_track_events": events,
        "interventions": int(np.count_nonzero(d.intervention)),
        "corrections": int(np.count_nonzero(d.correction)),
        "steering_min": num(np.min),
        "steering_max": num(np.max),
        "steering_mean": num(np.mean),
        "steering_std": num(np.std),
        "steering_histogram": {"edges": [round(float(e), 2) for e in BINS], "counts": counts.tolist()},
        "throttle_histogram": None if throttle is None else {"edges": [round(float(e), 2) for e in BINS],
                                                             "counts": throttle},
        "speed_kmh_histogram": {"edges": SPEED_BINS_KMH.tolist(),
                                "counts": np.histogram(speed_kmh, SPEED_BINS_KMH)[0].tolist()},
        "mean_speed_kmh": round(float(speed_kmh.mean()), 1) if n else None,
        "finished": d.finished,
        "camera": _camera_name(d.meta),
        "warnings": list(d.warnings),
    }


def _camera_name(meta: dict) -> str:
    cam = (meta.get("env") or {}).get("camera") or {}
    if not isinstance(cam, dict):
        return "?"
    return f"{cam.get('kind', '?')}:{cam.get('width', '?')}x{cam.get('height', '?')}"


def ramp(counts: list[int]) -> str:
    """A histogram in one line of characters (denser character = more frames)."""
    top = max(counts) if counts else 0
    if top == 0:
        return " " * len(counts)
    return "".join(RAMP[0] if c == 0 else RAMP[max(1, math.ceil((len(RAMP) - 1) * c / top))] for c in counts)


def bar_chart(counts: np.ndarray, width: int = 40, title: str = "steering histogram, all drives "
              "(-1 = full left, +1 = full right)", edges: np.ndarray = BINS, fmt: str = "{:+.1f}") -> str:
    top = max(int(counts.max()), 1)
    lines = [title]
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        lines.append(f"  {fmt.format(lo)}..{fmt.format(hi)} |{'#' * math.ceil(width * c / top):<{width}} {int(c)}")
    return "\n".join(lines)


def inspect_drives(folder: str | os.PathLike) -> tuple[list[dict], list[Drive]]:
    """Stats of every drive under `folder`; a missing or empty folder is a `UserError`."""
    root = Path(folder)
    paths = find_drives(root)
    if not paths:
        raise UserError(f"{root}: no recorded drives here (no folder with a meta.json)")
    drives = [read_drive(p, frames=False) for p in paths]
    return [drive_stats(d, root) for d in drives], drives


def plot_drives(stats: list[dict], drives: list[Drive], out: str | os.PathLike, max_maps: int = 11) -> Path:
    """Save a PNG: steering histogram, then each drive's driven line on its track map (atomic write)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.track import load_track

    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"--plot {out}: folder {out.parent} does not exist")
    throttled = [d for d in drives if d.throttle is not None]
    extra = 2 if throttled else 0  # race: throttle and speed histograms beside the steering
    shown = drives[:max(1, max_maps - extra)]
    n = 1 + extra + len(shown)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    ax = axes[0][0]
    all_steer = np.concatenate([d.steering for d in drives]) if drives else np.zeros(0)
    ax.hist(all_steer, bins=BINS, color="tab:blue")
    ax.set_title(f"steering, {len(all_steer)} frames, {len(drives)} drives")
    ax.set_xlabel("steering (-1 left, +1 right)")
    ax.set_yscale("log")
    if throttled:
        ax = axes[0][1 % cols] if cols > 1 else axes[1][0]
        ax.hist(np.concatenate([np.nan_to_num(d.throttle) for d in throttled]), bins=BINS, color="tab:green")
        ax.set_title(f"throttle, {len(throttled)} drives")
        ax.set_xlabel("throttle (-1 full brake, +1 full throttle)")
        ax.set_yscale("log")
        ax = axes[(2 // cols)][2 % cols]
        ax.hist(np.concatenate([np.nan_to_num(d.state["speed"]) * 3.6 for d in throttled]), bins=SPEED_BINS_KMH,
                color="tab:purple")
        ax.set_title("speed")
        ax.set_xlabel("speed (km/h)")
    for i, (d, s) in enumerate(zip(shown, stats), start=1 + extra):
        ax = axes[i // cols][i % cols]
        try:
            track = load_track(s["track"])
            left, right = track.edges()
            for edge in (left, right):
                closed = np.vstack([edge, edge[:1]])
                ax.plot(closed[:, 0], closed[:, 1], color="0.5", lw=0.8)
        except UserError:
            ax.text(0.5, 0.02, "track not found", transform=ax.transAxes, ha="center", fontsize=8)
        x, y = d.state["x"], d.state["y"]
        ax.plot(x, y, color="tab:orange", lw=0.9)
        if d.off_track.any():
            ax.plot(x[d.off_track], y[d.off_track], "rx", ms=4, label="off track")
        ax.set_title(f"{s['name']}\n{s['track']} ({s['frames']} frames)", fontsize=8)
        ax.set_aspect("equal")
        ax.axis("off")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    if len(drives) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(drives)} drives shown")
    fig.tight_layout()
    return atomic_savefig(fig, out, format="png", dpi=90)


def add_arguments(parser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a drive folder, or a folder of drives (searched recursively)")
    parser.add_argument("--json", action="store_true", help="print the stats as JSON on stdout instead of tables")
    parser.add_argument("--plot", metavar="PNG", help="save the steering histogram and the driven lines as a PNG")


def main(args) -> int:
    stats, drives = inspect_drives(args.folder)
    for s in stats:
        for w in s["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
    if args.plot:
        plot_drives(stats, drives, args.plot)
    if args.json:
        print(json.dumps({"drives": stats}, indent=2))
        return 0
    rows = [[s["name"], s["source"] + (f" noise={s['noise']}" if s["noise"] else ""), s["track"], s["frames"],
             f"{s['duration_s']:.1f}", "-" if s["laps"] is None else f"{s['laps']:.2f}", s["off_track_events"],
             s["corrections"], _f(s["steering_min"]), _f(s["steering_max"]), _f(s["steering_mean"]),
             "[" + ramp(s["steering_histogram"]["counts"]) + "]",
             "yes" if s["finished"] else "no (killed?)"]
            for s in stats]
    print(table(["drive", "source", "track", "frames", "seconds", "laps", "off-track", "corrections", "min",
                 "max", "mean", "steering -1..+1", "closed"], rows, title=f"Drives under {args.folder}"))
    total = sum(s["frames"] for s in stats)
    minutes = sum(s["duration_s"] for s in stats) / 60
    print(f"\n{len(stats)} drives, {total} frames, {minutes:.1f} minutes of driving\n")
    counts = np.sum([s["steering_histogram"]["counts"] for s in stats], axis=0)
    print(bar_chart(np.asarray(counts)))
    throttled = [s["throttle_histogram"]["counts"] for s in stats if s["throttle_histogram"] is not None]
    if throttled:  # race drives: how the speed was driven
        print()
        print(bar_chart(np.sum(throttled, axis=0), title="throttle histogram, drives with throttle "
                        "(-1 = full brake, +1 = full throttle)"))
        print()
        speeds = np.sum([s["speed_kmh_histogram"]["counts"] for s in stats if s["throttle_histogram"] is not None],
                        axis=0)
        print(bar_chart(speeds, title="speed histogram, drives with throttle (km/h)", edges=SPEED_BINS_KMH,
                        fmt="{:3.0f}"))
    if args.plot:
        print(f"\nplot saved: {args.plot}")
    return 0


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"
