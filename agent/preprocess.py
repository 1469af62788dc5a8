"""The one function that turns camera frames into the network's input.

Training (`agent.dataset`) and driving (`agent.model.Policy`) both call `preprocess`, so what the
network sees on the road is exactly what it saw while learning. Its name and version are written
into every policy card; a policy made with another preprocessing is refused at load time.
`preprocess_in_graph` is the same step as torch operations, for an exported ONNX graph that takes
the camera's uint8 frames as they are (tests check the two agree bit for bit).
"""

from __future__ import annotations

import numpy as np

PREPROCESS = {"name": "rgb-chw-unit", "version": 1}


def preprocess(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1].

    Scaling to [0, 1] and channels-first is all: the model's own first layer normalises, so the
    same weights stay valid whoever calls it.
    """
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (H, W, 3) or (N, H, W, 3), got {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {a.dtype}")
    out = np.empty((a.shape[0], 3, a.shape[1], a.shape[2]), np.float32)
    np.multiply(a.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=out, casting="unsafe")
    return out


def to_tensor(frames: np.ndarray, device="cpu"):
    """`preprocess` as a torch tensor on `device` (torch is imported only here, on demand)."""
    import torch

    return torch.from_numpy(preprocess(frames)).to(device, non_blocking=True)


def preprocess_in_graph(frames):
    """`preprocess` for a uint8 torch tensor (N, H, W, 3), in torch operations an exporter can trace:
    the same float32 multiply by 1/255, so the ONNX policy sees the very numbers training did."""
    import torch

    return frames.permute(0, 3, 1, 2).to(torch.float32) * np.float32(1.0 / 255.0).item()
