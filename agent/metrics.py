"""Closed-loop driving metrics: pure functions over the per-step arrays of one drive (numpy only).

A drive on one track is a sequence of steps; for each step we keep the env's `info` after the step
(time, progress along the track, off-track and intervention flags, cross-track error, speed). The
metrics follow the literature so figures can be compared: PilotNet's autonomy (each intervention
costs 6 s), CARLA's route completion (share of the route driven before things went wrong),
off-track events per km, and clean laps (no off-track at all).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

INTERVENTION_PENALTY_S = 6.0  # PilotNet: a human takeover costs about 6 s of driving

SUMMARY_KEYS = ("laps_attempted", "laps_completed", "completion_rate", "route_completion", "off_track_per_km",
                "mean_abs_cte_m", "autonomy_pct", "mean_lap_time_s")


def count_events(flags: np.ndarray) -> int:
    """Number of events in a per-step boolean array: a run of consecutive True steps is one event
    (a car that stays off the track for a second left it once)."""
    f = np.asarray(flags, dtype=bool)
    if f.size == 0:
        return 0
    return int(f[0]) + int(np.count_nonzero(f[1:] & ~f[:-1]))


def autonomy_pct(interventions: int, elapsed_s: float, penalty_s: float = INTERVENTION_PENALTY_S) -> float:
    """PilotNet's autonomy: 100 * (1 - interventions * 6 s / elapsed s), floored at 0."""
    if elapsed_s <= 0:
        return float("nan")
    return max(0.0, 100.0 * (1.0 - interventions * penalty_s / elapsed_s))


def distance_m(time_s: np.ndarray, speed_mps: np.ndarray) -> float:
    """Metres driven: speed integrated over the steps (time_s is the time after each step)."""
    t = np.asarray(time_s, dtype=np.float64)
    v = np.asarray(speed_mps, dtype=np.float64)
    if t.size == 0:
        return 0.0
    dt = np.diff(t, prepend=0.0)
    return float(np.sum(v * dt))


def lap_index(lap_after: np.ndarray, lap_completed: np.ndarray) -> np.ndarray:
    """The lap each step belongs to (0 for the first): the env's lap counter after the step, minus
    one on the step that crossed the line."""
    return np.asarray(lap_after, dtype=np.int64) - np.asarray(lap_completed, dtype=np.int64)


def route_completion(progress_m: np.ndarray, lap: np.ndarray, intervention: np.ndarray, track_length_m: float,
                     laps: int) -> list[float]:
    """Per lap, the share of it driven before its first intervention (1.0 for a clean lap, the share
    reached for a lap never finished). `lap` is the lap index of each step (see `lap_index`)."""
    progress = np.asarray(progress_m, dtype=np.float64)
    lap = np.asarray(lap, dtype=np.int64)
    interv = np.asarray(intervention, dtype=bool)
    out = []
    for k in range(laps):
        in_lap = lap == k
        done_in_lap = progress[in_lap] - k * track_length_m
        hit = np.flatnonzero(in_lap & interv)
        if hit.size:
            reached = progress[hit[0]] - k * track_length_m
        elif np.any(lap > k):
            reached = track_length_m
        else:
            reached = float(done_in_lap.max()) if done_in_lap.size else 0.0
        out.append(min(max(reached / track_length_m, 0.0), 1.0))
    return out


def laps_summary(time_s: np.ndarray, lap: np.ndarray, lap_completed: np.ndarray, off_track: np.ndarray,
                 laps: int) -> tuple[list[bool], list[float]]:
    """(clean flag per attempted lap, lap time of every finished lap). A lap is clean when it was
    finished without a single spoilt step (`off_track`: off the road, or in traffic a collision)."""
    t = np.asarray(time_s, dtype=np.float64)
    lap = np.asarray(lap, dtype=np.int64)
    done = np.asarray(lap_completed, dtype=bool)
    off = np.asarray(off_track, dtype=bool)
    clean, times = [], []
    start = 0.0
    for i in np.flatnonzero(done):
        times.append(float(t[i] - start))
        start = float(t[i])
    for k in range(laps):
        finished = bool(np.any(done & (lap == k)))
        clean.append(finished and not bool(np.any(off & (lap == k))))
    return clean, times


def drive_metrics(steps: Mapping[str, np.ndarray], track_length_m: float, laps: int) -> dict:
    """All the figures of one drive of `laps` laps on one track, from its per-step arrays: time,
    progress_m, lap, lap_completed, off_track, intervention, cte, speed (each the env info after a step),
    and in the traffic task collision and overtake (counts in that step). A clean lap has neither an
    off-track step nor a collision."""
    lap = lap_index(steps["lap"], steps["lap_completed"])
    n = len(steps["time"])
    collision = np.asarray(steps.get("collision", np.zeros(n)), dtype=np.int64)
    overtake = np.asarray(steps.get("overtake", np.zeros(n)), dtype=np.int64)
    spoilt = np.asarray(steps["off_track"], dtype=bool) | (collision > 0)
    clean, lap_times = laps_summary(steps["time"], lap, steps["lap_completed"], spoilt, laps)
    rc = route_completion(steps["progress_m"], lap, steps["intervention"], track_length_m, laps)
    time_s = np.asarray(steps["time"], dtype=np.float64)
    elapsed = float(time_s[-1]) if time_s.size else 0.0
    dist = distance_m(time_s, steps["speed"])
    off_events = count_events(steps["off_track"])
    interventions = count_events(steps["intervention"])
    cte = np.abs(np.asarray(steps["cte"], dtype=np.float64))
    return {
        "laps_attempted": laps,
        "laps_completed": int(sum(clean)),
        "laps_finished": len(lap_times),
        "completion_rate": sum(clean) / laps if laps else float("nan"),
        "route_completion": float(np.mean(rc)) if rc else float("nan"),
        "off_track_events": off_events,
        "off_track_per_km": off_events / (dist / 1000.0) if dist > 0 else float("nan"),
        "interventions": interventions,
        "collisions": int(collision.sum()),
        "collisions_per_km": int(collision.sum()) / (dist / 1000.0) if dist > 0 else float("nan"),
        "overtakes": int(overtake.sum()),
        "overtakes_per_lap": [int(overtake[lap == k].sum()) for k in range(laps)],
        "mean_abs_cte_m": float(cte.mean()) if cte.size else float("nan"),
        "max_abs_cte_m": float(cte.max()) if cte.size else float("nan"),
        "autonomy_pct": autonomy_pct(interventions, elapsed),
        "mean_lap_time_s": float(np.mean(lap_times)) if lap_times else float("nan"),
        "lap_times_s": lap_times,
        "clean_lap_times_s": [lap_times[k] if k < len(lap_times) and clean[k] else None for k in range(laps)],
        "mean_speed_mps": dist / elapsed if elapsed > 0 else float("nan"),
        "route_completion_per_lap": rc,
        "elapsed_s": elapsed,
        "distance_km": dist / 1000.0,
        "steps": int(time_s.size),
        "track_length_m": float(track_length_m),
    }


def summarise(rows: Sequence[Mapping]) -> dict:
    """Figures over many drives (rows of `drive_metrics`): counts are summed and rates recomputed from
    the sums (weighted by laps, steps, km or seconds), never averaged per track."""
    rows = list(rows)
    attempted = sum(r["laps_attempted"] for r in rows)
    completed = sum(r["laps_completed"] for r in rows)
    lap_times = [t for r in rows for t in r["lap_times_s"]]
    steps = sum(r["steps"] for r in rows)
    km = sum(r["distance_km"] for r in rows)
    elapsed = sum(r["elapsed_s"] for r in rows)
    off = sum(r["off_track_events"] for r in rows)
    interventions = sum(r["interventions"] for r in rows)
    collisions = sum(r.get("collisions", 0) for r in rows)
    return {
        "tracks": len(rows),
        "laps_attempted": attempted,
        "laps_completed": completed,
        "laps_finished": sum(r["laps_finished"] for r in rows),
        "completion_rate": completed / attempted if attempted else float("nan"),
        "route_completion": (sum(r["route_completion"] * r["laps_attempted"] for r in rows) / attempted
                             if attempted else float("nan")),
        "off_track_events": off,
        "off_track_per_km": off / km if km > 0 else float("nan"),
        "interventions": interventions,
        "collisions": collisions,
        "collisions_per_km": collisions / km if km > 0 else float("nan"),
        "overtakes": sum(r.get("overtakes", 0) for r in rows),
        "mean_abs_cte_m": (sum(r["mean_abs_cte_m"] * r["steps"] for r in rows if r["steps"]) / steps
                           if steps else float("nan")),
        "max_abs_cte_m": max((r["max_abs_cte_m"] for r in rows if r["steps"]), default=float("nan")),
        "autonomy_pct": autonomy_pct(interventions, elapsed),
        "mean_lap_time_s": float(np.mean(lap_times)) if lap_times else float("nan"),
        "elapsed_s": elapsed,
        "distance_km": km,
        "steps": steps,
    }


def lap_time_ratios(policy: Mapping, expert: Mapping) -> dict:
    """The race task's comparison of one track: the expert's mean lap time, and the policy's lap time
    over the expert's for each lap the policy drove clean (lap k against the expert's lap k)."""
    expert_times = list(expert["lap_times_s"])
    ratios = [t / expert_times[k] for k, t in enumerate(policy.get("clean_lap_times_s", []))
              if t is not None and k < len(expert_times) and expert_times[k] > 0]
    return {"expert_lap_time_s": float(np.mean(expert_times)) if expert_times else float("nan"),
            "lap_time_ratios": ratios,
            "mean_lap_time_ratio": float(np.mean(ratios)) if ratios else float("nan")}


def summarise_ratios(rows: Sequence[Mapping]) -> dict:
    """Over many tracks (rows of `lap_time_ratios`): every clean lap's ratio counts once."""
    ratios = [r for row in rows for r in row["lap_time_ratios"]]
    expert = [row["expert_lap_time_s"] for row in rows if math.isfinite(row["expert_lap_time_s"])]
    return {"expert_lap_time_s": float(np.mean(expert)) if expert else float("nan"),
            "mean_lap_time_ratio": float(np.mean(ratios)) if ratios else float("nan"),
            "clean_laps_compared": len(ratios)}


def json_safe(obj):
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

