"""Recorded drives to batches: loading and cleaning, split by drive, balancing, augmentation signs."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import agent.model as model_mod
from agent import dataset
from agent.dataset import (
    NO_AUGMENT,
    AugmentConfig,
    BalancedSampler,
    FrameDataset,
    balance_weights,
    collate,
    corrective_label,
    load_drives,
    shifted_pose,
    smooth_labels,
    split_by_drive,
)
from agent.model import build_model, load_policy, save_policy
from agent.preprocess import preprocess
from data.recording import DriveWriter
from sim import Camera, CameraConfig, DriveEnv, EnvConfig, Expert, UserError, camera_from_name, load_track
from sim.render import ASPHALT, default_palette


def record_drive(folder: Path, spec: str = "procedural:0", steps: int = 60, camera: CameraConfig | None = None,
                 source: str = "autopilot", bias: float = 0.0, start_s: float = 0.0) -> Path:
    """A real drive: the expert (plus an optional steering bias) drives the real env, DriveWriter saves it."""
    cfg = EnvConfig(track=spec, camera=camera or CameraConfig(), off_track="recover")
    env = DriveEnv(config=cfg)
    expert = Expert()
    obs, info = env.reset(seed=0, options={"track": spec, "start_s": start_s})
    meta = {"source": source, "driver": {"kind": source}, "track": spec, "env": cfg.to_dict(),
            "palette": env.unwrapped.palette[:10].tolist()}
    with DriveWriter(folder, meta, chunk_steps=50) as w:
        for _ in range(steps):
            label = expert.steering(env)
            w.add(obs, label, info, executed_steering=label + bias)
            obs, _r, _term, _trunc, info = env.step(np.array([np.clip(label + bias, -1, 1)], np.float32))
    return folder


@pytest.fixture(scope="module")
def drives_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drives")
    for i, (spec, s0) in enumerate([("procedural:0", 0.0), ("procedural:1", 300.0), ("procedural:2", 50.0),
                                     ("procedural:3", 500.0)]):
        record_drive(root / f"d{i}", spec, steps=60, start_s=s0)
    return root


def test_load_drives_reads_everything_with_the_recorded_camera(drives_dir):
    ds = load_drives(drives_dir)
    assert len(ds.drives) == 4 and ds.frames == 240
    assert ds.env.camera == CameraConfig()
    d = ds.drives[0]
    assert d.frames.shape == (60, 96, 96, 3) and d.frames.dtype == np.uint8
    assert d.track is load_track("procedural:0") and d.dropped == 0
    assert np.array_equal(d.palette, default_palette())


def test_off_track_and_intervention_frames_and_the_second_before_are_dropped(tmp_path):
    # a hard right bias pushes the car off the road; the env puts it back (an intervention)
    record_drive(tmp_path / "bad", steps=120, bias=0.9)
    from data.recording import read_drive

    raw = read_drive(tmp_path / "bad")
    assert raw.intervention.any()
    ds = load_drives(tmp_path, drop_before_s=1.0)
    d = ds.drives[0]
    first_bad = int(np.flatnonzero(raw.off_track | raw.intervention)[0])
    assert d.dropped >= 21  # the bad frame and the 20 frames (1 s) before it
    kept_x = set(np.round(d.pose[:, 0], 6))
    for i in range(max(first_bad - 20, 0), first_bad + 1):
        assert round(raw.state["x"][i], 6) not in kept_x


def test_bad_data_folders_are_clear_user_errors(tmp_path, drives_dir):
    with pytest.raises(UserError, match="not found"):
        load_drives(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no recorded drives"):
        load_drives(tmp_path / "empty")
    with pytest.raises(UserError, match="camera"):
        load_drives(drives_dir, camera=camera_from_name("dashcam"))
    mixed = tmp_path / "mixed"
    record_drive(mixed / "a", steps=5)
    record_drive(mixed / "b", steps=5, camera=camera_from_name("birdseye:64x64"))
    with pytest.raises(UserError, match=r"b/meta.json: recorded with camera birdseye 64x64"):
        load_drives(mixed)


def test_split_is_by_whole_drives_and_seeded():
    tr, va = split_by_drive(10, 0.2, seed=3)
    assert sorted(tr + va) == list(range(10)) and not set(tr) & set(va) and len(va) == 2
    assert split_by_drive(10, 0.2, seed=3) == (tr, va)
    assert {tuple(split_by_drive(10, 0.2, seed=s)[1]) for s in range(6)} != {tuple(va)}
    assert split_by_drive(1, 0.2) == ([0], [])
    assert len(split_by_drive(2, 0.2)[1]) == 1


def test_train_and_validation_frames_come_from_different_drives(drives_dir):
    ds = load_drives(drives_dir)
    tr, va = split_by_drive(len(ds.drives), 0.25, seed=0)
    train_x = {round(x, 6) for i in tr for x in ds.drives[i].pose[:, 0]}
    val_x = {round(x, 6) for i in va for x in ds.drives[i].pose[:, 0]}
    assert train_x and val_x and not train_x & val_x


def test_balance_lifts_rare_curve_frames():
    labels = np.array([0.0] * 90 + [0.8] * 10, np.float32)
    w = balance_weights(labels, power=1.0)
    assert w.sum() == pytest.approx(1.0)
    assert w[95] > 5 * w[0]
    assert w[90:].sum() == pytest.approx(0.5)  # flat histogram: curves drawn as often as straights
    assert np.allclose(balance_weights(labels, power=0.0), 0.01)
    draws = np.array(list(BalancedSampler(w, 2000, seed=1)))
    assert 0.4 < (draws >= 90).mean() < 0.6


def test_sampler_gives_each_ddp_rank_its_own_share():
    w = np.ones(50) / 50
    a = list(BalancedSampler(w, 40, seed=0, rank=0, world=2))
    b = list(BalancedSampler(w, 40, seed=0, rank=1, world=2))
    full = list(BalancedSampler(w, 40, seed=0))
    assert len(a) == len(b) == 20 and sorted(a + b) == sorted(full)


def test_smoothing_keyboard_labels(tmp_path):
    steps = np.array([0.0] * 40 + [1.0] * 40 + [0.0] * 40, np.float32)
    sm = smooth_labels(steps, 0.25, 0.05)
    assert sm[39] > 0.05 and sm[40] < 0.95 and sm[60] == pytest.approx(1.0, abs=1e-3)
    record_drive(tmp_path / "kb", steps=40, source="keyboard")
    record_drive(tmp_path / "auto", steps=40, source="autopilot")
    ds = {d.name: d for d in load_drives(tmp_path).drives}
    from data.recording import read_drive

    raw = read_drive(tmp_path / "auto").steering
    assert np.allclose(ds["auto"].labels, raw)
    assert not np.allclose(ds["kb"].labels, raw)  # same driving, smoothed by default
    assert np.allclose(load_drives(tmp_path, smooth=0.0).drives[0].labels, raw)


def test_mirror_flips_the_frame_and_negates_the_steering(drives_dir):
    ds = load_drives(drives_dir)
    aug = AugmentConfig(shift_prob=0.0, mirror_prob=1.0, light_prob=0.0, shadow_prob=0.0, noise_std=0.0)
    fd = FrameDataset(ds.drives, ds.env, aug)
    for i in (0, 17, 130):
        frame, label = fd[i]
        di, fi = fd.index[i]
        assert np.array_equal(frame, ds.drives[di].frames[fi][:, ::-1])
        assert label == pytest.approx(-ds.drives[di].labels[fi])


def _road_centre_column(frame: np.ndarray, row: int) -> float:
    asphalt = np.all(frame[row] == default_palette()[ASPHALT], axis=1)
    return float(np.flatnonzero(asphalt).mean())


def test_a_car_shifted_left_sees_the_road_to_its_right_and_steers_right():
    track = load_track("procedural:0")
    cfg = EnvConfig()
    cam = Camera(track, cfg.camera, cfg.car.length_m, cfg.car.width_m, cfg.car.wheelbase_m)
    s = 20.0
    x, y = track.point_at(s)
    yaw = track.heading_at(s)
    pose = np.array([x, y, yaw, cfg.car.cruise_speed_mps, s])
    expert_here = corrective_label(track, cfg, pose, 0.0, 0.0, 0.0, "expert")
    row = 40  # ahead of the car
    centre = _road_centre_column(cam.render(x, y, yaw), row)
    for shift, rot in ((1.5, 0.0), (0.0, math.radians(8))):
        left = corrective_label(track, cfg, pose, expert_here, shift, rot, "expert")
        right = corrective_label(track, cfg, pose, expert_here, -shift, -rot, "expert")
        assert left > expert_here + 0.05, "shifted/turned LEFT must steer RIGHT (positive)"
        assert right < expert_here - 0.05, "shifted/turned RIGHT must steer LEFT (negative)"
        # human-label form: the recorded label plus the expert's change, same sign
        assert corrective_label(track, cfg, pose, 0.3, shift, rot, "delta") == pytest.approx(
            0.3 + left - expert_here, abs=1e-9)
    # and the picture agrees: shifted left, the road moves right in the frame
    lx, ly, lyaw = shifted_pose(x, y, yaw, 1.5, 0.0)
    assert _road_centre_column(cam.render(lx, ly, lyaw), row) > centre + 2
    rx, ry, ryaw = shifted_pose(x, y, yaw, -1.5, 0.0)
    assert _road_centre_column(cam.render(rx, ry, ryaw), row) < centre - 2
    # the shifted pose is really to the left of the track
    assert track.project(lx, ly, lyaw, s_hint=s).offset == pytest.approx(1.5 + track.project(x, y, yaw).offset,
                                                                          abs=0.1)


def test_viewpoint_shift_samples_are_rerendered_with_corrective_labels(drives_dir):
    ds = load_drives(drives_dir)
    aug = AugmentConfig(shift_prob=1.0, mirror_prob=0.0, light_prob=0.0, shadow_prob=0.0, noise_std=0.0)
    fd = FrameDataset(ds.drives, ds.env, aug, seed=5)
    changed = 0
    for i in range(0, 240, 12):
        frame, label = fd[i]
        di, fi = fd.index[i]
        d = ds.drives[di]
        # rebuild the same sample by hand from the same random draws
        rng = np.random.default_rng([5, 0, i])
        rng.random()  # the draw that decides to shift
        shift = rng.uniform(-aug.max_shift_m, aug.max_shift_m)
        rot = math.radians(rng.uniform(-aug.max_rotate_deg, aug.max_rotate_deg))
        cam = Camera(d.track, ds.env.camera, ds.env.car.length_m, ds.env.car.width_m, ds.env.car.wheelbase_m)
        assert np.array_equal(frame, cam.render(*shifted_pose(*d.pose[fi, :3], shift, rot)))
        assert label == pytest.approx(corrective_label(d.track, ds.env, d.pose[fi], float(d.labels[fi]),
                                                       shift, rot, "expert"), abs=1e-6)
        changed += not np.array_equal(frame, d.frames[fi])
    assert changed >= 15
    # same seed and epoch: same sample; next epoch: another one
    assert np.array_equal(fd[3][0], fd[3][0])
    fd.set_epoch(1)
    assert not np.array_equal(fd[3][0], FrameDataset(ds.drives, ds.env, aug, seed=5)[3][0])


def test_photometric_augmentation_changes_pixels_not_labels(drives_dir):
    ds = load_drives(drives_dir)
    aug = AugmentConfig(shift_prob=0.0, mirror_prob=0.0, light_prob=1.0, shadow_prob=1.0, noise_std=3.0)
    fd = FrameDataset(ds.drives, ds.env, aug)
    frame, label = fd[7]
    assert frame.dtype == np.uint8 and frame.shape == (96, 96, 3)
    assert not np.array_equal(frame, ds.drives[0].frames[7])
    assert label == ds.drives[0].labels[7]


def test_batches_and_the_policy_use_the_same_preprocess(drives_dir, tmp_path):
    # one function, imported by both paths
    assert dataset.preprocess is preprocess and model_mod.preprocess is preprocess
    ds = load_drives(drives_dir)
    fd = FrameDataset(ds.drives, ds.env, NO_AUGMENT)
    batch = [fd[i] for i in range(8)]
    x, y = collate(batch)
    frames = np.stack([b[0] for b in batch])
    assert torch.equal(x, torch.from_numpy(preprocess(frames)))
    assert y.shape == (8, 1)
    torch.manual_seed(0)
    net = build_model("small", ds.env.camera)
    save_policy(tmp_path / "p", net, {"arch": "small", "env": ds.env.to_dict()})
    with torch.no_grad():
        trained_view = net(x)[:, 0].numpy()
    assert np.allclose(load_policy(tmp_path / "p").steer_batch(frames), trained_view, atol=1e-6)

