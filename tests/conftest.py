"""Shared test setup: no screen, no sound, and generated tracks cached in a folder of this run (not
the user's cache), shared by the CLI subprocesses the tests start."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
if "E2E_DRIVE_CACHE" not in os.environ:
    os.environ["E2E_DRIVE_CACHE"] = tempfile.mkdtemp(prefix="e2e-drive-test-cache-")
    atexit.register(shutil.rmtree, os.environ["E2E_DRIVE_CACHE"], True)
