"""`run_drive.py export`: a policy folder to one self-contained ONNX file, to drive off Python (any
ONNX runtime, the way DonkeyCar users put a model on a car's Raspberry Pi).

The graph takes the camera's frames exactly as the simulator renders them, uint8 (N, H, W, 3) RGB,
and returns the policy's outputs (N, k), column 0 the steering: preprocessing (`preprocess_in_graph`,
the torch twin of `agent.preprocess.preprocess`) is inside it, and the batch dimension is dynamic.
Exported with torch's own exporter (`torch.onnx.export(dynamo=True)`, which needs onnxscript), then
checked: onnxruntime must give the torch policy's outputs within 1e-4 on rendered frames, or no
file is written. Beside `NAME.onnx` go `NAME.card.json` (the policy's card plus what the input and
output are; `load_policy` reads it) and `NAME.README.md` (the model card).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import time
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sim.errors import UserError
from sim.files import atomic_write, write_json
from sim.render import CameraConfig

from .model import FORMAT_VERSION, Policy, load_onnx_policy, load_policy, single_thread_inference
from .modelcard import card_path, is_onnx, readme_path, write_model_card
from .preprocess import preprocess_in_graph

OPSET = 18  # the dynamo exporter's own opset: no version conversion step (the issue asks for >= 17)
INPUT_NAME = "frames"
OUTPUT_NAME = "actions"
TOLERANCE = 1e-4  # largest |onnxruntime - torch| output accepted by the export check

EXAMPLES = """examples:
  python run_drive.py export --model data/models/pilot --onnx data/models/pilot.onnx
  python run_drive.py eval --model data/models/pilot.onnx --tracks procedural:1000-1004 --laps 1
  python run_drive.py watch --model data/models/pilot.onnx

The .onnx takes uint8 RGB frames (N, H, W, 3), 0-255, as the camera renders them (no scaling needed)
and returns float32 (N, k): column 0 the steering in [-1, 1], negative = left. NAME.card.json beside
it says the camera, the control period and the outputs; NAME.README.md is the model card.
Needs the onnx extra: pip install -e ".[onnx]"."""


class FramesToActions(nn.Module):
    """The policy as deployed: uint8 camera frames (N, H, W, 3) in, outputs (N, k) out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(preprocess_in_graph(frames))


def onnx_bytes(net: nn.Module, camera: CameraConfig, opset: int = OPSET) -> bytes:
    """`net` (input (N, 3, H, W) in [0, 1]) wrapped in `FramesToActions` and exported to ONNX bytes,
    with a dynamic batch dimension. Quiet: the exporter's progress lines and warnings are held back."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; say so before torch does)
    except ImportError:
        raise UserError('export needs onnx and onnxscript: pip install -e ".[onnx]"') from None
    wrapper = FramesToActions(net).eval().cpu()
    example = torch.zeros(2, camera.height, camera.width, 3, dtype=torch.uint8)
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, dynamo=True,
                external_data=False, verbose=False)
    finally:
        logger.setLevel(level)
    return program.model_proto.SerializeToString()


def check_frames(policy: Policy, n: int = 6) -> np.ndarray:
    """Frames the export is checked on: rendered by the policy's own camera on a track, plus noise."""
    from sim.env import DriveEnv

    env = DriveEnv(config=replace(policy.env_config(), track="procedural:0", off_track="recover"))
    obs, _ = env.reset(seed=0)
    frames = [obs]
    for i in range(n - 1):
        obs, *_ = env.step(np.array([0.5 * np.sin(i)], np.float32))
        frames.append(obs)
    env.close()
    noise = np.random.default_rng(0).integers(0, 256, (2, *obs.shape), dtype=np.uint8)
    return np.concatenate([np.stack(frames), noise])


def export_onnx(model_dir: str | Path, onnx_path: str | Path, opset: int = OPSET, say=None) -> dict:
    """Export the policy folder `model_dir` to `onnx_path` (with its card and model card beside it),
    after checking onnxruntime against torch. Returns what was written and the check's figures;
    `say(line)` hears what is going on once the inputs are checked."""
    model_dir, onnx_path = Path(model_dir), Path(onnx_path)
    if is_onnx(model_dir):
        raise UserError(f"--model {model_dir}: export takes a policy folder (made by `train`), not an ONNX file")
    if not is_onnx(onnx_path):
        raise UserError(f"--onnx {onnx_path}: the file name must end in .onnx")
    if onnx_path.is_dir():
        raise UserError(f"--onnx {onnx_path}: is a folder, give a file name ending in .onnx")
    if not onnx_path.parent.is_dir():
        raise UserError(f"--onnx {onnx_path}: folder {onnx_path.parent} does not exist")
    if opset < 17:
        raise UserError(f"--opset {opset}: must be 17 or newer")
    policy = load_policy(model_dir)
    if say:
        say(f"exporting {model_dir} to {onnx_path} (ONNX opset {opset}), then checking it in onnxruntime ...")
    t0 = time.perf_counter()
    blob = onnx_bytes(policy.model, policy.camera, opset)
    seconds = time.perf_counter() - t0

    frames = check_frames(policy)
    want = policy.act_batch(frames)
    outputs = list(policy.card.get("outputs") or ["steering"])
    if len(outputs) != want.shape[1]:
        outputs = ["steering", *(f"output_{i}" for i in range(1, want.shape[1]))]
    cam = policy.camera
    card = {k: v for k, v in policy.card.items() if k != "results"}  # its figures are the torch policy's
    card.update(
        format_version=FORMAT_VERSION, outputs=outputs, exported_from=str(model_dir),
        exported=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        onnx={"file": onnx_path.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
              "opset": opset, "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True)",
              "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", cam.height, cam.width, 3],
                        "layout": "NHWC",
                        "meaning": "camera frames as rendered: RGB, 0-255, row 0 at the top; no scaling needed"},
              "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(outputs)],
                         "columns": outputs},
              "preprocessing": "float32(x) * (1/255), NHWC to NCHW; the network's first layer maps [0, 1] "
                               "to [-1, 1]",
              "check": {"frames": len(frames), "tolerance": TOLERANCE}})
    # write to a temp name, load it the way users will, compare, then move into place
    tmp = onnx_path.with_name(f".{onnx_path.stem}.export-check.onnx")
    tmp_card = card_path(tmp)
    try:
        atomic_write(tmp, blob)
        write_json(tmp_card, card)
        onnx_policy = load_onnx_policy(tmp)
        got = onnx_policy.act_batch(frames)
        one = onnx_policy.act_batch(frames[:1])  # the dynamic batch dimension works at 1 too
    finally:
        tmp.unlink(missing_ok=True)
        tmp_card.unlink(missing_ok=True)
    diff = float(max(np.abs(got - want).max(), np.abs(one - want[:1]).max()))
    if got.shape != want.shape or not diff <= TOLERANCE:
        raise UserError(f"--onnx {onnx_path}: onnxruntime's outputs differ from torch's by {diff:.3g} "
                        f"(more than {TOLERANCE:g}); nothing written")
    card["onnx"]["check"]["max_abs_diff"] = diff
    atomic_write(onnx_path, blob)  # the model first, its card (holding the model's hash) second
    write_json(card_path(onnx_path), card)
    write_model_card(onnx_path, card)
    return {"onnx": str(onnx_path), "card": str(card_path(onnx_path)), "readme": str(readme_path(onnx_path)),
            "bytes": len(blob), "opset": opset, "max_abs_diff": diff, "seconds": seconds,
            "input": f"{INPUT_NAME}: uint8 (N, {cam.height}, {cam.width}, 3)",
            "output": f"{OUTPUT_NAME}: float32 (N, {len(outputs)})"}


# -- latency, for `bench` -----------------------------------------------------------------------------
def compare_latency(net: nn.Module, camera: CameraConfig, seconds: float = 1.0, rounds: int = 2) -> dict:
    """Batch-1 latency in ms (frame in, outputs out) of `net` in torch and in onnxruntime, one thread
    each, measured in alternating rounds in one process (the best round counts), as the driving loops
    run them: torch through `preprocess` and the network, onnxruntime on the uint8 frame. Without the
    onnx extra, torch alone, and "onnxruntime_note" says why."""
    from .preprocess import to_tensor

    net = net.eval().cpu()
    frame = np.random.default_rng(0).integers(0, 256, (1, camera.height, camera.width, 3), dtype=np.uint8)
    runners = {"torch": lambda: net(to_tensor(frame))}
    res: dict = {}
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_bytes(net, camera), opts, providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda: session.run(None, {INPUT_NAME: frame})
    except (ImportError, UserError) as e:
        res["onnxruntime_note"] = f'onnxruntime not measured ({e}); pip install -e ".[onnx]"'
    best = dict.fromkeys(runners, float("inf"))
    with single_thread_inference(), torch.inference_mode():
        for _ in range(rounds):
            for name, fn in runners.items():
                for _ in range(10):
                    fn()
                k, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds or k < 20:
                    fn()
                    k += 1
                best[name] = min(best[name], 1000 * (time.perf_counter() - t0) / k)
    res.update({f"{name}_ms": ms for name, ms in best.items()})
    return res


# -- command line -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="a policy folder made by `train`")
    parser.add_argument("--onnx", required=True, metavar="PATH", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, 17 or newer (default {OPSET})")


def main(args: argparse.Namespace) -> int:
    from sim.progress import table

    r = export_onnx(args.model, args.onnx, args.opset, say=lambda line: print(line, flush=True))
    print(table(["file", "input", "output", "opset", "size", "max |onnx - torch|", "export s"],
                [[r["onnx"], r["input"], r["output"], r["opset"], f"{r['bytes'] / 1e6:.2f} MB",
                  f"{r['max_abs_diff']:.2g}", f"{r['seconds']:.1f}"]], title="\nONNX export"))
    print(f"card: {r['card']}\nmodel card: {r['readme']}\n"
          f"drive it: python run_drive.py eval --model {r['onnx']} --tracks procedural:1000-1019")
    return 0
