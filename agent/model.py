"""The policy network and its saved form.

`build_model` makes a PilotNet-shaped CNN (fixed normalisation, three strided 5x5 convolutions, two
3x3 convolutions, a 100-50-10 dense head, one tanh steering output) sized from the camera frame, or
a `small` variant that trains several times faster. A saved policy is a folder holding
`model.safetensors` (weights only) and `card.json` (what it is and how it was made); `load_policy`
rebuilds it from those two files with no pickle and no training code, and refuses anything that
does not add up with a one-line `UserError` naming the file.
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
from sim.files import atomic_write, read_json_object
from sim.render import CameraConfig

from .preprocess import PREPROCESS, preprocess

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"

# (out_channels, kernel, stride) per conv layer, then the dense head widths
ARCHS: dict[str, tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]] = {
    "pilotnet": (((24, 5, 2), (36, 5, 2), (48, 5, 2), (64, 3, 1), (64, 3, 1)), (100, 50, 10)),
    "small": (((16, 5, 2), (24, 5, 2), (32, 3, 2), (32, 3, 1)), (64, 16)),
}


class Normalise(nn.Module):
    """PilotNet's fixed first layer: [0, 1] pixels to roughly [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0


def build_model(arch: str, camera: CameraConfig) -> nn.Module:
    """The steering CNN for frames of `camera`'s size: input (N, 3, H, W) in [0, 1], output (N, 1)
    in [-1, 1] (negative = left)."""
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
    layers += [nn.Linear(n, 1), nn.Tanh()]
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
    atomic_write(folder / WEIGHTS_FILE, blob)
    atomic_write(folder / CARD_FILE, (json.dumps(full, indent=2, default=_json_default) + "\n").encode())
    return folder


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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


class Policy:
    """A loaded policy: frames in, steering out. `card` is the parsed card.json."""

    def __init__(self, folder: Path, model: nn.Module, card: dict, env_cfg: EnvConfig, device: str):
        self.folder = folder
        self.model = model.eval()
        self.card = card
        self._env_cfg = env_cfg
        self.device = device

    @property
    def camera(self) -> CameraConfig:
        return self._env_cfg.camera

    def env_config(self) -> EnvConfig:
        """The card's env settings (camera, car, ...): make the evaluation env from this."""
        return self._env_cfg

    def check_env(self, env_cfg: EnvConfig) -> None:
        """Refuse an env whose camera or control period differs from what the policy learned on."""
        mine, theirs = self._env_cfg, env_cfg
        if asdict(mine.camera) != asdict(theirs.camera):
            diff = [k for k, v in asdict(mine.camera).items() if getattr(theirs.camera, k) != v]
            raise UserError(f"{self.folder / CARD_FILE}: policy was trained with camera "
                            f"{_describe_camera(mine.camera)} but the env uses {_describe_camera(theirs.camera)} "
                            f"(differs in {', '.join(diff)})")
        if mine.car.dt != theirs.car.dt:
            raise UserError(f"{self.folder / CARD_FILE}: policy was trained at dt={mine.car.dt} s but the env "
                            f"steps at dt={theirs.car.dt} s")

    @torch.inference_mode()
    def act_batch(self, frames: np.ndarray) -> np.ndarray:
        """Actions (N, outputs) in [-1, 1] for uint8 frames (N, H, W, 3): steering first."""
        x = torch.from_numpy(preprocess(frames)).to(self.device)
        return self.model(x).float().cpu().numpy()

    def steer_batch(self, frames: np.ndarray) -> np.ndarray:
        """Steering in [-1, 1] for uint8 frames (N, H, W, 3)."""
        return self.act_batch(frames)[:, 0]

    def steer(self, frame: np.ndarray) -> float:
        """Steering in [-1, 1] for one uint8 frame (H, W, 3)."""
        return float(self.steer_batch(frame)[0])

    def __repr__(self) -> str:
        return f"Policy({self.folder}, arch={self.card.get('arch')}, camera={_describe_camera(self.camera)})"


def read_card(folder: str | os.PathLike) -> dict:
    """The parsed card.json of a policy folder, checked for shape (not the weights)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: policy folder not found")
    if not folder.is_dir():
        raise UserError(f"{folder}: a policy is a folder (with {CARD_FILE} and {WEIGHTS_FILE}), not a file")
    path = folder / CARD_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing (is {folder} a policy folder made by `train`?)")
    card = read_json_object(path, "not a valid policy card")
    version = card.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: policy format version {version!r}, this program reads version {FORMAT_VERSION}")
    if card.get("preprocess") != PREPROCESS:
        raise UserError(f"{path}: made with preprocessing {card.get('preprocess')!r}, this program uses {PREPROCESS}")
    if card.get("arch") not in ARCHS:
        raise UserError(f"{path}: unknown architecture {card.get('arch')!r} (known: {', '.join(ARCHS)})")
    weights = card.get("weights", WEIGHTS_FILE)
    if (not isinstance(weights, str) or Path(weights).name != weights or weights in ("", ".", "..")
            or not weights.endswith(".safetensors")):
        raise UserError(f"{path}: weights must be a .safetensors file inside the policy folder, not {weights!r}")
    return card


def load_policy(folder: str | os.PathLike, device: str = "cpu") -> Policy:
    """Load a policy folder made by `save_policy`: safetensors + JSON only, everything checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load

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
    model = build_model(card["arch"], env_cfg.camera)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{wpath}: weights do not fit a {card['arch']} network for camera "
                        f"{_describe_camera(env_cfg.camera)} as {CARD_FILE} says") from None
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"--device {device}: cannot use it ({str(e).splitlines()[0]})") from None
    return Policy(folder, model, card, env_cfg, device)
