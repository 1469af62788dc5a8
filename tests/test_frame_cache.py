"""The on-disk frame cache: exactly the frames `read_drive` gives, rebuilt when a drive changes or the
cache is damaged, labels matching frames, and a reader touching only the frames it samples."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.dataset import NO_AUGMENT, AugmentConfig, BalancedSampler, FrameDataset, load_drives
from data.frame_cache import FrameStore, cache_root, cached_drive, drive_key
from data.recording import LABEL_KEYS, DriveWriter, chunk_paths, read_drive
from sim import DriveEnv, EnvConfig, Expert, UserError

ROOT = Path(__file__).resolve().parents[1]


def record(folder: Path, spec: str = "procedural:0", steps: int = 120, bias: float = 0.0) -> Path:
    """A real drive of the expert (plus a steering bias that can push it off the road), 3 chunks or more."""
    cfg = EnvConfig(track=spec, off_track="recover")
    env = DriveEnv(config=cfg)
    expert = Expert()
    obs, info = env.reset(seed=0, options={"track": spec})
    with DriveWriter(folder, {"source": "autopilot", "track": spec, "env": cfg.to_dict()}, chunk_steps=50) as w:
        for _ in range(steps):
            label = expert.steering(env)
            w.add(obs, label, info)
            obs, _r, _t, _tr, info = env.step(np.array([np.clip(label + bias, -1, 1)], np.float32))
    return folder


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("drives") / "d0")


def same_drive(cached, raw) -> None:
    assert isinstance(cached.frames, FrameStore) and cached.frames.shape == raw.frames.shape
    assert np.array_equal(np.asarray(cached.frames), raw.frames)
    for i in (0, len(raw) // 2, len(raw) - 1):
        assert np.array_equal(cached.frames[i], raw.frames[i])
    for k in LABEL_KEYS[:1] + ("correction", "off_track", "intervention"):
        assert np.array_equal(getattr(cached, k), getattr(raw, k))
    for k, v in raw.state.items():
        assert np.array_equal(cached.state[k], v, equal_nan=True)
    assert cached.warnings == raw.warnings


def test_a_drive_of_one_chunk_is_cached_with_its_frames_whole(tmp_path):
    drive = record(tmp_path / "short", steps=30)  # under 5 s of driving: a single chunk
    assert len(chunk_paths(drive)) == 1
    raw = read_drive(drive)
    cached, built = cached_drive(drive, tmp_path / "cache")
    assert built
    same_drive(cached, raw)


def test_the_cache_gives_exactly_the_frames_and_labels_read_drive_gives(drive, tmp_path):
    raw = read_drive(drive)
    cached, built = cached_drive(drive, tmp_path)
    assert built and len(raw) == 120
    same_drive(cached, raw)
    again, built = cached_drive(drive, tmp_path)
    assert not built
    same_drive(again, raw)
    assert np.array_equal(again.frames[[5, 6, 7, 90, 3]], raw.frames[[5, 6, 7, 90, 3]])
    assert np.array_equal(again.frames[10:20], raw.frames[10:20])
    # the file is a plain uint8 array any tool can map
    shape = again.frames.shape
    mapped = np.memmap(again.frames.path, np.uint8, "r", shape=shape)
    assert np.array_equal(mapped, raw.frames)


def test_a_changed_drive_is_cached_anew(drive, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for p in drive.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    key = drive_key(folder)
    assert key == drive_key(drive)  # keyed by content, not by path
    _, built = cached_drive(folder, tmp_path / "cache")
    assert built
    chunks = chunk_paths(folder)
    chunks[1].write_bytes(chunks[0].read_bytes())  # a chunk replaced: same size, other frames
    assert drive_key(folder) != key
    cached, built = cached_drive(folder, tmp_path / "cache")
    assert built
    same_drive(cached, read_drive(folder))
    chunks[2].unlink()  # a chunk removed
    cached, built = cached_drive(folder, tmp_path / "cache")
    assert built and len(cached) == 100
    same_drive(cached, read_drive(folder))


@pytest.mark.parametrize("damage", ["truncate frames", "overwrite a frame", "garbage sidecar", "sidecar missing"])
def test_a_damaged_cache_is_rebuilt_not_trusted(drive, tmp_path, damage):
    raw = read_drive(drive)
    cached, _ = cached_drive(drive, tmp_path)
    u8, npz = Path(cached.frames.path), Path(cached.frames.path).with_suffix(".npz")
    if damage == "truncate frames":
        os.truncate(u8, u8.stat().st_size - 1000)
    elif damage == "overwrite a frame":
        with open(u8, "r+b") as f:
            f.write(bytes(27648))  # frame 0 blacked out
    elif damage == "garbage sidecar":
        npz.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        npz.unlink()
    again, built = cached_drive(drive, tmp_path)
    assert built
    same_drive(again, raw)


def test_a_build_killed_at_any_moment_leaves_no_entry_that_is_trusted(tmp_path):
    drive = record(tmp_path / "long", steps=600)
    cache = tmp_path / "cache"
    cache.mkdir()
    code = "import sys; from data.frame_cache import cached_drive; cached_drive(sys.argv[1], sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(drive), str(cache)], cwd=ROOT)
    t0 = time.monotonic()
    while proc.poll() is None and not list(cache.glob(".*.tmp")) and time.monotonic() - t0 < 30:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)  # mid-write when the temp file showed up in time
    proc.wait()
    killed_mid_write = bool(list(cache.glob(".*.tmp")))
    assert not list(cache.glob("*.npz")) or not killed_mid_write
    cached, built = cached_drive(drive, cache)
    if killed_mid_write:
        assert built
    same_drive(cached, read_drive(drive))
    assert not list(cache.glob(".*.tmp"))  # the killed build's leftovers are cleared


def test_load_drives_with_the_cache_matches_load_drives_in_memory(tmp_path):
    record(tmp_path / "data" / "clean", "procedural:1", steps=60)
    record(tmp_path / "data" / "offroad", "procedural:2", steps=150, bias=0.9)  # frames dropped
    mem = load_drives(tmp_path / "data", cache=False)
    disk = load_drives(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert [d.name for d in disk.drives] == [d.name for d in mem.drives]
    assert disk.drives[1].dropped > 20
    for a, b in zip(disk.drives, mem.drives):
        assert isinstance(a.frames, FrameStore) and isinstance(b.frames, np.ndarray)
        assert np.array_equal(np.asarray(a.frames), b.frames)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.pose, b.pose)
    fa, fb = FrameDataset(disk.drives, disk.env, NO_AUGMENT), FrameDataset(mem.drives, mem.env, NO_AUGMENT)
    assert np.array_equal(fa.labels, fb.labels)
    for i in range(0, len(fa), 7):
        (xa, ya), (xb, yb) = fa[i], fb[i]
        assert np.array_equal(xa, xb) and ya == yb


def test_a_rank_reads_only_the_frames_it_samples(drive, tmp_path):
    io_file = Path("/proc/self/io")
    if not io_file.exists():
        pytest.skip("needs /proc/self/io (Linux)")
    data = load_drives(drive, cache_dir=tmp_path)
    ds = FrameDataset(data.drives, data.env, NO_AUGMENT)
    share = list(BalancedSampler(np.ones(len(ds)), 40, seed=0, rank=1, world=4))

    def bytes_read() -> int:
        return int(dict(line.split(": ") for line in io_file.read_text().splitlines())["rchar"])

    before = bytes_read()
    for i in share:
        ds[i]
    read = bytes_read() - before
    assert len(share) == 10
    assert read <= len(share) * 96 * 96 * 3 + 4096  # its 10 frames, not the drive's 120


def test_an_unwritable_cache_folder_is_one_clear_error(drive, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"file/cache: cannot write the frame cache here.*E2E_DRIVE_CACHE"):
        load_drives(drive, cache_dir=blocker / "cache")


def test_the_cache_lives_where_the_environment_says(monkeypatch, tmp_path, drive):
    monkeypatch.setenv("E2E_DRIVE_CACHE", str(tmp_path / "here"))
    assert cache_root() == tmp_path / "here" / "frames"
    assert isinstance(load_drives(drive).drives[0].frames, FrameStore)
    assert len(list((tmp_path / "here" / "frames").glob("*.u8"))) == 1
    monkeypatch.delenv("E2E_DRIVE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "e2e-drive" / "frames"
    monkeypatch.setenv("E2E_DRIVE_CACHE", "off")  # frames decoded into memory, as before the cache
    assert cache_root() is None and isinstance(load_drives(drive).drives[0].frames, np.ndarray)


def test_viewpoint_shift_maps_stay_within_their_memory_budget(tmp_path):
    # many tracks, sampled at random: each map keeps the tiles its views drew, so the dataset drops
    # the least recently used maps past its budget, and the samples stay exactly the same
    for i in range(3):
        record(tmp_path / "data" / f"d{i}", f"procedural:{i}", steps=60)
    data = load_drives(tmp_path / "data")
    aug = AugmentConfig(shift_prob=1.0, mirror_prob=0.0, light_prob=0.0, shadow_prob=0.0, noise_std=0.0)
    free = FrameDataset(data.drives, data.env, aug)
    budget = 1 << 20
    tight = FrameDataset(data.drives, data.env, aug, map_bytes=budget)
    fewest = 3
    for i in np.random.default_rng(0).permutation(len(free))[:90]:
        assert np.array_equal(tight[int(i)][0], free[int(i)][0])
        *older, _newest = tight._cameras.values()
        assert sum(c.map.resident_bytes for c in older) <= budget
        fewest = min(fewest, len(tight._cameras))
    assert len(free._cameras) == 3 and sum(c.map.resident_bytes for c in free._cameras.values()) > 2 * budget
    assert fewest == 1


def test_bench_times_training_samples_from_ram_and_from_the_cache_on_the_same_samples(drive):
    from agent.bench import bench_data

    res = bench_data(str(drive), 128)  # raises when the two sides' samples differ
    assert res["frames"] == 120
    for name in ("augment", "no_augment"):
        assert res[f"{name}_ram_samples_per_s"] > 0 and res[f"{name}_cache_samples_per_s"] > 0
    assert 0 < res["train_cache_frames_per_s"] < res["augment_cache_samples_per_s"]


def test_a_drive_another_process_is_caching_is_waited_for_not_built_twice(drive, tmp_path):
    import fcntl
    import threading

    key = drive_key(drive)
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a DDP rank caching this drive right now would
        assert cached_drive(drive, tmp_path, wait=False) is None  # load_drives takes other drives first
        release = threading.Timer(0.5, fcntl.flock, [lock, fcntl.LOCK_UN])  # that rank finishes
        release.start()
        t0 = time.monotonic()
        _, built = cached_drive(drive, tmp_path)  # waits for it, then finds no entry and builds it
        release.join()
        assert built and time.monotonic() - t0 >= 0.4
    assert not cached_drive(drive, tmp_path, wait=False)[1]


def test_a_batch_read_gives_exactly_the_frames_asked_for_in_their_order(drive, tmp_path, monkeypatch):
    import data.frame_cache as fc

    raw = read_drive(drive).frames
    store = cached_drive(drive, tmp_path)[0].frames
    rows = np.random.default_rng(3).integers(0, len(raw), 300)  # repeats, runs and jumps, any order
    rows[:40] = np.arange(70, 30, -1)  # a run read backwards
    monkeypatch.setattr(fc, "_RUN_FRAMES", 7)  # long runs split over several reads
    assert np.array_equal(store[rows], raw[rows])
    assert np.array_equal(store.subset(rows)[np.arange(299, -1, -3)], raw[rows][::-3])
    assert np.array_equal(np.asarray(store), raw) and np.array_equal(store[17], raw[17])


def test_a_batch_of_samples_is_read_together_and_equals_the_samples_one_by_one(drive, tmp_path):
    io_file = Path("/proc/self/io")
    cached = load_drives(drive, cache_dir=tmp_path)
    mem = load_drives(drive, cache=False)
    batch = [int(i) for i in np.random.default_rng(5).permutation(len(mem.drives[0]))[:64]]
    for aug in (NO_AUGMENT, AugmentConfig()):
        fc, fm = FrameDataset(cached.drives, cached.env, aug, seed=2), FrameDataset(mem.drives, mem.env, aug, seed=2)
        together = fc.__getitems__(batch)
        for i, (frame, label) in zip(batch, together):
            for other in (fc[i], fm[i]):  # one sample at a time, from the cache and from RAM
                assert np.array_equal(frame, other[0]) and np.array_equal(label, other[1])
        if aug == NO_AUGMENT:
            assert all(np.array_equal(f, mem.drives[0].frames[i]) for i, (f, _) in zip(batch, together))
    if not io_file.exists():
        return

    def reads() -> int:
        return int(dict(line.split(": ") for line in io_file.read_text().splitlines())["syscr"])

    import torch

    from agent.dataset import collate

    ds = FrameDataset(cached.drives, cached.env, NO_AUGMENT)
    run = list(range(100, 36, -1))  # 64 neighbouring frames, asked in reverse: one read, not 64
    loader = torch.utils.data.DataLoader(ds, batch_size=64, sampler=run, collate_fn=collate)  # as train's
    list(loader)  # the first batch of a DataLoader also reads what it imports
    before = reads()
    (x, _), = list(loader)
    assert reads() - before <= 3  # one preadv (+ the /proc read itself)
    assert x.shape[0] == 64
