"""What the network looks at: VisualBackProp saliency maps over camera frames.

VisualBackProp (Bojarski et al. 2017, from the PilotNet team) needs one forward pass and no
gradients: each conv layer's feature maps are averaged over channels; starting from the deepest,
the map is scaled up to the previous layer's size by a transposed convolution with that layer's
kernel and stride (all-ones weights, so every input pixel a unit saw gets its value) and multiplied
pointwise with that layer's own averaged map; down to the input's size. The result is bright where
features that survive to the top of the network come from.

Our CNNs use ELU, whose maps can be negative: each averaged map is scaled to [0, 1] before the
products, so a bright pixel means "active at every depth" rather than "two negatives made a plus".

`saliency_map(policy, frame)` and `overlay(frame, map)` are what `watch --saliency` and
`eval --video` call; `run_drive.py saliency` writes a grid of frames and overlays for a report.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sim.errors import UserError
from sim.files import atomic_write

from .preprocess import preprocess

EXAMPLES = """examples:
  python run_drive.py saliency --model data/models/pilot --drive data/drives/auto/procedural_3 --out sal.png
  python run_drive.py saliency --model data/models/pilot --drive data/drives/auto --out sal.png --n 24

Each cell shows the camera frame, the same frame with the saliency map over it (bright = what the
steering depends on), the expert's (or driver's) steering label and the policy's prediction.
A healthy policy lights up the road edges ahead of the car, not the grass."""


# -- the maps -------------------------------------------------------------------------------------
def _conv_activations(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Conv2d], list[torch.Tensor], torch.Tensor]:
    """Forward `x`, keeping the output of the activation after each conv layer (or the conv itself
    when none follows); returns the convs, their feature maps and the model's output."""
    mods = list(getattr(model, "module", model).children())
    convs: list[nn.Conv2d] = []
    taps: list[nn.Module] = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            convs.append(m)
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            taps.append(nxt if nxt is not None and not isinstance(nxt, (nn.Conv2d, nn.Flatten, nn.Linear)) else m)
    if not convs:
        raise ValueError("VisualBackProp needs a network with convolution layers")
    feats: list[torch.Tensor | None] = [None] * len(taps)
    hooks = [t.register_forward_hook(lambda _m, _i, out, k=k: feats.__setitem__(k, out))
             for k, t in enumerate(taps)]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return convs, feats, out


def _unit(m: torch.Tensor) -> torch.Tensor:
    """Scale each map of (N, 1, H, W) to [0, 1] (a flat map becomes zeros)."""
    lo = m.amin(dim=(2, 3), keepdim=True)
    hi = m.amax(dim=(2, 3), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


@torch.inference_mode()
def vbp_maps(model: nn.Module, frames: np.ndarray, device: str | torch.device = "cpu"
             ) -> tuple[np.ndarray, np.ndarray]:
    """VisualBackProp for uint8 frames (N, H, W, 3): maps (N, H, W) float32 in [0, 1] and the
    model's steering (N,)."""
    x = torch.from_numpy(preprocess(frames)).to(device)
    convs, feats, out = _conv_activations(model, x)
    v = _unit(feats[-1].mean(dim=1, keepdim=True))
    sizes = [tuple(x.shape[2:])] + [tuple(f.shape[2:]) for f in feats[:-1]]
    for k in range(len(convs) - 1, -1, -1):
        conv = convs[k]
        kh, kw = conv.kernel_size
        sh, sw = conv.stride
        th, tw = sizes[k]
        pad = (th - ((v.shape[2] - 1) * sh + kh), tw - ((v.shape[3] - 1) * sw + kw))
        if conv.padding != (0, 0) or conv.dilation != (1, 1) or min(pad) < 0 or pad[0] >= sh or pad[1] >= sw:
            v = F.interpolate(v, size=(th, tw), mode="bilinear", align_corners=False)
        else:
            ones = torch.ones(1, 1, kh, kw, dtype=v.dtype, device=v.device)
            up = F.conv_transpose2d(v, ones, stride=(sh, sw), output_padding=pad)
            # divide by how many units saw each pixel: the stride's overlap pattern is no checkerboard
            seen = F.conv_transpose2d(torch.ones_like(v[:1]), ones, stride=(sh, sw), output_padding=pad)
            v = up / seen.clamp_min(1.0)
        if k > 0:
            v = v * _unit(feats[k - 1].mean(dim=1, keepdim=True))
        v = _unit(v)
    maps = v[:, 0].float().cpu().numpy().astype(np.float32)
    return np.clip(maps, 0.0, 1.0), out[:, 0].float().cpu().numpy()


def gradient_maps(model: nn.Module, frames: np.ndarray, device: str | torch.device = "cpu",
                  blur_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Gradient saliency (Simonyan et al. 2013): |d steering / d pixel|, the largest over the colour
    channels, blurred by `blur_px` (single pixels are noisy) and scaled to [0, 1] per frame. Bright =
    the pixels whose change would change the steering most. Returns maps (N, H, W) and steering (N,)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.from_numpy(preprocess(frames)).to(device).requires_grad_(True)
        out = model(x)
        (grad,) = torch.autograd.grad(out[:, 0].sum(), x)  # the steering's gradient (race: not the throttle)
    g = grad.abs().amax(dim=1).float().cpu().numpy()
    if blur_px > 0:
        g = np.stack([cv2.GaussianBlur(m, (0, 0), blur_px) for m in g])
    lo = g.min(axis=(1, 2), keepdims=True)
    hi = g.max(axis=(1, 2), keepdims=True)
    maps = (g - lo) / np.maximum(hi - lo, 1e-12)
    return np.clip(maps, 0.0, 1.0).astype(np.float32), out[:, 0].detach().float().cpu().numpy()


METHODS = {"gradient": gradient_maps, "vbp": vbp_maps}
METHOD_NAMES = {"gradient": "gradient", "vbp": "VisualBackProp"}


def saliency_maps(model: nn.Module, frames: np.ndarray, device: str | torch.device = "cpu",
                  method: str = "gradient") -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, H, W) float32 in [0, 1] for uint8 frames (N, H, W, 3), and the model's steering (N,).

    `gradient` is the default: on our ELU networks and bird's-eye frames, VisualBackProp's averaged
    activations are largest over the wide textured grass whatever the network steers by, while the
    gradient shows the road edges ahead that the steering actually depends on (docs/saliency.png
    shows both)."""
    if method not in METHODS:
        raise UserError(f"--method {method}: unknown saliency method (choose from {', '.join(METHODS)})")
    return METHODS[method](model, frames, device)


def require_gradients(policy) -> None:
    """Saliency differentiates the torch network: refuse a policy without one (an ONNX policy) in
    one line, before any driving starts."""
    if getattr(policy, "runtime", "torch") != "torch":
        raise UserError(f"{policy.path}: saliency needs the torch network's gradients, but this policy runs in "
                        f"{policy.runtime}; use the policy folder it was exported from "
                        f"({policy.card.get('exported_from', 'see its card')})")


def saliency_map(policy, frame: np.ndarray, method: str = "gradient") -> np.ndarray:
    """The saliency map of one uint8 frame (H, W, 3) for a loaded `Policy` (or a bare model):
    (H, W) float32 in [0, 1]."""
    model = getattr(policy, "model", policy)
    device = getattr(policy, "device", "cpu")
    return saliency_maps(model, np.asarray(frame)[None], device, method)[0][0]


def overlay(frame: np.ndarray, saliency: np.ndarray, strength: float = 0.75) -> np.ndarray:
    """The frame with the map drawn over it in heat colours (blue..red), more opaque where the map is
    bright, so the road stays visible where the network does not look. RGB uint8, frame's size."""
    frame = np.asarray(frame)
    m = np.clip(np.nan_to_num(np.asarray(saliency, np.float32)), 0.0, 1.0)
    if m.shape != frame.shape[:2]:
        m = cv2.resize(m, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float32)
    alpha = (0.15 + strength * m)[:, :, None].clip(0, 1)
    out = frame.astype(np.float32) * (1 - alpha) + heat * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def saliency_overlay(policy, frame: np.ndarray, method: str = "gradient") -> np.ndarray:
    """`overlay(frame, saliency_map(policy, frame))`: one call for viewers and videos."""
    return overlay(frame, saliency_map(policy, frame, method))


# -- the grid for a report ------------------------------------------------------------------------
def pick_frames(n_frames: int, n: int, usable: np.ndarray | None = None) -> np.ndarray:
    """`n` frame indices spread evenly over a drive, preferring usable (on-track) frames."""
    idx = np.arange(n_frames) if usable is None or not usable.any() else np.flatnonzero(usable)
    if len(idx) <= n:
        return idx
    return idx[((np.arange(n) + 0.5) * len(idx) / n).astype(int)]  # centred: not the start line twice


def grid_image(frames: np.ndarray, maps: dict[str, np.ndarray], labels: np.ndarray, preds: np.ndarray,
               titles: list[str] | None = None, scale: int = 3, cols: int | None = None) -> np.ndarray:
    """Cells of [frame | one overlay per method in `maps`], the label and predicted steering under
    each, the panels' names on top: RGB uint8."""
    n, k = len(frames), len(maps)
    h, w = frames.shape[1] * scale, frames.shape[2] * scale
    text_h, gap, pad, head = 34, 6, 12, 26
    cell_w, cell_h = (k + 1) * w + k * gap, h + text_h
    cols = max(1, min(cols or max(1, 4 // k), n))
    rows = (n + cols - 1) // cols
    img = np.full((head + rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    names = ["camera frame"] + [f"{METHOD_NAMES.get(m, m)} saliency" for m in maps]
    for c in range(cols):
        for j, name in enumerate(names):
            cv2.putText(img, name, (pad + c * (cell_w + pad) + j * (w + gap) + 2, 18), font, 0.5, (20, 20, 20), 1,
                        cv2.LINE_AA)
    for i in range(n):
        r, c = divmod(i, cols)
        y0, x0 = head + pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        panels = [frames[i]] + [overlay(frames[i], m[i]) for m in maps.values()]
        for j, p in enumerate(panels):
            xj = x0 + j * (w + gap)
            img[y0:y0 + h, xj:xj + w] = cv2.resize(p, (w, h), interpolation=cv2.INTER_NEAREST)
        steer = float(np.asarray(labels[i]).reshape(-1)[0])  # race labels: steering first, then throttle
        pred = float(np.asarray(preds[i]).reshape(-1)[0])
        label = "-" if not np.isfinite(steer) else f"{steer:+.2f}"
        cv2.putText(img, f"label {label}  predicted {pred:+.2f}", (x0 + 2, y0 + h + 14), font, 0.45,
                    (20, 20, 20), 1, cv2.LINE_AA)
        if titles:
            cv2.putText(img, titles[i][:48], (x0 + 2, y0 + h + 29), font, 0.38, (90, 90, 90), 1, cv2.LINE_AA)
    return img


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Encode and write a PNG atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise UserError(f"--out {path}: could not encode the picture as PNG")
    return atomic_write(path, buf.tobytes())


def saliency_grid(model_dir: str | os.PathLike, drive_dir: str | os.PathLike, out: str | os.PathLike,
                  n: int = 12, device: str = "cpu", methods: tuple[str, ...] = ("gradient",)) -> dict:
    """Load a policy and a drive (or a folder of drives), compute the maps of `n` frames spread over
    them with each of `methods` and write the grid PNG to `out`. Returns what was drawn."""
    from data.recording import find_drives, read_drive
    from sim.env import EnvConfig

    from .model import load_policy

    if n < 1:
        raise UserError(f"--n {n}: must be at least 1")
    for m in methods:
        if m not in METHODS:
            raise UserError(f"--method {m}: unknown saliency method (choose from {', '.join(METHODS)} or both)")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: must be a .png file")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder, give a .png file name")
    policy = load_policy(model_dir, device=device)
    require_gradients(policy)
    try:
        paths = find_drives(drive_dir)
    except UserError as e:
        raise UserError(f"--drive {e}") from None
    if not paths:
        raise UserError(f"--drive {drive_dir}: no recorded drive here (a folder with meta.json)")
    per = [n // len(paths) + (1 if i < n % len(paths) else 0) for i in range(len(paths))]
    frames, labels, titles, warnings = [], [], [], []
    for path, k in zip(paths, per):
        if k == 0:
            continue
        d = read_drive(path)
        warnings.extend(d.warnings)
        if len(d) == 0:
            warnings.append(f"{path}: no readable frames")
            continue
        try:
            policy.check_env(EnvConfig.from_dict(d.meta["env"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path / 'meta.json'}: bad 'env' settings ({type(e).__name__})") from None
        for i in pick_frames(len(d), k, ~(d.off_track | d.intervention)):
            frames.append(d.frames[i])
            labels.append(float(d.steering[i]))
            titles.append(f"{path.name} #{i}")
    if not frames:
        raise UserError(f"--drive {drive_dir}: no readable frames" + (f" ({warnings[0]})" if warnings else ""))
    stack = np.stack(frames)
    maps = {}
    for m in methods:
        maps[m], preds = saliency_maps(policy.model, stack, policy.device, m)
    write_png(out, grid_image(stack, maps, np.asarray(labels, np.float32), preds, titles))
    lab = np.asarray(labels, np.float64)
    ok = np.isfinite(lab)
    return {"out": str(out), "frames": len(frames), "drives": len(paths), "warnings": warnings,
            "mae": float(np.mean(np.abs(lab[ok] - preds[ok]))) if ok.any() else float("nan")}


# -- command line -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="a policy folder made by `train`")
    parser.add_argument("--drive", required=True, metavar="DIR", help="a recorded drive, or a folder of drives")
    parser.add_argument("--out", required=True, metavar="PNG", help="the grid picture to write")
    parser.add_argument("--n", type=int, default=12, help="frames in the grid (default 12)")
    parser.add_argument("--method", default="gradient", help="gradient (default), vbp (VisualBackProp) or both")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def main(args: argparse.Namespace) -> int:
    from sim.progress import table

    methods = ("gradient", "vbp") if args.method == "both" else (args.method,)
    r = saliency_grid(args.model, args.drive, args.out, n=args.n, device=args.device, methods=methods)
    for w in r["warnings"][:5]:
        print(f"warning: {w}")
    print(table(["picture", "frames", "drives", "mean |label - pred|"],
                [[r["out"], r["frames"], r["drives"], r["mae"]]], title="saliency"))
    return 0
