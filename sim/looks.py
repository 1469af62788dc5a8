"""Unseen looks: appearance the training never saw, to test how a policy generalises beyond its
training frames (the benchmark's `look-*` levels).

A look is a frozen `LookConfig` in `EnvConfig.look`. It changes only the camera frame, after it is
rendered: a palette family that `random_palette` never draws, sensor noise, blur, shadows across the
road, a change of light. Everything is drawn from a generator seeded by the episode's reset seed,
so the same seed gives the same frames. The default look does nothing and draws nothing, so the
frames of every existing setting stay exactly as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PALETTES = ("training", "held-out")


@dataclass(frozen=True)
class LookConfig:
    """How the camera frame looks beyond the track's own colours (all off by default)."""

    palette: str = "training"  # "held-out": a palette family random_palette never draws (render.held_out_palette)
    light: float = 1.0  # overall light: below 1 dusk (darker and warmer), above 1 glare
    shadows: float = 0.0  # darkness (0-1) of soft shadow bands across the road, fixed to the ground
    blur_px: float = 0.0  # Gaussian blur, sigma in pixels (a soft or out-of-focus lens)
    noise_std: float = 0.0  # sensor noise: Gaussian, in 0-255 grey levels, new every frame

    def __post_init__(self) -> None:
        if self.palette not in PALETTES:
            raise ValueError(f"look palette must be one of {PALETTES}, not {self.palette!r}")
        if not (self.light > 0 and 0 <= self.shadows <= 1 and self.blur_px >= 0 and self.noise_std >= 0):
            raise ValueError(f"look out of range: {self}")

    @property
    def is_default(self) -> bool:
        return self == LookConfig()

    @property
    def changes_frames(self) -> bool:
        """True when frames need work after the render (the palette is applied by the camera)."""
        return self.light != 1.0 or self.shadows > 0 or self.blur_px > 0 or self.noise_std > 0


# The benchmark's unseen looks (each one level), by name; `--look NAME` on eval takes them too.
LOOKS = {
    "default": LookConfig(),
    "held-out-palette": LookConfig(palette="held-out"),
    "noise": LookConfig(noise_std=14.0),
    "blur": LookConfig(blur_px=1.5),
    "shadows": LookConfig(shadows=0.6),
    "dusk": LookConfig(light=0.45),
}


def look_from_name(name: str) -> LookConfig:
    """A look preset by name (see `LOOKS`)."""
    if name not in LOOKS:
        raise ValueError(f"unknown look {name!r} (choose from {', '.join(LOOKS)})")
    return LOOKS[name]


class LookRenderer:
    """One episode's look: the shadow pattern is drawn once from `rng`; the noise comes from `rng`
    frame after frame, so an episode's frames depend only on its seed and what the car did."""

    def __init__(self, cfg: LookConfig, rng: np.random.Generator, px_per_m: float):
        self.cfg = cfg
        self.rng = rng
        self.px_per_m = px_per_m
        # shadows: parallel bands (trees, bridges) at a random angle and spacing, fixed to the ground
        self.angle = float(rng.uniform(-0.7, 0.7))
        self.period_m = float(rng.uniform(7.0, 14.0))
        self.duty = float(rng.uniform(0.3, 0.5))
        self.phase_m = float(rng.uniform(0.0, self.period_m))
        self.tint = np.array([1.0, 0.86, 0.7], np.float32)  # dusk light is warmer
        self._along: np.ndarray | None = None  # metres ahead along the bands' normal, per pixel

    def apply(self, frame: np.ndarray, progress_m: float) -> np.ndarray:
        """The frame (H, W, 3) uint8 with the look applied; `progress_m` (metres driven) moves the
        shadow bands down the frame as the car drives over them."""
        cfg = self.cfg
        if not cfg.changes_frames:
            return frame
        img = frame.astype(np.float32)
        if cfg.light != 1.0:
            gain = cfg.light * (self.tint if cfg.light < 1.0 else 1.0)
            img *= gain
        if cfg.shadows > 0:
            img *= self._shadow_gain(frame.shape[0], frame.shape[1], progress_m)[:, :, None]
        if cfg.blur_px > 0:
            img = cv2.GaussianBlur(img, (0, 0), cfg.blur_px)
        if cfg.noise_std > 0:
            img += self.rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise_std)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def _shadow_gain(self, h: int, w: int, progress_m: float) -> np.ndarray:
        """Per-pixel light (1 in the sun, 1 - shadows in the shade), soft-edged bands. Rows are taken as
        metres ahead at the bird's-eye scale (in a dashcam frame the bands keep that spacing on screen:
        an approximation, not a projection)."""
        if self._along is None or self._along.shape != (h, w):
            rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
            self._along = (-(rows - h) * math.cos(self.angle) + (cols - w / 2) * math.sin(self.angle)) / self.px_per_m
        u = (self._along + np.float32(progress_m + self.phase_m)) / np.float32(self.period_m)  # band periods from a fixed point on the ground
        from_centre = np.abs((u % 1.0) - 0.5)  # 0 in the middle of a band, 0.5 half-way between two
        edge = 0.08  # soft edges, as a fraction of the period
        shade = np.clip((self.duty / 2 - from_centre) / edge + 0.5, 0, 1)
        return (1.0 - self.cfg.shadows * shade).astype(np.float32)
