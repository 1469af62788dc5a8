"""The policy network and its saved form: shapes, range, safetensors round trip, refusals."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.model import (
    ARCHS,
    CARD_FILE,
    WEIGHTS_FILE,
    build_model,
    count_parameters,
    load_policy,
    save_policy,
)
from agent.preprocess import preprocess, to_tensor
from sim import DriveEnv, EnvConfig, UserError, camera_from_name

ROOT = Path(__file__).resolve().parents[1]


def _frames(n=4, h=96, w=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _saved(tmp_path, arch="pilotnet", env_cfg=None):
    torch.manual_seed(0)
    env_cfg = env_cfg or EnvConfig()
    model = build_model(arch, env_cfg.camera)
    folder = tmp_path / "policy"
    save_policy(folder, model, {"arch": arch, "env": env_cfg.to_dict(), "data": {"frames": 0}})
    return folder, model


def test_preprocess_shape_range_and_single_frame():
    f = _frames(3)
    x = preprocess(f)
    assert x.shape == (3, 3, 96, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.allclose(x[1, 2], f[1, :, :, 2] / 255.0)
    assert preprocess(f[0]).shape == (1, 3, 96, 96)
    assert torch.equal(to_tensor(f), torch.from_numpy(x))
    with pytest.raises(ValueError):
        preprocess(f.astype(np.float32))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("camera", ["birdseye", "pilotnet", "birdseye:128x64"])
def test_model_output_shape_and_range(arch, camera):
    cam = camera_from_name(camera)
    model = build_model(arch, cam).eval()  # a -bins head gives its logits in training mode
    x = to_tensor(_frames(5, cam.height, cam.width))
    with torch.no_grad():
        y = model(x * 50.0)  # saturate: tanh keeps it in range
    assert y.shape == (5, 1)
    assert float(y.abs().max()) <= 1.0


def test_pilotnet_size_is_pilotnet_like():
    assert 200_000 < count_parameters(build_model("pilotnet", camera_from_name("birdseye"))) < 350_000
    assert 200_000 < count_parameters(build_model("pilotnet", camera_from_name("pilotnet"))) < 300_000
    assert count_parameters(build_model("small", camera_from_name("birdseye"))) < 200_000


def test_round_trip_and_policy_steers_like_the_model(tmp_path):
    folder, model = _saved(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CARD_FILE, WEIGHTS_FILE]  # no temp files
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["arch"] == "pilotnet" and card["preprocess"]["name"] and card["format_version"] == 1
    policy = load_policy(folder)
    frames = _frames(6)
    with torch.no_grad():
        expected = model(to_tensor(frames))[:, 0].numpy()
    assert np.allclose(policy.steer_batch(frames), expected, atol=1e-6)
    assert policy.steer(frames[2]) == pytest.approx(float(expected[2]), abs=1e-6)
    assert policy.env_config() == EnvConfig()


def test_device_auto_takes_the_gpu_when_there_is_one_and_a_bad_device_is_one_clear_error(tmp_path):
    folder, model = _saved(tmp_path)
    policy = load_policy(folder, device="auto")
    assert policy.device == ("cuda" if torch.cuda.is_available() else "cpu")
    frames = _frames(3)
    with torch.no_grad():
        expected = model(to_tensor(frames))[:, 0].numpy()
    assert np.allclose(policy.steer_batch(frames), expected, atol=1e-2)  # a GPU's kernels round otherwise
    with pytest.raises(UserError, match="--device tpu"):
        load_policy(folder, device="tpu")


def test_policy_drives_the_real_env(tmp_path):
    folder, _ = _saved(tmp_path, "small")
    policy = load_policy(folder)
    env = DriveEnv(config=replace(policy.env_config(), track="procedural:3", off_track="recover"))
    policy.check_env(env.cfg)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(np.array([policy.steer(obs)], np.float32))
    assert obs.shape == (96, 96, 3)


def test_check_env_refuses_another_camera_or_dt(tmp_path):
    folder, _ = _saved(tmp_path)
    policy = load_policy(folder)
    with pytest.raises(UserError, match="camera"):
        policy.check_env(EnvConfig(camera=camera_from_name("dashcam")))
    with pytest.raises(UserError, match="dt"):
        policy.check_env(EnvConfig(car=replace(EnvConfig().car, dt=0.1)))


def test_refuses_missing_garbage_and_mismatched_policies(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_policy(tmp_path / "nope")
    folder, _ = _saved(tmp_path)
    weights = (folder / WEIGHTS_FILE).read_bytes()
    card = json.loads((folder / CARD_FILE).read_text())

    def expect(match, card_obj=None, blob=None, card_text=None):
        (folder / CARD_FILE).write_text(card_text if card_text is not None else json.dumps(card_obj or card))
        (folder / WEIGHTS_FILE).write_bytes(weights if blob is None else blob)
        with pytest.raises(UserError, match=match) as e:
            load_policy(folder)
        assert "\n" not in str(e.value)

    garbage = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    expect("not a valid safetensors", dict(card, weights_sha256=None), garbage)
    expect("hash differs", card, garbage)
    expect("not a valid policy card", card_text="{ not json")
    expect("weights must be", dict(card, weights="../../etc/passwd.safetensors"))
    expect("weights must be", dict(card, weights="/tmp/x.safetensors"))
    expect("do not fit", dict(card, arch="small"))
    other_cam = EnvConfig(camera=camera_from_name("birdseye:64x64")).to_dict()
    expect("do not fit", dict(card, env=other_cam))
    expect("format version", dict(card, format_version=99))
    expect("preprocessing", dict(card, preprocess={"name": "other", "version": 3}))


def test_loading_imports_no_training_code(tmp_path):
    folder, _ = _saved(tmp_path, "small")
    code = ("import sys; from agent.model import load_policy; load_policy(sys.argv[1]); "
            "bad = [m for m in ('agent.train', 'agent.dataset') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, check=True, timeout=60)
