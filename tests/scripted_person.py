"""A scripted "person" for the tests: it presses and releases arrow keys from what it sees, through the
real pygame event queue of the real `play` / `watch` loops. Not product code: it makes human-style
keyboard data (smooth key ramps, some weaving) without a human, for tests and for the README's
keyboard-data experiment (`scripted_keyboard_drive`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pygame

from data.play import HOUR_STEPS, PlayResult, play
from sim.env import EnvConfig
from sim.errors import UserError
from sim.render import camera_from_name


class ScriptedPerson:
    """Presses and releases arrow keys from what it sees, as a person at a keyboard would.

    It finds the road (grey, unsaturated pixels) in a band of rows ahead of the car in the bird's-eye
    frame, wants a wheel position proportional to how far the road's middle lies off-centre, and
    holds Left or Right until the wheel it feels (info["steer_angle"]) gets there. Events are posted
    with pygame.event.post, so they travel through the real event queue of the loop."""

    def __init__(self, gain: float = 2.2, tolerance: float = 0.08, max_steer_rad: float = 0.5,
                 band: tuple[float, float] = (0.45, 0.6)):
        self.gain, self.tolerance, self.max_steer = gain, tolerance, max_steer_rad
        self.band = band
        self.held: str | None = None

    def wanted(self, frame: np.ndarray) -> float:
        """The steering the road ahead asks for, from the frame alone."""
        h, w = frame.shape[:2]
        rows = frame[int(self.band[0] * h): int(self.band[1] * h)].astype(np.int16)
        grey = (rows.max(-1) - rows.min(-1) < 24) & (rows.mean(-1) > 40)
        cols = np.nonzero(grey.any(0))[0]
        if cols.size == 0:
            return 0.0
        # the stretch of road columns nearest the middle (another bend of the track may also show)
        runs = np.split(cols, np.nonzero(np.diff(cols) > 2)[0] + 1)
        mid = (w - 1) / 2.0
        run = min(runs, key=lambda r: 0 if r[0] <= mid <= r[-1] else min(abs(r[0] - mid), abs(r[-1] - mid)))
        centre = (run[0] + run[-1]) / 2.0
        return float(np.clip(self.gain * (centre - mid) / mid, -1.0, 1.0))

    def keys(self, frame: np.ndarray, info: dict) -> str | None:
        """Which arrow to hold now: "left", "right" or None."""
        wheel = -float(info.get("steer_angle", 0.0)) / self.max_steer  # as a steering command
        want = self.wanted(frame)
        if want < wheel - self.tolerance:
            return "left"
        if want > wheel + self.tolerance:
            return "right"
        return None

    def __call__(self, frame: np.ndarray, info: dict) -> None:
        if info.get("time", 0.0) == 0.0:
            self.held = None  # a new drive: the loop has released every key
        key = self.keys(frame, info)
        if key == self.held:
            return
        code = {"left": pygame.K_LEFT, "right": pygame.K_RIGHT}
        if self.held is not None:
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=code[self.held]))
        if key is not None:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code[key]))
        self.held = key


def scripted_keyboard_drive(track: str, out: str | os.PathLike, laps: int = 1,
                            camera: str = "birdseye", on_record=None, max_steps: int | None = None) -> PlayResult:
    """Keyboard drives by the scripted person through the real play loop, headless and as fast as the
    CPU allows: human-style data (smooth key ramps, some weaving) without a human. Each track of the
    SPEC is driven for `laps` laps; one drive folder per track under `out`."""
    if laps < 1:
        raise UserError(f"laps {laps}: must be at least 1")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    cam = camera_from_name(camera)
    if cam.kind != "birdseye":
        raise UserError(f"camera {camera!r}: the scripted person reads the road from bird's-eye frames only")
    cfg = EnvConfig(track=track, camera=cam, laps=laps, off_track="recover", max_steps=HOUR_STEPS)
    person = ScriptedPerson(max_steer_rad=cfg.car.max_steer_rad)
    return play(cfg, Path(out), input_name="keyboard", realtime=False, person=person, on_record=on_record,
                max_steps=max_steps)
