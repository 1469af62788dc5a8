"""Closed-loop metrics on hand-made drives (where the answer is known) and on a real env drive."""

import numpy as np
import pytest

from agent.metrics import (
    autonomy_pct,
    count_events,
    drive_metrics,
    json_safe,
    laps_summary,
    route_completion,
    summarise,
)
from sim import DriveEnv, EnvConfig, Expert

TRACK_M = 100.0


def hand_made_drive(steps: int = 200, interventions_at: tuple[int, ...] = (), off_at: tuple[int, ...] = ()) -> dict:
    """A drive at 1 m per step (10 m/s, dt 0.1 s) on a 100 m track: step i ends at progress i+1 m."""
    progress = np.arange(1, steps + 1, dtype=float)
    lap_after = np.floor(progress / TRACK_M).astype(int)
    lap_completed = np.zeros(steps, bool)
    lap_completed[np.flatnonzero(np.diff(lap_after, prepend=0) > 0)] = True
    interv = np.zeros(steps, bool)
    interv[list(interventions_at)] = True
    off = interv.copy()
    off[list(off_at)] = True
    return {"time": 0.1 * np.arange(1, steps + 1), "progress_m": progress, "lap": lap_after,
            "lap_completed": lap_completed, "off_track": off, "intervention": interv,
            "cte": np.where(off, 6.0, 0.5), "speed": np.full(steps, 10.0)}


def test_a_run_of_off_track_steps_is_one_event():
    flags = np.zeros(50, bool)
    flags[10:16] = True  # off the track for 6 consecutive steps: one excursion
    assert count_events(flags) == 1
    flags[30] = True
    assert count_events(flags) == 2
    assert count_events(np.ones(5, bool)) == 1
    assert count_events(np.zeros(0, bool)) == 0


def test_autonomy_is_pilotnets_formula_floored_at_zero():
    assert autonomy_pct(0, 600.0) == 100.0
    assert autonomy_pct(1, 600.0) == pytest.approx(99.0)  # 1 x 6 s in 10 minutes
    assert autonomy_pct(10, 600.0) == pytest.approx(90.0)
    assert autonomy_pct(200, 600.0) == 0.0  # more takeovers than time: floored, never negative


def test_two_laps_with_one_intervention_in_the_first():
    drive = hand_made_drive(200, interventions_at=(39,))  # step 39 ends at 40 m: 40% of lap 1
    m = drive_metrics(drive, TRACK_M, laps=2)
    assert m["laps_attempted"] == 2
    assert m["laps_finished"] == 2
    assert m["laps_completed"] == 1  # only the second lap was clean
    assert m["completion_rate"] == 0.5
    assert m["route_completion_per_lap"] == pytest.approx([0.4, 1.0])
    assert m["route_completion"] == pytest.approx(0.7)
    assert m["interventions"] == 1 and m["off_track_events"] == 1
    assert m["distance_km"] == pytest.approx(0.2)
    assert m["off_track_per_km"] == pytest.approx(5.0)
    assert m["elapsed_s"] == pytest.approx(20.0)
    assert m["autonomy_pct"] == pytest.approx(100 * (1 - 6 / 20))
    assert m["lap_times_s"] == pytest.approx([10.0, 10.0])
    assert m["mean_abs_cte_m"] == pytest.approx((199 * 0.5 + 6.0) / 200)


def test_route_completion_counts_only_the_first_intervention_of_a_lap():
    drive = hand_made_drive(100, interventions_at=(24, 79))
    assert route_completion(drive["progress_m"], drive["lap"] - drive["lap_completed"], drive["intervention"],
                            TRACK_M, 1) == pytest.approx([0.25])


def test_an_unfinished_lap_counts_the_share_reached():
    drive = hand_made_drive(150)  # the episode ran out half way round the second lap
    m = drive_metrics(drive, TRACK_M, laps=2)
    assert m["route_completion_per_lap"] == pytest.approx([1.0, 0.5])
    assert m["laps_completed"] == 1 and m["laps_finished"] == 1


def test_an_off_track_in_continue_mode_spoils_the_lap_without_intervention():
    drive = hand_made_drive(100, off_at=(50, 51, 52))
    clean, times = laps_summary(drive["time"], drive["lap"] - drive["lap_completed"], drive["lap_completed"],
                                drive["off_track"], 1)
    assert clean == [False] and times == pytest.approx([10.0])
    m = drive_metrics(drive, TRACK_M, laps=1)
    assert m["off_track_events"] == 1 and m["interventions"] == 0 and m["route_completion"] == 1.0


def test_summary_recomputes_rates_from_sums():
    a = drive_metrics(hand_made_drive(100), TRACK_M, laps=1)  # clean, 10 s
    b = drive_metrics(hand_made_drive(300, interventions_at=(9,)), TRACK_M, laps=3)
    s = summarise([a, b])
    assert s["laps_attempted"] == 4 and s["laps_completed"] == 3
    assert s["completion_rate"] == 0.75
    assert s["route_completion"] == pytest.approx((1.0 + 0.1 + 1.0 + 1.0) / 4)
    assert s["autonomy_pct"] == pytest.approx(100 * (1 - 6 / 40))
    assert s["off_track_per_km"] == pytest.approx(1 / 0.4)
    assert s["mean_lap_time_s"] == pytest.approx(10.0)


def test_json_safe_turns_nan_into_null():
    assert json_safe({"a": float("nan"), "b": [np.float32(1.5), float("inf")], "c": np.int64(3)}) == \
        {"a": None, "b": [1.5, None], "c": 3}


def test_metrics_of_a_real_drive_off_the_track_once():
    """The real env in recover mode: steer hard right until the car leaves the track, then let the
    expert drive. One intervention, route completion = where it happened, the lap is not clean."""
    env = DriveEnv(config=EnvConfig(track="procedural:0", off_track="recover", laps=1))
    env.reset(seed=0)
    expert = Expert()
    keys = ("time", "progress_m", "lap", "lap_completed", "off_track", "intervention", "cte", "speed")
    rec = {k: [] for k in keys}
    left_at = None
    for _ in range(5000):
        action = np.array([1.0], np.float32) if left_at is None else expert.act(env)
        _, _, terminated, truncated, info = env.step(action)
        for k in keys:
            rec[k].append(info[k])
        if info["intervention"] and left_at is None:
            left_at = info["progress_m"]
        if terminated or truncated:
            break
    assert left_at is not None and info["lap"] == 1
    m = drive_metrics({k: np.asarray(v) for k, v in rec.items()}, env.track.length, laps=1)
    assert m["interventions"] == 1 == info["off_track_count"]
    assert m["laps_completed"] == 0 and m["laps_finished"] == 1
    assert m["route_completion"] == pytest.approx(left_at / env.track.length)
    assert 0 < m["route_completion"] < 0.1
    assert m["autonomy_pct"] == pytest.approx(100 * (1 - 6 / info["time"]))
