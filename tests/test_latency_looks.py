"""Latency and unseen looks in the real env: the action arrives exactly k control steps late (the frame
does not), and every look changes the frames, the same way for the same seed."""

import numpy as np
import pytest

from sim.env import DriveEnv, EnvConfig
from sim.looks import LOOKS
from sim.render import default_palette, held_out_palette, in_held_out_family, random_palette

TRACK = "procedural:3"


def steering_sequence(n: int) -> list[np.ndarray]:
    """A wavy steering command, so a shift in time shows in the path."""
    return [np.array([0.6 * np.sin((i + 1) / 7.0)], np.float32) for i in range(n)]


def poses(env: DriveEnv, actions) -> list[tuple]:
    out = []
    for a in actions:
        env.step(a)
        out.append((env.car.x, env.car.y, env.car.yaw, env.car.steer))
    return out


@pytest.mark.parametrize("latency_ms, k", [(50, 1), (150, 3), (160, 3), (300, 6)])
def test_latency_delays_the_action_by_exactly_k_steps(latency_ms, k):
    actions = steering_sequence(80)
    late = DriveEnv(config=EnvConfig(track=TRACK, latency_ms=latency_ms))
    assert late.cfg.latency_steps == k
    late.reset(seed=0)
    steer = [p[3] for p in poses(late, actions[: k + 1])]
    assert steer[:k] == [0.0] * k and steer[k] != 0.0  # k steps of the start's zeros, then the first action
    late.reset(seed=0)
    # the same drive without latency, given k zero actions first: the car must do exactly the same
    now = DriveEnv(config=EnvConfig(track=TRACK))
    now.reset(seed=0)
    assert poses(now, actions[:1])[0][3] != 0.0  # without latency the first action acts at once
    now.reset(seed=0)
    zeros = [np.zeros(1, np.float32)] * k
    assert poses(late, actions) == poses(now, zeros + actions)[: len(actions)]
    # and it really is late: without the zeros the path differs
    now.reset(seed=0)
    assert poses(now, actions)[-1] != (late.car.x, late.car.y, late.car.yaw, late.car.steer)


def test_latency_does_not_delay_the_frame():
    env = DriveEnv(config=EnvConfig(track=TRACK, latency_ms=200))
    env.reset(seed=0)
    for a in steering_sequence(30):
        obs, *_ = env.step(a)
    np.testing.assert_array_equal(obs, env.camera.render(env.car.x, env.car.y, env.car.yaw))  # the pose now


def test_latency_must_not_be_negative():
    with pytest.raises(ValueError, match="latency_ms"):
        EnvConfig(latency_ms=-50)


def frames(look, seed: int, n: int = 12) -> list[np.ndarray]:
    env = DriveEnv(config=EnvConfig(track=TRACK, look=look))
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in steering_sequence(n):
        obs, *_ = env.step(a)
        out.append(obs)
    return out


@pytest.mark.parametrize("name", [n for n in LOOKS if n != "default"])
def test_each_look_changes_frames_deterministically(name):
    look = LOOKS[name]
    first, again = frames(look, seed=5), frames(look, seed=5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)  # same seed, same frames
    plain = frames(LOOKS["default"], seed=5)
    differ = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(first, plain)]
    assert min(differ) > 2.0, differ  # every frame looks different from the default look
    if name in ("noise", "held-out-palette", "shadows"):  # drawn from the seed: another seed, other frames
        other = frames(look, seed=6)
        assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_default_look_and_latency_leave_the_lane_frames_as_they_were():
    env = DriveEnv(config=EnvConfig(track=TRACK))
    obs, _ = env.reset(seed=5)
    np.testing.assert_array_equal(env.palette, default_palette())
    np.testing.assert_array_equal(obs, frames(LOOKS["default"], seed=5, n=0)[0])


def test_training_palettes_never_fall_in_the_held_out_family():
    rng = np.random.default_rng(0)
    assert not any(in_held_out_family(random_palette(rng)) for _ in range(5000))
    assert not in_held_out_family(default_palette())
    assert all(in_held_out_family(held_out_palette(rng)) for _ in range(500))
