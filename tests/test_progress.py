"""Progress bars: a live bar with ETA in a terminal, and a short log when stderr is a file."""

import io
import os
import pty
import select

import sim.progress as progress
from sim.progress import Progress, table


def test_a_long_run_writes_a_short_log(monkeypatch):
    """A 20-minute run of 12,000 updates, one every 0.1 s on a simulated clock, writes ~10 lines, not thousands."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    with Progress(12_000, "epoch 1/1", " frames", stream=log) as bar:
        for _ in range(12_000):
            clock[0] += 0.1
            bar.update(1, loss=0.25)
    lines = log.getvalue().splitlines()
    assert 5 <= len(lines) <= 11, lines
    assert all("\r" not in ln and ln.startswith("epoch 1/1:") for ln in lines)
    assert "100%" in lines[-1] and "12000/12000 [" in lines[-1] and "frames/s" in lines[-1] and "loss=0.25" in lines[-1]
    short = io.StringIO()
    with Progress(50, "loading drives", stream=short) as bar:
        for _ in range(50):
            bar.update(1)
    assert short.getvalue().count("\n") == 1  # a bar that ends within 30 s: its final line only


def test_a_terminal_gets_a_live_bar_with_eta():
    master, slave = pty.openpty()
    tty = open(slave, "w", closefd=True)
    with Progress(4.0, "eval expert", "km", stream=tty) as bar:
        for _ in range(4):
            bar.update(1.0, tracks="1/1")
    out = b""
    while select.select([master], [], [], 0.3)[0]:  # the terminal may hand the draws over in pieces
        out += os.read(master, 65536)
    tty.close()
    os.close(master)
    out = out.decode()
    draws = [d for d in out.split("\r") if d.strip()]
    assert len(draws) >= 2 and "eval expert" in draws[-1] and "100%" in draws[-1]
    assert "4.00/4.00" in draws[-1] and "<00:00" in draws[-1] and "km/s" in draws[-1]  # done, ETA, rate


def test_table_aligns_numbers_right():
    text = table(["track", "laps", "route"], [["Austin", 1, "100%"], ["all", 25, float("nan")]], title="T")
    assert text.splitlines() == ["T", "track      laps    route", "-------  ------  -------",
                                 "Austin        1     100%", "all          25        -"]
