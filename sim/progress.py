"""Console progress bars and summary tables for every long command (no third-party dependency)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Sequence


class Progress:
    """A one-line progress bar on stderr: `with Progress(total, "training") as bar: bar.update(n, loss=0.1)`.

    Redraws at most 10 times a second; on a non-terminal (CI logs) it prints a line every ~10%.
    """

    def __init__(self, total: float | None, label: str = "", unit: str = "", stream=None):
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0.0
        self.fields: dict[str, object] = {}
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1, **fields: object) -> None:
        self.done += n
        self.fields.update(fields)
        self._draw()

    def set(self, done: float, **fields: object) -> None:
        self.done = done
        self.fields.update(fields)
        self._draw()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())
        if self.total:
            frac = min(max(self.done / self.total, 0.0), 1.0)
            bar = "#" * int(frac * 24) + "-" * (24 - int(frac * 24))
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            return (f"{self.label} [{bar}] {frac * 100:5.1f}% {_fmt(self.done)}/{_fmt(self.total)}{self.unit} "
                    f"{_fmt(rate)}{self.unit}/s elapsed {_clock(elapsed)} eta {_clock(eta)} {extra}").rstrip()
        return f"{self.label} {_fmt(self.done)}{self.unit} {_fmt(rate)}{self.unit}/s {_clock(elapsed)} {extra}".rstrip()

    def _draw(self, final: bool = False) -> None:
        now = time.perf_counter()
        if self._tty:
            if final or now - self._last_draw > 0.1:
                self.stream.write("\r\033[K" + self._line())
                self.stream.flush()
                self._last_draw = now
        else:
            decile = int(10 * self.done / self.total) if self.total else int(now - self.start) // 10
            if final or decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        self._draw(final=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], title: str = "") -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(row: Sequence[str], numeric: Sequence[bool]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric))

    numeric = [all(_is_num(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]
    out = [title] if title else []
    out.append(line(list(headers), numeric))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r, numeric) for r in cells)
    return "\n".join(out)


def _is_num(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return s == "-"
