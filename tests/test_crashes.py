"""Crashes on purpose: SIGKILL during train and play, and a full disk during record.

Nothing already saved may be lost, no half-written file may sit under a final name, and the user
gets one clear line.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_drive.py"), *args]


def env_vars() -> dict:
    return dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended early ({proc.returncode}): {err[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("timed out waiting")


@pytest.fixture(scope="module")
def one_drive(tmp_path_factory) -> Path:
    from data.record import record_autopilot
    out = tmp_path_factory.mktemp("drives")
    record_autopilot("procedural:0", laps=1, out=out, workers=1, verbose=False)
    return out


def test_sigkill_during_train_then_resume(one_drive, tmp_path):
    out = tmp_path / "policy"
    args = ["train", "--data", str(one_drive), "--out", str(out), "--arch", "small", "--epochs", "40",
            "--seed", "1"]
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_vars(), cwd=ROOT)
    state = out / "train_state.json"

    def after_two_epochs() -> bool:
        try:
            return json.loads(state.read_text()).get("epoch", 0) >= 2
        except (OSError, ValueError):
            return False

    wait_for(after_two_epochs, 240, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_epoch = json.loads(state.read_text())["epoch"]

    from agent.model import load_policy
    from agent.train import load_checkpoint
    load_policy(out)  # the best policy so far is whole and loadable (its weights match the card's hash)
    assert load_checkpoint(out)[0]["epoch"] == saved_epoch  # and so is the checkpoint (hash checked)

    r = subprocess.run(cli("train", "--data", str(one_drive), "--out", str(out), "--arch", "small",
                           "--epochs", str(saved_epoch + 1), "--seed", "1", "--resume"),
                       capture_output=True, text=True, env=env_vars(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    history = json.loads((out / "history.json").read_text())
    epochs = [h["epoch"] for h in (history if isinstance(history, list) else history["history"])]
    assert max(epochs) >= saved_epoch + 1  # it went on from the checkpoint, not from zero
    load_policy(out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the killed run's temp files are gone


def test_sigkill_during_play_keeps_the_chunks(tmp_path):
    out = tmp_path / "me"
    proc = subprocess.Popen(cli("play", "--track", "procedural:3", "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_vars(), cwd=ROOT)
    wait_for(lambda: len(list(out.glob("*/chunk_*.npz"))) >= 1, 60, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cli("inspect", str(out), "--json"), capture_output=True, text=True, env=env_vars(),
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["drives"][0]["frames"] >= 100


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1.5 MB tmpfs: a real full disk. Needs root (as in CI); skipped elsewhere."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_during_record_is_one_clear_line_and_keeps_chunks(tiny_disk):
    out = tiny_disk / "drives"
    r = subprocess.run(cli("record", "--autopilot", "--tracks", "procedural:2", "--laps", "1", "--workers", "1",
                           "--out", str(out)), capture_output=True, text=True, env=env_vars(), cwd=ROOT, timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "space" in errors[0].lower(), r.stderr[-2000:]
    chunks = sorted(out.glob("*/chunk_*.npz"))
    assert chunks, "the chunks written before the disk filled up must stay"
    from data.recording import read_drive
    d = read_drive(chunks[0].parent)
    assert len(d.steering) >= 100 and not d.warnings  # every chunk under a final name is whole
