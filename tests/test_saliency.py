"""Saliency maps of real frames through real networks, the overlay, and the `saliency` command."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from agent.model import build_model, load_policy, save_policy, single_thread_inference
from agent.saliency import METHODS, overlay, saliency_map, saliency_maps, saliency_overlay
from data.recording import DriveWriter
from sim.env import DriveEnv, EnvConfig
from sim.expert import Expert
from sim.render import CameraConfig, camera_from_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Single frames through a tiny CNN: one thread is ~10x faster than two fighting on a shared CPU."""
    with single_thread_inference():
        yield


def frames_of(camera: CameraConfig, spec: str = "procedural:2", at=(0.0, 300.0)) -> list[np.ndarray]:
    env = DriveEnv(config=EnvConfig(track=spec, camera=camera))
    return [env.reset(seed=0, options={"start_s": s})[0] for s in at]


def make_policy(folder: Path, arch: str = "pilotnet", camera: CameraConfig | None = None, seed: int = 0):
    camera = camera or CameraConfig()
    torch.manual_seed(seed)
    save_policy(folder, build_model(arch, camera), {"arch": arch, "env": EnvConfig(camera=camera).to_dict()})
    return load_policy(folder)


@pytest.mark.parametrize("arch, camera", [("pilotnet", "birdseye"), ("small", "birdseye"), ("pilotnet", "pilotnet"),
                                          ("small", "dashcam")])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_map_has_the_frames_size_values_in_0_1_and_follows_the_input(tmp_path, arch, camera, method):
    cam = camera_from_name(camera)
    policy = make_policy(tmp_path / "p", arch, cam)
    a, b = frames_of(cam)
    ma = saliency_map(policy, a, method)
    assert ma.shape == a.shape[:2] == (cam.height, cam.width) and ma.dtype == np.float32
    assert ma.min() >= 0.0 and ma.max() <= 1.0 and ma.max() == pytest.approx(1.0) and np.all(np.isfinite(ma))
    assert ma.std() > 0.01  # a picture, not a flat field
    mb = saliency_map(policy, b, method)
    assert np.abs(ma - mb).max() > 0.05  # another view, another map
    np.testing.assert_array_equal(ma, saliency_map(policy, a, method))  # deterministic


def test_batched_maps_equal_single_ones_and_the_steering_is_the_policys(tmp_path):
    policy = make_policy(tmp_path / "p")
    frames = np.stack(frames_of(CameraConfig(), at=(0.0, 120.0, 500.0)))
    for method in METHODS:
        maps, steer = saliency_maps(policy.model, frames, method=method)
        assert maps.shape == (3, *frames.shape[1:3])
        np.testing.assert_allclose(steer, policy.steer_batch(frames), atol=1e-5)
        np.testing.assert_allclose(maps[1], saliency_map(policy, frames[1], method), atol=1e-5)


def test_overlay_colours_only_where_the_map_is_bright():
    frame = frames_of(CameraConfig())[0]
    m = np.zeros(frame.shape[:2], np.float32)
    m[10:30, 40:60] = 1.0
    out = overlay(frame, m)
    assert out.shape == frame.shape and out.dtype == np.uint8
    hot = np.abs(out[10:30, 40:60].astype(int) - frame[10:30, 40:60]).mean()
    cold = np.abs(out[60:90, 0:30].astype(int) - frame[60:90, 0:30]).mean()
    assert hot > 3 * cold


def test_the_viewer_call_gives_an_rgb_frame(tmp_path):
    policy = make_policy(tmp_path / "p")
    frame = frames_of(CameraConfig())[0]
    out = saliency_overlay(policy, frame)
    assert out.shape == frame.shape and out.dtype == np.uint8 and not np.array_equal(out, frame)


# -- the command ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drive_and_policy(tmp_path_factory):
    root = tmp_path_factory.mktemp("saliency")
    cfg = EnvConfig(track="procedural:1", off_track="recover")
    env = DriveEnv(config=cfg)
    obs, info = env.reset(seed=0)
    meta = {"source": "autopilot", "driver": {"kind": "expert"}, "track": "procedural:1", "env": cfg.to_dict()}
    with DriveWriter(root / "drive", meta) as w:
        for _ in range(40):
            a = Expert().act(env)
            w.add(obs, float(a[0]), info)
            obs, _, _, _, info = env.step(a)
    torch.manual_seed(0)
    save_policy(root / "model", build_model("small", CameraConfig()),
                {"arch": "small", "env": EnvConfig().to_dict()})
    return root


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_drive.py", "saliency", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_command_writes_a_grid_png(drive_and_policy, tmp_path):
    root = drive_and_policy
    out = tmp_path / "grid.png"
    r = cli("--model", str(root / "model"), "--drive", str(root / "drive"), "--out", str(out), "--n", "5",
            "--method", "both")
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 96 * 3 and img.shape[1] > 3 * 96 * 3
    assert str(out) in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # nothing half-written left beside it


@pytest.mark.parametrize("which, value, message", [
    ("--model", "nowhere", "policy folder not found"),
    ("--model", "drive", "card.json: missing"),
    ("--drive", "nowhere", "--drive"),
    ("--drive", "model", "no recorded drive"),
    ("--out", "missing/grid.png", "does not exist"),
    ("--out", "grid.jpg", "must be a .png"),
    ("--method", "magic", "--method magic"),
])
def test_bad_input_ends_with_one_error_line(drive_and_policy, tmp_path, which, value, message):
    root = drive_and_policy
    args = {"--model": str(root / "model"), "--drive": str(root / "drive"), "--out": str(tmp_path / "grid.png")}
    args[which] = str(tmp_path / value) if which == "--out" else (str(root / value) if value != "magic" else value)
    r = cli(*[x for kv in args.items() for x in kv])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr


class PatchOnly(torch.nn.Module):
    """Keeps one rectangle of the input and zeroes the rest: whatever follows sees only that patch."""

    def __init__(self, rows: slice, cols: slice):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(x)
        mask[:, :, self.rows, self.cols] = 1.0
        return x * mask


def test_the_gradient_map_concentrates_on_the_only_patch_the_output_depends_on():
    """A network whose steering depends only on a known off-centre patch (rows 10-30, columns 58-82):
    the map (the default method, as `watch` and `eval --video` show it) must light up there, not
    elsewhere, and not transposed or mirrored."""
    torch.manual_seed(0)
    rows, cols = slice(10, 30), slice(58, 82)
    net = torch.nn.Sequential(PatchOnly(rows, cols), torch.nn.Conv2d(3, 8, 5, 2), torch.nn.ELU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 46 * 46, 1), torch.nn.Tanh())
    frames = np.stack(frames_of(CameraConfig()))
    maps, _ = saliency_maps(net, frames, method="gradient")
    for m in maps:
        inside = np.zeros(m.shape, bool)
        inside[rows, cols] = True
        near = np.zeros(m.shape, bool)  # the patch plus the blur's reach (3 sigma of 2 px)
        near[rows.start - 6:rows.stop + 6, cols.start - 6:cols.stop + 6] = True
        assert m[near].sum() > 0.99 * m.sum()
        assert m[inside].mean() > 10 * max(m[~near].mean(), 1e-6)
        r, c = np.unravel_index(np.argmax(m), m.shape)
        assert inside[r, c]
