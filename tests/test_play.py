"""`play`: smooth steering inputs, the real pygame loop driven by posted key events, and drives on disk
that round-trip exactly."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pygame
import pytest
from scripted_person import ScriptedPerson, scripted_keyboard_drive

from data.play import play
from data.recording import STATE_KEYS, find_drives, read_drive
from sim import EnvConfig, camera_from_name
from sim.viewer import GREEN, RED, GamepadSteering, KeyboardSteering, MouseSteering

ROOT = Path(__file__).resolve().parents[1]


def key(kind, k):
    pygame.event.post(pygame.event.Event(kind, key=k))


def test_keyboard_steering_ramps_and_returns_to_centre():
    ks = KeyboardSteering(dt=0.05, ramp_s=0.5, return_s=0.25)
    held = [ks.step(left=True, right=False) for _ in range(14)]
    assert held[0] == pytest.approx(-0.1)  # not bang-bang: a tap is a small correction
    assert np.all(np.diff(held) <= 0) and held[-1] == -1.0
    assert np.abs(np.diff([0.0] + held)).max() <= 0.1 + 1e-9
    released = [ks.step(left=False, right=False) for _ in range(6)]
    assert released[0] == pytest.approx(-0.8) and released[4] == 0.0 and released[5] == 0.0
    for _ in range(10):
        ks.step(left=True, right=False)
    reversed_ = [ks.step(left=False, right=True) for _ in range(4)]
    assert reversed_[0] == pytest.approx(-0.7) and reversed_[-1] > 0.1  # the other key turns it over quickly
    assert ks.step(left=True, right=True) < reversed_[-1]  # both keys: back towards centre


def test_keyboard_steering_tracks_arrows_and_wasd_events():
    ks = KeyboardSteering()
    assert ks.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_a))
    assert ks.touched and ks.update() < 0
    ks.handle(pygame.event.Event(pygame.KEYUP, key=pygame.K_a))
    ks.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RIGHT))
    ks.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP))
    pedal = [ks.throttle() for _ in range(8)]  # the pedal ramps in, like the wheel
    assert ks.held == {"right", "up"} and 0 < pedal[0] < 0.5 and pedal[-1] == 1.0
    ks.handle(pygame.event.Event(pygame.KEYUP, key=pygame.K_UP))
    ks.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_s))
    assert [ks.throttle() for _ in range(14)][-1] == -1.0  # S brakes, through zero
    assert not ks.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_x))


def test_mouse_and_gamepad_steering():
    m = MouseSteering(width=400, span=0.8)
    assert m.step(200) == 0.0 and m.step(40) == -1.0 and m.step(300) == pytest.approx(0.625)
    m.handle(pygame.event.Event(pygame.MOUSEMOTION, pos=(360, 10), rel=(0, 0), buttons=(0, 0, 0)))
    assert m.update() == 1.0 and m.touched
    axes = {0: 0.05, 1: -0.5}
    g = GamepadSteering(read_axis=axes.__getitem__, deadzone=0.08)
    assert g.update() == 0.0 and not g.touched  # inside the dead zone
    axes[0] = -1.0
    assert g.update() == -1.0 and g.throttle() > 0
    pad = {0: 0.0, 4: 0.0, 5: 0.0}  # triggers read 0 until first touched on some pads: not half pressed
    g = GamepadSteering(read_axis=pad.__getitem__, triggers=True)
    assert g.throttle() == 0.0
    pad[5] = 1.0
    assert g.throttle() == 1.0
    pad[5], pad[4] = -1.0, 0.5
    assert g.throttle() == pytest.approx(-0.75)


def test_scripted_person_drives_a_lap_and_the_drive_round_trips(tmp_path):
    produced = []
    result = scripted_keyboard_drive("procedural:39", tmp_path, laps=1,
                                     on_record=lambda f, s, info, c: produced.append((f.copy(), s, dict(info))))
    assert result.laps == 1 and not result.quit
    assert find_drives(tmp_path) == result.drives and len(result.drives) == 1
    d = read_drive(result.drives[0])
    assert d.warnings == [] and d.finished and len(d) == len(produced) == result.frames > 900
    assert np.array_equal(d.frames, np.stack([p[0] for p in produced]))
    assert np.array_equal(d.steering, np.array([p[1] for p in produced], np.float32))
    for k in STATE_KEYS:
        assert np.array_equal(d.state[k], np.array([p[2][k] for p in produced]).astype(d.state[k].dtype)), k
    assert np.array_equal(d.off_track, [p[2]["off_track"] for p in produced])
    assert d.meta["source"] == "keyboard" and d.meta["track"] == "procedural:39"
    assert EnvConfig.from_dict(d.meta["env"]).off_track == "recover"
    # human-style labels: smooth ramps (never a jump of more than one key step) and both directions
    assert np.abs(np.diff(d.steering)).max() <= 0.3 + 1e-6
    assert d.steering.min() <= -0.25 and d.steering.max() >= 0.1
    assert np.mean(np.isin(d.steering, [-1.0, 0.0, 1.0])) < 0.6
    assert d.state["lap_fraction"][-1] > 0.95  # the whole lap is on disk


def test_scripted_person_reads_the_road_from_the_frame():
    person = ScriptedPerson()
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[:] = (86, 150, 64)  # grass
    frame[:, 10:40] = (92, 92, 96)  # the road lies to the left
    assert person.wanted(frame) < -0.5
    assert person.keys(frame, {"steer_angle": 0.0}) == "left"
    frame[:] = (86, 150, 64)
    frame[:, 40:56] = (92, 92, 96)
    assert abs(person.wanted(frame)) < 0.1 and person.keys(frame, {"steer_angle": 0.0}) is None


def test_pause_restart_off_track_and_escape_through_the_real_loop(tmp_path):
    """A script of key presses: hold Left until the car leaves the road (the env puts it back and the
    drive marks it), pause, restart the lap (a second drive), then Esc."""
    ticks = []

    def script(obs, info):
        t = len(ticks)
        ticks.append(info["time"])
        if t == 0:
            key(pygame.KEYDOWN, pygame.K_LEFT)
        elif t == 60:
            key(pygame.KEYUP, pygame.K_LEFT)
            key(pygame.KEYDOWN, pygame.K_p)  # pause: the next ticks record nothing
        elif t == 70:
            key(pygame.KEYDOWN, pygame.K_p)
        elif t == 80:
            key(pygame.KEYDOWN, pygame.K_r)  # restart: this drive closes, a new one begins
        elif t == 100:
            key(pygame.KEYDOWN, pygame.K_ESCAPE)

    cfg = EnvConfig(track="procedural:3", off_track="recover")
    result = play(cfg, tmp_path / "drives", input_name="keyboard", realtime=False, person=script)
    assert result.quit and len(result.drives) == 2
    first, second = (read_drive(p) for p in result.drives)
    assert len(first) == 60 + 10 and len(second) == 19  # 10 paused ticks and the restart tick drive nothing
    assert first.steering[:30].min() == -1.0 and first.intervention.any() and first.off_track.any()
    assert first.meta["summary"]["interventions"] >= 1
    assert second.state["time"][0] == 0.0 and second.state["s"][0] == pytest.approx(0.0, abs=1e-6)


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "run_drive.py", "play", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})


@pytest.mark.parametrize("args, words", [
    (["--track", "procedural:x", "--out", "OUT"], "procedural:x"),
    (["--track", "nope.csv", "--out", "OUT"], "nope.csv"),
    (["--track", "procedural:3", "--out", "FILE"], "not a folder"),
    (["--track", "procedural:3", "--out", "OUT", "--laps", "-2"], "--laps"),
    (["--track", "procedural:3", "--out", "OUT", "--assist", "NOPOLICY"], "NOPOLICY"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, words):
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a in ("OUT", "FILE", "NOPOLICY") else a for a in args]
    p = run_cli(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], p.stderr
    assert not (tmp_path / "OUT").exists() or not any((tmp_path / "OUT").iterdir())


def test_assist_records_only_the_persons_corrections(tmp_path):
    """HG-DAgger through the real loop: the policy drives, holding a key takes over (those frames are
    recorded with the person's steering and correction=True), letting go hands back."""
    import torch

    from agent.model import build_model, load_policy, save_policy

    torch.manual_seed(0)
    cfg = EnvConfig(track="procedural:3", off_track="recover")
    save_policy(tmp_path / "policy", build_model("small", cfg.camera), {"arch": "small", "env": cfg.to_dict()})
    policy = load_policy(tmp_path / "policy")
    ticks, produced = [], []

    def script(obs, info):
        t = len(ticks)
        ticks.append(obs)
        if t == 10:
            key(pygame.KEYDOWN, pygame.K_RIGHT)
        elif t == 20:
            key(pygame.KEYUP, pygame.K_RIGHT)
        elif t == 30:
            key(pygame.KEYDOWN, pygame.K_ESCAPE)

    result = play(cfg, tmp_path / "drives", policy=policy, realtime=False, person=script,
                  on_record=lambda f, s, info, c: produced.append((s, info["time"], c)))
    assert result.takeovers == 1 and len(result.drives) == 1
    d = read_drive(result.drives[0])
    assert len(d) == 10 and d.correction.all() and d.meta["source"] == "assist"
    assert np.array_equal(d.state["time"], [p[1] for p in produced])
    assert d.state["time"][0] == pytest.approx(10 * cfg.car.dt)  # the first 10 steps were the policy's
    wheel = policy.steer(ticks[9])  # the policy's last command: the person takes the wheel from there
    assert d.steering[0] == pytest.approx(wheel + (0.3 if wheel < 0 else 0.1), abs=1e-6)
    assert np.all(np.diff(d.steering) >= 0) and np.array_equal(d.executed_steering, d.steering)


def test_viewer_shows_the_camera_inset_and_a_blinking_recording_light():
    from sim import DriveEnv
    from sim.viewer import DriveViewer, Hud

    env = DriveEnv(track="procedural:3", off_track="recover")
    obs, info = env.reset(seed=0)
    viewer = DriveViewer()
    try:
        light = []
        for _ in range(21):
            viewer.draw(env, info, obs, Hud(recording=True))
            shot = viewer.screenshot()
            light.append(tuple(shot[23, viewer.world_px + viewer.panel_px - 60]))
        assert shot.shape == (viewer.world_px, viewer.world_px + viewer.panel_px, 3)
        assert light[0] == (230, 40, 40) and light[12] != light[0] and light[20] == light[0]
        # the inset is the network's frame scaled up (96 -> 200 px) in the top-left corner
        inset = shot[10:210, 10:210]
        assert np.abs(inset[::25, ::25].astype(int) - obs[::12, ::12].astype(int)).mean() < 25
        assert shot[:, viewer.world_px:].std() > 20  # the HUD panel holds text and bars, not a blank
        viewer.draw(env, info, obs, Hud(mode="watch", inset_overlay=np.full_like(obs, (255, 0, 255))))
        assert (viewer.screenshot()[20:200, 20:200] == (255, 0, 255)).all()  # e.g. saliency, in the inset
    finally:
        viewer.close()


def test_race_pedal_through_the_real_loop_records_throttle_and_shows_it(tmp_path):
    """Race: hold W to launch, then S to brake; the pedal ramps, the drive records the throttle labels,
    the car speeds up and slows down, and the HUD shows speed, throttle and brake."""
    shots, hud = [], {}

    def count(colour) -> int:
        return int(np.all(pygame.surfarray.pixels3d(pygame.display.get_surface()) == colour, axis=-1).sum())

    def script(obs, info):
        t = len(shots)
        shots.append(info["speed"])
        if t in (60, 90):  # the window as drawn after full throttle, then after full braking
            hud[t] = (count(GREEN), count(RED))
        if t == 0:
            key(pygame.KEYDOWN, pygame.K_w)
        elif t == 60:
            key(pygame.KEYUP, pygame.K_w)
            key(pygame.KEYDOWN, pygame.K_s)
        elif t == 90:
            key(pygame.KEYDOWN, pygame.K_ESCAPE)

    cfg = EnvConfig(track="procedural:3", off_track="recover", task="race", camera=camera_from_name("race"))
    result = play(cfg, tmp_path / "drives", input_name="keyboard", realtime=False, person=script)
    drive = read_drive(result.drives[0])
    assert drive.meta["env"]["task"] == "race" and drive.throttle is not None
    assert 0 < drive.throttle[0] < 0.5 and drive.throttle[30] == 1.0  # ramped in
    assert drive.throttle[89] == -1.0 and drive.throttle[61] > -1.0  # ramped through to full brake
    speed = drive.state["speed"]
    assert speed[0] < 1.0 and speed[60] > 15.0 and speed[89] < speed[60] - 8.0
    assert hud[60][0] > hud[90][0] + 500 and hud[90][1] > hud[60][1] + 500  # the throttle bar, the brake bar
