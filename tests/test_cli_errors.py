"""The catalogue of bad input, run through the real command line in a subprocess.

Every case must end with a non-zero exit, exactly one `error:` line on stderr naming what was wrong
and where, and never a traceback.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    return subprocess.run([sys.executable, str(ROOT / "run_drive.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def ring_csv(path: Path, bad_row: int | None = None, bad: str = "") -> Path:
    lines = ["# x_m,y_m,w_tr_right_m,w_tr_left_m"]
    for i in range(40):
        a = 2 * math.pi * i / 40
        w = bad if i == bad_row else "5"
        lines.append(f"{80 * math.cos(a):.2f},{80 * math.sin(a):.2f},{w},5")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.csv").write_text("")
    (d / "two.csv").write_text("0,0,5,5\n10,0,5,5\n")
    (d / "three.csv").write_text("".join(f"{i},0,5\n" for i in range(6)))
    (d / "random.csv").write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    ring_csv(d / "nan.csv", 5, "nan")
    ring_csv(d / "zero.csv", 5, "0")
    ring_csv(d / "negative.csv", 5, "-2")
    (d / "no_csv").mkdir()
    (d / "no_csv" / "notes.txt").write_text("nothing here")
    (d / "empty_dir").mkdir()

    # a real drive, and damaged copies of it
    from data.record import record_autopilot
    drives = d / "drives"
    record_autopilot("procedural:0", laps=1, out=drives, workers=1, verbose=False, chunk_steps=100)
    drive = next(p for p in drives.iterdir() if (p / "meta.json").exists())
    other_version = d / "other_version" / "drive"
    shutil.copytree(drive, other_version)
    meta = json.loads((other_version / "meta.json").read_text())
    meta["format_version"] = 99
    (other_version / "meta.json").write_text(json.dumps(meta))
    other_camera = d / "other_camera" / "drive"
    shutil.copytree(drive, other_camera)
    meta = json.loads((other_camera / "meta.json").read_text())
    meta["env"]["camera"]["kind"] = "dashcam"
    (other_camera / "meta.json").write_text(json.dumps(meta))

    # a real (untrained) policy, and damaged copies of it
    from agent.model import build_model, save_policy
    from sim import EnvConfig
    cfg = EnvConfig()
    policy = d / "policy"
    save_policy(policy, build_model("small", cfg.camera), {"arch": "small", "env": cfg.to_dict()})
    garbage = d / "garbage_weights"
    shutil.copytree(policy, garbage)
    (garbage / "model.safetensors").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    mismatch = d / "card_mismatch"
    shutil.copytree(policy, mismatch)
    card = json.loads((mismatch / "card.json").read_text())
    card["arch"] = "pilotnet"
    (mismatch / "card.json").write_text(json.dumps(card))
    cam = d / "card_other_camera"
    shutil.copytree(policy, cam)
    card = json.loads((cam / "card.json").read_text())
    card["env"]["camera"]["width"] = 128
    (cam / "card.json").write_text(json.dumps(card))
    escape = d / "card_escape"
    shutil.copytree(policy, escape)
    card = json.loads((escape / "card.json").read_text())
    card["weights"] = "../policy/model.safetensors"
    (escape / "card.json").write_text(json.dumps(card))
    return {"dir": d, "drives": drives, "policy": policy}


TRACK_CASES = [
    ("missing.csv", "not found"), ("empty.csv", "empty"), ("two.csv", "only 2 points"), ("nan.csv", "NaN"),
    ("three.csv", "4 columns"), ("zero.csv", "positive"), ("negative.csv", "positive"),
    ("random.csv", "not a text CSV"), ("no_csv", "no .csv"),
]


def assert_one_clear_line(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert needle.lower() in errors[0].lower(), errors[0]


@pytest.mark.parametrize("name,needle", TRACK_CASES)
def test_bad_tracks_for_eval_and_record(bad, tmp_path, name, needle):
    path = str(bad["dir"] / name)
    r = run_cli("eval", "--expert", "--tracks", path, "--laps", "1")
    assert_one_clear_line(r, needle)
    assert name in r.stderr
    r = run_cli("record", "--autopilot", "--tracks", path, "--laps", "1", "--out", str(tmp_path / "rec"))
    assert_one_clear_line(r, needle)


@pytest.mark.parametrize("spec,needle", [("procedural:abc", "bad track SPEC"), ("procedural:5-2", "seed range"),
                                         ("real:atlantis", "no built-in real circuit")])
def test_bad_specs(spec, needle):
    assert_one_clear_line(run_cli("eval", "--expert", "--tracks", spec), needle)


def test_tracks_plot_into_a_missing_folder_fails_before_listing(tmp_path):
    r = run_cli("tracks", "real:all", "--plot", str(tmp_path / "no_such_folder" / "real.png"))
    assert_one_clear_line(r, "no_such_folder")
    assert r.stdout == ""  # checked before the table is printed, not after the work


def test_bad_flags(bad, tmp_path):
    assert_one_clear_line(run_cli("record", "--autopilot", "--tracks", "procedural:1", "--laps", "-3",
                                  "--out", str(tmp_path / "r")), "--laps")
    assert_one_clear_line(run_cli("train", "--data", str(bad["drives"]), "--out", str(tmp_path / "m"),
                                  "--minutes", "0"), "--minutes")
    assert_one_clear_line(run_cli("train", "--data", str(bad["drives"]), "--out", str(tmp_path / "m"),
                                  "--device", "tpu"), "--device")
    assert_one_clear_line(run_cli("eval", "--expert", "--tracks", "procedural:1", "--laps", "-3"), "--laps")
    assert_one_clear_line(run_cli("bench", "--device", "tpu"), "--device tpu")
    # traffic density: a number of cars, and only where there is traffic; nothing written before the error
    assert_one_clear_line(run_cli("eval", "--expert", "--task", "traffic", "--tracks", "procedural:1",
                                  "--traffic-density", "-1"), "--traffic-density")
    assert_one_clear_line(run_cli("record", "--autopilot", "--tracks", "procedural:1", "--traffic-density", "8",
                                  "--out", str(tmp_path / "lane")), "only for task traffic")
    assert not (tmp_path / "lane").exists()


def test_bad_drive_folders(bad, tmp_path):
    out = str(tmp_path / "m")
    assert_one_clear_line(run_cli("train", "--data", str(bad["dir"] / "empty_dir"), "--out", out), "no recorded drives")
    assert_one_clear_line(run_cli("train", "--data", str(bad["dir"] / "nowhere"), "--out", out), "not found")
    assert_one_clear_line(run_cli("inspect", str(bad["dir"] / "empty_dir")), "no recorded drives")
    assert_one_clear_line(run_cli("inspect", str(bad["dir"] / "nowhere")), "not found")
    r = run_cli("train", "--data", str(bad["dir"] / "other_version"), "--out", out)
    assert_one_clear_line(r, "version")
    r = run_cli("train", "--data", str(bad["dir"] / "other_camera"), "--out", out, "--camera", "birdseye")
    assert_one_clear_line(r, "camera")


def test_corrupt_chunk_warns_and_reads_the_rest(bad, tmp_path):
    drives = tmp_path / "drives"
    shutil.copytree(bad["drives"], drives)
    chunk = sorted(drives.glob("*/chunk_*.npz"))[1]
    chunk.write_bytes(chunk.read_bytes()[:300])  # truncated
    r = run_cli("inspect", str(drives), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert chunk.name in r.stderr
    frames = json.loads(r.stdout)["drives"][0]["frames"]
    assert frames > 500


@pytest.mark.parametrize("name,needle", [
    ("nowhere", "not found"), ("garbage_weights", "model.safetensors"), ("card_mismatch", "card.json"),
    ("card_escape", "card.json"),
])
def test_bad_policies(bad, name, needle):
    assert_one_clear_line(run_cli("eval", "--model", str(bad["dir"] / name), "--tracks", "procedural:1"), needle)


def test_policy_of_another_camera_is_refused(bad):
    r = run_cli("eval", "--model", str(bad["dir"] / "card_other_camera"), "--tracks", "procedural:1")
    assert_one_clear_line(r, "card.json")


def test_unwritable_output(bad):
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc to make an unwritable folder as root")
    r = run_cli("record", "--autopilot", "--tracks", "procedural:1", "--out", "/proc/self/e2e_drive_test")
    assert_one_clear_line(r, "/proc/self")
