"""The policy network and its saved form.

`build_model` makes a PilotNet-shaped CNN (fixed normalisation, three strided 5x5 convolutions, two
3x3 convolutions, a 100-50-10 dense head, tanh outputs: steering, and throttle in the race task) sized
from the camera frame, or
a `small` variant that trains several times faster. A saved policy is a folder holding
`model.safetensors` (weights only), `card.json` (what it is and how it was made) and `README.md`
(the model card, rendered from card.json); `load_policy` rebuilds it from the first two with no
pickle and no training code, and refuses anything that does not add up with a one-line `UserError`
naming the file. Given a `.onnx` file made by `export`, `load_policy` returns an `OnnxPolicy` instead:
the same interface, run by onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sim.env import EnvConfig
from sim.errors import UserError
from sim.files import atomic_write, json_default, read_versioned_json
from sim.render import CameraConfig

from .modelcard import CARD_FILE, card_path, is_onnx, write_model_card
from .preprocess import PREPROCESS, preprocess

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"

# (out_channels, kernel, stride) per conv layer, then the dense head widths
ARCHS: dict[str, tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]] = {
    "pilotnet": (((24, 5, 2), (36, 5, 2), (48, 5, 2), (64, 3, 1), (64, 3, 1)), (100, 50, 10)),
    "small": (((16, 5, 2), (24, 5, 2), (32, 3, 2), (32, 3, 1)), (64, 16)),
}
# the same networks with a steering head that can hold two answers: `pilotnet-bins`, `small-bins`
BINS_SUFFIX = "-bins"
STEERING_BINS = 21  # bins over [-1, 1], 0.1 apart
ARCHS.update({name + BINS_SUFFIX: shape for name, shape in list(ARCHS.items())})


class Normalise(nn.Module):
    """PilotNet's fixed first layer: [0, 1] pixels to roughly [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0


class SteeringBins(nn.Module):
    """A steering head that can hold two answers: a classification over steering bins, trained with
    cross-entropy on two-hot targets. Where the demonstrations pass a car on the left and on the
    right, it keeps both modes instead of averaging them into the car, and drives the likelier one:
    the output is the mean over the most probable bin and its two neighbours. In training mode it
    returns the logits (N, bins), in eval mode the steering (N, 1)."""

    def __init__(self, n_in: int, bins: int = STEERING_BINS):
        super().__init__()
        self.linear = nn.Linear(n_in, bins)
        self.register_buffer("centres", torch.linspace(-1.0, 1.0, bins), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.linear(h)
        return logits if self.training else self.decode(logits)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.float(), dim=1)
        k = p.argmax(dim=1, keepdim=True).clamp(1, p.shape[1] - 2)
        window = torch.cat([k - 1, k, k + 1], dim=1)
        w = p.gather(1, window)
        return (w * self.centres[window]).sum(1, keepdim=True) / w.sum(1, keepdim=True)


def steering_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss for a network's output: mean squared error when it outputs the labels
    themselves, cross-entropy against two-hot bin targets when it outputs `SteeringBins` logits."""
    if out.shape == target.shape:
        return nn.functional.mse_loss(out, target)
    bins = out.shape[1]
    pos = (target[:, :1].clamp(-1.0, 1.0) + 1.0) / 2.0 * (bins - 1)
    lo = pos.floor().clamp(0, bins - 2)
    hi_w = pos - lo
    soft = torch.zeros_like(out).scatter(1, lo.long(), 1.0 - hi_w).scatter_add(1, lo.long() + 1, hi_w)
    return -(soft * torch.log_softmax(out, dim=1)).sum(1).mean()


def outputs_for(task: str) -> list[str]:
    """What a policy of this task outputs, in order: the env's action."""
    return ["steering", "throttle"] if task == "race" else ["steering"]


def build_model(arch: str, camera: CameraConfig, outputs: int = 1) -> nn.Module:
    """The driving CNN for frames of `camera`'s size: input (N, 3, H, W) in [0, 1], output
    (N, outputs) in [-1, 1]: steering (negative = left), then throttle (negative = brake) if asked.
    A `-bins` arch (steering only) ends in `SteeringBins` instead of tanh."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch}: unknown architecture (choose from {', '.join(ARCHS)})")
    convs, head = ARCHS[arch]
    layers: list[nn.Module] = [Normalise()]
    c, h, w = 3, camera.height, camera.width
    for out, k, s in convs:
        if h < k or w < k:
            raise UserError(f"camera frame {camera.width}x{camera.height} is too small for the {arch} network")
        layers += [nn.Conv2d(c, out, k, s), nn.ELU()]
        c, h, w = out, (h - k) // s + 1, (w - k) // s + 1
    layers.append(nn.Flatten())
    n = c * h * w
    for width in head:
        layers += [nn.Linear(n, width), nn.ELU()]
        n = width
    if arch.endswith(BINS_SUFFIX):
        if outputs != 1:
            raise UserError(f"--arch {arch}: the bins head steers only; the race task needs steering and throttle")
        layers.append(SteeringBins(n))
    else:
        layers += [nn.Linear(n, outputs), nn.Tanh()]
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- saving and loading ---------------------------------------------------------------------------
def state_bytes(model: nn.Module) -> bytes:
    """The model's weights as safetensors bytes (contiguous CPU copies; DDP prefixes removed)."""
    from safetensors.torch import save

    model = getattr(model, "module", model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return save(tensors)


def save_policy(folder: str | os.PathLike, model: nn.Module, card: dict) -> Path:
    """Write `folder/model.safetensors` and `folder/card.json`, each atomically (weights first, and the
    card records their hash, so a kill between the two is caught at load time).

    `card` must hold "arch" and "env" (an `EnvConfig.to_dict()`); "preprocess", "format_version",
    "weights" and the hash are filled in here.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("arch", "env"):
        if key not in card:
            raise ValueError(f"policy card needs {key!r}")
    blob = state_bytes(model)
    full = dict(card)
    full.update(format_version=FORMAT_VERSION, preprocess=dict(PREPROCESS), weights=WEIGHTS_FILE,
                weights_sha256=hashlib.sha256(blob).hexdigest(),
                parameters=count_parameters(getattr(model, "module", model)))
    text = json.dumps(full, indent=2, default=json_default) + "\n"
    atomic_write(folder / WEIGHTS_FILE, blob)
    atomic_write(folder / CARD_FILE, text.encode())
    write_model_card(folder, json.loads(text))
    return folder


def _describe_camera(c: CameraConfig) -> str:
    return f"{c.kind} {c.width}x{c.height}"


@contextmanager
def single_thread_inference():
    """One torch thread while a policy drives: batch-1 (or few-track) inference gains nothing from
    more, and on a busy CPU spare threads thrash (measured on 2 loaded cores: 1.4 ms vs 200 ms per
    frame). `watch`, `play --assist`, `eval` and `dagger` drive inside this."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _CardPolicy:
    """What every loaded policy shares, whatever runs it: the card's env settings and their checks,
    and steering as the first column of `act_batch`."""

    path: Path  # the policy folder, or the .onnx file
    card: dict
    _env_cfg: EnvConfig

    @property
    def folder(self) -> Path:
        """The folder holding the policy (an ONNX file's folder)."""
        return self.path.parent if is_onnx(self.path) else self.path

    @property
    def camera(self) -> CameraConfig:
        return self._env_cfg.camera

    def env_config(self) -> EnvConfig:
        """The card's env settings (camera, car, ...): make the evaluation env from this."""
        return self._env_cfg

    def check_env(self, env_cfg: EnvConfig) -> None:
        """Refuse an env whose camera or control period differs from what the policy learned on."""
        mine, theirs = self._env_cfg, env_cfg
        where = card_path(self.path)
        if asdict(mine.camera) != asdict(theirs.camera):
            diff = [k for k, v in asdict(mine.camera).items() if getattr(theirs.camera, k) != v]
            raise UserError(f"{where}: policy was trained with camera "
                            f"{_describe_camera(mine.camera)} but the env uses {_describe_camera(theirs.camera)} "
                            f"(differs in {', '.join(diff)})")
        if mine.car.dt != theirs.car.dt:
            raise UserError(f"{where}: policy was trained at dt={mine.car.dt} s but the env "
                            f"steps at dt={theirs.car.dt} s")

    @property
    def outputs(self) -> list[str]:
        """The names of the policy's outputs, in order: ["steering"] or ["steering", "throttle"]."""
        return list(self.card.get("outputs", ["steering"]))

    def act_batch(self, frames: np.ndarray) -> np.ndarray:
        """All outputs (N, k) in [-1, 1] for uint8 frames (N, H, W, 3); column 0 is steering."""
        raise NotImplementedError

    def steer_batch(self, frames: np.ndarray) -> np.ndarray:
        """Steering in [-1, 1] for uint8 frames (N, H, W, 3)."""
        return self.act_batch(frames)[:, 0]

    def steer(self, frame: np.ndarray) -> float:
        """Steering in [-1, 1] for one uint8 frame (H, W, 3)."""
        return float(self.steer_batch(frame)[0])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path}, arch={self.card.get('arch')}, "
                f"camera={_describe_camera(self.camera)})")


class Policy(_CardPolicy):
    """A loaded policy folder, run by torch: frames in, steering out. `card` is the parsed card.json."""

    runtime = "torch"

    def __init__(self, folder: Path, model: nn.Module, card: dict, env_cfg: EnvConfig, device: str):
        self.path = folder
        self.model = model.eval()
        self.card = card
        self._env_cfg = env_cfg
        self.device = device

    @torch.inference_mode()
    def act_batch(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(preprocess(frames)).to(self.device)
        return self.model(x).float().cpu().numpy()


class OnnxPolicy(_CardPolicy):
    """A policy exported by `export` (NAME.onnx with NAME.card.json beside it), run by onnxruntime.

    The graph takes the camera's uint8 frames (N, H, W, 3) as they are (preprocessing is inside it)
    and returns all outputs (N, k). One intra-op thread by default, like `single_thread_inference`.
    It has no torch network, so nothing that needs gradients (saliency, training) can use it.
    """

    runtime = "onnxruntime"

    def __init__(self, path: Path, session, card: dict, env_cfg: EnvConfig, device: str):
        self.path = path
        self.session = session
        self.card = card
        self._env_cfg = env_cfg
        self.device = device
        self._input = session.get_inputs()[0].name

    @property
    def model(self):
        raise UserError(f"{self.path}: an ONNX policy runs in onnxruntime and has no torch network (no gradients "
                        f"for saliency or training); use the policy folder it was exported from "
                        f"({self.card.get('exported_from', 'see its card')})")

    def act_batch(self, frames: np.ndarray) -> np.ndarray:
        a = np.asarray(frames)
        if a.ndim == 3:
            a = a[None]
        if a.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {a.dtype}")
        return self.session.run(None, {self._input: np.ascontiguousarray(a)})[0]


def read_card(folder: str | os.PathLike) -> dict:
    """The parsed card.json of a policy folder, checked for shape (not the weights)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: policy folder not found")
    if not folder.is_dir():
        raise UserError(f"{folder}: a policy is a folder (with {CARD_FILE} and {WEIGHTS_FILE}), not a file")
    path = folder / CARD_FILE
    card = read_versioned_json(path, "policy", FORMAT_VERSION, f"missing (is {folder} a policy folder made by `train`?)",
                               "not a valid policy card")
    if card.get("preprocess") != PREPROCESS:
        raise UserError(f"{path}: made with preprocessing {card.get('preprocess')!r}, this program uses {PREPROCESS}")
    if card.get("arch") not in ARCHS:
        raise UserError(f"{path}: unknown architecture {card.get('arch')!r} (known: {', '.join(ARCHS)})")
    outputs = card.get("outputs", ["steering"])
    if outputs not in (["steering"], ["steering", "throttle"]):
        raise UserError(f"{path}: outputs must be [\"steering\"] or [\"steering\", \"throttle\"], not {outputs!r}")
    weights = card.get("weights", WEIGHTS_FILE)
    if (not isinstance(weights, str) or Path(weights).name != weights or weights in ("", ".", "..")
            or not weights.endswith(".safetensors")):
        raise UserError(f"{path}: weights must be a .safetensors file inside the policy folder, not {weights!r}")
    return card


def load_policy(folder: str | os.PathLike, device: str = "cpu") -> Policy | OnnxPolicy:
    """Load a policy folder made by `save_policy` (safetensors + JSON only, everything checked), or a
    `.onnx` file made by `export` (through `load_onnx_policy`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if is_onnx(folder):
        return load_onnx_policy(folder, device)
    folder = Path(folder)
    card = read_card(folder)
    card_path = folder / CARD_FILE
    try:
        env_cfg = EnvConfig.from_dict(card["env"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{card_path}: bad 'env' settings ({type(e).__name__}: {e})") from None
    wpath = folder / card.get("weights", WEIGHTS_FILE)
    if wpath.resolve().parent != folder.resolve():
        raise UserError(f"{card_path}: weights must lie inside the policy folder")
    if not wpath.is_file():
        raise UserError(f"{wpath}: weights file missing")
    blob = wpath.read_bytes()
    sha = card.get("weights_sha256")
    if sha is not None and hashlib.sha256(blob).hexdigest() != sha:
        raise UserError(f"{wpath}: weights do not match {CARD_FILE} (hash differs: file changed or half-saved)")
    try:
        state = load(blob)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise UserError(f"{wpath}: not a valid safetensors file ({str(e).splitlines()[0][:120]})") from None
    model = build_model(card["arch"], env_cfg.camera, len(card.get("outputs", ["steering"])))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{wpath}: weights do not fit a {card['arch']} network for camera "
                        f"{_describe_camera(env_cfg.camera)} as {CARD_FILE} says") from None
    if device == "auto":  # as `train --device auto` and the ONNX runtime take it
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"--device {device}: cannot use it ({str(e).splitlines()[0]})") from None
    return Policy(folder, model, card, env_cfg, device)


def read_onnx_card(path: str | os.PathLike) -> dict:
    """The parsed card beside an exported `NAME.onnx` (`NAME.card.json`), checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX policy not found" if not path.exists() else f"{path}: not a file")
    where = card_path(path)
    card = read_versioned_json(where, "policy", FORMAT_VERSION,
                               f"missing (`export` writes it beside {path.name}: python run_drive.py export "
                               f"--model POLICY_FOLDER --onnx {path})", "not a valid ONNX policy card")
    onnx = card.get("onnx")
    if not isinstance(onnx, dict) or not isinstance(onnx.get("sha256"), str):
        raise UserError(f"{where}: not an ONNX policy card (no 'onnx' section with the file's sha256)")
    return card


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for `--device`: cpu, cuda (when onnxruntime has it) or auto."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in have else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.split(":")[0] == "cuda" and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UserError(f"--device {device}: onnxruntime here runs on {', '.join(have)} "
                    "(for CUDA: pip install onnxruntime-gpu)")


def load_onnx_policy(path: str | os.PathLike, device: str = "cpu", threads: int = 1) -> OnnxPolicy:
    """Load `NAME.onnx` made by `export`, with its card beside it, into an onnxruntime session of
    `threads` intra-op threads; the file's hash, its input and the card's camera are checked."""
    path = Path(path)
    card = read_onnx_card(path)
    where = card_path(path)
    try:
        env_cfg = EnvConfig.from_dict(card["env"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: bad 'env' settings ({type(e).__name__}: {e})") from None
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != card["onnx"]["sha256"]:
        raise UserError(f"{path}: does not match {where.name} (hash differs: file changed or half-written)")
    try:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
    except ImportError:
        raise UserError(f"{path}: running an ONNX policy needs onnxruntime: pip install -e \".[onnx]\"") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: they become one UserError line below
    errors = tuple(getattr(ort_errors, n) for n in ("InvalidProtobuf", "InvalidGraph", "Fail", "InvalidArgument",
                                                   "NotImplemented", "RuntimeException") if hasattr(ort_errors, n))
    try:
        session = ort.InferenceSession(blob, opts, providers=onnx_providers(device))
    except errors as e:
        raise UserError(f"{path}: not a valid ONNX policy ({str(e).splitlines()[0][:160]})") from None
    inputs = session.get_inputs()
    cam = env_cfg.camera
    want = [cam.height, cam.width, 3]
    if (len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4
            or list(inputs[0].shape[1:]) != want):
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise UserError(f"{path}: input is {got}, but {where.name} says uint8 frames (N, {cam.height}, "
                        f"{cam.width}, 3) from camera {_describe_camera(cam)}")
    return OnnxPolicy(path, session, card, env_cfg, device)
