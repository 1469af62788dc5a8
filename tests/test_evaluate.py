"""`run_drive.py eval` as a user runs it: the real CLI in a subprocess, real env, real files."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.evaluate import ExpertDriver, PolicyDriver, evaluate
from agent.metrics import SUMMARY_KEYS

ROOT = Path(__file__).resolve().parents[1]
SHORT = "procedural:0"  # a 774 m track: one expert lap is ~1100 steps


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_drive.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_eval_expert_json_schema_video_and_plots(tmp_path):
    out = tmp_path / "report.json"
    video = tmp_path / "drive.mp4"
    r = run_cli("eval", "--expert", "--tracks", f"{SHORT},{SHORT}", "--laps", "1", "--json", str(out),
                "--video", str(video), "--video-frames", "40", "--plot", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    assert "clean laps 2/2" in r.stdout and "x real time" in r.stdout
    report = json.loads(out.read_text())
    assert {"summary", "tracks", "driver", "command"} <= report.keys()
    assert report["driver"]["kind"] == "expert"
    assert "eval --expert" in report["command"]
    s = report["summary"]
    for key in SUMMARY_KEYS:
        assert isinstance(s[key], (int, float)), key
    assert s["laps_attempted"] == 2 and s["laps_completed"] == 2 and s["completion_rate"] == 1.0
    assert s["route_completion"] == 1.0 and s["autonomy_pct"] == 100.0 and s["off_track_per_km"] == 0.0
    assert 0 < s["mean_abs_cte_m"] < 0.5 and 40 < s["mean_lap_time_s"] < 80
    assert s["realtime_factor"] > 5
    assert [t["track"] for t in report["tracks"]] == [SHORT, SHORT]
    for row in report["tracks"]:
        for key in SUMMARY_KEYS:
            assert key in row
        assert row["laps_completed"] == 1
    # the same track and seed offset by index: the same figures
    assert report["tracks"][0]["mean_abs_cte_m"] == pytest.approx(report["tracks"][1]["mean_abs_cte_m"])

    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened()
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 40 == report["video"]["frames"]
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) > int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))  # world view + panel

    plots = sorted((tmp_path / "plots").glob("*.png"))
    assert len(plots) == 2 and [str(p) for p in plots] == report["plots"]
    img = cv2.imread(str(plots[0]))
    assert img is not None and img.shape[0] > 300 and img.std() > 10
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes left no temp files


def test_video_holds_the_first_lap_when_it_is_shorter_than_the_cap(tmp_path):
    report = evaluate(ExpertDriver(), SHORT, 2, video=tmp_path / "lap.mp4", video_frames=10**6,
                      show_progress=False)
    lap_steps = round(report["tracks"][0]["lap_times_s"][0] / 0.05)
    cap = cv2.VideoCapture(str(tmp_path / "lap.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == report["video"]["frames"] == lap_steps


def test_eval_expert_does_not_import_torch():
    code = ("import sys, run_drive; rc = run_drive.main(['eval', '--expert', '--tracks', 'procedural:0', "
            "'--laps', '1']); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr


def test_workers_give_the_same_figures_as_one_process():
    spec = "procedural:0,challenge:0"
    one = evaluate(ExpertDriver(), spec, 1, show_progress=False)
    two = evaluate(ExpertDriver(), spec, 1, workers=2, show_progress=False)
    for a, b in zip(one["tracks"], two["tracks"]):
        assert a["track"] == b["track"]
        assert a["mean_abs_cte_m"] == b["mean_abs_cte_m"] and a["steps"] == b["steps"]


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "file"])
def test_eval_model_bad_policy_folder_is_one_clear_line(tmp_path, case):
    folder = tmp_path / "policy"
    if case == "empty":
        folder.mkdir()
    elif case == "garbage":
        folder.mkdir()
        rng = np.random.default_rng(0)
        (folder / "card.json").write_bytes(rng.bytes(300))
        (folder / "model.safetensors").write_bytes(rng.bytes(3000))
    elif case == "file":
        folder.write_bytes(b"not a folder")
    r = run_cli("eval", "--model", str(folder), "--tracks", SHORT, "--laps", "1")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "policy" in lines[0], r.stderr


@pytest.mark.parametrize("args, flag", [(["--laps", "-3"], "--laps"), (["--tracks", "procedural:abc"], "procedural"),
                                        (["--workers", "0"], "--workers")])
def test_eval_bad_flags_are_one_clear_line(args, flag):
    r = run_cli("eval", "--expert", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], r.stderr


def test_a_policy_that_only_drives_straight_is_put_back_and_goes_on(tmp_path):
    """A real network, saved and loaded, whose output layer is zeroed (it always steers 0): it leaves
    the track at the first corner, is put back on the centerline, and the lap goes on."""
    import torch

    from agent.model import build_model, save_policy
    from sim import EnvConfig

    cfg = EnvConfig()
    model = build_model("small", cfg.camera)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    save_policy(tmp_path / "straight", model, {"arch": "small", "env": cfg.to_dict()})
    report = evaluate(PolicyDriver(tmp_path / "straight"), SHORT, 1, compare_expert=True, show_progress=False)
    row = report["tracks"][0]
    assert report["driver"]["kind"] == "model" and report["driver"]["arch"] == "small"
    assert row["laps_attempted"] == 1 and row["interventions"] >= 1 and row["laps_completed"] == 0
    assert row["route_completion"] < 1.0 and row["autonomy_pct"] < 100.0
    assert row["laps_finished"] == 1 and row["interventions"] == row["off_track_events"]
    assert row["expert"]["laps_completed"] == 1 and report["summary"]["expert"]["completion_rate"] == 1.0


def test_video_can_show_what_the_network_looks_at(tmp_path):
    """`eval --video --saliency`: the panel beside the world view carries the saliency overlay, so
    those frames differ from a video of the same drive without it."""
    from agent.model import build_model, save_policy
    from sim import EnvConfig

    cfg = EnvConfig()
    save_policy(tmp_path / "p", build_model("small", cfg.camera), {"arch": "small", "env": cfg.to_dict()})
    frames = {}
    for name, flag in (("plain", False), ("saliency", True)):
        path = tmp_path / f"{name}.mp4"
        evaluate(PolicyDriver(tmp_path / "p"), SHORT, 1, video=path, video_frames=5, saliency=flag,
                 show_progress=False)
        cap = cv2.VideoCapture(str(path))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
        ok, frames[name] = cap.read()
        assert ok
    h, w = frames["plain"].shape[:2]
    panel = (slice(h - 200, h), slice(w - 200, w))
    assert np.abs(frames["plain"][panel].astype(int) - frames["saliency"][panel]).mean() > 5
