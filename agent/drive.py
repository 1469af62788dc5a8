"""The one lock-step driving loop: `eval`, `dagger`, `demo` (through `eval`) and the benchmark drive
with `drive_jobs`.

Jobs are (index, track SPEC) pairs. `batch` of them are driven at a time in lock step, so a policy
answers all of them with one batched forward pass. A driver has `act(envs, frames)` and returns one
action row per env, shaped (n_envs, action_dim): [steering] for the lane task, [steering, throttle]
where the env takes a throttle. Hooks see every drive start, every step (before and after the env
steps) and every drive end: recording frames for DAgger, filming a video, reporting progress.
Each drive keeps a per-step record of the env's `info` (every numeric key), so a task that adds a
key to `info` (say `collision`) finds it in the record for its metrics without touching this loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from sim.env import DriveEnv, EnvConfig, default_camera_name
from sim.expert import expert_for
from sim.render import camera_from_name
from sim.track import load_track


def max_steps_for(cfg: EnvConfig, length_m: float, laps: int) -> int:
    """Room for three times the expert's lap time: a policy that stalls or turns round still ends."""
    return int(3 * laps * length_m / (cfg.car.cruise_speed_mps * cfg.car.dt)) + 200


def safe_actions(actions, n_envs: int) -> np.ndarray:
    """A driver's answer as float32 rows (n_envs, action_dim) in [-1, 1]; NaN (a diverged network)
    becomes 0 so one bad output cannot stop a whole evaluation."""
    a = np.asarray(actions, dtype=np.float32).reshape(n_envs, -1)
    return np.clip(np.nan_to_num(a, nan=0.0), -1.0, 1.0)


# -- drivers ----------------------------------------------------------------------------------------
class ExpertDriver:
    """The autopilot, with privileged state: the reference every policy is compared with."""

    name = "expert"

    def __init__(self, task: str = "lane"):
        self.task = task
        self.experts: dict[str, object] = {}

    def expert(self, env):
        """The autopilot of the env's task (one per task, so a race expert keeps its speed profiles)."""
        task = env.unwrapped.cfg.task
        if task not in self.experts:
            self.experts[task] = expert_for(task)
        return self.experts[task]

    def describe(self) -> dict:
        if self.task == "race":
            return {"kind": "expert", "task": "race",
                    "name": "minimum-time speed profile and pure pursuit (sim.expert.RaceExpert)"}
        return {"kind": "expert", "name": "pure pursuit on the centerline (sim.expert.Expert)"}

    def env_config(self) -> EnvConfig:
        return EnvConfig(task=self.task, camera=camera_from_name(default_camera_name(self.task)))

    def can_spawn(self) -> bool:
        return True

    def prepare_worker(self) -> None:
        pass

    def session(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def act(self, envs: list, frames: list[np.ndarray]) -> np.ndarray:
        return np.stack([self.expert(e).act(e) for e in envs])


class PolicyDriver:
    """A trained policy: it sees only the camera frames (`policy.act_batch`), nothing of `info`.

    Give a policy folder (loaded lazily, so worker processes load their own copy) or a loaded policy.
    """

    name = "policy"

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu", policy=None):
        if model_dir is None and policy is None:
            raise ValueError("PolicyDriver needs a model folder or a loaded policy")
        self.model_dir = None if model_dir is None else str(model_dir)
        self.device = device
        self._policy = policy

    @property
    def policy(self):
        if self._policy is None:
            from .model import load_policy  # torch only for --model
            self._policy = load_policy(self.model_dir, device=self.device)
        return self._policy

    def __getstate__(self) -> dict:  # workers load their own copy from the folder
        return {"model_dir": self.model_dir, "device": self.device, "_policy": None}

    def describe(self) -> dict:
        card = self.policy.card
        return {"kind": "model", "path": self.model_dir or str(getattr(self.policy, "folder", "")),
                "arch": card.get("arch"), "data": card.get("data"), "training": card.get("training"),
                "device": str(getattr(self.policy, "device", self.device)),  # `auto` as it resolved
                "runtime": getattr(self.policy, "runtime", "torch")}

    def env_config(self) -> EnvConfig:
        return self.policy.env_config()

    def can_spawn(self) -> bool:
        return self.model_dir is not None

    def prepare_worker(self) -> None:
        import torch
        torch.set_num_threads(1)  # one core per worker process

    def session(self) -> contextlib.AbstractContextManager:
        from .model import single_thread_inference
        return single_thread_inference()

    def act(self, envs: list, frames: list[np.ndarray]) -> np.ndarray:
        return self.policy.act_batch(np.stack(frames))


class BlendDriver:
    """DAgger's executed action: beta * expert + (1 - beta) * policy (beta 0: the policy alone)."""

    name = "blend"

    def __init__(self, policy, beta: float):
        self.policy, self.beta = policy, float(beta)
        self.expert = expert_for(policy.env_config().task)

    def act(self, envs: list, frames: list[np.ndarray]) -> np.ndarray:
        mine = safe_actions(self.policy.act_batch(np.stack(frames)), len(envs))
        if self.beta == 0.0:
            return mine
        label = np.stack([self.expert.act(e) for e in envs])
        return self.beta * label + (1.0 - self.beta) * mine


# -- the loop ---------------------------------------------------------------------------------------
@dataclass
class Drive:
    """One track being driven: its env, the last frame and info, and the per-step record of `info`."""

    index: int
    spec: str
    env: DriveEnv
    obs: np.ndarray
    info: dict
    target_m: float  # metres of route in all its laps
    record: dict[str, list] = field(default_factory=dict)

    def add(self, info: dict) -> None:
        if not self.record:
            self.record.update({k: [] for k, v in info.items() if isinstance(v, (bool, int, float, np.number))})
        for k, column in self.record.items():
            column.append(info[k])

    def steps(self) -> dict[str, np.ndarray]:
        """The record as arrays: one entry per step, the env info after that step."""
        return {k: np.asarray(v) for k, v in self.record.items()}


class DriveHooks:
    """What a caller does around the loop; override the calls it needs (all do nothing here)."""

    def started(self, drive: Drive) -> None:
        """The env was reset: `drive.obs` / `drive.info` are the first frame and info."""

    def before_step(self, drive: Drive, action: np.ndarray) -> None:
        """`action` answers `drive.obs`; the env has not stepped yet."""

    def after_step(self, drive: Drive, action: np.ndarray) -> None:
        """The env stepped: `drive.obs` / `drive.info` are the new frame and info."""

    def finished(self, drive: Drive) -> None:
        """The drive ended (laps done, or out of steps); its env is still open."""


def drive_jobs(driver, jobs: Iterable[tuple[int, str]], cfg: EnvConfig, laps: int, seed: int, *, batch: int = 8,
               hooks: Sequence[DriveHooks] = (), max_steps: int | None = None) -> None:
    """Drive every (index, spec) job with `cfg` (track and max_steps set per job; `max_steps` None:
    three expert lap times), `batch` at a time in lock step, one `driver.act` call per step for all.
    Job `index` is reset with seed `seed + index`, so a drive is the same whatever its batch or
    process. `jobs` is read lazily, one job when a slot frees (a worker's queue of tracks)."""
    pending = iter(jobs)
    active: list[Drive] = []
    more = True
    try:
        while more or active:
            while more and len(active) < batch:
                job = next(pending, None)
                if job is None:
                    more = False
                    break
                index, spec = job
                length = load_track(spec).length
                steps = max_steps if max_steps is not None else max_steps_for(cfg, length, laps)
                env = DriveEnv(config=replace(cfg, track=spec, max_steps=int(steps)))
                obs, info = env.reset(seed=seed + index)
                drive = Drive(index, spec, env, obs, info, target_m=laps * length)
                active.append(drive)
                for h in hooks:
                    h.started(drive)
            if not active:
                break
            actions = safe_actions(driver.act([d.env for d in active], [d.obs for d in active]), len(active))
            still: list[Drive] = []
            for d, a in zip(active, actions):
                for h in hooks:
                    h.before_step(d, a)
                d.obs, _, terminated, truncated, d.info = d.env.step(a)
                d.add(d.info)
                for h in hooks:
                    h.after_step(d, a)
                if terminated or truncated:
                    for h in hooks:
                        h.finished(d)
                    d.env.close()
                else:
                    still.append(d)
            active = still
    finally:
        for d in active:
            d.env.close()
