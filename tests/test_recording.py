"""The drive format: what a real env drive writes comes back exactly, and damaged files never pass as data."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.recording import FORMAT_VERSION, DriveWriter, chunk_paths, find_drives, read_drive
from sim.env import DriveEnv
from sim.errors import UserError
from sim.expert import Expert

STEPS, CHUNK = 230, 64  # three full chunks and a partial one


def drive_env(folder, steps=STEPS, chunk=CHUNK, throttle=False, close=True):
    """The expert drives a real env with a little steering noise; returns what was handed to the writer."""
    env = DriveEnv(track="procedural:3", off_track="recover", throttle=throttle)
    obs, info = env.reset(seed=1)
    expert, rng = Expert(), np.random.default_rng(0)
    sent = {"frames": [], "steering": [], "executed": [], "infos": [], "correction": [], "throttle": []}
    w = DriveWriter(folder, {"source": "autopilot", "track": "procedural:3", "env": env.cfg.to_dict()},
                    chunk_steps=chunk)
    for i in range(steps):
        label = expert.steering(env)
        executed = float(np.clip(label + rng.normal(0, 0.2), -1, 1))
        thr = 0.25 if throttle else None
        w.add(obs, label, info, throttle=thr, executed_steering=executed, correction=i % 7 == 0)
        for k, v in (("frames", obs), ("steering", label), ("executed", executed), ("infos", info),
                     ("correction", i % 7 == 0), ("throttle", thr)):
            sent[k].append(v)
        action = [executed, 0.25] if throttle else [executed]
        obs, _r, _term, _trunc, info = env.step(action)
    if close:
        w.close()
    return sent


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drives") / "drive"
    return folder, drive_env(folder)


def test_round_trip_is_exact(recorded):
    folder, sent = recorded
    d = read_drive(folder)
    assert len(d) == STEPS and d.warnings == [] and d.finished
    assert np.array_equal(d.frames, np.stack(sent["frames"]))
    assert d.frames.dtype == np.uint8
    assert np.array_equal(d.steering, np.asarray(sent["steering"], np.float32))
    assert np.array_equal(d.executed_steering, np.asarray(sent["executed"], np.float32))
    assert not np.array_equal(d.executed_steering, d.steering)
    assert np.array_equal(d.correction, np.asarray(sent["correction"]))
    assert d.throttle is None
    for key in ("x", "y", "yaw", "speed", "steer_angle", "s", "cte", "heading_error", "time", "lap"):
        assert np.array_equal(d.state[key], np.asarray([i[key] for i in sent["infos"]])), key
    assert np.array_equal(d.off_track, [i["off_track"] for i in sent["infos"]])
    assert d.meta["format_version"] == FORMAT_VERSION and d.meta["source"] == "autopilot"
    assert d.meta["summary"]["frames"] == STEPS and d.meta["summary"]["chunks"] == 4
    assert d.duration_s == pytest.approx(STEPS * 0.05)
    assert [p.name for p in chunk_paths(folder)] == [f"chunk_{i:05d}.npz" for i in range(4)]
    frame, label = next(d.pairs())
    assert frame.shape == (96, 96, 3) and label == d.steering[0]


def test_readable_with_numpy_and_json_alone(recorded):
    folder, sent = recorded
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "chunk_00000.npz", allow_pickle=False) as z:
        assert z["frames"].shape == (CHUNK, 96, 96, 3)
        assert np.array_equal(z["frames"][5], sent["frames"][5])
    assert meta["env"]["camera"]["width"] == 96


def test_throttle_and_summary_without_frames(tmp_path):
    sent = drive_env(tmp_path / "d", steps=40, chunk=16, throttle=True)
    d = read_drive(tmp_path / "d", frames=False)
    assert d.frames.size == 0 and len(d) == 40
    assert np.array_equal(d.throttle, np.asarray(sent["throttle"], np.float32))


def test_unclosed_writer_keeps_finished_chunks_only(tmp_path):
    drive_env(tmp_path / "d", steps=150, chunk=64, close=False)  # like a killed process
    d = read_drive(tmp_path / "d")
    assert len(d) == 128 and not d.finished and d.warnings == []


def test_interrupted_writer_flushes_but_is_marked_unfinished(tmp_path):
    env = DriveEnv(track="procedural:3")
    obs, info = env.reset(seed=0)
    meta = {"source": "keyboard", "env": env.cfg.to_dict()}
    with pytest.raises(KeyboardInterrupt), DriveWriter(tmp_path / "d", meta, chunk_steps=50) as w:
        for _ in range(70):
            w.add(obs, 0.0, info)
        raise KeyboardInterrupt
    d = read_drive(tmp_path / "d")
    assert len(d) == 70 and not d.finished


def test_corrupt_chunk_is_skipped_with_a_warning_naming_it(recorded, tmp_path):
    folder, sent = recorded
    copy = tmp_path / "drive"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "chunk_00001.npz").write_bytes(b"\x00garbage" * 100)
    d = read_drive(copy)
    assert len(d) == STEPS - CHUNK
    assert len(d.warnings) == 1 and "chunk_00001.npz" in d.warnings[0] and "\n" not in d.warnings[0]
    # the rest is the right data, in order
    kept = np.r_[0:CHUNK, 2 * CHUNK:STEPS]
    assert np.array_equal(d.frames, np.stack(sent["frames"])[kept])
    assert np.array_equal(d.steering, np.asarray(sent["steering"], np.float32)[kept])


def test_chunk_with_wrong_arrays_is_skipped(recorded, tmp_path):
    folder, _ = recorded
    copy = tmp_path / "drive"
    copy.mkdir()
    (copy / "meta.json").write_bytes((folder / "meta.json").read_bytes())
    (copy / "chunk_00000.npz").write_bytes((folder / "chunk_00000.npz").read_bytes())
    np.savez(copy / "chunk_00001.npz", steering=np.zeros(3, np.float32))  # missing arrays
    with np.load(folder / "chunk_00002.npz") as z:  # frames of another size
        arrays = {k: z[k] for k in z.files}
    arrays["frames"] = arrays["frames"][:, :48]
    np.savez(copy / "chunk_00002.npz", **arrays)
    (copy / ".chunk_00003.npz.x1.tmp").write_bytes(b"half written")  # a temp file is never data
    d = read_drive(copy)
    assert len(d) == CHUNK
    assert len(d.warnings) == 2 and "chunk_00001.npz" in d.warnings[0] and "chunk_00002.npz" in d.warnings[1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999))
def test_truncated_chunk_is_never_read_as_data(recorded, tmp_path_factory, cut):
    folder, sent = recorded
    copy = tmp_path_factory.mktemp("trunc")
    (copy / "meta.json").write_bytes((folder / "meta.json").read_bytes())
    for p in chunk_paths(folder):
        data = p.read_bytes()
        if p.name == "chunk_00003.npz":
            data = data[: int(len(data) * cut)]
        (copy / p.name).write_bytes(data)
    d = read_drive(copy)
    assert len(d) == 3 * CHUNK and len(d.warnings) == 1 and "chunk_00003.npz" in d.warnings[0]
    assert np.array_equal(d.frames, np.stack(sent["frames"][: 3 * CHUNK]))


def test_other_format_version_and_bad_meta_are_user_errors(recorded, tmp_path):
    folder, _ = recorded
    meta = json.loads((folder / "meta.json").read_text())
    (tmp_path / "v9").mkdir()
    (tmp_path / "v9" / "meta.json").write_text(json.dumps(dict(meta, format_version=9)))
    with pytest.raises(UserError, match=r"v9/meta.json: drive format_version 9"):
        read_drive(tmp_path / "v9")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_bytes(b"\xff{not json")
    with pytest.raises(UserError, match=r"bad/meta.json: unreadable"):
        read_drive(tmp_path / "bad")
    with pytest.raises(UserError, match="not a recorded drive"):
        read_drive(tmp_path)


def test_find_drives(recorded, tmp_path):
    folder, _ = recorded
    assert find_drives(folder) == [folder]
    for name in ("b", "a/deep"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "meta.json").write_text("{}")
    assert find_drives(tmp_path) == [tmp_path / "a" / "deep", tmp_path / "b"]
    (tmp_path / "empty").mkdir()
    assert find_drives(tmp_path / "empty") == []
    with pytest.raises(UserError, match="not found"):
        find_drives(tmp_path / "missing")


def test_writer_never_overwrites_a_drive(recorded):
    folder, _ = recorded
    with pytest.raises(UserError, match="already holds a recorded drive"):
        DriveWriter(folder, {"source": "autopilot"})


def test_chunks_are_valid_zip_files_written_whole(recorded):
    folder, _ = recorded
    for p in chunk_paths(folder):
        with zipfile.ZipFile(p) as z:
            assert z.testzip() is None
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
