"""Recorded drives on disk: a folder of `meta.json` plus numbered `.npz` chunks, readable with numpy + json.

Why chunks: a drive is written a few seconds at a time, each chunk to a temporary name and then renamed,
so a process killed at any moment keeps every chunk it finished and a half-written chunk is never read.
Why `np.savez_compressed` of stacked frames: it was smaller and faster than per-frame PNG on our frames
(the measured figures are in data/README.md, "Size and speed"), and it is lossless, so a drive
round-trips exactly. Nothing is pickled: every array is plain numeric and read with
`allow_pickle=False`.

Layout of a drive folder::

    meta.json            {"format_version", "source", "driver", "track", "env", "created", ...,
                          "summary": {...}}  (summary added by close(); absent if the recorder was killed)
    chunk_00000.npz      frames (n,H,W,3) uint8, steering, throttle, executed_steering (float32; NaN = not
    chunk_00001.npz      given), correction, off_track, intervention (bool), and one float64 array per
    ...                  car-state key in STATE_KEYS (lap is int32); task traffic adds `cars` (n, 12, 4)
                         float64: x, y, yaw and colour of the other cars each frame was drawn with
                         (NaN rows where fewer), so a view of the same moment can be drawn again, and
                         expert drives `shifted_labels` (n, 2, 3): shifts of the view with the
                         expert's steering there (see OPTIONAL_KEYS)
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from agent.metrics import count_events
from sim.errors import UserError
from sim.files import atomic_write, read_versioned_json, write_json

FORMAT_VERSION = 1
META_FILE = "meta.json"
CHUNK_RE = re.compile(r"^chunk_(\d{5,})\.npz$")
# Car state saved at every step (from the env's info dict): enough to replay and plot the drive.
STATE_KEYS = ("x", "y", "yaw", "speed", "steer_angle", "s", "cte", "heading_error", "time", "lap",
              "lap_fraction", "progress_m")
LABEL_KEYS = ("steering", "throttle", "executed_steering", "correction", "off_track", "intervention")
CARS_KEY = "cars"  # task traffic: the other cars beside each frame (env info "cars"); absent in other tasks
SHIFTED_KEY = "shifted_labels"  # traffic, expert labels: (shift m, turn rad, steering) rows per frame
# per-frame arrays some drives have and others not: name -> its last dimension (rows per frame vary)
OPTIONAL_KEYS = {CARS_KEY: 4, SHIFTED_KEY: 3}


class DriveWriter:
    """Appends (frame, label, state) steps to a drive folder, one atomic chunk every `chunk_steps`.

    `meta` says who drove and how (source, driver, track, env, created); the writer adds
    `format_version` and, on close, a `summary`. Use as a context manager or call `close()`.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict, chunk_steps: int = 100):
        if chunk_steps < 1:
            raise ValueError("chunk_steps must be >= 1")
        self.folder = Path(folder)
        self.chunk_steps = int(chunk_steps)
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / META_FILE).exists():
            raise UserError(f"{self.folder}: already holds a recorded drive; choose another folder")
        self.meta = dict(meta)
        self.meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.meta["format_version"] = FORMAT_VERSION
        self.meta["chunk_steps"] = self.chunk_steps
        write_json(self.folder / META_FILE, self.meta)
        self.frames_written = 0
        self.chunks_written = 0
        self.bytes_written = 0
        self.closed = False
        self._stats = {"interventions": 0, "corrections": 0, "laps": 0, "time_first": None, "time_last": None}
        self._off_flags = bytearray()  # one byte a step: the off-track events are counted at close
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._frames: list[np.ndarray] = []
        self._cols: dict[str, list] = {k: [] for k in LABEL_KEYS + STATE_KEYS}
        self._optional: dict[str, list[np.ndarray]] = {k: [] for k in OPTIONAL_KEYS}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Keep what was driven but mark the drive unfinished (no summary): used when the recording
        is interrupted (Ctrl-C, a dead parent, an error)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        except OSError:
            pass  # e.g. disk full: the chunks already on disk stay intact

    def __len__(self) -> int:
        return self.frames_written + len(self._frames)

    def add(self, frame: np.ndarray, steering: float, info: dict, *, throttle: float | None = None,
            executed_steering: float | None = None, correction: bool = False,
            shifted_labels: np.ndarray | None = None) -> None:
        """One step: the frame the driver saw, the steering LABEL for it, and the env info of that frame
        (task traffic: with the cars drawn in it); an expert's labels of shifted views ride along."""
        if self.closed:
            raise ValueError("DriveWriter is closed")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must be uint8 HxWx3, got {frame.dtype} {frame.shape}")
        if self._frames and frame.shape != self._frames[0].shape:
            raise ValueError(f"frame shape changed within a drive: {frame.shape} vs {self._frames[0].shape}")
        c = self._cols
        self._frames.append(frame.copy())
        c["steering"].append(steering)
        c["throttle"].append(np.nan if throttle is None else throttle)
        c["executed_steering"].append(np.nan if executed_steering is None else executed_steering)
        c["correction"].append(bool(correction))
        off = bool(info.get("off_track", False))
        c["off_track"].append(off)
        c["intervention"].append(bool(info.get("intervention", False)))
        for k in STATE_KEYS:
            c[k].append(info.get(k, -1 if k == "lap" else np.nan))
        for k, v in ((CARS_KEY, info.get(CARS_KEY)), (SHIFTED_KEY, shifted_labels)):
            if v is not None:
                self._optional[k].append(np.asarray(v, np.float64))
        st = self._stats
        self._off_flags.append(off)
        st["interventions"] += int(bool(info.get("intervention", False)))
        st["corrections"] += int(bool(correction))
        st["laps"] = max(st["laps"], int(info.get("lap", 0)))
        t = info.get("time")
        if t is not None:
            st["time_first"] = t if st["time_first"] is None else st["time_first"]
            st["time_last"] = t
        if len(self._frames) >= self.chunk_steps:
            self.flush()

    def flush(self) -> None:
        """Write the buffered steps as the next chunk (atomically); a no-op when nothing is buffered."""
        if not self._frames:
            return
        c = self._cols
        arrays = {"frames": np.stack(self._frames)}
        for k in ("steering", "throttle", "executed_steering"):
            arrays[k] = np.asarray(c[k], np.float32)
        for k in ("correction", "off_track", "intervention"):
            arrays[k] = np.asarray(c[k], bool)
        for k in STATE_KEYS:
            arrays[k] = np.asarray(c[k], np.int32 if k == "lap" else np.float64)
        for k, rows in self._optional.items():
            if len(rows) == len(self._frames):  # every step of the chunk gave it
                arrays[k] = np.stack(rows)
        path = self.folder / f"chunk_{self.chunks_written:05d}.npz"
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        self.bytes_written += path.stat().st_size
        self.frames_written += len(self._frames)
        self.chunks_written += 1
        self._reset_buffer()

    def close(self) -> None:
        """Flush the last partial chunk and add a summary to meta.json (its absence marks a killed drive)."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        st = self._stats
        dt = _dt(self.meta)
        self.meta["summary"] = {
            "frames": self.frames_written,
            "chunks": self.chunks_written,
            "duration_s": self.frames_written * dt if dt else None,
            "laps": st["laps"],
            "off_track_events": count_events(np.frombuffer(bytes(self._off_flags), np.uint8)),
            "interventions": st["interventions"],
            "corrections": st["corrections"],
            "bytes": self.bytes_written,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.folder / META_FILE, self.meta)


def _dt(meta: dict) -> float | None:
    try:
        return float(meta["env"]["car"]["dt"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class Drive:
    """A recorded drive in memory. `throttle` is None when the driver gave none; `executed_steering`
    equals `steering` where the car got the label itself; `warnings` lists skipped chunks."""

    path: Path
    meta: dict
    frames: np.ndarray
    steering: np.ndarray
    throttle: np.ndarray | None
    executed_steering: np.ndarray
    correction: np.ndarray
    off_track: np.ndarray
    intervention: np.ndarray
    state: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)
    cars: np.ndarray | None = None  # (n, 12, 4) the other cars beside each frame (task traffic), else None
    shifted_labels: np.ndarray | None = None  # (n, k, 3) shifted views and the expert's steering there

    def __len__(self) -> int:
        return int(self.steering.shape[0])

    @property
    def dt(self) -> float:
        """Seconds between frames (the env's control period)."""
        return _dt(self.meta) or 0.05

    @property
    def duration_s(self) -> float:
        return len(self) * self.dt

    @property
    def finished(self) -> bool:
        """False when the recorder never closed the drive (killed or crashed)."""
        return "summary" in self.meta

    def pairs(self) -> Iterator[tuple[np.ndarray, float]]:
        """(frame, steering label) for training."""
        for i in range(len(self)):
            yield self.frames[i], float(self.steering[i])


def read_meta(folder: str | os.PathLike) -> dict:
    """The drive's meta.json, checked: a missing or unreadable file, or another format version, is a
    `UserError` naming the file."""
    return read_versioned_json(Path(folder) / META_FILE, "drive", FORMAT_VERSION,
                               f"not found ({folder} is not a recorded drive)", "unreadable drive metadata")


def chunk_paths(folder: str | os.PathLike) -> list[Path]:
    """The finished chunk files of a drive, in recording order (temp files are never listed)."""
    found = []
    for p in Path(folder).iterdir():
        m = CHUNK_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _load_chunk(source: Path | io.BytesIO, frames: bool) -> dict[str, np.ndarray]:
    """Load and validate one chunk; raises ValueError with a short reason when it is not usable."""
    want = LABEL_KEYS + STATE_KEYS + (("frames",) if frames else ())
    out = {}
    with np.load(source, allow_pickle=False) as z:
        missing = [k for k in want if k not in z.files]
        if missing:
            raise ValueError(f"missing arrays {', '.join(missing)}")
        for k in want:
            out[k] = z[k]
        for k in OPTIONAL_KEYS:
            if k in z.files:
                out[k] = z[k]
    n = out["steering"].shape[0]
    for k, a in out.items():
        if a.ndim < 1 or a.shape[0] != n:
            raise ValueError(f"array {k!r} has {a.shape[0] if a.ndim else 0} rows, expected {n}")
    if frames:
        f = out["frames"]
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[3] != 3:
            raise ValueError(f"frames are {f.dtype} {f.shape}, expected uint8 (n,H,W,3)")
    for k in LABEL_KEYS + STATE_KEYS:
        if out[k].ndim != 1 or out[k].dtype.kind not in "biuf":
            raise ValueError(f"array {k!r} is {out[k].dtype} {out[k].shape}, expected a 1-D number array")
    for k, width in OPTIONAL_KEYS.items():
        a = out.get(k)
        if a is not None and (a.ndim != 3 or a.shape[2] != width or a.dtype.kind != "f"):
            raise ValueError(f"array {k!r} is {a.dtype} {a.shape}, expected float (n, rows, {width})")
    return out


def iter_chunks(folder: str | os.PathLike, frames: bool = True, warnings: list[str] | None = None,
                on_bytes: Callable[[Path, bytes], object] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield each readable chunk's arrays in order, streaming (constant memory for long drives).

    A corrupt, truncated or inconsistent chunk is skipped and a one-line message naming the file is
    appended to `warnings`. `on_bytes(path, bytes)` sees each chunk file's bytes as they were read
    (the frame cache hashes exactly what it decoded)."""
    shape = None
    for path in chunk_paths(folder):
        try:
            if on_bytes is None:
                chunk = _load_chunk(path, frames)
            else:
                blob = path.read_bytes()
                on_bytes(path, blob)
                chunk = _load_chunk(io.BytesIO(blob), frames)
            if frames:
                if shape is None:
                    shape = chunk["frames"].shape[1:]
                elif chunk["frames"].shape[1:] != shape:
                    raise ValueError(f"frame size {chunk['frames'].shape[1:]} differs from earlier {shape}")
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted file means "skip this chunk"
            if warnings is not None:
                reason = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
                warnings.append(f"{path}: skipped corrupt or truncated chunk ({reason})")
            continue
        yield chunk


def read_drive(folder: str | os.PathLike, frames: bool = True) -> Drive:
    """Read a whole drive. `frames=False` skips decoding the images (fast, for summaries); then
    `frames` is an empty (0,) array."""
    folder = Path(folder)
    meta = read_meta(folder)
    warnings: list[str] = []
    chunks = list(iter_chunks(folder, frames=frames, warnings=warnings))
    cat = {}
    for k in LABEL_KEYS + STATE_KEYS + (("frames",) if frames else ()):
        if chunks:
            cat[k] = np.concatenate([c[k] for c in chunks])
        else:
            cat[k] = np.zeros((0,), np.float32)
    for k in OPTIONAL_KEYS:
        if chunks and all(k in c for c in chunks):
            cat[k] = np.concatenate([c[k] for c in chunks])
    if frames and not chunks:
        cam = (meta.get("env") or {}).get("camera") or {}
        cat["frames"] = np.zeros((0, int(cam.get("height", 0)), int(cam.get("width", 0)), 3), np.uint8)
    return drive_from_columns(folder, meta, cat["frames"] if frames else np.zeros((0,), np.uint8), cat, warnings)


def drive_from_columns(folder: Path, meta: dict, frames, cols: dict[str, np.ndarray],
                       warnings: list[str]) -> Drive:
    """A `Drive` from the concatenated chunk arrays (the one place their types are settled)."""
    steering = cols["steering"].astype(np.float32)
    throttle = cols["throttle"].astype(np.float32)
    executed = cols["executed_steering"].astype(np.float32)
    executed = np.where(np.isnan(executed), steering, executed).astype(np.float32)
    return Drive(
        path=folder,
        meta=meta,
        frames=frames,
        steering=steering,
        throttle=None if np.all(np.isnan(throttle)) else throttle,
        executed_steering=executed,
        correction=cols["correction"].astype(bool),
        off_track=cols["off_track"].astype(bool),
        intervention=cols["intervention"].astype(bool),
        state={k: cols[k].astype(np.int32 if k == "lap" else np.float64) for k in STATE_KEYS},
        warnings=warnings,
        cars=cols[CARS_KEY].astype(np.float64) if CARS_KEY in cols else None,
        shifted_labels=cols[SHIFTED_KEY].astype(np.float64) if SHIFTED_KEY in cols else None,
    )


def unique_drive_name(spec: str, taken: set[str]) -> str:
    """A folder name for a drive of track `spec` (`procedural:3` -> `procedural_3`, a CSV -> its stem),
    made unique against `taken`, which it extends."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec).stem if spec.endswith(".csv") else spec).strip("_")
    name, k = base or "drive", 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def find_drives(root: str | os.PathLike) -> list[Path]:
    """Every drive folder (one holding meta.json) under `root`, `root` included, sorted.

    A missing root is a `UserError`; a folder with no drives gives an empty list."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: folder not found")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected a folder of recorded drives)")
    if (root / META_FILE).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(META_FILE) if p.is_file())
