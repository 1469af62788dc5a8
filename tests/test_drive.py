"""The one lock-step driving loop (agent/drive.py) that eval, dagger and demo drive with."""

import numpy as np
import pytest

from agent.drive import DriveHooks, ExpertDriver, drive_jobs, safe_actions
from sim.env import EnvConfig

TRACK = "procedural:0"


class Log(DriveHooks):
    """Every call of the loop, in order, with what it saw."""

    def __init__(self):
        self.calls, self.records, self.actions = [], {}, {}

    def started(self, d):
        self.calls.append(("started", d.index))
        self.actions[d.index] = []

    def before_step(self, d, action):
        self.calls.append(("before", d.index))
        self.actions[d.index].append(action.copy())

    def after_step(self, d, action):
        self.calls.append(("after", d.index))

    def finished(self, d):
        self.calls.append(("finished", d.index))
        self.records[d.index] = d.steps()


def test_safe_actions_are_rows_in_range_and_nan_steers_straight():
    a = safe_actions([0.5, np.nan, -3.0], 3)
    assert a.shape == (3, 1) and a.dtype == np.float32
    assert a[:, 0].tolist() == [0.5, 0.0, -1.0]
    assert safe_actions([[0.2, 2.0], [np.nan, -0.5]], 2).tolist() == [[pytest.approx(0.2), 1.0], [0.0, -0.5]]


def test_batches_drive_the_same_as_one_at_a_time_and_record_every_info_key():
    cfg = EnvConfig(track=TRACK, off_track="recover", laps=1, random_start=True)  # the seed picks the start
    jobs = [(0, TRACK), (1, TRACK), (2, TRACK)]
    one, three = Log(), Log()
    drive_jobs(ExpertDriver(), jobs, cfg, 1, seed=0, batch=1, hooks=[one], max_steps=30)
    drive_jobs(ExpertDriver(), iter(jobs), cfg, 1, seed=0, batch=3, hooks=[three], max_steps=30)
    assert one.calls[:3] == [("started", 0), ("before", 0), ("after", 0)]
    assert [c for c in three.calls if c[0] == "finished"] == [("finished", 0), ("finished", 1), ("finished", 2)]
    for i in range(3):
        a, b = one.records[i], three.records[i]
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert len(a["time"]) == 30 and a["time"][-1] == pytest.approx(1.5)
        assert i == 0 or not np.array_equal(a["x"], one.records[0]["x"])  # each job its own seed
        assert {"cte", "speed", "x", "off_track", "intervention", "collision"} <= a.keys()  # tasks' keys come too
        assert "track" not in a  # text is not a per-step figure
        assert np.array_equal(one.actions[i], three.actions[i])


def test_the_race_task_takes_steering_and_throttle_rows():
    cfg = EnvConfig(track=TRACK, task="race", off_track="recover", laps=1)
    log = Log()
    drive_jobs(ExpertDriver(task="race"), [(0, TRACK)], cfg, 1, seed=0, hooks=[log], max_steps=60)
    actions = np.stack(log.actions[0])
    assert actions.shape == (60, 2)
    assert actions[:20, 1].min() > 0.5  # the race expert accelerates away from the start
    assert log.records[0]["speed"][-1] > log.records[0]["speed"][0] + 5.0
