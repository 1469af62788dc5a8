"""Shared test setup: no screen, no sound, and the repository's real circuits when they are there."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

ROOT = Path(__file__).resolve().parents[1]
REAL_TRACKS = ROOT.parent / "shared" / "tracks" / "real"


@pytest.fixture
def real_tracks() -> Path:
    if not REAL_TRACKS.is_dir():
        pytest.skip("../shared/tracks/real is not beside this checkout")
    return REAL_TRACKS
