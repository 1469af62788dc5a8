"""Progress bars (tqdm) and summary tables (tabulate) for every long command.

In a terminal a bar redraws in place with rate and ETA. In a log file (stderr not a TTY) a bar
writes a plain line only after at least LOG_EVERY_S seconds and LOG_EVERY_FRACTION of the work
since its last line, and one line when it ends, so a long run adds a few lines, not hundreds.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Sequence, TextIO

from tabulate import tabulate
from tqdm import tqdm

LOG_EVERY_S = 30.0  # in a log, at most one line per this many seconds...
LOG_EVERY_FRACTION = 0.1  # ...and per this share of the total (when the total is known)
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class Progress:
    """`with Progress(total, "training", " frames") as bar: bar.update(n, loss=0.1)`; on stderr.

    `total` may be None (no percentage or ETA). Keyword fields are shown after the rate and keep
    their last value."""

    def __init__(self, total: float | None, label: str = "", unit: str = "", stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.fields: dict[str, object] = {}
        sized = self._tty and _columns(self.stream) > 0  # a pty may report 0 columns: draw 100 wide
        self._bar = tqdm(total=total or None, desc=label, unit=unit or "it", unit_scale=isinstance(total, float), leave=True,
                         dynamic_ncols=sized, ncols=None if sized else 100,
                         file=self.stream if self._tty else _DISCARD, mininterval=0.1 if self._tty else float("inf"))
        if not self._tty:
            self._bar.bar_format = LOG_FORMAT if total else LOG_FORMAT_NO_TOTAL
        self._logged_at = (time.monotonic(), 0.0)  # when, and how much was done, at the last log line
        self._closed = False
        self._logged_once = False

    @property
    def done(self) -> float:
        return self._bar.n

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1, **fields: object) -> None:
        self.set(self._bar.n + n, **fields)

    def set(self, done: float, **fields: object) -> None:
        if fields:
            self.fields.update(fields)
            self._bar.set_postfix(self.fields, refresh=False)
        if self._bar.total and done > self._bar.total:
            self._bar.total = done  # the total was an estimate (frames of a lap): the work is bigger
        self._bar.update(done - self._bar.n)
        self._log_line()

    def _log_line(self, final: bool = False) -> None:
        if self._tty:
            return
        now, done = time.monotonic(), self._bar.n
        when, then = self._logged_at
        enough = not self._bar.total or done - then >= LOG_EVERY_FRACTION * self._bar.total
        if (final and (done != then or not self._logged_once)) or (now - when >= LOG_EVERY_S and enough):
            self._logged_once = True
            self.stream.write(str(self._bar) + "\n")
            self.stream.flush()
            self._logged_at = (now, done)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._log_line(final=True)
        self._bar.close()


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class _Discard:
    """Where a bar that only writes log lines sends tqdm's own drawing."""

    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


_DISCARD = _Discard()


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], title: str = "") -> str:
    """A plain-text table with aligned columns (numbers right-aligned), under an optional title."""
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    numeric = [bool(cells) and all(_is_num(r[i]) for r in cells) for i in range(len(headers))]
    text = tabulate(cells, headers=list(headers), tablefmt="simple", disable_numparse=True,
                    colalign=["right" if n else "left" for n in numeric])
    return f"{title}\n{text}" if title else text


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _is_num(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return s == "-"

