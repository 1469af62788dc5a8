"""Task `traffic`: other cars on the road, footprint collisions, determinism, and the expert's overtakes.
The real env, the real renderer, the real expert."""

import math

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401  (registers E2EDrive-v0)
from sim import DriveEnv, EnvConfig, Expert, UserError
from sim.render import N_TRAFFIC_COLOURS, TRAFFIC_BODY
from sim.traffic import CarBoxes, TrafficConfig, rectangle_corners, rectangles_overlap


# -- footprints -----------------------------------------------------------------------------------
@pytest.mark.parametrize("yaw", [0.0, 0.3, -1.2])
def test_footprints_collide_when_touching_and_not_with_a_gap(yaw):
    """Two 4.4 x 1.9 m cars side by side, turned together: 1 cm of overlap is a collision, 1 cm of
    gap is not; nose to tail the same."""
    side = np.array([-math.sin(yaw), math.cos(yaw)])
    ahead = np.array([math.cos(yaw), math.sin(yaw)])
    a = rectangle_corners((10.0, -3.0), yaw, 4.4, 1.9)
    for direction, size in ((side, 1.9), (ahead, 4.4)):
        touching = rectangle_corners(np.array([10.0, -3.0]) + direction * (size - 0.01), yaw, 4.4, 1.9)
        apart = rectangle_corners(np.array([10.0, -3.0]) + direction * (size + 0.01), yaw, 4.4, 1.9)
        assert rectangles_overlap(a, touching) and rectangles_overlap(touching, a)
        assert not rectangles_overlap(a, apart) and not rectangles_overlap(apart, a)


def test_footprints_turned_against_each_other():
    """A car turned 90 degrees in front of another: its corner region decides, not the bounding circles."""
    a = rectangle_corners((0.0, 0.0), 0.0, 4.4, 1.9)
    across = rectangle_corners((2.2 + 0.95 - 0.01, 0.0), math.pi / 2, 4.4, 1.9)  # its side touches our nose
    clear = rectangle_corners((2.2 + 0.95 + 0.01, 0.0), math.pi / 2, 4.4, 1.9)
    assert rectangles_overlap(a, across)
    assert not rectangles_overlap(a, clear)
    # turned 45 degrees off our front-left corner: the bounding boxes overlap either way, the
    # rectangles only when its side reaches past our corner
    out = np.array([1.0, 1.0]) / math.sqrt(2)
    near = rectangle_corners(np.array([2.2, 0.95]) + out * (0.95 - 0.02), -math.pi / 4, 4.4, 1.9)
    far = rectangle_corners(np.array([2.2, 0.95]) + out * (0.95 + 0.02), -math.pi / 4, 4.4, 1.9)
    assert rectangles_overlap(a, near)
    assert not rectangles_overlap(a, far)


def _car_on_our_nose(env: DriveEnv) -> None:
    """Put the first other car where our car is (a collision on the next step)."""
    env.traffic.s[0] = env.proj.s + env.cfg.car.wheelbase_m / 2 + 0.5
    env.traffic.motion[0] = (0.0, 0.0, 0.0, 0.0)
    env.traffic.old_motion[0] = (0.0, 0.0, 0.0, 0.0)
    env.traffic._version += 1
    env._traffic_quiet_until = 0


def test_a_collision_costs_reward_and_terminates():
    env = DriveEnv(track="procedural:0", task="traffic", off_track="terminate")
    env.reset(seed=0)
    _car_on_our_nose(env)
    _, reward, terminated, _, info = env.step([0.0])
    assert terminated and info["collision"] == 1 and info["collisions"] == 1
    assert reward < -9.0  # the penalty, against ~0.07 of progress
    assert not info["lap_clean"]


def test_recover_mode_moves_the_other_car_clear_and_drives_on():
    env = DriveEnv(track="procedural:0", task="traffic", off_track="recover")
    env.reset(seed=0)
    _car_on_our_nose(env)
    _, _, terminated, _, info = env.step([0.0])
    assert not terminated and info["collision"] == 1 and info["intervention"]
    assert env.traffic.relative_s(env.proj.s)[0] < -20  # moved behind us
    expert = Expert()
    for _ in range(40):  # the drive goes on, with no second collision with that car
        _, _, terminated, _, info = env.step([expert.steering(env)])
        assert not terminated
    assert info["collisions"] == 1


# -- the world ------------------------------------------------------------------------------------
def _drive(env, steps: int, seed: int):
    obs, _ = env.reset(seed=seed)
    frames, infos = [obs], []
    expert = Expert()
    for _ in range(steps):
        obs, _, _, _, info = env.step([expert.steering(env)])
        frames.append(obs)
        infos.append(info)
    return np.stack(frames), infos


def test_traffic_is_deterministic_under_a_seed():
    make = lambda: DriveEnv(track="procedural:1", task="traffic", randomise_palette=True)  # noqa: E731
    a, b, c = make(), make(), make()
    fa, _ = _drive(a, 150, seed=3)
    sa = a.traffic.s.copy()
    fb, _ = _drive(b, 150, seed=3)
    assert np.array_equal(fa, fb) and np.array_equal(sa, b.traffic.s)
    _drive(c, 150, seed=4)
    assert c.traffic.n != a.traffic.n or not np.allclose(c.traffic.s, sa)


def test_cars_are_slower_at_varied_speeds_and_places_some_weaving():
    env = DriveEnv(track="procedural:1", task="traffic")
    env.reset(seed=0)
    tr = env.traffic
    assert tr.n == max(2, round(4.0 * env.track.length / 1000))
    cruise = env.cfg.car.cruise_speed_mps
    assert np.all(tr.base_speed < cruise) and np.ptp(tr.base_speed) > 1.0
    q0 = tr.q_at(0.0)
    assert np.ptp(q0) > 0.3
    weaving = tr.motion[:, 1] > 0
    assert 0 < weaving.sum() < tr.n
    # a weaving car moves smoothly: over 10 s its lateral position changes, never by more than
    # a few centimetres per step
    qs = np.array([tr.q_at(t) for t in np.arange(0, 10, 0.05)])
    assert np.all(np.ptp(qs[:, weaving], axis=0) > 0.1)
    assert np.abs(np.diff(qs, axis=0)).max() < 0.03
    assert np.all(np.ptp(qs[:, ~weaving], axis=0) == 0)


def test_density_is_a_setting_saved_with_the_env():
    cfg = EnvConfig(task="traffic", traffic=TrafficConfig(density_per_km=8.0))
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg
    env = DriveEnv(config=cfg, track="procedural:1")
    env.reset(seed=0)
    assert env.traffic.n == round(8.0 * env.track.length / 1000)
    with pytest.raises(ValueError, match="task"):
        EnvConfig(task="trafic")


def _traffic_pixels(frame: np.ndarray, palette: np.ndarray) -> int:
    colours = palette[TRAFFIC_BODY:TRAFFIC_BODY + N_TRAFFIC_COLOURS]
    return int(sum(np.all(frame == c, axis=-1).sum() for c in colours))


@pytest.mark.parametrize("camera", ["birdseye", "dashcam", "pilotnet"])
def test_other_cars_are_drawn_in_every_camera_and_the_world_view(camera):
    """A car ahead shows in the camera frame in its own colour; with no cars the frame is the lane
    task's frame exactly."""
    lane = DriveEnv(track="procedural:1", camera=camera, render_mode="rgb_array")
    traffic = DriveEnv(track="procedural:1", camera=camera, task="traffic", render_mode="rgb_array")
    empty = DriveEnv(track="procedural:1", camera=camera, task="traffic", render_mode="rgb_array",
                     traffic=TrafficConfig(density_per_km=0.0))
    lane_obs, _ = lane.reset(seed=0)
    obs, _ = traffic.reset(seed=0)
    assert np.array_equal(empty.reset(seed=0)[0], lane_obs)
    traffic.traffic.s[0] = traffic.proj.s + 18.0  # a car 18 m ahead
    traffic.traffic.motion[0] = (0.0, 0.0, 0.0, 0.0)
    traffic.traffic._version += 1
    traffic.traffic._view.clear()
    obs = traffic._observe()
    pal = traffic.palette
    if camera == "birdseye":  # supersampled cameras blend the edges; birdseye keeps exact colours
        assert _traffic_pixels(obs, pal) > 20
    changed = np.any(obs != lane_obs, axis=-1)
    assert changed.sum() > 10
    rows, cols = np.nonzero(changed)
    assert rows.max() < obs.shape[0] * 0.8  # ahead of us, above our car in the frame
    assert _traffic_pixels(traffic.render(), pal) > 100  # the world view


def test_traffic_colours_are_randomised_with_the_palette_and_never_our_red():
    env = DriveEnv(track="procedural:1", task="traffic", randomise_palette=True)
    palettes = [env.reset(seed=s)[1] and env.palette.copy() for s in range(4)]
    bodies = np.array([p[TRAFFIC_BODY:TRAFFIC_BODY + N_TRAFFIC_COLOURS] for p in palettes], float)
    assert np.ptp(bodies, axis=0).max() > 20
    from sim.render import CAR_BODY
    for p in palettes:
        ours = p[CAR_BODY].astype(float)
        assert np.abs(p[TRAFFIC_BODY:TRAFFIC_BODY + N_TRAFFIC_COLOURS] - ours).sum(1).min() > 80


def test_gym_make_with_task():
    env = gym.make("E2EDrive-v0", task="traffic", track="procedural:2")
    obs, info = env.reset(seed=1)
    obs, reward, term, trunc, info = env.step(np.zeros(1, np.float32))
    assert {"collision", "collisions", "overtake", "overtakes"} <= set(info)
    env.close()


# -- the expert -----------------------------------------------------------------------------------
def _expert_lap(spec: str, planner: bool = True, seed: int = 0) -> dict:
    env = DriveEnv(track=spec, task="traffic", off_track="recover")
    env.reset(seed=seed)
    expert = Expert()
    done = False
    while not done:
        if planner:
            steer = expert.steering(env)
        else:  # the lane expert: the centerline, blind to the other cars
            steer = sim.expert_steering(env.track, env.car, env.proj.s, env.cfg.car)
        _, _, term, trunc, info = env.step([steer])
        done = term or trunc
    return info


# challenge:3 with seed 23: a weaving car closes our side while we are beside it (the expert once
# crossed its path to the free side and hit it)
@pytest.mark.parametrize("spec,seed", [("procedural:0", 0), ("challenge:2", 0), ("challenge:3", 23)])
def test_expert_overtakes_without_a_collision(spec, seed):
    info = _expert_lap(spec, seed=seed)
    assert info["lap"] == 1 and info["lap_clean"] is not None
    assert info["collisions"] == 0 and info["off_track_count"] == 0
    assert info["overtakes"] >= 2


def test_without_its_planner_the_expert_hits_the_cars():
    """The same laps on the centerline alone: the cars are in the way (so the test above guards
    the planner, not luck)."""
    assert _expert_lap("procedural:0", planner=False)["collisions"] >= 1


def test_traffic_has_its_own_camera_reaching_further_and_the_lane_camera_is_unchanged():
    """The traffic task's view reaches 42 m ahead (a slow car comes into view early enough to pass
    it); the lane task keeps its 32 m view, and `--camera` still picks any view."""
    from sim.env import default_camera_name
    from sim.render import CAMERA_PRESETS, CameraConfig
    traffic, lane = DriveEnv(task="traffic"), DriveEnv()
    assert lane.cfg.camera == CameraConfig() and default_camera_name("lane") == "birdseye"
    assert traffic.cfg.camera == CAMERA_PRESETS["traffic"] and default_camera_name("traffic") == "traffic"
    assert lane.cfg.camera.view_ahead_m == pytest.approx(32.0)
    assert traffic.cfg.camera.view_ahead_m > 40.0
    assert DriveEnv(task="traffic", camera="birdseye").cfg.camera == CameraConfig()
    # a car 38 m ahead: in the traffic frame, not in the lane view
    seen = {}
    for name in ("traffic", "birdseye"):
        env = DriveEnv(track="procedural:1", task="traffic", camera=name)
        env.reset(seed=0)
        tr = env.traffic
        tr.s[:] = env.proj.s + 38.0 + 12.0 * np.arange(tr.n)  # the others further on
        tr.motion[:] = 0.0
        tr._version += 1
        tr._view.clear()
        seen[name] = _traffic_pixels(env._observe(), env.palette)
    assert seen["traffic"] > 10 and seen["birdseye"] == 0


@pytest.mark.parametrize("camera", ["traffic", "birdseye"])
def test_the_expert_moves_aside_only_for_cars_its_frame_shows(camera):
    """Every move off the centerline has its cause in the camera frame: whenever the planner aims
    away from the centerline, another car is in the frame (or left it at the bottom within the last
    half second: the planner keeps a car just passed until we are clear of it). Planning around
    cars beyond the view, the expert used to start its moves before the clone could see why."""
    env = DriveEnv(track="procedural:0", task="traffic", camera=camera, off_track="recover")
    obs, _ = env.reset(seed=0)
    env.traffic.base_speed[:] = env.traffic.speed[:] = 5.0  # slow cars: the planner's horizon reaches far
    expert = Expert()
    moves = unexplained = 0
    last_seen = -100
    done = False
    while not done:
        if _traffic_pixels(obs, env.palette):
            last_seen = env.steps
        if abs(expert.target_offset(env)) > 0.2:  # (the planner picks offsets on a 0.1 m grid)
            moves += 1
            unexplained += env.steps - last_seen > 10
        obs, _, term, trunc, info = env.step([expert.steering(env)])
        done = term or trunc
    assert info["overtakes"] >= 2 and info["collisions"] == 0
    assert moves > 50 and unexplained == 0


@pytest.mark.parametrize("speed_share", [0.4, 0.7])
def test_a_car_coming_into_view_starts_the_move_whatever_its_speed(speed_share):
    """A frame shows where another car is, not how fast it goes: a car 40 m ahead in our path
    moves us aside at once, slow or fast (a 5 s horizon left the fast one for later)."""
    env = DriveEnv(track="procedural:1", task="traffic", off_track="recover")
    env.reset(seed=0)
    tr = env.traffic
    tr.s[:] = env.proj.s + 40.0 + 100.0 * np.arange(tr.n)  # the others far beyond the view
    tr.motion[:] = 0.0  # on the centre line, not weaving
    tr.base_speed[:] = tr.speed[:] = speed_share * env.cfg.car.cruise_speed_mps
    tr._version += 1
    expert = Expert()
    assert abs(expert.target_offset(env)) > 2.0
    tr.s[0] = env.proj.s + 50.0  # beyond the camera's reach: nothing to react to
    assert abs(expert.target_offset(env)) < 0.2


# -- measuring ------------------------------------------------------------------------------------
def test_a_collision_spoils_the_lap_and_counts_per_km():
    from agent.metrics import drive_metrics, summarise
    steps = 200  # 1 m per step on a 100 m track: two laps
    progress = np.arange(1, steps + 1, dtype=float)
    lap_after = np.floor(progress / 100.0).astype(int)
    drive = {"time": 0.1 * np.arange(1, steps + 1), "progress_m": progress, "lap": lap_after,
             "lap_completed": np.diff(lap_after, prepend=0) > 0, "off_track": np.zeros(steps, bool),
             "intervention": np.zeros(steps, bool), "cte": np.full(steps, 0.3), "speed": np.full(steps, 10.0),
             "collision": np.zeros(steps, int), "overtake": np.zeros(steps, int)}
    drive["collision"][150] = 1
    drive["intervention"][150] = True
    drive["overtake"][[20, 60, 130]] = 1
    m = drive_metrics(drive, 100.0, laps=2)
    assert m["laps_completed"] == 1 and m["off_track_events"] == 0  # the second lap had the collision
    assert m["collisions"] == 1 and m["collisions_per_km"] == pytest.approx(5.0)  # 1 in 0.2 km
    assert m["overtakes"] == 3 and m["overtakes_per_lap"] == [2, 1]
    s = summarise([m, m])
    assert s["collisions"] == 2 and s["collisions_per_km"] == pytest.approx(5.0) and s["overtakes"] == 6


def test_eval_of_the_expert_in_traffic_reports_collisions_and_overtakes(tmp_path):
    from agent.drive import ExpertDriver
    from agent.evaluate import evaluate, format_table
    report = evaluate(ExpertDriver(task="traffic"), "procedural:0", laps=1, plot_dir=tmp_path / "plots",
                      show_progress=False)
    s, row = report["summary"], report["tracks"][0]
    assert s["laps_completed"] == 1 and s["collisions"] == 0 and s["collisions_per_km"] == 0
    assert s["overtakes"] >= 2 and row["overtakes_per_lap"][0] >= 2
    assert "overtakes" in format_table(report)
    assert (tmp_path / "plots").is_dir() and any((tmp_path / "plots").iterdir())


def test_traffic_density_is_set_on_record_and_eval_and_eval_scores_at_its_own(tmp_path):
    """`record --traffic-density` drives a denser road and saves it with the drives; `eval` scores at
    its own density (the standard one unless asked), not at the one a policy's drives had."""
    from agent.drive import ExpertDriver
    from agent.evaluate import evaluate
    from data.record import record_autopilot
    from data.recording import read_meta
    from sim.env import with_traffic_density

    record_autopilot("procedural:1", 1, tmp_path / "dense", traffic_density=12.0, task="traffic", workers=1,
                     verbose=False, noise=0.0)
    env_cfg = EnvConfig.from_dict(read_meta(next((tmp_path / "dense").iterdir()))["env"])
    assert env_cfg.traffic.density_per_km == 12.0
    cars = {}
    for density in (None, 12.0, 0.0):
        env = DriveEnv(config=EnvConfig(track="procedural:1", task="traffic") if density is None
                       else with_traffic_density(env_cfg, density))
        env.reset(seed=0)
        cars[density] = env.traffic.n
    assert cars[12.0] >= 2 * cars[None] and cars[0.0] == 0

    class DenseExpert(ExpertDriver):  # an expert whose env says 12 cars per km, as a dense policy's card would
        def env_config(self):
            return env_cfg
    reports = {d: evaluate(DenseExpert(task="traffic"), "procedural:1", laps=1, show_progress=False,
                           traffic_density=d) for d in (None, 0.0)}
    assert reports[None]["settings"]["env"]["traffic"]["density_per_km"] == 4.0  # not the card's 12
    assert reports[0.0]["settings"]["env"]["traffic"]["density_per_km"] == 0.0
    assert reports[None]["summary"]["overtakes"] > 0 and reports[0.0]["summary"]["overtakes"] == 0
    with pytest.raises(UserError, match="--traffic-density nan"):
        evaluate(DenseExpert(task="traffic"), "procedural:1", traffic_density=float("nan"), show_progress=False)
    with pytest.raises(UserError, match="only for task traffic"):
        evaluate(ExpertDriver(task="lane"), "procedural:1", traffic_density=8.0, show_progress=False)


# -- the policy's steering head -------------------------------------------------------------------
def test_bins_head_keeps_one_of_two_answers_where_mse_averages_them():
    """The same frames labelled half 'pass left' (-0.6) and half 'pass right' (+0.6): the MSE
    network learns the average, straight into the car; the bins head learns both and drives one."""
    import torch

    from agent.model import build_model, steering_loss
    from sim.render import CameraConfig

    torch.manual_seed(0)
    cam = CameraConfig(width=64, height=64)
    x = torch.rand(1, 3, 64, 64).repeat(64, 1, 1, 1)
    y = torch.where(torch.arange(64)[:, None] % 2 == 0, -0.6, 0.6)
    answers = {}
    for arch in ("small", "small-bins"):
        net = build_model(arch, cam)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        net.train()
        for _ in range(150):
            opt.zero_grad()
            steering_loss(net(x), y).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            answers[arch] = float(net(x[:1])[0, 0])
    assert abs(answers["small"]) < 0.15
    assert abs(abs(answers["small-bins"]) - 0.6) < 0.1


# -- play and watch -------------------------------------------------------------------------------
def test_the_window_shows_the_other_cars():
    """The pygame viewer of `play` and `watch` (dummy video driver): a car 15 m ahead is on screen
    in its own colour, in the world view above our car."""
    from sim.viewer import DriveViewer, Hud

    env = DriveEnv(track="procedural:1", task="traffic", off_track="recover")
    obs, info = env.reset(seed=0)
    env.traffic.s[0] = env.proj.s + 15.0
    env.traffic.motion[0] = (0.0, 0.0, 0.0, 0.0)
    env.traffic._version += 1
    env.traffic._view.clear()
    obs = env._observe()
    viewer = DriveViewer()
    try:
        viewer.draw(env, info, obs, Hud(recording=True))
        world = viewer.screenshot()[:, :viewer.world_px]
    finally:
        viewer.close()
    colour = env.palette[TRAFFIC_BODY + int(env.traffic.colour[0])]
    rows = np.nonzero(np.all(world == colour, axis=-1))[0]
    assert rows.size > 50 and rows.mean() < 0.7 * viewer.world_px  # ahead: above our car (at 0.7)


def test_play_task_traffic_records_drives_of_that_task(tmp_path):
    import pygame

    from data.play import play
    from data.recording import read_drive

    ticks = []

    def person(obs, info):
        ticks.append(info["time"])
        if len(ticks) == 40:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE))

    cfg = EnvConfig(track="procedural:0", task="traffic", off_track="recover")
    result = play(cfg, tmp_path / "drives", input_name="keyboard", realtime=False, person=person)
    drive = read_drive(result.drives[0])
    assert EnvConfig.from_dict(drive.meta["env"]).task == "traffic"
    assert len(drive) == 39
    assert drive.cars is not None and drive.cars.shape == (39, 12, 4)  # a person's drive keeps them too


# -- training on traffic drives: viewpoint shifts draw the recorded cars ---------------------------
def test_traffic_drives_keep_the_cars_so_a_shifted_view_draws_them_again(tmp_path):
    """A traffic drive stores the other cars beside each frame: drawn again from the recorded pose
    with them, every frame is the recorded one exactly (cached or read from the chunks). The recorder
    also labels two shifted views of each frame with the expert's steering there (its plan needs the
    other cars' motion, known only while recording): training draws those views, cars included, with
    those labels. Drives without them (a person's) take the recorded label plus the lane expert's change."""
    from agent.dataset import AugmentConfig, FrameDataset, corrective_label, load_drives
    from data.record import record_autopilot
    from sim.car import shifted_pose
    from sim.render import Camera

    record_autopilot("procedural:1", 1, tmp_path / "drives", task="traffic", workers=1, verbose=False, noise=0.3)
    cached, plain = (load_drives(tmp_path / "drives", cache=c, stream=open(tmp_path / "log", "w")) for c in (True, False))
    d = cached.drives[0]
    assert d.track is not None and d.cars is not None and d.cars.shape == (len(d), 12, 4)
    np.testing.assert_array_equal(d.cars, plain.drives[0].cars)
    np.testing.assert_array_equal(d.shifted_labels, plain.drives[0].shifted_labels)
    with_cars = np.flatnonzero(np.isfinite(d.cars[:, 0, 0]))
    assert 0.1 * len(d) < len(with_cars) < len(d)  # cars come and go
    sample = np.arange(0, len(d), 10)
    shows = np.array([_traffic_pixels(f, d.palette) > 0 for f in d.frames[sample]])
    assert shows.sum() > 20 and np.isfinite(d.cars[sample[shows], 0, 0]).all()  # a car in the frame is stored

    plain_aug = dict(mirror_prob=0.0, light_prob=0.0, shadow_prob=0.0, noise_std=0.0)
    still = FrameDataset([d], cached.env, AugmentConfig(shift_prob=1.0, max_shift_m=0.0, max_rotate_deg=0.0,
                                                        correction="delta", **plain_aug))
    for i in [*with_cars[::40], *range(0, len(d), 400)]:
        frame, label = still[int(i)]
        np.testing.assert_array_equal(frame, np.asarray(d.frames[i]))
        assert label[0] == pytest.approx(d.labels[i], abs=1e-6)

    # the recorded shifted views: the expert's own labels, which steer back (a view shifted left
    # steers further right than the frame's label) and differ from the lane expert's change while passing
    rows = d.shifted_labels
    assert rows.shape == (len(d), 2, 3) and np.abs(rows[..., 0]).max() <= 1.5 and np.abs(rows[..., 1]).max() <= 0.14
    change = rows[..., 2] - d.labels[:, None]
    assert np.polyfit(rows[..., 0].ravel(), change.ravel(), 1)[0] > 0.05  # steering > 0 is right
    delta = np.array([[corrective_label(d.track, cached.env, d.pose[i], float(d.labels[i]), sh, rot, "delta")
                       for sh, rot, _ in rows[i]] for i in with_cars[::5]])
    assert (np.abs(delta - rows[with_cars[::5], :, 2]) > 0.1).mean() > 0.01

    cam = Camera(d.track, cached.env.camera, cached.env.car.length_m, cached.env.car.width_m,
                 cached.env.car.wheelbase_m)
    cam.set_palette(d.palette)
    drawn, showing = 0, sample[shows][::2].tolist()
    for name, ds in [("exact", FrameDataset([d], cached.env, AugmentConfig(shift_prob=1.0, **plain_aug), seed=3)),
                     ("delta", FrameDataset([d], cached.env, AugmentConfig(shift_prob=1.0, correction="delta",
                                                                            **plain_aug), seed=3))]:
        for i in showing:
            frame, label = ds[i]
            if name == "exact":
                j = int(np.argmin(np.abs(rows[i, :, 2] - label[0])))
                assert label[0] == pytest.approx(rows[i, j, 2], abs=1e-6)
                shift, rot = rows[i, j, :2]
            else:
                rng = np.random.default_rng([3, 0, i])
                rng.random()
                shift, rot = rng.uniform(-1.5, 1.5), math.radians(rng.uniform(-8.0, 8.0))
                assert label[0] == pytest.approx(corrective_label(d.track, cached.env, d.pose[i], float(d.labels[i]),
                                                                  shift, rot, "delta"), abs=1e-6)
            cars = CarBoxes.from_rows(d.cars[i], cached.env.traffic)
            np.testing.assert_array_equal(frame, cam.render(*shifted_pose(*d.pose[i, :3], shift, rot), cars))
            drawn += _traffic_pixels(frame, d.palette) > 0
    assert drawn >= 0.8 * 2 * len(showing)


@pytest.mark.parametrize("spec", ["procedural:1000", "procedural:1001"])
def test_a_clone_moving_aside_only_60_percent_as_far_still_clears_the_cars(spec):
    """Cloned policies move aside only ~60% as far as the expert (their traffic part of the steering
    has a slope of ~0.6 against its). The expert's side clearance leaves room for that: a driver that
    steers the lane expert's answer plus 60% of the traffic expert's difference to it drives the lap
    without a collision, and with the earlier 0.8 m clearance it hits a car."""
    from dataclasses import replace

    from sim.expert import ExpertConfig, expert_steering
    from sim.render import camera_from_name

    def collisions(cfg: ExpertConfig) -> int:
        env = DriveEnv(config=EnvConfig(track=spec, task="traffic", camera=camera_from_name("traffic"),
                                        off_track="recover"))
        env.reset(seed=0)
        expert, hits = Expert(cfg), 0
        while True:
            lane = expert_steering(env.track, env.car, env.proj.s, env.cfg.car, cfg)
            steer = lane + 0.6 * (expert.steering(env) - lane)
            _, _, term, trunc, info = env.step(np.array([steer], np.float32))
            hits += info["collision"]
            if term or trunc:
                return hits

    assert collisions(ExpertConfig()) == 0
    assert collisions(replace(ExpertConfig(), clearance_m=0.8)) > 0
