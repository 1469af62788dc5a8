"""`record --autopilot` and `inspect` through the real command line, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.record import record_autopilot
from data.recording import chunk_paths, find_drives, read_drive
from sim.car import CarState
from sim.env import EnvConfig
from sim.expert import expert_steering
from sim.track import load_track

ROOT = Path(__file__).resolve().parents[1]
TRACKS = "procedural:0,procedural:10"  # the two shortest procedural laps


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_drive.py"), *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def auto(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("rec") / "auto"
    proc = run("record", "--autopilot", "--tracks", TRACKS, "--laps", "1", "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_record_makes_one_drive_per_track_with_progress_and_summary(auto):
    out, proc = auto
    assert [p.name for p in find_drives(out)] == ["procedural_0", "procedural_10"]
    assert "recording: 100%" in proc.stderr and "frames/s" in proc.stderr  # the bar's final log line
    for word in ("drives", "frames", "minutes of driving", "MB on disk", "frames/s recorded"):
        assert word in proc.stdout
    for p in find_drives(out):
        d = read_drive(p, frames=False)
        assert d.finished and d.meta["source"] == "autopilot" and d.meta["driver"]["noise"] == 0.3
        assert d.meta["env"]["off_track"] == "recover"
        assert d.state["lap"][-1] == 1  # a whole lap, its last frame included
        assert not d.off_track.any()  # the default noise never pushes the car off the road


def test_labels_are_the_experts_steering_for_the_state_the_noisy_car_is_in(auto):
    out, _ = auto
    d = read_drive(out / "procedural_0", frames=False)
    track, car_cfg = load_track("procedural:0"), EnvConfig.from_dict(d.meta["env"]).car
    st = d.state
    for i in range(0, len(d), 37):
        car = CarState(x=st["x"][i], y=st["y"][i], yaw=st["yaw"][i], speed=st["speed"][i], steer=st["steer_angle"][i])
        assert d.steering[i] == pytest.approx(expert_steering(track, car, st["s"][i], car_cfg), abs=1e-6)
    assert np.abs(d.executed_steering - d.steering).mean() > 0.05  # the car got a perturbed command
    clean = record_autopilot("procedural:0", 1, out.parent / "clean", noise=0.0, workers=1, verbose=False)
    c = read_drive(clean.paths[0], frames=False)
    assert np.array_equal(c.executed_steering, c.steering)
    assert np.abs(d.state["cte"]).max() > 2 * np.abs(c.state["cte"]).max()  # noise makes recoveries to learn


def test_parallel_workers_record_the_same_drives(auto, tmp_path):
    out, _ = auto
    par = record_autopilot(TRACKS, 1, tmp_path / "par", workers=2, verbose=False)
    assert [p.name for p in par.paths] == ["procedural_0", "procedural_10"]
    for p in par.paths:
        a, b = read_drive(p), read_drive(out / p.name)
        assert np.array_equal(a.steering, b.steering) and np.array_equal(a.frames, b.frames)


def test_sigkill_keeps_the_chunks_written_before_it(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_drive.py"), "record", "--autopilot", "--tracks",
                             "procedural:0,procedural:1", "--laps", "50", "--out", str(out), "--workers", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4)
        deadline = time.time() + 30  # a loaded machine may start the workers slowly
        while time.time() < deadline and not (out.exists() and list(out.glob("*/chunk_*.npz"))):
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1.5)  # orphaned workers notice within one chunk and stop writing
    counts = [len(chunk_paths(p)) for p in find_drives(out)]
    time.sleep(1.5)
    assert [len(chunk_paths(p)) for p in find_drives(out)] == counts
    res = run("inspect", str(out), "--json")
    assert res.returncode == 0, res.stderr
    drives = json.loads(res.stdout)["drives"]
    assert sum(d["frames"] for d in drives) > 30
    assert not any(d["finished"] for d in drives)
    assert "Traceback" not in res.stderr


def test_inspect_table_json_and_plot(auto, tmp_path):
    out, _ = auto
    res = run("inspect", str(out))
    assert res.returncode == 0, res.stderr
    assert "procedural_10" in res.stdout and "steering histogram" in res.stdout and "autopilot" in res.stdout
    res = run("inspect", str(out), "--json", "--plot", str(tmp_path / "drives.png"))
    assert res.returncode == 0, res.stderr
    drives = json.loads(res.stdout)["drives"]
    assert [d["track"] for d in drives] == ["procedural:0", "procedural:10"]
    for d in drives:
        assert d["source"] == "autopilot" and d["frames"] > 1000 and d["laps"] == pytest.approx(1.0, abs=0.02)
        assert d["off_track_events"] == 0 and d["corrections"] == 0
        assert d["duration_s"] == pytest.approx(d["frames"] * 0.05)
        assert -1 <= d["steering_min"] < d["steering_mean"] < d["steering_max"] <= 1
        assert sum(d["steering_histogram"]["counts"]) == d["frames"]
    png = (tmp_path / "drives.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_inspect_reports_a_corrupt_chunk_and_reads_the_rest(auto, tmp_path):
    out, _ = auto
    copy = tmp_path / "drive"
    copy.mkdir()
    src = out / "procedural_0"
    for p in src.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    total = read_drive(src, frames=False).steering.size
    (copy / "chunk_00002.npz").write_bytes(os.urandom(3000))
    res = run("inspect", str(copy), "--json")
    assert res.returncode == 0
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "chunk_00002.npz" in warnings[0]
    assert json.loads(res.stdout)["drives"][0]["frames"] == total - 100


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


@pytest.mark.parametrize("args, expect", [
    (["--laps", "-3"], "--laps -3"),
    (["--laps", "0"], "--laps 0"),
    (["--noise", "1.5"], "--noise"),
    (["--workers", "0"], "--workers"),
    (["--camera", "fisheye"], "--camera fisheye"),
    (["--tracks", "procedural:abc"], "procedural:abc"),
    (["--tracks", "procedural:5-2"], "procedural:5-2"),
    (["--tracks", "no/such/track.csv"], "track.csv"),
    (["--out", "{tmp}/missing/parent/out"], "does not exist"),
    (["--out", "{tmp}/a_file/out"], "is not a folder"),
    (["--out", "{tmp}/a_file"], "not a folder"),
])
def test_record_bad_input_is_one_clear_line(tmp_path, args, expect):
    (tmp_path / "a_file").write_text("x")
    base = {"--tracks": "procedural:0", "--laps": "1", "--out": str(tmp_path / "out")}
    given = dict(zip(args[::2], [a.replace("{tmp}", str(tmp_path)) for a in args[1::2]]))
    flags = [x for k, v in {**base, **given}.items() for x in (k, v)]
    res = run("record", "--autopilot", *flags)
    assert expect in one_error_line(res)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux) for a folder nobody can write")
def test_record_unwritable_out_is_one_clear_line():
    assert "not writable" in one_error_line(run("record", "--autopilot", "--tracks", "procedural:0",
                                                "--out", "/proc/self"))


def test_inspect_bad_input_is_one_clear_line(auto, tmp_path):
    out, _ = auto
    (tmp_path / "empty").mkdir()
    assert "no recorded drives" in one_error_line(run("inspect", str(tmp_path / "empty")))
    assert "not found" in one_error_line(run("inspect", str(tmp_path / "missing")))
    v2 = tmp_path / "v2"
    v2.mkdir()
    meta = json.loads((out / "procedural_0" / "meta.json").read_text())
    (v2 / "meta.json").write_text(json.dumps(dict(meta, format_version=2)))
    assert "format_version 2" in one_error_line(run("inspect", str(v2)))
    (v2 / "meta.json").write_text("{truncated")
    assert "meta.json: unreadable" in one_error_line(run("inspect", str(v2)))
    assert "does not exist" in one_error_line(run("inspect", str(out), "--plot", str(tmp_path / "no" / "p.png")))
