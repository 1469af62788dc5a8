"""ONNX export and onnxruntime policies as a user meets them: train a tiny policy on real drives, export
it, drive the same track with both runtimes through the real CLI, and read the model cards."""

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_dataset import record_drive

from agent.export import TOLERANCE, export_onnx
from agent.model import OnnxPolicy, Policy, load_policy
from agent.preprocess import preprocess, preprocess_in_graph
from agent.train import TrainConfig, train
from data.recording import read_drive
from sim import UserError

ROOT = Path(__file__).resolve().parents[1]
SHORT = "procedural:0"


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_drive.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Two real recorded drives, a small policy trained on them, and its ONNX export."""
    root = tmp_path_factory.mktemp("export")
    record_drive(root / "drives" / "a", SHORT, steps=80, start_s=0.0)
    record_drive(root / "drives" / "b", "procedural:1", steps=80, start_s=200.0)
    train(root / "drives", root / "pilot", epochs=2, cfg=TrainConfig(arch="small", batch=32, lr=2e-3),
          device="cpu", verbose=False)
    result = export_onnx(root / "pilot", root / "pilot.onnx")
    return {"root": root, "folder": root / "pilot", "onnx": root / "pilot.onnx", "result": result}


def test_onnx_and_torch_agree_on_recorded_frames(exported):
    frames = read_drive(exported["root"] / "drives" / "b").frames
    torch_policy, onnx_policy = load_policy(exported["folder"]), load_policy(exported["onnx"])
    assert isinstance(torch_policy, Policy) and isinstance(onnx_policy, OnnxPolicy)
    want = torch_policy.act_batch(frames)
    got = onnx_policy.act_batch(frames)  # the whole drive in one batch, and frame by frame
    assert got.shape == want.shape == (len(frames), 1)
    assert np.abs(got - want).max() < TOLERANCE
    assert np.abs(np.array([onnx_policy.steer(f) for f in frames[:5]]) - want[:5, 0]).max() < TOLERANCE
    assert want.std() > 1e-3  # a trained policy that steers, not a constant
    # the graph's preprocessing is the training preprocessing, bit for bit
    assert np.array_equal(preprocess_in_graph(torch.from_numpy(frames[:4])).numpy(), preprocess(frames[:4]))
    # the same interface, the same env settings
    assert onnx_policy.env_config() == torch_policy.env_config()
    assert onnx_policy.folder == exported["root"] and onnx_policy.camera == torch_policy.camera


def test_the_file_is_self_contained_and_its_card_says_what_the_input_is(exported):
    model = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    (inp,), _ = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and dims[1:] == [96, 96, 3]
    assert isinstance(dims[0], str)  # a dynamic batch dimension
    card = json.loads((exported["root"] / "pilot.card.json").read_text())
    assert card["onnx"]["input"]["dtype"] == "uint8" and card["onnx"]["input"]["shape"] == ["N", 96, 96, 3]
    assert card["onnx"]["output"]["columns"] == ["steering"] and card["exported_from"] == str(exported["folder"])
    readme = (exported["root"] / "pilot.README.md").read_text()
    assert "uint8 (N, 96, 96, 3)" in readme and "inside the graph" in readme


def test_eval_onnx_in_the_cli_gives_the_torch_policys_figures_and_fills_the_model_cards(exported, tmp_path):
    text = (exported["folder"] / "README.md").read_text()  # written by train, with the policy
    assert "## Training" in text and "## Data" in text and "birdseye 96x96" in text and "Eval results" not in text
    reports = {}
    for name, model in (("torch", exported["folder"]), ("onnx", exported["onnx"])):
        r = cli("eval", "--model", str(model), "--tracks", SHORT, "--json", str(tmp_path / f"{name}.json"))
        assert r.returncode == 0, r.stderr
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    t, o = reports["torch"]["summary"], reports["onnx"]["summary"]
    assert reports["onnx"]["driver"]["runtime"] == "onnxruntime"
    for key in ("laps_attempted", "laps_completed", "interventions", "laps_finished"):
        assert o[key] == t[key], key
    assert abs(o["mean_abs_cte_m"] - t["mean_abs_cte_m"]) < 0.02
    assert abs(o["route_completion"] - t["route_completion"]) < 0.02
    for readme, summary in ((exported["folder"] / "README.md", t), (exported["root"] / "pilot.README.md", o)):
        text = readme.read_text()
        assert "## Eval results" in text and f"{SHORT}, 1 lap, seed 0" in text
        assert f"| {summary['laps_completed']} |" in text and f"{summary['mean_abs_cte_m']:.4g}" in text


def _copy(exported, tmp_path, blob: bytes | None = None, card: dict | None = None) -> Path:
    """pilot.onnx (and its card, unless `card` is {}) in tmp_path, with the bytes or card given."""
    onnx_path = tmp_path / "pilot.onnx"
    onnx_path.write_bytes(exported["onnx"].read_bytes() if blob is None else blob)
    card = json.loads((exported["root"] / "pilot.card.json").read_text()) if card is None else card
    if card:
        (tmp_path / "pilot.card.json").write_text(json.dumps(card))
    return onnx_path


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and r.stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_a_bad_onnx_policy_is_one_error_line(exported, tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    onnx_path = _copy(exported, tmp_path, blob=garbage)
    line = one_error_line(cli("eval", "--model", str(onnx_path), "--tracks", SHORT))
    assert "pilot.onnx: does not match pilot.card.json" in line
    card = json.loads((exported["root"] / "pilot.card.json").read_text())
    card["onnx"]["sha256"] = hashlib.sha256(garbage).hexdigest()  # garbage its card vouches for
    with pytest.raises(UserError, match="pilot.onnx: not a valid ONNX policy"):
        load_policy(_copy(exported, tmp_path, blob=garbage, card=card))
    (tmp_path / "pilot.card.json").unlink()
    with pytest.raises(UserError, match="pilot.card.json: missing"):
        load_policy(onnx_path)
    with pytest.raises(UserError, match="not found"):
        load_policy(tmp_path / "nope.onnx")


def test_saliency_of_an_onnx_policy_is_one_clear_error(exported, tmp_path):
    onnx_path = _copy(exported, tmp_path)
    line = one_error_line(cli("eval", "--model", str(onnx_path), "--tracks", SHORT, "--video",
                              str(tmp_path / "v.mp4"), "--saliency"))
    assert "saliency needs the torch network" in line and str(exported["folder"]) in line
    assert not (tmp_path / "v.mp4").exists()


def test_export_refuses_bad_paths_before_any_work(exported, tmp_path):
    for model, out, match in ((exported["folder"], tmp_path / "p.txt", "must end in .onnx"),
                              (exported["folder"], tmp_path / "nowhere" / "p.onnx", "does not exist"),
                              (exported["onnx"], tmp_path / "p.onnx", "takes a policy folder"),
                              (tmp_path / "missing", tmp_path / "p.onnx", "not found")):
        with pytest.raises(UserError, match=match):
            export_onnx(model, out)
    line = one_error_line(cli("export", "--model", str(exported["folder"]), "--onnx", str(tmp_path / "p.txt")))
    assert "p.txt: the file name must end in .onnx" in line
    assert not list(tmp_path.iterdir())


def _watch_steering(policy, steps: int) -> np.ndarray:
    """The policy's steering over the first `steps` window frames of `watch` (then Esc)."""
    import pygame

    from agent.watch import watch

    ticks, rows = [], []

    def person(obs, info):
        ticks.append(info["time"])
        if len(ticks) == steps:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE))

    cfg = replace(policy.env_config(), track=SHORT, off_track="recover")
    result = watch(cfg, policy, realtime=False, person=person, on_step=rows.append)
    assert result.quit
    return np.array([r["policy"] for r in rows])


def test_watch_drives_the_onnx_policy_as_it_drives_the_torch_one(exported):
    torch_steering = _watch_steering(load_policy(exported["folder"]), 40)
    onnx_steering = _watch_steering(load_policy(exported["onnx"]), 40)
    assert len(onnx_steering) == len(torch_steering) >= 39
    assert np.abs(onnx_steering - torch_steering).max() < TOLERANCE and np.ptp(torch_steering) > 1e-3
