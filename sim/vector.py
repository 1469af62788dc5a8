"""`DriveVectorEnv`: N copies of `DriveEnv` stepped in parallel, one process per CPU core at most.

`DriveVectorEnv(num_envs=8, **env_kwargs)` (the same keyword arguments as `gym.make("E2EDrive-v0")`),
or `gym.make_vec("E2EDrive-v0", num_envs=8)` with no mode (the spec's `vector_entry_point`).
Gymnasium's `gym.make_vec(..., vectorization_mode="async")` works too, but costs more per env and step
than our env's whole step (~50-90 us): the main process sends each env its action through a pipe,
waits for every worker process to wake up and answer, and merges each env's `info` key by key.

Here the main process steps the first group of envs itself while worker processes step the other
groups, and a step sends nothing through a pipe: actions, frames, rewards, flags and the numbers of
each `info` all live in shared memory (the info's other values, the track's name, are sent only when
they change). A step is two semaphore signals per worker: "go" and "done". Each waiting side first
busy-waits briefly for the signal (a step is tens of microseconds; waking a sleeping process costs
as much again), then sleeps. The result has the layout of gymnasium's vector envs: frames (N, H, W,
3), rewards, terminated, truncated (N,), and `info[key]` arrays with `info["_key"]` masks. Autoreset
is gymnasium's default, next step: the step after an episode ends resets that env (its action is
ignored) and returns the new episode's first frame. `reset(seed=s)` seeds env i with s + i, as
gymnasium does.

It pays only with free cores: a worker that must share a core with other jobs waits for it at every
step (measured figures in the README, "Speed").
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import operator
import os
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .env import DriveEnv

SPIN_S = 1e-3  # how long a process busy-waits for the other side's signal before it sleeps
_STEP, _MESSAGE = 1, 2  # what a woken worker is to do: step the shared actions, or read its pipe
_RESULTS = ("reward", "terminated", "truncated")  # a step's results beside its info, in the shared table
_STRUCT_CODES = {("f", 8): "d", ("f", 4): "f", ("f", 2): "e", ("i", 8): "q", ("i", 4): "i", ("i", 2): "h", ("i", 1): "b",
                 ("u", 8): "Q", ("u", 4): "I", ("u", 2): "H", ("u", 1): "B", ("b", 1): "?"}  # numpy type -> struct


class _Layout:
    """Where an env's step lands in the shared results table: one record per env (its own cache lines,
    so the processes never write the same line) holding the info's numbers and the step's reward and
    flags, packed with one `struct` call, grouped by type as gymnasium types them (floats, ints,
    bools, ...). The probe step's info fixes the keys and types: a step whose info has other keys or
    types (none of `DriveEnv`'s do) is sent whole."""

    def __init__(self, info: dict):
        self.keys = tuple(info)
        self.types = tuple(type(v) for v in info.values())
        dtypes = [_dtype_of(v) for v in info.values()] + [np.dtype(np.float64), np.dtype(np.bool_), np.dtype(np.bool_)]
        names = list(self.keys) + ["/" + k for k in _RESULTS]  # "/": no info key clashes with a result
        self.objects = [i for i, t in enumerate(dtypes) if t is object]
        self.object_keys = [names[i] for i in self.objects]
        # the numbers, widest type first so every field is aligned: (type, names, byte offset)
        self.blocks: list[tuple[np.dtype, list[str], int]] = []
        order: list[int] = []
        offset = 0
        for dtype in sorted(dict.fromkeys(t for t in dtypes if t is not object), key=lambda t: -t.itemsize):
            where = [i for i, t in enumerate(dtypes) if t == dtype]
            self.blocks.append((dtype, [names[i] for i in where], offset))
            order += where
            offset += dtype.itemsize * len(where)
        self.record_format = "<" + "".join(_STRUCT_CODES[(t.kind, t.itemsize)] * len(n) for t, n, _ in self.blocks)
        self.record = struct.Struct(self.record_format)
        self.record_bytes = -(-max(self.record.size, 1) // 64) * 64  # whole cache lines
        self.numbers = _Picker(order)  # the record's values, in its order, out of (*info values, results)
        self.row_names = [n for _, names, _ in self.blocks for n in names]
        # a step's rows are the numbers' (in record order), then the objects': which row is whose
        where = {n: r for r, n in enumerate(self.row_names + self.object_keys)}
        self.results_of = _Picker([where["/" + k] for k in _RESULTS])
        self.info_of = _Picker([where[k] for k in self.keys])
        self.number_types = {names[i]: self.types[i] for i in range(len(self.keys)) if i not in self.objects}
        self._objects = _Picker(self.objects)

    def __getstate__(self) -> dict:  # a worker started by spawn gets the layout pickled; a Struct is not
        return {k: v for k, v in self.__dict__.items() if k != "record"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.record = struct.Struct(state["record_format"])

    def fits(self, info: dict) -> bool:
        return tuple(info) == self.keys and tuple(map(type, info.values())) == self.types

    def objects_of(self, values: tuple) -> tuple:
        return self._objects(values)


class _Picker:
    """Picks `indices` out of a tuple, as a tuple, at operator.itemgetter's speed (and pickles, for
    worker processes started by spawn)."""

    def __init__(self, indices: list[int]):
        self.indices = list(indices)
        self._get = operator.itemgetter(*indices) if indices else None

    def __call__(self, values: tuple) -> tuple:
        if len(self.indices) > 1:
            return self._get(values)
        return (self._get(values),) if self._get else ()

    def __getstate__(self) -> list[int]:
        return self.indices

    def __setstate__(self, indices: list[int]) -> None:
        self.__init__(indices)


class _Shared:
    """The shared-memory arrays of a vector env: frames, actions, the results table (a record per
    env), and per worker what it is to do and whether its answer waits in its pipe."""

    def __init__(self, ctx, num_envs: int, frame_shape: tuple[int, ...], action_size: int, layout: _Layout,
                 workers: int):
        self.shapes = ((num_envs, *frame_shape), (num_envs, action_size))
        self.num_envs = num_envs
        self.buffers = (ctx.RawArray("B", int(np.prod(self.shapes[0]))), ctx.RawArray("f", num_envs * action_size),
                        ctx.RawArray("B", layout.record_bytes * num_envs + 64), ctx.RawArray("b", 2 * max(workers, 1)))

    def views(self, layout: _Layout) -> tuple[np.ndarray, np.ndarray, memoryview, list[np.ndarray], np.ndarray]:
        """(frames, actions, the results table's bytes, its blocks, mailbox). A block is one type's
        numbers as (envs, keys), strided over the records; mailbox[w, 0] is worker w's command, [w, 1]
        set when its answer is in its pipe."""
        frames, actions, results, mailbox = self.buffers
        table = memoryview(results).cast("B")
        start = -ctypes.addressof(results) % 64  # the first record on a cache line of its own (in every process)
        table = table[start:start + layout.record_bytes * self.num_envs]
        blocks = [np.ndarray((self.num_envs, len(names)), dtype, table, offset, (layout.record_bytes, dtype.itemsize))
                  for dtype, names, offset in layout.blocks]
        return (np.frombuffer(frames, np.uint8).reshape(self.shapes[0]),
                np.frombuffer(actions, np.float32).reshape(self.shapes[1]),
                table, blocks, np.frombuffer(mailbox, np.int8).reshape(-1, 2))


class _Group:
    """Envs stepped one after the other by one process, each writing its frame and results into the
    shared arrays."""

    def __init__(self, envs: list[DriveEnv], first: int, shared: _Shared, layout: _Layout):
        self.envs, self.first, self.layout = envs, first, layout
        self.frames, self.actions, self.results, _, _ = shared.views(layout)
        self.ended = [False] * len(envs)  # the episode ended last step: the next step resets
        self.objects_sent: list[tuple | None] = [None] * len(envs)

    def reset(self, seeds: list[int | None], options: dict | None) -> list[dict]:
        infos = []
        for j, env in enumerate(self.envs):
            self.frames[self.first + j], info = env.reset(seed=seeds[j], options=options)
            self.ended[j] = False
            self.objects_sent[j] = None  # the main process's copy is replaced by the reset's infos
            infos.append(info)
        return infos

    def step(self) -> tuple[list[tuple], dict[int, tuple]]:
        """Step every env with its shared action. Returns the steps that do not fit the table, as
        (env, reward, terminated, truncated, info), and the info objects that changed, by env."""
        odd, changed = [], {}
        for j, env in enumerate(self.envs):
            i = self.first + j
            if self.ended[j]:
                obs, info = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, info = env.step(self.actions[i].copy())  # the env may keep it
            self.ended[j] = terminated or truncated
            self.frames[i] = obs
            if not self.layout.fits(info):
                odd.append((i, reward, terminated, truncated, info))
                self.objects_sent[j] = None
                continue
            values = (*info.values(), reward, terminated, truncated)
            self.layout.record.pack_into(self.results, i * self.layout.record_bytes, *self.layout.numbers(values))
            objects = self.layout.objects_of(values)
            if objects != self.objects_sent[j]:
                changed[i] = self.objects_sent[j] = objects
        return odd, changed

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _PartnerGone(RuntimeError):
    """The process on the other side of a vector env's semaphores has died."""


def _wait(sem, spin_s: float, alive: Callable[[], bool], who: str) -> None:
    """Take the semaphore: busy-wait up to `spin_s` (giving the core to any process waiting for it),
    then sleep. Raises RuntimeError when `alive()` turns false while asleep."""
    if sem.acquire(False):
        return
    if spin_s > 0:
        end = time.perf_counter() + spin_s
        while time.perf_counter() < end:
            os.sched_yield()
            if sem.acquire(False):
                return
    while not sem.acquire(timeout=1.0):
        if not alive():
            raise _PartnerGone(f"an E2EDrive vector env {who} process died")


def _worker(conn, go, done, index: int, env_kwargs: dict, first: int, count: int, shared: _Shared,
            layout: _Layout, spin_s: float) -> None:
    """A worker process: builds its envs, then steps them when signalled on `go` (or reads a
    "reset" or "close" from its pipe) and signals `done`. Answers other than a step's go through the
    pipe, flagged in the mailbox."""
    group = None
    mailbox = shared.views(layout)[4]
    parent = os.getppid()

    def answer(ok: bool, payload) -> None:
        mailbox[index, 1] = 1
        conn.send((ok, payload))
        done.release()

    try:
        group = _Group([DriveEnv(**env_kwargs) for _ in range(count)], first, shared, layout)
        answer(True, None)
        while True:
            _wait(go, spin_s, lambda: os.getppid() == parent, "main")
            if mailbox[index, 0] == _STEP:
                odd, changed = group.step()
                if odd or changed:
                    answer(True, (odd, changed))
                else:
                    done.release()
                continue
            command, arg = conn.recv()
            if command == "reset":
                answer(True, group.reset(*arg))
            else:  # "close"
                break
    except (KeyboardInterrupt, _PartnerGone):
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
        self.num_envs = int(num_envs)
        envs = [DriveEnv(**env_kwargs)]
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._layout = _Layout(_probe_info(env_kwargs, self.single_action_space))
        n_proc = max(1, min(self.num_envs, processes or _cores()))
        self._spin_s = SPIN_S if n_proc <= _cores() else 0.0  # busy-waiting for a process without a core of its own only delays it
        ctx = mp.get_context()
        self._shared = _Shared(ctx, self.num_envs, self.single_observation_space.shape,
                               int(np.prod(self.single_action_space.shape)), self._layout, n_proc - 1)
        self._frames, self._actions, _, self._blocks, self._mailbox = self._shared.views(self._layout)
        bounds = np.linspace(0, self.num_envs, n_proc + 1).astype(int).tolist()  # the main process: fewest
        self._bounds = list(zip(bounds[:-1], bounds[1:]))  # [first, end) of each process's envs
        envs += [DriveEnv(**env_kwargs) for _ in range(bounds[1] - 1)]
        self._own = _Group(envs, 0, self._shared, self._layout)
        self._objects: list[tuple | None] = [None] * self.num_envs  # each env's info objects, as last sent
        self._pipes, self._procs, self._go, self._done = [], [], [], []
        for w, (first, end) in enumerate(self._bounds[1:]):
            parent, child = ctx.Pipe()
            go, done = ctx.Semaphore(0), ctx.Semaphore(0)
            proc = ctx.Process(target=_worker, args=(child, go, done, w, env_kwargs, first, end - first,
                                                     self._shared, self._layout, self._spin_s),
                               name=f"E2EDrive-vector-{first}", daemon=True)
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._go.append(go)
            self._done.append(done)
            self._procs.append(proc)
        self.closed = False
        try:
            self._answers()
        except BaseException:
            self.close()
            raise
        every = np.ones(self.num_envs, np.bool_)  # the `_key` masks: one read-only array, all True
        every.flags.writeable = False
        self._masks = {"_" + k: every for k in self._layout.keys}

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        for w, (first, end) in enumerate(self._bounds[1:]):
            self._message(w, ("reset", (seeds[first:end], options)))
        infos = self._own.reset(seeds[:self._bounds[0][1]], options)
        for answer in self._answers():
            infos += answer
        self._objects = [None] * self.num_envs  # every env sends its info objects again at the next step
        merged: dict = {}
        for i, info in enumerate(infos):
            merged = self._add_info(merged, info, i)
        return self._frames.copy(), merged

    def step(self, actions):
        self._actions[:] = np.asarray(actions, np.float32).reshape(self._actions.shape)
        for w in range(len(self._procs)):
            self._mailbox[w, 0] = _STEP
            self._go[w].release()
        try:
            odd, changed = self._own.step()  # our own envs while the workers step theirs
        except BaseException:
            self._collect([], {})  # the workers' answers to this step, so the next one reads its own
            raise
        self._collect(odd, changed)
        rows = [row for block in self._blocks for row in block.T.copy()]  # each number over the envs
        rewards, terminated, truncated = self._layout.results_of(rows)
        if odd:
            table = dict(zip(self._layout.row_names, rows))
            return self._frames.copy(), *self._merge_odd(table, odd, rewards, terminated, truncated)
        for n in range(len(self._layout.object_keys)):  # then each object over the envs
            rows.append(np.empty(self.num_envs, object))
            rows[-1][:] = [objects[n] for objects in self._objects]
        info = dict(zip(self._layout.keys, self._layout.info_of(rows)))  # in the env's own order of keys
        info.update(self._masks)  # every env has every key
        return self._frames.copy(), rewards, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        for w in range(len(self._procs)):
            try:
                self._message(w, ("close", None))
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

    def _message(self, w: int, message: tuple) -> None:
        self._pipes[w].send(message)
        self._mailbox[w, 0] = _MESSAGE
        self._go[w].release()

    def _answers(self) -> list:
        """Every worker's answer, in order (None for a step that fit the shared table). Waits for
        all of them before raising a worker's failure, so the next call reads its own answers."""
        answers, failure = [], None
        for w, proc in enumerate(self._procs):
            _wait(self._done[w], self._spin_s, proc.is_alive, "worker")
            if not self._mailbox[w, 1]:
                answers.append(None)
                continue
            self._mailbox[w, 1] = 0
            try:
                ok, payload = self._pipes[w].recv()
            except EOFError:
                raise RuntimeError("an E2EDrive vector env worker process died") from None
            if not ok and failure is None:
                failure = payload
            answers.append(payload if ok else None)
        if failure is not None:
            raise RuntimeError(f"an E2EDrive vector env worker failed:\n{failure}")
        return answers

    def _collect(self, odd: list[tuple], changed: dict[int, tuple]) -> None:
        """The workers' answers to a step: their steps that did not fit the table join `odd`, and
        every changed info object is recorded."""
        for answer in self._answers():
            if answer is not None:
                odd += answer[0]
                changed.update(answer[1])
        for i, objects in changed.items():
            self._objects[i] = objects

    def _merge_odd(self, table: dict[str, np.ndarray], odd: list[tuple], rewards, terminated, truncated):
        """Rewards, flags and infos merged key by key (as gymnasium does) when some step did not fit
        the shared table: those steps come whole, the others are rebuilt from the table."""
        whole = {row[0]: row for row in odd}
        types = self._layout.number_types
        merged: dict = {}
        for i in range(self.num_envs):
            if i in whole:
                _, rewards[i], terminated[i], truncated[i], info = whole[i]
            else:
                values = {k: t(table[k][i]) for k, t in types.items()}  # the env's own types: gymnasium types by them
                values.update(zip(self._layout.object_keys, self._objects[i]))
                info = {k: values[k] for k in self._layout.keys}
            merged = self._add_info(merged, info, i)
        return rewards, terminated, truncated, merged


def _probe_info(env_kwargs: dict, action_space) -> dict:
    """The info of one step of a throwaway env: the keys and types a step's info has."""
    env = DriveEnv(**env_kwargs)
    try:
        env.reset(seed=0)
        return env.step(np.zeros(action_space.shape, np.float32))[4]
    finally:
        env.close()


def _cores() -> int:
    """The CPU cores this process may run on (`taskset` and container limits included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _dtype_of(value: Any):
    """The array type gymnasium gives an info value: its own for numbers and bools, else object (and
    object too for the rare numbers the table cannot pack, such as float16: they go through the pipe)."""
    if isinstance(value, (bool, int, float, np.number)):
        dtype = np.dtype(type(value)) if not isinstance(value, np.number) else value.dtype
        return dtype if (dtype.kind, dtype.itemsize) in _STRUCT_CODES else object
    return object
