"""`bench` runs end to end and writes its figures (no timing is asserted: machines are noisy)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "run_drive.py"), "bench", "--seconds", "0.3", "--rounds", "1",
                        "--vector-envs", "1,2", "--skip-memory", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    env = res["env"]
    assert env["e2edrive_steps_per_s"] > 0 and env["render_frames_per_s"] > 0 and env["race_steps_per_s"] > 0
    assert env["traffic_steps_per_s"] > 0
    assert env["resets_steps_per_s"] > 0 and env["resets_episode_steps"] < 100  # it leaves the road often
    assert set(env["vector_steps_per_s"]) == {"plain", "1", "2"} and min(env["vector_steps_per_s"].values()) > 0
    assert env["vector_ratio_2"] > 0 and env["vector_scaling_2"] > 0 and env["drive_vector_ratio_2"] > 0
    assert env["drive_vector_paired_ratio_2"] > 0 and "rounds' ratios" in r.stdout
    assert set(env["drive_vector_steps_per_s"]) == {"1", "2"} and min(env["drive_vector_steps_per_s"].values()) > 0
    assert "DriveVectorEnv" in r.stdout
    resets = env["reset_ms"]
    assert min(resets[k] for k in ("generated", "from_disk", "revisit")) > 0
    if importlib.util.find_spec("Box2D") is not None:  # CarRacing-v3 runs: measured side by side
        assert env["carracing_steps_per_s"] > 0 and "carracing_note" not in env
        assert env["ratio"] == pytest.approx(env["e2edrive_steps_per_s"] / env["carracing_steps_per_s"])
    else:  # it cannot: the bench says how to get it, and claims no ratio
        assert "ratio" not in env and "pip install box2d" in env["carracing_note"]
    assert res["torch"]["pilotnet_train_frames_per_s"] > 0 and res["torch"]["pilotnet_cpu_latency_ms"] > 0
    assert res["torch"]["pilotnet_onnxruntime_latency_ms"] > 0  # the exported policy, side by side
    assert "1 thread: onnxruntime" in r.stdout
    import torch  # here: the figures above were measured

    from agent.train import bf16_supported
    if bf16_supported(torch.device(res["torch"]["device"])):  # beside float32, as `train --precision bf16`
        assert res["torch"]["pilotnet_train_bf16_frames_per_s"] > 0 and res["torch"]["pilotnet_train_bf16_ratio"] > 0
        assert "bf16 autocast" in r.stdout
    assert "E2EDrive-v0 steps/s" in r.stdout and "reset, revisit" in r.stdout
