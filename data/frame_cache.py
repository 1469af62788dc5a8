"""Decoded frames of recorded drives, cached on disk as raw uint8 and read a batch's frames at a time.

Why: a 96x96 frame is 722 bytes in a drive's compressed chunks but 27,648 bytes decoded, so decoding
every frame into RAM (what training did) needs ~11 GB for 400k frames, on every DDP rank. Decoding
once to disk and reading only the frames a batch needs keeps memory flat whatever the data size.

Where: one entry per drive under `cache_root()`: `$E2E_DRIVE_CACHE/frames` when the variable is set,
else `$XDG_CACHE_HOME/e2e-drive/frames`, else `~/.cache/e2e-drive/frames` (beside the generated tracks'
cache). Deleting it is always safe (it is rebuilt on the next `train`); `E2E_DRIVE_CACHE=off` turns it
off (frames are then decoded into memory). An entry is named by the SHA-256 of the drive's chunk files (names and
bytes): a drive whose chunks change (re-recorded, a chunk added, damaged or deleted) gets a new entry,
and the same drive copied elsewhere reuses the old one.

An entry is two files: `KEY.u8` (the frames, raw (n, H, W, 3) uint8, C order) and `KEY.npz` (labels,
car state, chunk warnings, the frames' shape and checksums of a few frames). Each is written to a
temporary name and renamed, `KEY.npz` last, so a killed build never leaves an entry that looks whole.
On open, an entry is checked (the key it records, array lengths, the frames file's exact size, the
sampled checksums); anything wrong and it is rebuilt, never trusted. A lock file per entry makes
concurrent builders (DDP ranks, two trainings) build it once.

Why `pread` and not `mmap`: pages of a memory map that a process touched count in its resident size
until the kernel needs them back, so sampling 400k frames at random would grow RSS towards the whole
11 GB. Reads with `pread` land in the OS page cache, shared and reclaimable, and the process holds only
the frames of the batch in hand. The file is a plain uint8 array all the same:
`np.memmap("KEY.u8", np.uint8, "r", shape=...)` maps it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.files import atomic_write, cache_dir

from .recording import (
    LABEL_KEYS,
    OPTIONAL_KEYS,
    STATE_KEYS,
    Drive,
    chunk_paths,
    drive_from_columns,
    iter_chunks,
    read_meta,
)

CACHE_VERSION = 2  # part of every key: a new layout never reads an old entry (2: traffic drives' optional arrays)
ENV_VAR = "E2E_DRIVE_CACHE"  # read by sim.files.cache_dir
CHECKED_FRAMES = 16  # frames whose checksums are verified each time an entry is opened


class CacheUnwritable(UserError):
    """The cache folder cannot be created or written (a problem of the set-up, not of one drive)."""


def cache_root() -> Path | None:
    """Where decoded frames are cached (`sim.files.cache_dir`); None when `E2E_DRIVE_CACHE=off`."""
    return cache_dir("frames")


def _digest() -> hashlib._Hash:
    h = hashlib.sha256()
    h.update(f"e2e-drive frame cache v{CACHE_VERSION}\n".encode())
    return h


def drive_key(folder: str | os.PathLike) -> str:
    """The content key of a drive: SHA-256 of its readable chunk files' names and bytes."""
    h = _digest()
    for path in chunk_paths(folder):
        try:
            blob = path.read_bytes()
        except OSError:
            continue  # read_drive skips it too
        _feed(h, path.name, blob)
    return h.hexdigest()


def _feed(h, name: str, blob: bytes) -> None:
    h.update(f"{name}\0{len(blob)}\0".encode())
    h.update(blob)


# -- reading -----------------------------------------------------------------------------------------
_FDS: OrderedDict[str, int] = OrderedDict()  # open cache files of this process, least recently used first
_MAX_FDS = 64
_RUN_FRAMES = 512  # frames per `preadv` at most (the system's limit on buffers per call is 1024 or more)


def _fd(path: str) -> int:
    fd = _FDS.pop(path, None)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        if len(_FDS) >= _MAX_FDS:
            os.close(_FDS.popitem(last=False)[1])
    _FDS[path] = fd
    return fd


def _forget_fd(path: str) -> None:
    """Close our descriptor of `path`: the file was (or is about to be) replaced by a new one."""
    fd = _FDS.pop(path, None)
    if fd is not None:
        os.close(fd)


class FrameStore:
    """The frames of one drive in a cache file, indexed like a read-only (n, H, W, 3) uint8 array.

    `store[i]` reads one frame (a fresh, writable array), `store[rows]` or `store[a:b]` several,
    `np.asarray(store)` all of them. `rows` maps this store's frames to rows of the file, so a
    cleaned drive (bad frames dropped) is a store over the kept rows. Picklable (for DataLoader
    workers started with spawn): it carries the path, never an open file.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], rows: np.ndarray | None = None):
        self.path = str(path)
        self.frame_shape = tuple(int(v) for v in shape[1:])
        self.file_frames = int(shape[0])
        self.frame_bytes = int(np.prod(self.frame_shape))
        self.rows = np.arange(self.file_frames, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= self.file_frames):
            raise IndexError("rows outside the cached drive")

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.frame_shape)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.frame_bytes

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, keep: np.ndarray) -> FrameStore:
        """The store of the frames selected by `keep` (a boolean mask or indices), reading nothing."""
        return FrameStore(self.path, (self.file_frames, *self.frame_shape), self.rows[keep])

    def __getitem__(self, item):
        if isinstance(item, (int, np.integer)):
            return self.read_rows(self.rows[item])[0]
        if isinstance(item, tuple):  # frames[i, ...]: read the frames, then index the rest in memory
            return self[item[0]][(slice(None), *item[1:]) if not isinstance(item[0], (int, np.integer))
                                 else item[1:]]
        return self.read_rows(self.rows[item])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.read_rows(self.rows)
        return arr if dtype is None else arr.astype(dtype)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def read_rows(self, file_rows: np.ndarray) -> np.ndarray:
        """Frames at these rows of the file, in the order asked. The rows are read in file order, and
        each run of consecutive rows takes one `preadv` that scatters its frames straight to their
        places in the result: a batch costs one system call per run, and no copy after the read."""
        rows = np.asarray(file_rows, np.int64).reshape(-1).tolist()
        out = np.empty((len(rows), *self.frame_shape), np.uint8)
        if not rows:
            return out
        flat = memoryview(out).cast("B")
        fb = self.frame_bytes
        fd = _fd(self.path)
        order = sorted(range(len(rows)), key=rows.__getitem__)
        start = 0
        for end in range(1, len(order) + 1):
            if end == len(order) or rows[order[end]] != rows[order[end - 1]] + 1 or end - start == _RUN_FRAMES:
                self._read(fd, rows[order[start]], [flat[k * fb:(k + 1) * fb] for k in order[start:end]])
                start = end
        return out

    def _read(self, fd: int, row: int, buffers: list[memoryview]) -> None:
        want = len(buffers) * self.frame_bytes
        got = os.preadv(fd, buffers, row * self.frame_bytes)
        if got != want:
            raise OSError(f"{self.path}: short read ({got} of {want} bytes): the frame cache changed "
                          "under this process; run again to rebuild it")


# -- building and opening ----------------------------------------------------------------------------
def _check_rows(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, CHECKED_FRAMES)).astype(np.int64)) if n else np.zeros(0, np.int64)


def _crc(frames: np.ndarray) -> np.ndarray:
    return np.array([zlib.crc32(np.ascontiguousarray(f).data) for f in frames], np.uint32)


def _open_entry(root: Path, key: str, folder: Path, meta: dict) -> Drive | None:
    """The cached drive under `key`, or None when there is no whole, valid entry."""
    npz, raw = root / f"{key}.npz", root / f"{key}.u8"
    _forget_fd(str(raw))  # check the file there now, not one this process opened before
    if not npz.is_file() or not raw.is_file():
        return None
    try:
        with np.load(npz, allow_pickle=False) as z:
            cols = {k: z[k] for k in z.files}
        if str(cols.pop("key")) != key:
            return None
        shape = tuple(int(v) for v in cols.pop("frames_shape"))
        check_rows, check_crc = cols.pop("check_rows"), cols.pop("check_crc")
        built_in = str(cols.pop("folder"))  # warnings name the chunk files where the entry was built
        warnings = [str(w).replace(built_in, str(folder), 1) for w in cols.pop("warnings")]
        if len(shape) != 4 or shape[3] != 3 or raw.stat().st_size != int(np.prod(shape)):
            return None
        if any(k not in cols or cols[k].shape != (shape[0],) for k in LABEL_KEYS + STATE_KEYS):
            return None
        store = FrameStore(raw, shape)
        if not np.array_equal(check_rows, _check_rows(shape[0])) or \
                not np.array_equal(_crc(store.read_rows(check_rows)), check_crc):
            return None
    except Exception:  # noqa: BLE001 - a damaged cache file, whatever numpy says: rebuild it
        return None
    return drive_from_columns(folder, meta, store, cols, warnings)


def _build_entry(root: Path, key: str, folder: Path, meta: dict) -> Drive | None:
    """Decode the drive's chunks into the entry `key` (streaming: one chunk in memory at a time).
    None when the chunks read were not those `key` names (the drive changed meanwhile)."""
    for stale in [*root.glob(f".{key}.u8.*.tmp"), *root.glob(f".{key}.npz.*.tmp")]:
        stale.unlink(missing_ok=True)  # left by a killed build (we hold the key's lock: none is running)
    h = _digest()
    warnings: list[str] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in LABEL_KEYS + STATE_KEYS}
    optional: dict[str, list[np.ndarray | None]] = {k: [] for k in OPTIONAL_KEYS}  # per chunk, where given
    shape: list[int] = []  # (frames, height, width, 3), known once the chunks are read

    def write(f) -> None:
        n = 0
        for chunk in iter_chunks(folder, frames=True, warnings=warnings,
                                 on_bytes=lambda path, blob: _feed(h, path.name, blob)):
            frames = chunk["frames"]
            shape[:] = [0, *frames.shape[1:]]
            f.write(np.ascontiguousarray(frames).data)
            for k in cols:
                cols[k].append(chunk[k])
            for k, parts in optional.items():
                parts.append(chunk.get(k))
            n += len(frames)
        if not shape:  # no readable chunk: an empty entry of the camera's size
            cam = (meta.get("env") or {}).get("camera") or {}
            shape[:] = [0, int(cam.get("height", 0)), int(cam.get("width", 0)), 3]
        shape[0] = n
        if h.hexdigest() != key:
            raise _DriveChanged

    raw = root / f"{key}.u8"
    try:
        atomic_write(raw, write)
    except _DriveChanged:
        return None
    _forget_fd(str(raw))
    store = FrameStore(raw, tuple(shape))
    rows = _check_rows(shape[0])
    arrays = {k: (np.concatenate(v) if v else np.zeros(0, np.float32)) for k, v in cols.items()}
    for k, parts in optional.items():
        if parts and all(p is not None for p in parts):
            arrays[k] = np.concatenate(parts)
    side = dict(arrays, key=np.array(key), frames_shape=np.array(shape, np.int64), check_rows=rows,
                check_crc=_crc(store.read_rows(rows)), warnings=np.array(warnings, dtype=str),
                folder=np.array(str(folder)))
    atomic_write(root / f"{key}.npz", lambda f: np.savez(f, **side))
    return drive_from_columns(folder, meta, store, arrays, warnings)


class _DriveChanged(Exception):
    """The drive's chunks changed while they were being cached."""


def cached_drive(folder: str | os.PathLike, root: str | os.PathLike | None = None,
                 wait: bool = True) -> tuple[Drive, bool] | None:
    """The drive at `folder`, its frames a `FrameStore` over the cache; True when it was built now.

    With `wait=False`, None when another process is building this entry right now (take another
    drive meanwhile). Errors reading the drive are `UserError`s as for `read_drive`; a cache folder
    that cannot be written is a `UserError` naming it.
    """
    folder = Path(folder)
    root = Path(root) if root is not None else cache_root()
    if root is None:
        raise ValueError(f"{ENV_VAR}=off: no frame cache")
    meta = read_meta(folder)
    key = drive_key(folder)
    found = _open_entry(root, key, folder, meta)
    if found is not None:
        return found, False
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = os.open(root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise CacheUnwritable(f"{root}: cannot write the frame cache here ({e.strerror}); set {ENV_VAR} "
                              "to a writable folder") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        found = _open_entry(root, key, folder, meta)  # built by whoever held the lock
        if found is not None:
            return found, False
        try:
            drive = _build_entry(root, key, folder, meta)
        except OSError as e:
            raise CacheUnwritable(f"{root}: cannot write the frame cache here ({e.strerror or e}); free "
                                  f"some space or set {ENV_VAR} to another folder") from None
        if drive is None:  # being recorded or replaced right now: read it again from the start
            os.close(lock)
            lock = -1
            return cached_drive(folder, root, wait)
        return drive, True
    finally:
        if lock >= 0:
            os.close(lock)  # closing releases the lock
