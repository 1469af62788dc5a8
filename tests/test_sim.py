"""Car, camera, environment and expert: the real env, the real renderer."""

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim import CarConfig, CarState, DriveEnv, Expert, load_track
from sim.car import steering_for_curvature, step
from sim.render import ASPHALT, Camera, camera_from_name, default_palette, random_palette


# -- car ------------------------------------------------------------------------------------------
def test_car_turns_the_right_way_and_holds_cruise_speed():
    cfg = CarConfig()
    s = CarState(0.0, 0.0, 0.0, 0.0)
    for _ in range(200):
        s = step(s, -1.0, cfg)  # full left
    assert s.speed == pytest.approx(cfg.cruise_speed_mps, rel=0.02)
    assert s.steer == pytest.approx(cfg.max_steer_rad)
    s2 = step(CarState(0, 0, 0, 10.0), 0.5, cfg)
    assert s2.steer < 0 and s2.yaw < 0  # positive command turns right (clockwise)


def test_steering_rate_limit_and_circle():
    cfg = CarConfig()
    s = step(CarState(0, 0, 0, 10.0), 1.0, cfg)
    assert abs(s.steer) == pytest.approx(cfg.max_steer_rate_rad_s * cfg.dt)
    # a constant command drives a circle of the matching curvature
    cmd = steering_for_curvature(1 / 30.0, cfg)
    st = CarState(0, 0, 0, cfg.cruise_speed_mps)
    pts = []
    for _ in range(400):
        st = step(st, cmd, cfg)
        pts.append((st.x, st.y))
    pts = np.array(pts[100:])
    centre = pts.mean(0)
    r = np.hypot(*(pts - centre).T)
    assert r.mean() == pytest.approx(30.0, rel=0.05)


def test_throttle_and_brake():
    cfg = CarConfig()
    s = CarState(0, 0, 0, 10.0)
    assert step(s, 0.0, cfg, throttle=1.0).speed > 10.0
    assert step(s, 0.0, cfg, throttle=-1.0).speed < 10.0 - 0.3


# -- camera ---------------------------------------------------------------------------------------
def _labels_colour(frame, label):
    return np.all(frame == default_palette()[label], axis=-1)


def test_birdseye_frame_shows_the_road_ahead_where_it_is():
    t = load_track("procedural:3")
    cam = Camera(t)
    s = 150.0
    p, h = t.point_at(s), t.heading_at(s)
    frame = cam.render(p[0], p[1], h)
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    road = _labels_colour(frame, ASPHALT)
    # straight ahead of the car (centre column, upper half) is road; the far sides are not all road
    assert road[10:60, 44:52].mean() > 0.5
    # shift the car 6 m to the right of the centerline: the road appears to its left
    right = p + 6.0 * np.array([math.sin(h), -math.cos(h)])
    f2 = cam.render(right[0], right[1], h)
    r2 = _labels_colour(f2, ASPHALT)
    cols = np.nonzero(r2[20:60].any(0))[0]
    assert cols.mean() < 48


def test_camera_sizes_and_presets():
    t = load_track("procedural:1")
    for name, shape in [("birdseye", (96, 96, 3)), ("dashcam", (96, 96, 3)), ("pilotnet", (66, 200, 3)),
                        ("birdseye:128x64", (64, 128, 3))]:
        cam = Camera(t, camera_from_name(name))
        p = t.point_at(50.0)
        assert cam.render(p[0], p[1], t.heading_at(50.0)).shape == shape
    with pytest.raises(ValueError, match="unknown camera"):
        camera_from_name("fisheye")


def test_dashcam_sees_sky_above_and_road_below():
    t = load_track("procedural:3")
    cam = Camera(t, camera_from_name("dashcam"))
    p, h = t.point_at(150.0), t.heading_at(150.0)
    f = cam.render(p[0], p[1], h).astype(int)
    sky = default_palette()[7].astype(int)
    assert np.abs(f[2] - sky).sum(-1).mean() < 5  # top row is sky
    bottom_centre = f[-10:, 40:56].reshape(-1, 3).mean(0)
    assert np.abs(bottom_centre - default_palette()[ASPHALT]).sum() < 40  # road just ahead


def test_random_palette_changes_colours_deterministically():
    a = random_palette(np.random.default_rng(1))
    b = random_palette(np.random.default_rng(1))
    c = random_palette(np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- env ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("render_mode", [None, "rgb_array", "human"])
def test_env_passes_gymnasium_checker_with_its_render_check(render_mode):
    env = gym.make("E2EDrive-v0", track="procedural:1", render_mode=render_mode).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports most findings as warnings: each one fails here
        check_env(env)
    env.close()


def test_same_seed_same_frames():
    def run(seed):
        env = DriveEnv(track="procedural:0-3", randomise_palette=True, random_start=True)
        obs, _ = env.reset(seed=seed)
        frames = [obs]
        for i in range(30):
            obs, *_ = env.step(np.array([math.sin(i / 5)], np.float32))
            frames.append(obs)
        return np.stack(frames)

    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_reward_terminate_and_info():
    env = DriveEnv(track="procedural:2")
    obs, info = env.reset(seed=0)
    for key in ("lap", "progress_m", "cte", "heading_error", "off_track", "speed", "lap_time"):
        assert key in info
    obs, r, term, trunc, info = env.step(np.zeros(1, np.float32))
    assert r > 0  # progress
    total, steps = r, 1
    for _ in range(400):  # full right lock: leaves the track within seconds and terminates
        obs, r, term, trunc, info = env.step(np.ones(1, np.float32))
        total += r
        steps += 1
        if term:
            break
    assert term and info["off_track"] and r < 0 and info["off_track_count"] == 1 and steps < 60
    # the return is the progress (0.1 per metre) less the one off-track penalty (10)
    assert total == pytest.approx(info["progress_m"] / 10 - 10.0) and info["progress_m"] > 0


def test_recover_mode_puts_car_back_and_counts():
    env = DriveEnv(track="procedural:2", off_track="recover", max_steps=300)
    env.reset(seed=0)
    interventions = 0
    for _ in range(300):
        _, _, term, trunc, info = env.step(np.ones(1, np.float32))
        interventions += info["intervention"]
        assert not term
        if trunc:
            break
    assert interventions >= 2 and info["off_track_count"] == interventions
    assert abs(info["cte"]) < 10


def test_continue_mode_counts_each_time_the_car_leaves_the_road_not_each_step_off_it():
    env = DriveEnv(track="procedural:2", off_track="continue", laps=None, max_steps=1000)
    env.reset(seed=0)
    flags = []
    for i in range(240):
        if i == 120:  # put it back on the road once: it leaves again, a new time
            env.unwrapped.place_on_centerline(env.unwrapped.proj.s)
        _, r, term, trunc, info = env.step(np.ones(1, np.float32))  # full right lock, onto the grass
        flags.append(info["off_track"])
        assert not term and not trunc and info["intervention"] is False
    left_road = sum(f and not prev for f, prev in zip(flags, [False] + flags[:-1]))
    assert sum(flags) > 4 * left_road and left_road >= 2  # long spells on the grass, each counted once
    assert info["off_track_count"] == left_road


def test_rgb_array_render_is_larger():
    env = DriveEnv(render_mode="rgb_array", track="procedural:1")
    env.reset(seed=0)
    pic = env.render()
    assert pic.shape[0] > 96 * 3 and pic.dtype == np.uint8


def test_vector_env_async():
    envs = gym.make_vec("E2EDrive-v0", num_envs=2, vectorization_mode="async",
                        track="procedural:1")
    obs, info = envs.reset(seed=3)
    assert obs.shape == (2, 96, 96, 3)
    for _ in range(5):
        obs, r, term, trunc, info = envs.step(np.zeros((2, 1), np.float32))
    assert obs.shape == (2, 96, 96, 3) and r.shape == (2,)
    envs.close()


def test_drive_vector_env_steps_envs_in_parallel_with_gymnasiums_results():
    """DriveVectorEnv: the main process steps some envs and a worker process the others, and frames,
    rewards, flags and every info array (values, types, masks) are exactly gymnasium's
    SyncVectorEnv's, episode ends and next-step resets included."""
    from sim.vector import DriveVectorEnv

    ours = DriveVectorEnv(num_envs=3, processes=2, track="procedural:0-3")
    sync = gym.make_vec("E2EDrive-v0", num_envs=3, vectorization_mode="sync", track="procedural:0-3")
    try:
        procs = list(ours._procs)
        assert len(procs) == 1  # env 0 in the main process, 1 and 2 in the worker
        for a, b in zip(ours.reset(seed=7), sync.reset(seed=7)):
            assert same_batch(a, b)
        rng = np.random.default_rng(0)
        ends = 0
        for _ in range(80):
            act = rng.uniform(-0.2, 0.9, (3, 1)).astype(np.float32)  # steering right: off the road often
            got, want = ours.step(act), sync.step(act)
            for a, b in zip(got, want):
                assert same_batch(a, b)
            ends += int((got[2] | got[3]).sum())
        assert ends >= 3 and {"cte", "heading_error", "speed", "off_track", "lap", "progress_m"} <= set(got[4])
    finally:
        ours.close()
        sync.close()
    assert not any(p.is_alive() for p in procs)


def test_make_vec_without_a_mode_gives_the_drive_vector_env():
    from sim.vector import DriveVectorEnv

    envs = gym.make_vec("E2EDriveRace-v0", num_envs=2, track="procedural:1")
    try:
        assert isinstance(envs, DriveVectorEnv) and envs.single_action_space.shape == (2,)  # race: steer, throttle
        obs, info = envs.reset(seed=0)
        assert obs.shape == (2, 96, 96, 3) and list(info["track"]) == ["procedural:1"] * 2
        assert envs.step(np.zeros((2, 2), np.float32))[1].shape == (2,)
    finally:
        envs.close()


def test_a_drive_vector_env_merges_infos_that_do_not_fit_its_table_as_gymnasium_does():
    """A step whose info has other types than the probe step's (here: every step, as if the table
    had been laid out for a float `lap`) is merged key by key, with gymnasium's exact results."""
    from sim.vector import DriveVectorEnv, _Layout

    ours = DriveVectorEnv(num_envs=2, processes=1, track="procedural:0-3")
    sync = gym.make_vec("E2EDrive-v0", num_envs=2, vectorization_mode="sync", track="procedural:0-3")
    try:
        info = ours.reset(seed=1)[1]
        ours._own.layout = _Layout({k: (float(v[0]) if k == "lap" else v[0].item() if v.dtype != object else v[0])
                                    for k, v in info.items() if not k.startswith("_")})
        sync.reset(seed=1)
        for _ in range(30):
            act = np.array([[0.6], [-0.1]], np.float32)
            for a, b in zip(ours.step(act), sync.step(act)):
                assert same_batch(a, b)
    finally:
        ours.close()
        sync.close()


def test_the_results_table_survives_pickling_and_keeps_each_record_on_its_own_cache_lines():
    """A worker started by spawn (macOS, Windows) gets the layout pickled; every record starts on a
    cache line, so two processes never write the same line."""
    import ctypes
    import multiprocessing as mp
    import pickle

    from sim.vector import _Layout, _Shared

    info = {"track": "t", "lap": 3, "half": np.float16(0.5), "x": 1.25, "off": True}
    layout = pickle.loads(pickle.dumps(_Layout(info)))
    shared = _Shared(mp.get_context(), 3, (4, 4, 3), 1, layout, 1)
    _, _, table, blocks, _ = shared.views(layout)
    start = ctypes.addressof(ctypes.c_char.from_buffer(table))
    assert start % 64 == 0 and layout.record_bytes % 64 == 0
    layout.record.pack_into(table, layout.record_bytes, *layout.numbers((*info.values(), 2.5, True, False)))
    got = {n: block[1, k].item() for block, (_, names, _) in zip(blocks, layout.blocks) for k, n in enumerate(names)}
    assert got == {"lap": 3, "half": 0.5, "x": 1.25, "off": True, "/reward": 2.5, "/terminated": True,
                   "/truncated": False}
    assert {n: b.dtype for b, (_, names, _) in zip(blocks, layout.blocks) for n in names}["half"] == np.float16


def same_batch(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_batch(a[k], b[k]) for k in a)
    return a.dtype == b.dtype and np.array_equal(a, b)


def test_a_failure_in_a_drive_vector_env_is_raised_in_the_main_process():
    from sim.vector import DriveVectorEnv

    envs = DriveVectorEnv(num_envs=2, processes=2, track="procedural:1")
    try:
        envs.reset(seed=0)
        with pytest.raises(ValueError, match="action must be finite"):
            envs.step(np.array([[np.nan], [0.0]], np.float32))  # env 0 runs in the main process
        # the worker's env 1 did step; its answer was read then, so this step reads this step's
        info = envs.step(np.zeros((2, 1), np.float32))[4]
        assert info["time"] == pytest.approx([0.05, 0.10])
        with pytest.raises(RuntimeError, match="action must be finite"):
            envs.step(np.array([[0.0], [np.nan]], np.float32))  # env 1 runs in the worker
    finally:
        envs.close()


# -- expert ---------------------------------------------------------------------------------------
def expert_lap(spec: str) -> dict:
    """The expert drives one lap of `spec`; the last step's info."""
    env = DriveEnv(track=spec, off_track="continue")
    env.reset(seed=0)
    expert = Expert()
    done = False
    while not done:
        _, _, term, trunc, info = env.step(expert.act(env))
        done = term or trunc
    return info


@pytest.mark.parametrize("spec", ["procedural:0", "procedural:5", "challenge:1"])
def test_expert_drives_a_clean_lap(spec):
    info = expert_lap(spec)
    assert info["lap"] == 1 and info["off_track_count"] == 0


def test_expert_clean_on_suzuka_through_the_crossing():
    info = expert_lap("real:Suzuka")
    assert info["lap"] == 1 and info["off_track_count"] == 0


def test_sim_does_not_import_torch_or_pygame():
    import subprocess
    import sys
    code = ("import sys, sim, sim.env, sim.render, sim.track, sim.expert; "
            "print('torch' in sys.modules, 'pygame' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_registered():
    assert "E2EDrive-v0" in gym.registry and sim.DriveEnv is DriveEnv
