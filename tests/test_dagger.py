"""DAgger end to end on a tiny ring track: the policy drives, the expert labels, warm-started retraining,
the plain-BC baseline on as many frames, the report and the command line."""

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from agent.dagger import DaggerConfig, dagger_drives, run_dagger
from agent.model import WEIGHTS_FILE, build_model, load_policy, save_policy, single_thread_inference
from agent.train import TrainConfig
from data.recording import find_drives, read_drive
from sim.car import CarState
from sim.env import EnvConfig
from sim.expert import expert_steering
from sim.render import CameraConfig
from sim.track import load_track

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(arch="small", batch=32, lr=2e-3)


def ring_csv(path: Path, r: float = 22.0, n: int = 48, half_width: float = 3.5) -> Path:
    """A small round track (~140 m, about 10 s a lap): closed-loop runs end in a second."""
    lines = ["# x_m,y_m,w_tr_right_m,w_tr_left_m"]
    for i in range(n):
        a = 2 * math.pi * i / n
        lines.append(f"{r * math.cos(a):.3f},{r * math.sin(a):.3f},{half_width},{half_width}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Single frames through a tiny CNN: one thread is ~10x faster than two fighting on a shared CPU."""
    with single_thread_inference():
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A ring track, a few autopilot frames on it, and an untrained 'small' start policy."""
    root = tmp_path_factory.mktemp("dagger")
    ring = ring_csv(root / "ring.csv")
    from data.record import record_one

    env_cfg = EnvConfig(track=str(ring), camera=CameraConfig(), off_track="recover", laps=None, max_steps=59)
    record_one(str(ring), 1, str(root / "start_drives" / "ring"), env_cfg, 0.3, seed=1)
    torch.manual_seed(0)
    model = build_model("small", CameraConfig())
    card = {"arch": "small", "env": EnvConfig(camera=CameraConfig()).to_dict(),
            "training": {"config": {**TINY.__dict__, "augment": TINY.augment.__dict__}}}
    save_policy(root / "start_model", model, card)
    return root, ring


def test_the_policy_drives_and_every_frame_carries_the_experts_label(world, tmp_path):
    root, ring = world
    policy = load_policy(root / "start_model")
    rows = dagger_drives(policy, str(ring), tmp_path / "it1", beta=0.0, max_steps=50, verbose=False)
    assert len(rows) == 1 and rows[0]["frames"] == 51
    d = read_drive(rows[0]["path"])
    assert d.meta["source"] == "dagger" and d.meta["driver"]["beta"] == 0.0 and len(d) == 51
    track = load_track(str(ring))
    car_cfg = policy.env_config().car
    expert = [expert_steering(track, CarState(x, y, yaw, v, st), s, car_cfg)
              for x, y, yaw, v, st, s in zip(*(d.state[k] for k in ("x", "y", "yaw", "speed", "steer_angle", "s")))]
    np.testing.assert_allclose(d.steering, np.float32(expert), atol=1e-6)
    # the car did what the policy said (beta 0), not what the expert said
    np.testing.assert_allclose(d.executed_steering[:-1], policy.steer_batch(d.frames[:-1]), atol=1e-5)
    assert d.executed_steering[-1] == d.steering[-1]  # nothing executed in the final state: reads as the label
    assert np.abs(d.executed_steering[:-1] - d.steering[:-1]).max() > 0.05


def test_in_traffic_dagger_drives_keep_the_cars_and_exactly_labelled_shifted_views(tmp_path):
    """A traffic policy's DAgger drives carry what training's viewpoint shifts need: the other cars
    beside each frame and two shifted views labelled by the expert (as autopilot drives do)."""
    torch.manual_seed(0)
    env = EnvConfig(task="traffic", camera=CameraConfig())
    save_policy(tmp_path / "model", build_model("small", CameraConfig()),
                {"arch": "small", "env": env.to_dict(), "task": "traffic", "outputs": ["steering"],
                 "training": {"config": {**TINY.__dict__, "augment": TINY.augment.__dict__}}})
    rows = dagger_drives(load_policy(tmp_path / "model"), "procedural:0", tmp_path / "it1", max_steps=80,
                         verbose=False)
    d = read_drive(rows[0]["path"])
    assert d.cars is not None and d.cars.shape == (len(d), 12, 4) and np.isfinite(d.cars[:, 0, 0]).any()
    assert d.shifted_labels is not None and d.shifted_labels.shape == (len(d), 2, 3)
    assert np.all(np.abs(d.shifted_labels[..., 0]) <= 1.5) and np.ptp(d.shifted_labels[..., 2]) > 0.1


def test_the_mixing_schedule_decays():
    cfg = DaggerConfig(beta0=0.8, beta_decay=0.5)
    assert [cfg.beta(i) for i in (1, 2, 3)] == pytest.approx([0.8, 0.4, 0.2])


def test_one_iteration_aggregates_retrains_from_the_start_policy_and_compares_with_bc(world, tmp_path):
    root, ring = world
    out = tmp_path / "run"
    report = run_dagger(root / "start_drives", root / "start_model", str(ring), out,
                        DaggerConfig(iterations=1, minutes_per_iter=None, epochs_per_iter=2, max_steps=40,
                                     eval_tracks=str(ring)), verbose=False)
    # the new drives, aggregated beside the start drives
    new = find_drives(out / "data" / "dagger_01")
    assert len(new) == 1 and read_drive(new[0]).meta["source"] == "dagger"
    assert len(find_drives(out / "data")) == 2
    it = report["iterations"][1]
    assert it["frames"] == 60 + 41 and it["new_frames"] == 41
    # the baseline got exactly as many autopilot frames on the same track
    bc = find_drives(out / "bc_data" / "bc_01")
    assert len(bc) == 1 and len(read_drive(bc[0])) == 41 and read_drive(bc[0]).meta["source"] == "autopilot"
    assert it["bc_frames"] == it["frames"]
    # warm start: the retrained weights moved away from the start policy, but not to a fresh init
    start = load_file(str(root / "start_model" / WEIGHTS_FILE))
    after = load_file(str(out / "models" / "dagger_01" / WEIGHTS_FILE))
    torch.manual_seed(TINY.seed + 1)
    fresh = build_model("small", CameraConfig()).state_dict()
    moved = sum(float((after[k] - start[k]).norm()) for k in start)
    other = sum(float((fresh[k] - start[k]).norm()) for k in start)
    assert 0 < moved < 0.5 * other
    card = load_policy(out / "models" / "dagger_01").card
    assert card["training"]["init_from"] == str(root / "start_model")
    assert card["data"]["frames"] > 0 and "dagger" in card["data"]["sources"]
    # the report: both arms evaluated at iterations 0 and 1, JSON on disk, a plot
    saved = json.loads((out / "dagger.json").read_text())
    assert [r["iteration"] for r in saved["iterations"]] == [0, 1]
    for r in saved["iterations"]:
        for arm in ("dagger", "bc"):
            assert r[arm]["laps_attempted"] == 1 and 0 <= r[arm]["route_completion"] <= 1
    assert cv2.imread(str(out / "completion.png")) is not None
    # the start data was linked in, not moved or changed
    assert len(read_drive(root / "start_drives" / "ring")) == 60


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_drive.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("change, message", [
    ({"--model": "nowhere"}, "policy folder not found"),
    ({"--data": "nowhere"}, "--data"),
    ({"--tracks": "procedural:x"}, "procedural"),
    ({"--iterations": "0"}, "--iterations 0"),
    ({"--beta0": "1.5"}, "--beta0 1.5"),
])
def test_bad_input_ends_with_one_error_line(world, tmp_path, change, message):
    root, ring = world
    args = {"--data": str(root / "start_drives"), "--model": str(root / "start_model"), "--tracks": str(ring),
            "--out": str(tmp_path / "out"), "--iterations": "1"}
    args.update(change)
    r = cli("dagger", *[x for kv in args.items() for x in kv])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_training_keeps_the_frames_before_a_dagger_intervention(tmp_path):
    """Those frames carry the expert's corrections of the policy's drift: the point of DAgger."""
    from test_dataset import record_drive

    from agent.dataset import load_drives
    from data.recording import read_drive

    record_drive(tmp_path / "dagger", steps=120, bias=0.9, source="dagger")
    raw = read_drive(tmp_path / "dagger")
    bad = raw.off_track | raw.intervention
    assert bad.any()
    d = load_drives(tmp_path, drop_before_s=1.0).drives[0]
    assert d.dropped == int(bad.sum()) and len(d) == len(raw) - int(bad.sum())


def test_no_augment_trains_both_arms_on_the_frames_as_recorded(world, tmp_path):
    """`dagger --no-augment`: the classical comparison, plain BC in both arms; the start policy here was
    trained with augmentation, which the command points out."""
    from dataclasses import asdict

    from agent.dataset import NO_AUGMENT

    root, ring = world
    out = tmp_path / "plain"
    r = cli("dagger", "--data", str(root / "start_drives"), "--model", str(root / "start_model"), "--tracks",
            str(ring), "--iterations", "1", "--epochs-per-iter", "1", "--max-steps", "20", "--eval-tracks",
            str(ring), "--no-augment", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "was trained with augmentation" in r.stdout and "no augmentation in either arm" in r.stdout
    for arm in ("dagger_01", "bc_01"):
        card = load_policy(out / "models" / arm).card
        assert card["training"]["config"]["augment"] == asdict(NO_AUGMENT), arm
        assert card["training"]["config"]["batch"] == TINY.batch  # the rest as the start policy was trained
    saved = json.loads((out / "dagger.json").read_text())
    assert saved["config"]["no_augment"] is True and saved["start_augmented"] is True
    assert saved["train_config"]["augment"] == asdict(NO_AUGMENT)
