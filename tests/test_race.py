"""The race task: a dynamic car with grip, its env wiring, the speed gauge and the race expert."""

import hashlib
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim  # noqa: F401  (registers the envs)
from sim import DriveEnv, Expert, RaceCarConfig, RaceExpert, load_track
from sim.car import GRAVITY, CarState, race_step
from sim.expert import RaceExpertConfig, speed_profile

RING_RADIUS_M = 40.0


@pytest.fixture
def ring_csv(tmp_path):
    """A ring of 40 m radius, 10 m wide, driven counter-clockwise, in the common CSV format."""
    a = np.linspace(0, 2 * np.pi, 252, endpoint=False)
    rows = [f"{RING_RADIUS_M * math.cos(t):.4f},{RING_RADIUS_M * math.sin(t):.4f},5.0,5.0" for t in a]
    path = tmp_path / "ring.csv"
    path.write_text("# x_m,y_m,w_tr_right_m,w_tr_left_m\n" + "\n".join(rows) + "\n")
    return path


def lane_holding_steering(info: dict) -> float:
    """A simple lane keeper: steer back towards the centre line and along it (no preview, no speed)."""
    return float(np.clip(0.3 * info["cte"] + 1.2 * info["heading_error"], -1, 1))


def drive_ring(ring_csv, throttle_of, seconds: float = 25.0) -> tuple[bool, float]:
    env = DriveEnv(track=str(ring_csv), task="race", off_track="terminate", laps=None)
    _, info = env.reset(seed=0)
    top = 0.0
    for _ in range(int(seconds / env.cfg.race_car.dt)):
        _, _, terminated, _, info = env.step([lane_holding_steering(info), throttle_of(info)])
        top = max(top, info["speed"])
        if terminated:
            return info["off_track"], top
    return False, top


# -- physics ---------------------------------------------------------------------------------------
def test_ring_held_at_10_mps_stays_on_and_full_throttle_leaves(ring_csv):
    off, top = drive_ring(ring_csv, lambda info: float(np.clip(0.5 * (10.0 - info["speed"]), -1, 1)))
    assert not off and top == pytest.approx(10.0, abs=0.6)
    off, top = drive_ring(ring_csv, lambda info: 1.0)
    grip_limit = math.sqrt(GRAVITY * RING_RADIUS_M)  # ~19.8 m/s on asphalt
    assert off and top > 0.8 * grip_limit


def steady_lateral_accel(speed: float, steering: float, grip: float | None = None, brake: float = 0.0) -> float:
    """Lateral acceleration (v * yaw rate) after 4 s at a held speed and steering (or braking)."""
    cfg = RaceCarConfig()
    s = CarState(0.0, 0.0, 0.0, speed)
    for _ in range(80):
        thr = -brake if brake else float(np.clip(0.8 * (speed - s.speed) + 0.05, -1, 1))
        s = race_step(s, steering, thr, cfg, grip)
        if brake:
            s = CarState(s.x, s.y, s.yaw, speed, s.steer, s.lateral_speed, s.yaw_rate)  # hold speed
    return s.speed * abs(s.yaw_rate)


def test_grip_limit_saturates_shares_with_braking_and_grass_holds_less():
    g = GRAVITY
    on_asphalt = max(steady_lateral_accel(15.0, -st) for st in (0.2, 0.4, 0.6, 0.8, 1.0))
    assert 0.9 * g < on_asphalt < 1.05 * g  # mu = 1: the tyres hold ~1 g and no more, at any lock
    small = steady_lateral_accel(15.0, -0.1)
    assert small == pytest.approx(2 * steady_lateral_accel(15.0, -0.05), rel=0.1)  # linear below the limit
    on_grass = max(steady_lateral_accel(15.0, -st, grip=0.5) for st in (0.2, 0.4, 0.6))
    assert on_grass < 0.55 * g
    braking = steady_lateral_accel(15.0, -0.6, brake=1.0)
    assert braking < 0.6 * on_asphalt  # the friction circle: braking leaves less grip to turn


def test_understeer_too_fast_runs_wide_not_spins():
    """Full lock at 25 m/s: the front saturates, the turn is far wider than the wheels ask for."""
    cfg = RaceCarConfig()
    s = CarState(0.0, 0.0, 0.0, 25.0)
    for _ in range(20):
        s = race_step(s, -1.0, 0.3, cfg)
    kinematic_radius = cfg.wheelbase_m / math.tan(cfg.max_steer_rad)  # ~4.8 m
    assert s.speed / s.yaw_rate > 5 * kinematic_radius
    assert abs(s.lateral_speed) < 0.3 * s.speed  # sliding a little, not spinning


def test_race_car_is_deterministic_and_stable_from_standstill():
    cfg = RaceCarConfig()
    a = b = CarState(0.0, 0.0, 0.0, 0.0)
    for i in range(200):
        a = race_step(a, math.sin(i / 10), 1.0 if i < 150 else -1.0, cfg)
        b = race_step(b, math.sin(i / 10), 1.0 if i < 150 else -1.0, cfg)
    assert a == b and all(math.isfinite(v) for v in (a.x, a.y, a.yaw, a.lateral_speed, a.yaw_rate))
    s = CarState(0.0, 0.0, 0.0, 0.0)
    for _ in range(20):
        s = race_step(s, 0.0, -1.0, cfg)
    assert s.speed == 0.0 and s.x == 0.0  # braking at a standstill does not reverse


def test_lane_car_and_frames_unchanged():
    """The lane task's drive (the kinematic car, camera frames) is byte for byte what it was."""
    env = DriveEnv(track="procedural:3", off_track="recover")
    env.reset(seed=0)
    h = hashlib.sha256()
    expert = Expert()
    for _ in range(300):
        obs, _, _, _, info = env.step(expert.act(env))
        h.update(obs.tobytes())
    assert (info["x"], info["y"], info["yaw"], info["speed"]) == (
        195.66150699004052, 219.71523880885968, 2.8961350834494413, 14.0)
    assert h.hexdigest()[:16] == "8bce7b5849ac5a4b"
    assert env.action_space.shape == (1,)


# -- env -------------------------------------------------------------------------------------------
def test_race_env_registered_api_and_gauge():
    env = gym.make("E2EDriveRace-v0", track="procedural:1")
    assert env.action_space.shape == (2,)
    assert gym.make("E2EDrive-v0", task="race").unwrapped.cfg.task == "race"
    check_env(DriveEnv(task="race", track="procedural:1"), skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert info["speed"] == 0.0  # a standing start
    bar = max(2, obs.shape[1] // 32)
    assert obs[:, :bar].max() == 0  # the empty gauge at rest
    for _ in range(60):
        obs, reward, _, _, info = env.step([0.0, 1.0])
    assert reward > 0 and set(info) >= {"cte", "heading_error", "speed", "off_track"}
    lit = obs[:, :bar, 0].astype(float).sum() / (255 * bar)
    expected = info["speed"] / env.unwrapped.cfg.race_car.max_speed_mps * obs.shape[0]
    assert lit == pytest.approx(expected, abs=0.05)  # the gauge reads the speed (to a fraction of a pixel)
    assert np.array_equal(obs[:, :bar], obs[:, -bar:][:, ::-1])  # mirrored frames show the same gauge
    env.close()


# -- expert ----------------------------------------------------------------------------------------
def test_speed_profile_grip_limit_and_acceleration_limits(ring_csv):
    car, cfg = RaceCarConfig(), RaceExpertConfig()
    ring = speed_profile(load_track(str(ring_csv)), car, cfg)
    limit = math.sqrt(cfg.lateral_grip_use * GRAVITY / (1 / RING_RADIUS_M))
    assert np.allclose(ring, limit, rtol=0.02)  # a constant corner: constant grip-limited speed
    track = load_track("procedural:0")
    v = speed_profile(track, car, cfg)
    ds = track.length / len(track)
    accel = (np.roll(v, -1) ** 2 - v ** 2) / (2 * ds)
    assert accel.min() > -(cfg.brake_grip_use * GRAVITY + car.drag_per_m * v.max() ** 2) - 1e-6
    assert accel.max() < car.max_accel_mps2 + 1e-6
    assert v.max() > 2 * v.min()  # it brakes for corners and accelerates on straights


def test_race_expert_laps_clean_and_fast():
    env = DriveEnv(track="procedural:0", task="race", off_track="recover", laps=1)
    expert = RaceExpert()
    env.reset(seed=0)
    speeds, done = [], False
    while not done:
        _, _, term, trunc, info = env.step(expert.act(env))
        speeds.append(info["speed"])
        done = term or trunc
    assert info["lap"] == 1 and info["off_track_count"] == 0
    assert np.mean(speeds) > 17.0
    # near the limit: the car's own grip allows little more than what the expert asks
    assert max(speeds) > 0.9 * expert.profile(env.track, env.cfg.race_car).max()


def test_env_grass_holds_less_than_asphalt(ring_csv):
    """The env gives the car the grip of the surface under it: on the grass beside the ring it
    cannot turn as hard as on the road."""

    def hardest_turn(radius: float) -> float:
        env = DriveEnv(track=str(ring_csv), task="race", off_track="continue", laps=None)
        env.reset(seed=0)
        e = env.unwrapped
        e.car = CarState(radius, 0.0, math.pi / 2, 14.0)  # heading along the ring, counter-clockwise
        e.proj = e.track.project(e.car.x, e.car.y, e.car.yaw)
        accel = []
        for _ in range(30):
            _, _, _, _, info = env.step([-1.0, float(np.clip(0.8 * (14.0 - e.car.speed), -1, 1))])
            accel.append(info["speed"] * abs(info["yaw_rate"]))
        return max(accel[10:])

    assert hardest_turn(55.0) < 0.6 * hardest_turn(40.0)


@pytest.mark.parametrize("spec", ["challenge:15", "challenge:19"])
def test_a_driver_8_percent_too_fast_stays_on_the_road_thanks_to_the_experts_margin(spec):
    """A clone's braking is a little late and soft: it holds the expert's speed profile a few percent
    too fast. The expert plans corners at 75% of the grip so that such a driver (here: the expert's
    steering, and its profile held 8% too fast) still stays on the road; with corners planned at 85%
    it runs wide."""
    from dataclasses import replace

    from sim.env import EnvConfig

    def off_track_events(cfg: RaceExpertConfig) -> int:
        env = DriveEnv(config=EnvConfig(track=spec, task="race", camera=sim.camera_from_name("race"),
                                        off_track="recover"))
        env.reset(seed=0)
        e, expert = env.unwrapped, RaceExpert(cfg)
        while True:
            target = 1.08 * expert.target_speed(e.track, e.cfg.race_car, e.proj.s, e.car.speed)
            throttle = float(np.clip(cfg.speed_gain * (target - e.car.speed) + 0.1, -1.0, 1.0))  # as the expert
            _, _, terminated, truncated, info = env.step(np.array([expert.steering(env), throttle], np.float32))
            if terminated or truncated:
                return info["off_track_count"]

    assert off_track_events(RaceExpertConfig()) == 0
    assert off_track_events(replace(RaceExpertConfig(), lateral_grip_use=0.85)) > 0
