"""The fast reset path draws exactly what the full-map renderer drew, and stays small.

`tests/data/reference_frames.npz` holds frames rendered by the renderer before lazy tiles (commit
f9e19c3: whole map drawn at once, coloured, then warped); `reference_tracks.npz` holds tracks generated
before the generator was sped up (every 10th point).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim import Camera, camera_from_name, load_track
from sim.render import TILE_PX, CameraConfig, default_palette, random_palette
from sim.track import generate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

# Grass shade comes from a noise grid upsampled bilinearly; OpenCV did it in float32 over the whole
# map, the tiles do it in float64, so a pixel sitting on the shade threshold may flip (measured: 1-3
# map pixels in 20 million per track). A frame may differ in that many grass pixels, nothing else.
MAX_GRASS_PIXELS_CHANGED = 3


def _poses(track):
    out = []
    for s, off, dyaw in ((0.0, 0.0, 0.0), (0.37 * track.length, 2.5, 0.3), (0.81 * track.length, -5.0, -0.6)):
        p, h = track.point_at(s), track.heading_at(s)
        q = p + off * np.array([-math.sin(h), math.cos(h)])
        out.append((float(q[0]), float(q[1]), h + dyaw))
    return out


def _frames():
    """The frames of the reference file, rendered now in the same order and the same way."""
    frames = {}
    for tname in ("procedural:0", "procedural:5", "challenge:3"):
        t = load_track(tname)
        for cname in ("birdseye", "dashcam", "pilotnet", "birdseye-66x200"):
            cam = Camera(t, camera_from_name(cname))
            for i, (x, y, yaw) in enumerate(_poses(t)):
                pal = random_palette(np.random.default_rng(len(frames))) if i == 1 else default_palette()
                cam.set_palette(pal)
                frames[f"{tname}|{cname}|{i}"] = cam.render(x, y, yaw)
        lo, hi = t.bounds
        for cname in ("birdseye", "dashcam"):  # beyond the map's margin: the border is grass
            cam = Camera(t, camera_from_name(cname))
            frames[f"{tname}|{cname}|border"] = cam.render(float(lo[0]) - 45.0, float(hi[1]) + 10.0, 0.7)
    t = load_track("procedural:5")
    big = Camera(t, CameraConfig(width=480, height=480, view_width_m=90.0, car_row=0.68))
    frames["procedural:5|world480|1"] = big.render(*_poses(t)[1])
    return frames


def test_frames_are_the_full_map_renderers_frames():
    ref = np.load(DATA / "reference_frames.npz")
    now = _frames()
    assert sorted(now) == sorted(ref.files)
    grass = {tuple(default_palette()[k]) for k in (0, 1)}
    for key in ref.files:
        a, b = ref[key], now[key]
        assert a.shape == b.shape, key
        changed = np.any(a != b, axis=-1)
        assert changed.sum() <= MAX_GRASS_PIXELS_CHANGED, f"{key}: {changed.sum()} pixels differ"
        if changed.any() and key.endswith(("|0", "|2", "border")):  # default palette: only grass shades swap
            assert {tuple(c) for c in a[changed]} | {tuple(c) for c in b[changed]} <= grass, key


def test_generated_tracks_are_unchanged():
    ref = np.load(DATA / "reference_tracks.npz")
    for key in ref.files:
        spec, what = key.split("|")
        head, seed = spec.split(":")
        t = generate(int(seed), head)
        if what == "xy":
            np.testing.assert_allclose(t.xy[::10], ref[key], rtol=0, atol=1e-9, err_msg=spec)
        elif what == "widths":
            np.testing.assert_allclose(np.stack([t.width_right, t.width_left], 1)[::10], ref[key], atol=1e-9)
        else:
            assert t.length == pytest.approx(ref[key][0], abs=1e-9) and len(t) == ref[key][1]


def test_generated_tracks_are_remembered_on_disk(tmp_path, monkeypatch):
    from sim import track as trackmod

    monkeypatch.setenv("E2E_DRIVE_CACHE", str(tmp_path))
    fresh = trackmod.generate_cached(11)
    files = list((tmp_path / "tracks").glob("procedural-11-*.npy"))
    assert len(files) == 1
    again = trackmod.generate_cached(11)  # from the file
    assert again is not fresh and again.name == fresh.name == "procedural:11"
    assert np.array_equal(again.xy, fresh.xy) and again.length == fresh.length
    assert np.array_equal(again.width_left, fresh.width_left)
    files[0].write_bytes(files[0].read_bytes()[:300])  # a damaged entry is generated again and replaced
    assert np.array_equal(trackmod.generate_cached(11).xy, fresh.xy)
    assert np.array_equal(np.load(files[0])[:, :2], fresh.xy)
    monkeypatch.setenv("E2E_DRIVE_CACHE", "off")
    assert np.array_equal(trackmod.generate_cached(11).xy, fresh.xy)


def test_memory_stays_bounded_over_20_tracks_with_random_palettes():
    """The issue's memory figure, small: 20 tracks, a new palette each episode, in a fresh process.
    The full-map renderer peaked above 1 GB here (a coloured copy of each map per palette)."""
    code = "import json, agent.bench as b; print(json.dumps(b.memory_cycle(passes=1, steps=60)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["episodes"] == 20
    assert res["peak_rss_mb"] < 600


def test_peak_rss_is_the_measured_process_own_not_its_parents():
    """The memory figure comes from a process this one starts: a big parent must not count in it."""
    ballast = np.ones(700 * 2**20 // 8)  # 700 MB resident here, in the parent
    r = subprocess.run([sys.executable, "-c", "import agent.bench as b; print(b.peak_rss_mb())"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert 10 < float(r.stdout) < 400 and ballast.sum() > 0  # importing numpy and the bench: ~100 MB


def test_a_map_draws_only_the_tiles_cameras_look_at():
    t = generate(5)  # a track object of its own: a map of its own, nothing drawn yet
    cam = Camera(t)
    tiles = cam.map._drawn
    p, h = t.point_at(0.0), t.heading_at(0.0)
    first = cam.render(p[0], p[1], h)
    drawn = int(tiles.sum())
    assert 0 < drawn <= 16 < tiles.size  # a 40 m view reads at most 4 x 4 tiles of 25.6 m
    assert np.array_equal(cam.render(p[0], p[1], h), first) and tiles.sum() == drawn  # nothing new
    assert cam.map.resident_bytes <= drawn * TILE_PX * 2 * 4096


def test_async_vector_env_shares_frames_through_shared_memory():
    """`gym.make_vec(..., vectorization_mode="async")` runs the default env in worker processes; the
    frames come back through shared memory and are the frames a plain env renders, episode ends too."""
    import gymnasium as gym

    import sim  # noqa: F401  (registers E2EDrive-v0)

    vec = gym.make_vec("E2EDrive-v0", num_envs=2, vectorization_mode="async")
    plain = [gym.make("E2EDrive-v0") for _ in range(2)]
    try:
        assert vec.unwrapped.shared_memory
        obs, _ = vec.reset(seed=[3, 4])
        want = [env.reset(seed=s)[0] for env, s in zip(plain, (3, 4))]
        assert np.array_equal(obs, np.stack(want))
        act = np.array([[0.3], [-0.2]], np.float32)
        ends, reset_next = 0, [False, False]
        for _ in range(60):  # both leave the road and start again (next-step autoreset)
            obs, _, term, trunc, _ = vec.step(act)
            for i, env in enumerate(plain):
                want[i] = env.reset()[0] if reset_next[i] else env.step(act[i])[0]
            assert np.array_equal(obs, np.stack(want))
            ends += int((term | trunc).sum())
            reset_next = list(term | trunc)
        assert ends >= 2
    finally:
        vec.close()
