"""Shared test setup: no screen, no sound, and generated tracks cached in a folder of this run (not
the user's cache), shared by the CLI subprocesses the tests start."""

import atexit
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# property tests draw the same examples on every run: a CI run never fails on a case no run saw before
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
if "E2E_DRIVE_CACHE" not in os.environ:
    os.environ["E2E_DRIVE_CACHE"] = tempfile.mkdtemp(prefix="e2e-drive-test-cache-")
    atexit.register(shutil.rmtree, os.environ["E2E_DRIVE_CACHE"], True)


@pytest.fixture
def untrained_policy(tmp_path):
    """A small network with seeded random weights, saved and loaded as a user's policy: for tests of
    the machinery around a policy (windows, ladders), not of what it learned."""
    import torch

    from agent.model import build_model, load_policy, save_policy
    from sim.env import EnvConfig

    torch.manual_seed(0)
    cfg = EnvConfig()
    save_policy(tmp_path / "policy", build_model("small", cfg.camera), {"arch": "small", "env": cfg.to_dict()})
    return load_policy(tmp_path / "policy")


# -- one small trained policy, shared by the outcome tests ----------------------------------------
LEARN_CAMERA = "birdseye:48x48"  # a quarter of the default's pixels: the same task, 4x cheaper to learn


@dataclass(frozen=True)
class TrainedFixture:
    drives: Path  # autopilot drives with noise injection (so they hold recoveries), LEARN_CAMERA
    policy: Path  # a small network trained on them in-process
    val_label_var: float  # variance of the validation drives' steering labels


@pytest.fixture(scope="session")
def learn_drives(tmp_path_factory) -> Path:
    """Six short autopilot drives (procedural:0-5, 200 steps each) recorded as `record --autopilot`
    records them: steering noise injected, the expert's labels kept."""
    from data.record import record_one
    from sim.env import EnvConfig
    from sim.render import camera_from_name

    root = tmp_path_factory.mktemp("learn_drives")
    for i in range(6):
        spec = f"procedural:{i}"
        cfg = EnvConfig(track=spec, camera=camera_from_name(LEARN_CAMERA), off_track="recover", max_steps=200)
        record_one(spec, 1, str(root / f"d{i}"), cfg, noise=0.5, seed=i)
    return root


@pytest.fixture(scope="session")
def trained(learn_drives, tmp_path_factory) -> TrainedFixture:
    """A small network trained for 8 epochs on `learn_drives` (viewpoint shifts on, light jitter off:
    about 15 CPU seconds)."""
    from agent.dataset import AugmentConfig
    from agent.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "policy"
    cfg = TrainConfig(arch="small", batch=32, lr=3e-3,
                      augment=AugmentConfig(light_prob=0.0, shadow_prob=0.0, noise_std=0.0))
    train(learn_drives, out, epochs=8, cfg=cfg, device="cpu", verbose=False)
    return TrainedFixture(learn_drives, out, val_label_variance(learn_drives, out))


def val_label_variance(drives: Path, policy: Path) -> float:
    """The variance of the steering labels of the drives `policy` held out for validation: the
    validation error of a network that always answers their mean."""
    import numpy as np

    from agent.dataset import load_drives
    from agent.model import read_card

    val_names = set(read_card(policy)["data"]["val_drives"])
    labels = [d.labels for d in load_drives(drives, stream=io.StringIO()).drives if d.name in val_names]
    return float(np.concatenate(labels).var())
