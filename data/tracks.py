"""`run_drive.py tracks`: what tracks there are to drive, with their size and hardest corner.

Without a SPEC it lists the built-in sets (procedural, challenge and the 25 real circuits) in one
summary table; with a SPEC it lists each track of it. `--plot` draws the tracks as a thumbnail grid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.files import atomic_savefig
from sim.progress import table
from sim.track import Track, load_track, parse_spec, real_circuit_names

EXAMPLES = """examples:
  python run_drive.py tracks                          # the built-in sets, one summary row each
  python run_drive.py tracks real:all                 # the 25 real circuits, one row each
  python run_drive.py tracks real:suzuka,challenge:0-3
  python run_drive.py tracks real:all --plot real.png # a thumbnail of each circuit
  python run_drive.py tracks my_tracks/ --plot mine.png

Track SPECs: procedural:7, procedural:0-19, challenge:0-9, real:all, real:NAME (any case, e.g.
real:suzuka), a CSV file, a folder of CSVs; join with commas. The tightest corner is the radius
of the sharpest 10 m of road."""

MAX_THUMBNAILS = 64


@dataclass(frozen=True)
class TrackSet:
    """A built-in family of tracks and the SPEC of the sample this command describes."""

    name: str
    sample: str
    about: str


BUILT_IN = (
    TrackSet("procedural", "procedural:0-19", "seeded random circuits, any seed >= 0 (procedural:SEED)"),
    TrackSet("challenge", "challenge:0-9", "hairpins, chicanes, narrow roads: a held-out test style"),
    TrackSet("real", "real:all", "25 real circuits (TUM racetrack-database, LGPL-3.0): real:NAME"),
)


def describe(track: Track) -> dict:
    """Length, road width range and tightest corner of one track, in metres."""
    width = track.width_left + track.width_right
    return {"length_m": track.length, "width_min_m": float(width.min()), "width_max_m": float(width.max()),
            "tightest_corner_m": track.tightest_corner()}


def _range(lo: float, hi: float, digits: int = 0) -> str:
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


def sets_table() -> str:
    rows = []
    for s in BUILT_IN:
        facts = [describe(load_track(spec)) for spec in parse_spec(s.sample)]
        rows.append([s.name, s.sample, len(facts),
                     _range(min(f["length_m"] for f in facts), max(f["length_m"] for f in facts)),
                     _range(min(f["width_min_m"] for f in facts), max(f["width_max_m"] for f in facts), 1),
                     f"{min(f['tightest_corner_m'] for f in facts):.1f}", s.about])
    return table(["set", "SPEC shown", "tracks", "length m", "width m", "tightest corner m", "what"], rows,
                 title="Built-in track sets")


def tracks_table(specs: list[str]) -> str:
    rows = []
    for spec in specs:
        track = load_track(spec)
        f = describe(track)
        rows.append([track.name, spec if ":" in spec else Path(spec).name, f"{f['length_m']:.0f}",
                     _range(f["width_min_m"], f["width_max_m"], 1), f"{f['tightest_corner_m']:.1f}"])
    return table(["track", "SPEC", "length m", "width m", "tightest corner m"], rows)


def check_plot_path(out: str | os.PathLike) -> Path:
    """`--plot`'s file, checked before any work: a .png in a folder that exists."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--plot {out}: give a .png file name")
    if not out.parent.is_dir():
        raise UserError(f"--plot {out}: folder {out.parent} does not exist")
    return out


def plot_tracks(specs: list[str], out: str | os.PathLike) -> Path:
    """A PNG grid with one thumbnail per track (centerline, start marked); written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = check_plot_path(out)
    shown = specs[:MAX_THUMBNAILS]
    cols = min(6, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, spec in zip(axes.flat, shown):
        track = load_track(spec)
        ax.plot(*np.vstack([track.xy, track.xy[:1]]).T, color="0.25", lw=1.2)  # the road is ~1% of the width
        ax.plot(*track.point_at(0.0), marker="o", color="tab:red", ms=3)
        ax.set_title(f"{track.name}\n{track.length / 1000:.1f} km, r {track.tightest_corner():.0f} m", fontsize=7)
        ax.set_aspect("equal")
    if len(specs) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(specs)} tracks", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, out, format="png", dpi=90)


def add_arguments(parser) -> None:
    parser.add_argument("spec", metavar="SPEC", nargs="?",
                        help="tracks to list (default: a summary of each built-in set)")
    parser.add_argument("--plot", metavar="PNG", help="draw the tracks of SPEC (default: real:all) as thumbnails")


def main(args) -> int:
    if args.plot:
        check_plot_path(args.plot)
    if args.spec:
        specs = parse_spec(args.spec)
        print(tracks_table(specs))
    else:
        specs = parse_spec("real:all")
        print(sets_table())
        print(f"\nreal circuits: {', '.join(real_circuit_names())}")
    if args.plot:
        print(f"\nplot saved: {plot_tracks(specs, args.plot)}")
    return 0
