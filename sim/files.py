"""Atomic file writes, used by every command: a temp file beside the target, flushed and fsynced,
then renamed over it. A crash or a full disk leaves the old file or the new one, never half a file
under the final name (at worst a stray `.NAME.*.tmp`, which no reader takes for data)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import UserError


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write `data` (bytes, or a function that writes into the open binary file) to `path` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; our files are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text.encode("utf-8"))


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically (PNG unless `format` says otherwise), then close it, even
    when saving fails, so a long run that draws many plots does not keep them all in memory."""
    import matplotlib.pyplot as plt  # the caller made `fig`, so matplotlib is already loaded

    kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    try:
        return atomic_write(path, lambda f: fig.savefig(f, **kwargs))
    finally:
        plt.close(fig)


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder of a command (its parent must exist) and check it is writable, before
    any work: a `UserError` naming the folder otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if not out.exists():
        if not out.parent.exists():
            raise UserError(f"--out {out}: parent folder {out.parent} does not exist")
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: {out.parent} is not a folder")
        try:
            out.mkdir()
        except OSError as e:
            raise UserError(f"--out {out}: cannot create folder ({e.strerror})") from None
    try:  # a real write, not os.access: root, read-only mounts and ACLs all answer truthfully
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"--out {out}: folder is not writable ({e.strerror})") from None
    return out


def json_default(o):
    """`json.dumps(default=...)` for what our JSON holds besides plain types: numpy scalars and
    arrays, paths and dataclasses (settings)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj, *, allow_nan: bool = True) -> Path:
    """`obj` as indented JSON, written atomically (NaN allowed unless `allow_nan` is False, for
    reports that strict JSON readers take)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=json_default, allow_nan=allow_nan) + "\n")


def read_json_object(path: str | os.PathLike, problem: str) -> dict:
    """A JSON object from `path`, or a `UserError` "PATH: PROBLEM (why)" (a missing file is left to
    the caller, which knows what it should have been)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: {problem} ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: {problem} (expected a JSON object)")
    return obj


def read_versioned_json(path: str | os.PathLike, kind: str, version: int, missing: str, problem: str) -> dict:
    """The JSON object at `path` (a policy card, a drive's meta) in this program's format `version`:
    a `UserError` naming the file when it is `missing`, unreadable (`problem`) or of another version."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {missing}")
    obj = read_json_object(path, problem)
    found = obj.get("format_version")
    if found != version:
        raise UserError(f"{path}: {kind} format_version {found!r}; this program reads format version {version}")
    return obj


def cache_dir(kind: str) -> Path | None:
    """The folder of one kind of cache (`tracks`, `frames`): `$E2E_DRIVE_CACHE/KIND`, else
    `$XDG_CACHE_HOME/e2e-drive/KIND`, else `~/.cache/e2e-drive/KIND`; None when `E2E_DRIVE_CACHE=off`.
    Everything in it can be deleted at any time: it is rebuilt when needed."""
    root = os.environ.get("E2E_DRIVE_CACHE")
    if root == "off":
        return None
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "e2e-drive"
    return Path(root).expanduser() / kind
