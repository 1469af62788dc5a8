"""`DriveVectorEnv`: N copies of `DriveEnv` stepped in parallel, one process per CPU core at most.

`DriveVectorEnv(num_envs=8, **env_kwargs)` (the same keyword arguments as `gym.make("E2EDrive-v0")`).
Gymnasium's `gym.make_vec(..., vectorization_mode="async")` works too, but costs more per env and step
than our env's whole step (~50-90 us): the main process sends each env its action through a pipe,
waits for every worker process to wake up and answer, and merges each env's `info` key by key.

Here the main process steps the first group of envs itself while worker processes step the other
groups: each worker gets its group's actions in one message and answers with one (rewards, flags,
infos); frames go through shared memory, never through a pipe; workers are woken by semaphores
(see `_send`); `info` is merged into arrays by one numpy call. The result has the layout of
gymnasium's vector envs: frames (N, H, W, 3), rewards, terminated, truncated (N,), and `info[key]`
arrays with `info["_key"]` masks. Autoreset is gymnasium's default, next step: the step after an
episode ends resets that env (its action is ignored) and returns the new episode's first frame.
`reset(seed=s)` seeds env i with s + i, as gymnasium does.

It pays only with free cores: a worker that must share a core with other jobs waits for it at every
step (measured figures in the README, "Speed").
"""

from __future__ import annotations

import multiprocessing as mp
import operator
import os
import pickle
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .env import DriveEnv

WAIT_POLL_S = 200e-6  # the main process polls this long for a worker's answer before it sleeps
_STEP = b"s"  # the first byte of a step message; any other message is a pickled (command, argument)


class _Group:
    """Envs stepped one after the other by one process, each writing its frame into the shared batch."""

    def __init__(self, envs: list[DriveEnv], first: int, frames: np.ndarray):
        self.envs, self.first, self.frames = envs, first, frames
        self.ended = [False] * len(envs)  # the episode ended last step: the next step resets

    def reset(self, seeds: list[int | None], options: dict | None) -> list[dict]:
        infos = []
        for j, env in enumerate(self.envs):
            self.frames[self.first + j], info = env.reset(seed=seeds[j], options=options)
            self.ended[j] = False
            infos.append(info)
        return infos

    def step(self, actions: np.ndarray) -> list[tuple[float, bool, bool, dict]]:
        out = []
        for j, env in enumerate(self.envs):
            if self.ended[j]:
                obs, info = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, info = env.step(actions[j])
            self.ended[j] = terminated or truncated
            self.frames[self.first + j] = obs
            out.append((reward, terminated, truncated, info))
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn, go, done, env_kwargs: dict, first: int, count: int, shared, shape: tuple[int, ...]) -> None:
    """A worker process: builds its envs, then answers "reset" and "step" until "close". It waits on
    the semaphore `go` and signals each answer on `done` (see `DriveVectorEnv._send`)."""
    group = None

    def answer(ok: bool, payload) -> None:
        conn.send((ok, payload))
        done.release()

    try:
        frames = np.frombuffer(shared, np.uint8).reshape(shape)
        group = _Group([DriveEnv(**env_kwargs) for _ in range(count)], first, frames)
        answer(True, None)
        sent_keys = None  # the info keys every env of the group had last time they were sent
        while True:
            go.acquire()  # then the message is in the pipe already
            message = conn.recv_bytes()
            if message[:1] == _STEP:  # the group's actions, raw float32: no pickling on the way in
                actions = np.frombuffer(message, np.float32, offset=1).reshape(count, -1)
                rows = group.step(actions)
                keys = [tuple(info) for *_, info in rows]
                if all(k == sent_keys for k in keys):
                    keys = None  # the keys the main process knows already: the values only
                elif all(k == keys[0] for k in keys):
                    sent_keys = keys[0]
                answer(True, ([(r, te, tr, tuple(info.values())) for r, te, tr, info in rows], keys))
                continue
            command, arg = pickle.loads(message)
            if command == "reset":
                answer(True, group.reset(*arg))
            else:  # "close"
                break
    except KeyboardInterrupt:
        pass
    except Exception:  # noqa: BLE001 - any failure goes back to the main process, which raises it
        try:
            answer(False, traceback.format_exc())
        except OSError:
            pass
    finally:
        if group is not None:
            group.close()
        conn.close()


class DriveVectorEnv(VectorEnv):
    """`num_envs` `DriveEnv`s made with the same keyword arguments, over `processes` processes (the
    main one included; default: one per CPU core, at most one per env)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, processes: int | None = None, **env_kwargs: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, not {num_envs}")
        if env_kwargs.get("render_mode") is not None:
            raise ValueError("DriveVectorEnv does not render; use vectorization_mode='sync' to render")
        env_kwargs.pop("render_mode", None)
        self.closed = True  # until the workers run
        self._poll_s = WAIT_POLL_S
        self.num_envs = int(num_envs)
        envs = [DriveEnv(**env_kwargs)]
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        shape = (self.num_envs, *self.single_observation_space.shape)
        ctx = mp.get_context()
        self._shared = ctx.RawArray("B", int(np.prod(shape)))
        self._frames = np.frombuffer(self._shared, np.uint8).reshape(shape)
        n_proc = max(1, min(self.num_envs, processes or _cores()))
        bounds = np.linspace(0, self.num_envs, n_proc + 1).astype(int).tolist()  # the main process: fewest
        self._bounds = list(zip(bounds[:-1], bounds[1:]))  # [first, end) of each process's envs
        envs += [DriveEnv(**env_kwargs) for _ in range(bounds[1] - 1)]
        self._own = _Group(envs, 0, self._frames)
        self._pipes, self._procs, self._go, self._done = [], [], [], []
        for first, end in self._bounds[1:]:
            parent, child = ctx.Pipe()
            go, done = ctx.Semaphore(0), ctx.Semaphore(0)
            proc = ctx.Process(target=_worker, args=(child, go, done, env_kwargs, first, end - first, self._shared,
                                                     shape),
                               name=f"E2EDrive-vector-{first}", daemon=True)
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._go.append(go)
            self._done.append(done)
            self._procs.append(proc)
        self.closed = False
        try:
            for pipe in self._pipes:
                self._answer(pipe)
        except BaseException:
            self.close()
            raise
        self._info_keys: tuple[str, ...] | None = None
        self._mask_keys: list[str] = []
        self._worker_keys: list[tuple[str, ...] | None] = [None] * len(self._pipes)  # as each last sent them
        self._all = np.ones(self.num_envs, np.bool_)  # the `_key` masks: one read-only array, all True
        self._all.flags.writeable = False

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        for pipe, (first, end) in zip(self._pipes, self._bounds[1:]):
            self._send(pipe, pickle.dumps(("reset", (seeds[first:end], options))))
        infos = self._own.reset(seeds[:self._bounds[0][1]], options)
        for pipe in self._pipes:
            infos += self._answer(pipe)
        return self._frames.copy(), self._merge([tuple(i.values()) for i in infos], [tuple(i) for i in infos])

    def step(self, actions):
        actions = np.ascontiguousarray(actions, np.float32).reshape(self.num_envs, -1)
        for pipe, (first, end) in zip(self._pipes, self._bounds[1:]):
            self._send(pipe, _STEP + actions[first:end].tobytes())
        try:
            results = self._own.step(actions)  # our own envs while the workers step theirs
        except BaseException:
            for w in range(len(self._pipes)):  # the workers' answers to this step, so the next one reads its own
                self._step_answer(w)
            raise
        rows = [(r, te, tr, tuple(info.values()), tuple(info)) for r, te, tr, info in results]
        for w in range(len(self._pipes)):
            rows += self._step_answer(w)
        rewards, terminated, truncated, values, keys = zip(*rows)
        return (self._frames.copy(), np.array(rewards, np.float64), np.array(terminated, np.bool_),
                np.array(truncated, np.bool_), self._merge(values, keys))

    def close_extras(self, **kwargs: Any) -> None:
        for pipe in self._pipes:
            try:
                self._send(pipe, pickle.dumps(("close", None)))
            except OSError:
                pass  # that worker is gone already
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        for pipe in self._pipes:
            pipe.close()
        self._pipes, self._procs = [], []
        self._own.close()

    def _send(self, pipe, message: bytes) -> None:
        """A message to a worker, which waits on a semaphore, not on the pipe (and answers the same
        way): a process woken by a pipe is moved to the waker's core (Linux expects the waker to
        sleep now: a "sync" wakeup), where the woken worker would wait for the main process to
        step its own envs; woken by a semaphore, it runs on a free core at once."""
        pipe.send_bytes(message)
        self._go[self._pipes.index(pipe)].release()

    def _step_answer(self, w: int) -> list[tuple]:
        """Worker w's answer to a step: (reward, terminated, truncated, info values, info keys) per
        env. Workers send the keys only when they are not those they sent last."""
        answer, keys = self._answer(self._pipes[w])
        if keys is None:
            keys = [self._worker_keys[w]] * len(answer)
        elif all(k == keys[0] for k in keys):
            self._worker_keys[w] = keys[0]
        return [(*row, k) for row, k in zip(answer, keys)]

    def _answer(self, pipe):
        w = self._pipes.index(pipe)
        if self._poll_s and not pipe.poll(0):  # the answer is usually tens of microseconds away:
            deadline = time.perf_counter() + self._poll_s  # waking from sleep would take about as long again
            while not pipe.poll(0) and time.perf_counter() < deadline:
                os.sched_yield()  # another process waiting for this core (a worker, perhaps) goes first
        while not self._done[w].acquire(timeout=1.0):
            if not self._procs[w].is_alive() and not pipe.poll(0):
                raise RuntimeError("an E2EDrive vector env worker process died")
        try:
            ok, payload = pipe.recv()
        except EOFError:
            raise RuntimeError("an E2EDrive vector env worker process died") from None
        if not ok:
            raise RuntimeError(f"an E2EDrive vector env worker failed:\n{payload}")
        return payload

    def _merge(self, values: Sequence[tuple], keys: Sequence[tuple[str, ...]]) -> dict[str, np.ndarray]:
        """The envs' infos (each as its values and its keys) as gymnasium's vector envs give them:
        `info[key]` an array over the envs, `info["_key"]` True where the env has the key. When every
        env has the same keys (a `DriveEnv` always does), one numpy call makes the arrays of all the
        numbers and flags (an object array per other key, e.g. the track's name); otherwise they
        are merged key by key, as gymnasium does."""
        if keys[0] != self._info_keys:
            self._info_keys = first = keys[0]
            types = [_dtype_of(v) for v in values[0]]
            numbers = [i for i, t in enumerate(types) if t is not object]
            self._numbers = operator.itemgetter(*numbers) if len(numbers) > 1 else lambda v: (v[numbers[0]],)
            self._numbers_dtype = np.dtype([(first[i], types[i]) for i in numbers]) if numbers else None
            self._objects = [(i, first[i]) for i, t in enumerate(types) if t is object]
            self._mask_keys = ["_" + k for k in first]
        if any(k != self._info_keys for k in keys):
            merged: dict = {}
            for i, (v, k) in enumerate(zip(values, keys)):
                merged = self._add_info(merged, dict(zip(k, v)), i)
            return merged
        merged = {}
        if self._numbers_dtype is not None:
            table = np.array([self._numbers(v) for v in values], self._numbers_dtype)
            merged = {k: table[k] for k in self._numbers_dtype.names}
        for i, k in self._objects:
            merged[k] = np.empty(self.num_envs, object)
            merged[k][:] = [v[i] for v in values]
        merged.update(dict.fromkeys(self._mask_keys, self._all))  # every env has every key
        return merged


def _cores() -> int:
    """The CPU cores this process may run on (`taskset` and container limits included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _dtype_of(value: Any):
    """The array type gymnasium gives an info value: its own for numbers and bools, else object."""
    if isinstance(value, (bool, int, float, np.number)):
        return np.dtype(type(value)) if not isinstance(value, np.number) else value.dtype
    return object
