"""Atomic file writes, used by every command: a temp file beside the target, flushed and fsynced,
then renamed over it. A crash or a full disk leaves the old file or the new one, never half a file
under the final name (at worst a stray `.NAME.*.tmp`, which no reader takes for data)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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
