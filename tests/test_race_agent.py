"""The race task end to end on tiny real drives: record with throttle labels, the two-output policy,
the refusal of mixed tasks, and the race evaluation beside the expert."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.dataset import FrameDataset, load_drives
from agent.evaluate import ExpertDriver, PolicyDriver, evaluate
from agent.model import load_policy
from agent.train import TrainConfig, train
from agent.watch import watch
from data.inspect import inspect_drives
from data.record import record_autopilot
from data.recording import read_drive
from sim.track import load_track

ROOT = Path(__file__).resolve().parents[1]


def ring(folder: Path, radius: float = 40.0) -> Path:
    a = np.linspace(0, 2 * np.pi, round(2 * np.pi * radius), endpoint=False)
    path = folder / "ring.csv"
    path.write_text("# x_m,y_m,w_tr_right_m,w_tr_left_m\n"
                    + "\n".join(f"{radius * math.cos(t):.4f},{radius * math.sin(t):.4f},5.0,5.0" for t in a) + "\n")
    return path


@pytest.fixture(scope="module")
def race_drives(tmp_path_factory) -> Path:
    """A lap of a 40 m ring and of a 60 m ring, with DART noise on steering and throttle."""
    root = tmp_path_factory.mktemp("race")
    tracks = ",".join(str(ring(root / name, r)) for name, r in (("a", 40.0), ("b", 60.0)) if (root / name).mkdir()
                      or True)
    record_autopilot(tracks, 1, root / "drives", noise=0.3, workers=1, task="race", verbose=False)
    return root


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_drive.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_race_autopilot_records_throttle_labels_with_noise(race_drives):
    drive = read_drive(sorted((race_drives / "drives").iterdir())[0])
    assert drive.meta["env"]["task"] == "race" and drive.meta["driver"]["throttle_noise"]
    assert drive.throttle is not None and np.all(np.isfinite(drive.throttle))
    assert drive.throttle.max() > 0.9 and drive.throttle.min() < 0.5  # full throttle, and easing off
    speed = drive.state["speed"]
    assert speed[0] < 1.0 and speed.max() > 12.0  # a standing start, then racing speed
    assert np.ptp(drive.executed_steering - drive.steering) > 0.1  # the car executed perturbed steering
    stats, _ = inspect_drives(race_drives / "drives")  # `inspect` shows throttle and speed histograms
    assert sum(stats[0]["throttle_histogram"]["counts"]) == len(drive) and stats[0]["throttle_histogram"]["counts"][-1]
    assert sum(stats[0]["speed_kmh_histogram"]["counts"]) == len(drive) and stats[0]["mean_speed_kmh"] > 30


def test_race_recording_leaves_the_speed_profile_and_labels_the_way_back(tmp_path):
    """Pedal excursions put the car far off the expert's speed mid-lap (braked to a crawl, or too fast),
    states a policy's own speed mistakes lead to and the small throttle drift never reaches (without
    them this lap has neither); the labels there are the expert's way back (full throttle from a crawl,
    braking when too fast)."""
    from sim.env import EnvConfig
    from sim.expert import RaceExpert

    record_autopilot("procedural:2", 1, tmp_path / "d", noise=0.3, workers=1, task="race", verbose=False)
    drive = read_drive(next((tmp_path / "d").iterdir()))
    assert drive.meta["driver"]["pedal_excursions"]["rate_hz"] > 0
    expert, car, track = RaceExpert(), EnvConfig(task="race").race_car, load_track("procedural:2")
    st, thr = drive.state, drive.throttle
    slow = fast = 0
    for i in range(100, len(drive)):  # after the standing start
        target = expert.target_speed(track, car, float(st["s"][i]), float(st["speed"][i]))
        if st["speed"][i] < 0.5 * target:
            slow += 1
            assert thr[i] == pytest.approx(1.0)
        elif st["speed"][i] > target + 2.0:
            fast += 1
            assert thr[i] < -0.5
    assert slow > 20 and fast > 20, (slow, fast)


def test_two_output_policy_learns_the_throttle(race_drives, tmp_path):
    data = load_drives(race_drives / "drives", stream=open("/dev/null", "w"))
    assert data.env.task == "race" and data.drives[0].labels.shape[1] == 2
    ds = FrameDataset(data.drives, data.env)
    frame, labels = ds[0]
    assert labels.shape == (2,)
    train(race_drives / "drives", tmp_path / "m", epochs=4, cfg=TrainConfig(arch="small", batch=32, lr=2e-3),
          device="cpu", verbose=False, val_fraction=0.0)
    policy = load_policy(tmp_path / "m")
    assert policy.card["task"] == "race" and policy.outputs == ["steering", "throttle"]
    frames = np.concatenate([d.frames for d in data.drives])
    truth = np.concatenate([d.labels for d in data.drives])
    pred = policy.act_batch(frames)
    assert pred.shape == (len(frames), 2)
    # the throttle output follows the labels: full throttle when launching, less at cornering speed
    corr = np.corrcoef(pred[:, 1], truth[:, 1])[0, 1]
    assert corr > 0.5, corr
    # watch drives it with both outputs in the real window loop, and the person's pedal takes over
    rows = []
    cfg = replace(policy.env_config(), track=str(race_drives / "a" / "ring.csv"), off_track="recover", laps=None)
    result = watch(cfg, policy, realtime=False, on_step=rows.append, max_steps=60)
    assert result.steps == 60 and rows[-1]["info"]["speed"] > 3.0  # the policy's throttle moved the car
    # eval takes the task from the card, and the expert drives the same tracks for the lap-time ratio
    report = evaluate(PolicyDriver(tmp_path / "m"), str(race_drives / "a" / "ring.csv"), 1, show_progress=False)
    s = report["summary"]
    assert report["settings"]["env"]["task"] == "race"
    assert s["expert_lap_time_s"] > 0 and "mean_lap_time_ratio" in s and "expert" in s


def test_augmented_race_samples_keep_both_labels_right(race_drives):
    from agent.dataset import AugmentConfig

    data = load_drives(race_drives / "drives", stream=open("/dev/null", "w"))
    mirror = FrameDataset(data.drives, data.env, AugmentConfig(shift_prob=0, mirror_prob=1.0, light_prob=0,
                                                               shadow_prob=0, noise_std=0))
    shift = FrameDataset(data.drives, data.env, AugmentConfig(shift_prob=1.0, mirror_prob=0, light_prob=0,
                                                              shadow_prob=0, noise_std=0))
    d = data.drives[0]
    for i in range(0, len(d), 37):
        frame, labels = mirror[i]
        assert labels[0] == pytest.approx(-d.labels[i, 0]) and labels[1] == pytest.approx(d.labels[i, 1])
        assert np.array_equal(frame, d.frames[i][:, ::-1])
        frame, labels = shift[i]
        assert labels[1] == pytest.approx(d.labels[i, 1])  # the throttle of the recorded speed and place
        bar = max(2, frame.shape[1] // 32)
        assert np.array_equal(frame[:, :bar], d.frames[i][:, :bar])  # the re-render shows the same speed


def test_a_mix_of_tasks_is_refused_with_one_line(race_drives, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    record_autopilot(str(race_drives / "a" / "ring.csv"), 1, mixed / "lane", workers=1, verbose=False)
    (race_drives / "drives").rename(mixed / "race")
    try:
        r = cli("train", "--data", str(mixed), "--out", str(tmp_path / "m"), "--epochs", "1")
    finally:
        (mixed / "race").rename(race_drives / "drives")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert "two tasks" in errors[0] and "lane" in errors[0] and "race" in errors[0]


def test_eval_expert_race_cli_reports_lap_times(race_drives, tmp_path):
    out = tmp_path / "r.json"
    r = cli("eval", "--expert", "--task", "race", "--tracks", str(race_drives / "b" / "ring.csv"), "--json", str(out),
            "--plot", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    row = report["tracks"][0]
    assert row["laps_completed"] == 1 and row["mean_lap_time_ratio"] == pytest.approx(1.0)
    assert row["expert_lap_time_s"] == pytest.approx(row["mean_lap_time_s"])
    assert row["mean_speed_mps"] > 15.0  # a 60 m ring at ~0.85 g, from a standing start
    assert any(p.endswith("_speed.png") for p in report["plots"])
    assert "lap time ratio" in r.stdout
    assert report["summary"]["mean_lap_time_ratio"] == pytest.approx(1.0)
    assert ExpertDriver("race").env_config().task == "race"


def test_race_sampling_lifts_the_rare_standing_starts():
    from agent.dataset import balance_weights

    labels = np.zeros((1000, 2), np.float32)
    speeds = np.full(1000, 30.0)
    speeds[:20] = 0.0  # 2% of the frames launch from a standstill
    plain = balance_weights(labels, power=0.7)
    balanced = balance_weights(labels, power=0.7, speeds=speeds, max_speed=34.0)
    assert plain[:20].sum() == pytest.approx(0.02)
    assert balanced[:20].sum() > 0.2  # lifted more than tenfold, softened by the power


def test_saliency_of_a_two_output_policy_is_the_steering_s(race_drives):
    """TensorBoard's validation picture and `saliency` work on race policies: the map is the steering's
    gradient, the throttle output does not leak into it, and two-column labels are drawn."""
    import torch

    from agent.model import build_model
    from agent.preprocess import preprocess
    from agent.saliency import grid_image, saliency_maps

    data = load_drives(race_drives / "drives", stream=open("/dev/null", "w"))
    frames = data.drives[0].frames[:4]
    torch.manual_seed(0)
    model = build_model("small", data.env.camera, 2).eval()
    maps, preds = saliency_maps(model, frames)
    x = torch.from_numpy(preprocess(frames)).requires_grad_(True)
    steer_grad = torch.autograd.grad(model(x)[:, 0].sum(), x)[0].abs().amax(dim=1).numpy()
    assert preds.shape == (4,) and np.allclose(preds, model(torch.from_numpy(preprocess(frames)))[:, 0].detach())
    assert np.corrcoef(maps.ravel(), steer_grad.ravel())[0, 1] > 0.5
    img = grid_image(frames, {"gradient": maps}, data.drives[0].labels[:4], preds, cols=2)
    assert img.ndim == 3 and img.shape[2] == 3
