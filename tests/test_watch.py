"""`watch`: a real (untrained) policy drives in the real pygame loop; posted keys take over, give back,
and change the speed; takeovers are counted as interventions."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pygame
import pytest
from scripted_person import ScriptedPerson

from agent.watch import watch
from sim import EnvConfig, load_track

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def policy(untrained_policy):
    return untrained_policy


def post(kind, key):
    pygame.event.post(pygame.event.Event(kind, key=key))


def test_takeover_give_back_speed_up_and_steer_to_take_over(policy):
    script = {
        5: [(pygame.KEYDOWN, pygame.K_t), (pygame.KEYDOWN, pygame.K_LEFT)],  # take over and steer left
        15: [(pygame.KEYUP, pygame.K_LEFT)],
        20: [(pygame.KEYDOWN, pygame.K_t)],  # give back
        30: [(pygame.KEYDOWN, pygame.K_PLUS), (pygame.KEYDOWN, pygame.K_EQUALS)],  # 1x -> 2x -> 4x
        45: [(pygame.KEYDOWN, pygame.K_RIGHT)],  # steering while the policy drives takes over too
        50: [(pygame.KEYDOWN, pygame.K_ESCAPE)],
    }
    ticks, rows = [], []

    def person(obs, info):
        for kind, key in script.get(len(ticks), []):
            post(kind, key)
        ticks.append(info["time"])

    cfg = EnvConfig(track="procedural:1000", off_track="recover")
    result = watch(cfg, policy, realtime=False, person=person, on_step=rows.append)
    assert result.quit and len(result.runs) == 1
    run = result.runs[0]
    recoveries = sum(r["info"]["intervention"] for r in rows)  # the env put the car back on the road
    assert run.takeovers == 2 and run.interventions == 2 + recoveries
    assert result.steps == len(rows) == 30 + 20 * 4  # 4 steps per window frame from tick 30
    who = [r["person"] for r in rows]
    assert who[:5] == [False] * 5 and all(who[5:20]) and not any(who[20:90]) and all(who[90:])
    # the person's steering ramps smoothly from where the policy's wheel was; the policy's is its own
    held = [r["steering"] for r in rows[5:15]]
    assert held[0] == pytest.approx(rows[4]["policy"] - 0.1) and held[-1] == -1.0
    assert np.all((np.diff(held) <= 0) & (np.diff(held) >= -0.1 - 1e-9))
    assert all(r["steering"] == r["policy"] for r in rows[20:90])
    assert all(-1 <= r["expert"] <= 1 for r in rows)
    assert run.autonomy < 100.0


def test_watch_runs_laps_to_the_end_and_counts_lap_times():
    class RoadFollower:  # a hand-written policy: steers from the frame alone, like the network
        def __init__(self):
            self.eye = ScriptedPerson()

        def steer(self, frame):
            return self.eye.wanted(frame)

    cfg = EnvConfig(track="procedural:39", off_track="recover", laps=1)
    rows = []
    result = watch(cfg, RoadFollower(), realtime=False, speedup=8, on_step=rows.append)
    assert not result.quit and len(result.runs) == 1
    run = result.runs[0]
    # one clean lap at cruise speed: its time is the track's length at that speed, no one intervened
    lap_s = load_track("procedural:39").length / cfg.car.cruise_speed_mps
    assert run.laps == 1 and len(run.lap_times) == 1 and run.lap_times[0] == pytest.approx(lap_s, rel=0.05)
    assert not any(r["info"]["intervention"] or r["person"] for r in rows)
    assert run.takeovers == 0 and run.off_track == 0 and run.autonomy == 100.0


def run_cli(*args):
    return subprocess.run([sys.executable, "run_drive.py", "watch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})


def test_missing_or_garbage_model_is_one_clear_line(tmp_path):
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "card.json").write_text("{not json")
    for folder in (tmp_path / "missing", tmp_path / "garbage"):
        p = run_cli("--model", str(folder))
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), p.stderr
        assert str(folder) in lines[0]


def test_saliency_shows_in_the_inset(policy):
    from agent.watch import saliency_overlay

    shown = []
    overlay = saliency_overlay(policy)

    def spy(frame):
        shown.append(overlay(frame))
        return shown[-1]

    cfg = EnvConfig(track="procedural:1000", off_track="recover")
    result = watch(cfg, policy, realtime=False, saliency=spy, max_steps=5)
    assert result.steps == 5 and len(shown) == 5
    assert shown[0].shape == (96, 96, 3) and shown[0].dtype == np.uint8
