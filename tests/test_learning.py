"""Outcome tests: a small policy trained on real autopilot drives (the session's `trained` fixture)
must have learned to steer. These fail when learning breaks (an optimiser that never steps, labels
that no longer match their frames), where "the loss went down" and shape checks would still pass."""

import numpy as np
import pytest
from conftest import LEARN_CAMERA

from agent.dataset import shifted_pose
from agent.model import load_policy, single_thread_inference
from sim.env import DriveEnv, EnvConfig
from sim.render import Camera, camera_from_name
from sim.track import load_track

HELD_OUT = "procedural:1000"  # never in the training drives (procedural:0-5)


@pytest.fixture(scope="module")
def policy(trained):
    with single_thread_inference():
        yield load_policy(trained.policy)


def test_validation_error_is_well_below_the_variance_of_the_labels(trained, policy):
    """Predicting the mean label scores the labels' variance; the policy must do far better on
    drives it never trained on."""
    best = policy.card["training"]["best_val_loss"]
    assert best < 0.5 * trained.val_label_var, (best, trained.val_label_var)


def test_off_centre_it_steers_back_towards_the_centre(policy):
    """Left of the centre line (facing along the road) it steers right (positive), right of it left,
    at points all round a track it never saw."""
    track = load_track(HELD_OUT)
    cam = Camera(track, camera_from_name(LEARN_CAMERA))
    left, right = [], []
    for s in np.linspace(0, track.length, 12, endpoint=False):
        (x, y), yaw = track.point_at(s), track.heading_at(s)
        frames = np.stack([cam.render(*shifted_pose(x, y, yaw, side * 1.5, 0.0)) for side in (1, -1)])
        a, b = policy.steer_batch(frames)
        left.append(a)
        right.append(b)
    left, right = np.array(left), np.array(right)
    assert np.all(left > right), (left.round(2), right.round(2))
    assert left.mean() > 0.05 and right.mean() < -0.05, (left.round(2), right.round(2))


def drive_distance(steer, steps: int = 300) -> float:
    """Metres along the held-out track before the car leaves the road (or after `steps`)."""
    env = DriveEnv(config=EnvConfig(track=HELD_OUT, camera=camera_from_name(LEARN_CAMERA), off_track="terminate"))
    obs, info = env.reset(seed=0, options={"start_s": 0.0})
    for _ in range(steps):
        obs, _r, terminated, truncated, info = env.step(np.array([steer(obs)], np.float32))
        if terminated or truncated:
            break
    return float(info["progress_m"])


def test_it_drives_a_held_out_stretch_further_than_constant_steering(policy):
    constant = max(drive_distance(lambda _obs, c=c: c) for c in (-0.1, 0.0, 0.1))
    learned = drive_distance(policy.steer)
    assert learned > 3 * constant and learned > 150.0, (learned, constant)
