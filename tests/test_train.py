"""Behavioural cloning end to end on tiny real drives: loss goes down, resume, DDP, CLI errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import val_label_variance
from safetensors.torch import load_file
from test_dataset import record_drive

import agent.train as train_module
from agent.model import load_policy
from agent.train import STATE_JSON, TrainConfig, bf16_supported, load_checkpoint, train
from sim import UserError, camera_from_name

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(arch="small", batch=32, lr=2e-3)


@pytest.fixture(scope="module")
def drives(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_drives")
    for i, (spec, s0) in enumerate([("procedural:0", 0.0), ("procedural:0", 400.0), ("procedural:1", 200.0)]):
        record_drive(root / f"d{i}", spec, steps=80, start_s=s0)
    return root


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_drive.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_a_tiny_training_run_reduces_the_loss_and_saves_a_policy(drives, tmp_path):
    res = train(drives, tmp_path / "m", epochs=4, cfg=TINY, device="cpu", verbose=False)
    hist = json.loads((tmp_path / "m" / "history.json").read_text())["history"]
    assert len(hist) == 4 and res.steps > 0
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert (tmp_path / "m" / "loss_curves.png").stat().st_size > 1000
    policy = load_policy(tmp_path / "m")
    card = policy.card
    assert card["arch"] == "small" and card["training"]["best_val_loss"] == pytest.approx(res.best_val_loss)
    assert len(card["data"]["val_drives"]) == 1 and card["data"]["frames"] == 240
    assert policy.env_config().camera == camera_from_name("birdseye")
    # nothing half-written is left behind
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_bf16_on_a_cpu_that_has_it_learns_and_saves_float32_weights(drives, tmp_path):
    """`--precision bf16` on CPU: the maths in bf16, the loss still falls, the policy stays float32."""
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16")
    train(drives, tmp_path / "m", epochs=4, cfg=TINY, device="cpu", verbose=False, precision="bf16")
    hist = json.loads((tmp_path / "m" / "history.json").read_text())["history"]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    card = load_policy(tmp_path / "m").card
    assert card["training"]["precision"] == "bf16 autocast"
    assert {t.dtype for t in load_file(tmp_path / "m" / "model.safetensors").values()} == {torch.float32}
    # on CPU, auto stays float32: the published CPU figures are float32 runs
    train(drives, tmp_path / "a", epochs=1, cfg=TINY, device="cpu", verbose=False)
    assert load_policy(tmp_path / "a").card["training"]["precision"] == "float32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here (CI has none; run on a GPU machine)")
def test_auto_on_a_gpu_trains_there_in_bf16_and_the_policy_drives_on_the_cpu(drives, tmp_path):
    """`--device auto` with a GPU trains there (with its loader workers and pinned memory), in bf16
    autocast where the GPU has it; the loss falls as on the CPU, and the saved float32 policy loads
    and steers on a CPU."""
    res = train(drives, tmp_path / "m", epochs=4, cfg=TINY, device="auto", verbose=False)
    hist = json.loads((tmp_path / "m" / "history.json").read_text())["history"]
    assert res.steps > 0 and hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    policy = load_policy(tmp_path / "m")  # on the CPU
    cam = policy.env_config().camera
    assert np.isfinite(policy.steer(np.full((cam.height, cam.width, 3), 128, np.uint8)))
    card = policy.card
    want = "bf16 autocast" if torch.cuda.is_bf16_supported() else "float32"
    assert card["training"]["precision"] == want and card["training"]["device"].startswith("cuda")
    assert {t.dtype for t in load_file(tmp_path / "m" / "model.safetensors").values()} == {torch.float32}


def test_bf16_asked_of_a_device_without_it_is_one_clear_error(drives, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "bf16_supported", lambda dev: False)
    with pytest.raises(UserError, match="--precision bf16: cpu has no native bf16"):
        train(drives, tmp_path / "m", epochs=1, cfg=TINY, device="cpu", verbose=False, precision="bf16")
    assert not (tmp_path / "m" / STATE_JSON).exists()


def test_precision_is_the_calls_own_when_a_run_resumes(drives, tmp_path, monkeypatch):
    """A run started in bf16 goes on in float32 on a machine without it (and the other way round):
    precision is how this machine computes, not part of what the run is."""
    monkeypatch.setattr(train_module, "bf16_supported", lambda dev: True)
    train(drives, tmp_path / "m", epochs=1, cfg=TINY, device="cpu", verbose=False, precision="bf16")
    assert load_policy(tmp_path / "m").card["training"]["precision"] == "bf16 autocast"
    monkeypatch.setattr(train_module, "bf16_supported", lambda dev: False)
    train(drives, tmp_path / "m", epochs=2, device="cpu", resume=True, verbose=False)  # auto: float32 here
    card = load_policy(tmp_path / "m").card
    assert card["training"]["precision"] == "float32" and card["training"]["epochs"] == 2
    with pytest.raises(UserError, match="--precision bf16"):
        train(drives, tmp_path / "m", epochs=3, device="cpu", resume=True, verbose=False, precision="bf16")


def test_resume_continues_from_the_saved_epoch(drives, tmp_path):
    out = tmp_path / "m"
    train(drives, out, epochs=2, cfg=TINY, device="cpu", verbose=False)
    meta, _ = load_checkpoint(out)
    assert meta["epoch"] == 2 and meta["batch_in_epoch"] == 0
    first = json.loads((out / "history.json").read_text())["history"]
    res = train(drives, out, epochs=3, device="cpu", resume=True, verbose=False)
    hist = json.loads((out / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[:2] == first  # the first two epochs were not trained again
    assert res.steps == 3 * meta["step"] // 2
    # the checkpoint's settings win over the defaults of the resumed call
    assert load_policy(out).card["arch"] == "small"
    # a full budget resumes to nothing more
    assert train(drives, out, epochs=3, device="cpu", resume=True, verbose=False).steps == res.steps


def test_a_run_stopped_mid_epoch_resumes_mid_epoch(drives, tmp_path):
    out = tmp_path / "m"
    cfg = TrainConfig(arch="small", batch=16, epoch_frames=320)
    train(drives, out, minutes=0.001, cfg=cfg, device="cpu", verbose=False)  # stops after a batch or so
    meta, _ = load_checkpoint(out)
    assert meta["epoch"] == 0 and 0 < meta["batch_in_epoch"] < 20
    res = train(drives, out, epochs=1, device="cpu", resume=True, verbose=False)
    assert res.steps == 20  # 320 samples / batch 16: the rest of epoch 1, nothing twice
    assert load_checkpoint(out)[0]["epoch"] == 1


def test_warm_start_from_a_policy(drives, tmp_path):
    train(drives, tmp_path / "a", epochs=1, cfg=TINY, device="cpu", verbose=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".model.safetensors.x.tmp").write_bytes(b"half")  # left by a killed run
    train(drives, tmp_path / "b", epochs=1, cfg=TrainConfig(arch="small", lr=1e-12), device="cpu",
          init_from=tmp_path / "a", verbose=False)
    a, b = load_policy(tmp_path / "a").model.state_dict(), load_policy(tmp_path / "b").model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (tmp_path / "b" / ".model.safetensors.x.tmp").exists()
    with pytest.raises(UserError, match="pilotnet"):
        train(drives, tmp_path / "c", epochs=1, cfg=TrainConfig(arch="pilotnet"), device="cpu",
              init_from=tmp_path / "a", verbose=False)


def test_ddp_ranks_step_together_and_end_with_identical_weights(drives, tmp_path):
    """Two gloo ranks under torchrun with a --minutes budget: rank 0's clock sets every step's learning
    rate and the stop, so both ranks take the same steps and hold bit-identical weights at the end."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "ddp_rank.py"), str(drives), str(tmp_path), "0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 4
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    card = load_policy(tmp_path / "policy").card
    assert card["training"]["world_size"] == 2
    meta, _ = load_checkpoint(tmp_path / "policy")
    assert meta["world_size"] == 2 and meta["step"] == ranks[0]["steps"]
    assert meta["frames_seen"] == 2 * 16 * meta["step"]  # each step is a batch of 16 on each rank
    hist = meta["history"]
    assert len(hist) >= 2 and hist[-1]["train_loss"] < hist[0]["train_loss"]  # and it learned


def test_cli_trains_a_policy_that_learned_and_prints_a_summary(learn_drives, tmp_path):
    out = tmp_path / "m"
    proc = cli("train", "--data", str(learn_drives), "--out", str(out), "--epochs", "4", "--arch", "small",
               "--batch", "32", "--lr", "3e-3")
    assert proc.returncode == 0, proc.stderr
    assert "Summary" in proc.stdout and "best val loss" in proc.stdout
    assert "epoch 1/4" in proc.stderr  # the progress bar
    # it learned: far better on the held-out drives than always answering their mean steering
    best = load_policy(out).card["training"]["best_val_loss"]
    assert best < 0.7 * val_label_variance(learn_drives, out), best
    again = cli("train", "--data", str(learn_drives), "--out", str(out), "--epochs", "1")
    assert again.returncode != 0 and "--resume" in again.stderr


def test_tensorboard_event_files_hold_the_losses_and_a_picture(trained):
    """`tensorboard --logdir` on the policy folder shows the run: the event files there hold the
    training and validation losses (the history's own figures), learning rate, frames/s, and images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained.policy), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/learning_rate", "epoch/train_loss", "epoch/validation_loss",
            "epoch/frames_per_s", "epoch/learning_rate"} <= set(tags["scalars"])
    history = json.loads((trained.policy / "history.json").read_text())["history"]
    logged = [e.value for e in events.Scalars("epoch/validation_loss")]
    assert logged == pytest.approx([h["val_loss"] for h in history], rel=1e-5)
    assert [e.value for e in events.Scalars("epoch/train_loss")] == pytest.approx(
        [h["train_loss"] for h in history], rel=1e-5)
    assert len(events.Scalars("train/loss")) >= 10
    assert len(events.Images("validation/steering_and_saliency")) == len(history)


def test_training_goes_on_without_tensorboard(drives, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    res = train(drives, tmp_path / "m", epochs=1, cfg=TINY, device="cpu")
    assert res.steps > 0 and (tmp_path / "m" / "model.safetensors").exists()
    assert "tensorboard is not installed" in capsys.readouterr().out
    assert not list((tmp_path / "m").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("case", ["empty", "missing", "camera", "minutes0", "device", "arch", "cuda"])
def test_cli_bad_input_is_one_clear_line(drives, tmp_path, case):
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "m")
    args = {
        "empty": ["--data", str(tmp_path / "empty")],
        "missing": ["--data", str(tmp_path / "nope")],
        "camera": ["--data", str(drives), "--camera", "dashcam"],
        "minutes0": ["--data", str(drives), "--minutes", "0"],
        "device": ["--data", str(drives), "--device", "tpu"],
        "arch": ["--data", str(drives), "--arch", "resnet"],
        "cuda": ["--data", str(drives), "--device", "cuda"],
    }[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = cli("train", *args, "--out", out)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / STATE_JSON).exists()


def test_the_thread_check_takes_one_thread_only_when_clearly_faster(monkeypatch):
    """A clock on which each timed stretch lasts as long as the thread count in use says: 1 thread 5%
    faster is a tie (all the threads), 25% faster wins."""
    import types

    before = torch.get_num_threads()
    for one_faster, want in ((1.05, 2), (1.25, 1)):
        clock = {"t": 0.0}
        cost = {1: 1.0, 2: one_faster}

        def perf_counter(clock=clock, cost=cost):
            clock["t"] += cost[torch.get_num_threads()]
            return clock["t"]
        monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
        try:
            best, speed = train_module.pick_threads("small", camera_from_name("birdseye"), 32, 2)
            assert best == want == torch.get_num_threads(), speed
            assert speed[1] == pytest.approx(one_faster * speed[2])
        finally:
            torch.set_num_threads(before)
