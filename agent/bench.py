"""`run_drive.py bench`: speed measured side by side in one run, so ratios survive noisy machines.

E2EDrive-v0 steps/s against Gymnasium's CarRacing-v3 (same loop, same wrappers, alternating rounds)
on one track and on the default config with frequent resets; reset times (first visit, revisit)
against CarRacing-v3's; vector envs' total steps/s for 1, 2, 4 and 8 envs (gymnasium's async mode
and our `DriveVectorEnv`, beside one plain env); render-only
frames/s; peak memory over 20 tracks with random palettes; and (with torch) training frames/s and the
policy's latency per frame at batch 1, in torch and in onnxruntime (exported as `export` does); with
`--data`, training samples/s with the frames in RAM against the on-disk frame cache.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.files import write_json
from sim.progress import table

RESET_STEERING = 0.3  # the constant steering of the steps/s-with-resets figures
VECTOR_ENVS = (1, 2, 4, 8)

EXAMPLES = """examples:
  python run_drive.py bench                       # everything, ~2 minutes
  python run_drive.py bench --seconds 2 --json bench.json
  python run_drive.py bench --skip-training       # simulator only
  python run_drive.py bench --vector-envs 1,2 --skip-memory --seconds 1   # a quick look
  python run_drive.py bench --data data/drives/auto   # + training samples/s: frames in RAM vs frame cache
CarRacing-v3 needs Box2D: pip install box2d  (the bench says so when it is missing)."""


def add_arguments(p) -> None:
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement round (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best round counts (default 2)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--skip-training", action="store_true", help="skip the torch measurements")
    p.add_argument("--camera", default="birdseye", help="camera preset for E2EDrive-v0 (default birdseye)")
    p.add_argument("--device", default="auto", help="device for the training measurement: auto, cpu, cuda, cuda:N")
    p.add_argument("--vector-envs", default=",".join(map(str, VECTOR_ENVS)), metavar="N,N,...",
                   help="vector env sizes to measure, async and DriveVectorEnv (default 1,2,4,8)")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-memory run (20 tracks, ~10 s)")
    p.add_argument("--data", metavar="DIR", help="also time training samples from these drives: frames "
                   "in RAM against the frame cache, batch by batch (needs RAM for the frames)")
    p.add_argument("--data-samples", type=int, default=12800, help="samples per side for --data (default 12800)")


def _steps_per_second(env, seconds: float, seed: int = 0, steering: float | None = None) -> float:
    """Steps/s of one env with its resets: small random actions, or a constant `steering` (which
    leaves the road within seconds, so the env resets often, as an RL agent's early episodes do)."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    # actions drawn up front, so the figure is the env's speed, not the action sampler's
    actions = np.stack([env.action_space.sample() * 0.3 for _ in range(1000)]).astype(np.float32)
    if steering is not None:
        actions[:] = 0.0
        actions[:, 0] = steering
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(50):
            _, _, term, trunc, _ = env.step(actions[n % 1000])
            n += 1
            if term or trunc:
                env.reset()
        if time.perf_counter() > deadline:
            break
    return n / (time.perf_counter() - t0)


def _mean_episode_steps(env, steering: float, steps: int = 400) -> float:
    """How many steps an episode lasts with a constant steering (so how often the env resets)."""
    env.reset(seed=0)
    a = np.zeros(env.action_space.shape, np.float32)
    a[0] = steering
    episodes = 0
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            episodes += 1
            env.reset()
    return steps / max(episodes, 1)


def _carracing():
    import gymnasium as gym
    try:
        return gym.make("CarRacing-v3"), None
    except Exception as e:  # gymnasium raises DependencyNotInstalled without Box2D
        return None, str(e).splitlines()[0]


def _reset_ms(env, options: list[dict | None], seed: int) -> tuple[float, float]:
    """Mean (CPU, wall) time in ms of one reset, over resets with these options (each a different
    track). CPU time is this process's own (all its threads): other users of a shared machine do not
    inflate it, as they inflate wall time."""
    c0, w0 = time.process_time(), time.perf_counter()
    for i, opt in enumerate(options):
        env.reset(seed=seed + i, options=opt)
    return (1000 * (time.process_time() - c0) / len(options), 1000 * (time.perf_counter() - w0) / len(options))


def bench_resets(rounds: int, camera: str, theirs) -> dict:
    """Reset time on a first visit to a track and on a revisit, against CarRacing-v3's reset (which
    builds a new track each time). First visits use seeds never generated before, with the disk cache
    of generated tracks in a fresh folder: `generated` includes generating the track (and saving it),
    `from_disk` is the first visit in a process to a track generated by an earlier one. Each figure
    is the best round's mean, in CPU ms (`*_wall` in wall-clock ms)."""
    import tempfile

    import gymnasium as gym

    from sim import track as trackmod

    ours = gym.make("E2EDrive-v0", camera=camera)
    ours.reset(seed=0)
    n = 5
    best: dict[str, float] = {}

    def keep(name: str, cpu_wall: tuple[float, float]) -> None:
        best[name] = min(best.get(name, np.inf), cpu_wall[0])
        best[name + "_wall"] = min(best.get(name + "_wall", np.inf), cpu_wall[1])

    old = os.environ.get("E2E_DRIVE_CACHE")
    with tempfile.TemporaryDirectory(prefix="e2e-drive-bench-") as cache:
        os.environ["E2E_DRIVE_CACHE"] = cache
        try:
            for r in range(rounds):
                specs = [f"procedural:{100_000 + 100 * r + i}" for i in range(n)]
                opts = [{"track": s} for s in specs]
                for s in specs:  # never seen in this process, and not on disk (a fresh cache folder)
                    trackmod.forget(s)
                keep("generated", _reset_ms(ours, opts, r))
                for s in specs:  # as in a new process: the tracks are on disk, not in memory
                    trackmod.forget(s)
                keep("from_disk", _reset_ms(ours, opts, r))
                keep("revisit", _reset_ms(ours, opts, r))
                if theirs is not None:
                    keep("carracing", _reset_ms(theirs, [None] * n, 1000 * r))
        finally:
            if old is None:
                os.environ.pop("E2E_DRIVE_CACHE", None)
            else:
                os.environ["E2E_DRIVE_CACHE"] = old
    ours.close()
    return best


def _vector_steps_per_second(vec, seconds: float, steering: float) -> float:
    """Total steps/s of a vector env, every env steering `steering` (their resets included)."""
    vec.reset(seed=0)
    acts = np.zeros((vec.num_envs,) + vec.single_action_space.shape, np.float32)
    acts[:, 0] = steering
    for _ in range(20):
        vec.step(acts)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            vec.step(acts)
        n += 10 * vec.num_envs
    return n / (time.perf_counter() - t0)


def bench_vector(seconds: float, rounds: int, camera: str, counts: tuple[int, ...], steering: float) -> dict:
    """Total steps/s on the default config with a constant steering (so envs reset often) of one
    plain env and, for each count, of `gym.make_vec(..., vectorization_mode="async")` (gymnasium's
    AsyncVectorEnv, observations in shared memory) and of `sim.vector.DriveVectorEnv`, all measured
    in the same rounds. Best round of each, and DriveVectorEnv's median ratio to the plain env over
    the rounds (each against the plain env measured at the start of the same round)."""
    import gymnasium as gym

    from sim.vector import DriveVectorEnv

    rates: dict[str, list[float]] = {"plain": [], **{f"{kind}{n}": [] for n in counts for kind in ("async", "ours")}}
    plain = gym.make("E2EDrive-v0", camera=camera)
    for _ in range(rounds):
        rates["plain"].append(_steps_per_second(plain, seconds, steering=steering))
        for n_envs in counts:
            for kind in ("async", "ours"):
                vec = (gym.make_vec("E2EDrive-v0", num_envs=n_envs, vectorization_mode="async", camera=camera)
                       if kind == "async" else DriveVectorEnv(n_envs, camera=camera))
                try:
                    rates[f"{kind}{n_envs}"].append(_vector_steps_per_second(vec, seconds, steering))
                finally:
                    vec.close()
    plain.close()
    res = {"plain": max(rates["plain"]), **{str(n): max(rates[f"async{n}"]) for n in counts}}
    ours = {str(n): max(rates[f"ours{n}"]) for n in counts}
    # this machine's cores change speed from second to second: a ratio within each round (each vector
    # env against the plain env measured at the start of the same round) is steadier than one of bests
    paired = {str(n): float(np.median([v / p for v, p in zip(rates[f"ours{n}"], rates["plain"])])) for n in counts}
    return {"async": res, "drive_vector": ours, "drive_vector_paired": paired}


def bench_env(seconds: float, rounds: int, camera: str, vector_envs: tuple[int, ...] = VECTOR_ENVS,
              memory: bool = True) -> dict:
    import gymnasium as gym

    import sim  # noqa: F401  (registers E2EDrive-v0)

    ours = gym.make("E2EDrive-v0", track="procedural:1", camera=camera)
    default = gym.make("E2EDrive-v0", camera=camera)  # procedural:0-19, terminate on leaving the road
    race = gym.make("E2EDrive-v0", track="procedural:1", camera=camera, task="race")
    traffic = gym.make("E2EDrive-v0", track="procedural:1", camera=camera, task="traffic")  # default density
    theirs, why = _carracing()
    res: dict = {"e2edrive_steps_per_s": 0.0, "resets_steps_per_s": 0.0, "race_steps_per_s": 0.0,
                 "traffic_steps_per_s": 0.0}
    if theirs is not None:
        res["carracing_steps_per_s"] = 0.0
    for _ in range(rounds):
        res["e2edrive_steps_per_s"] = max(res["e2edrive_steps_per_s"], _steps_per_second(ours, seconds))
        res["resets_steps_per_s"] = max(res["resets_steps_per_s"],
                                        _steps_per_second(default, seconds, steering=RESET_STEERING))
        res["race_steps_per_s"] = max(res["race_steps_per_s"], _steps_per_second(race, seconds))
        res["traffic_steps_per_s"] = max(res["traffic_steps_per_s"], _steps_per_second(traffic, seconds))
        if theirs is not None:
            res["carracing_steps_per_s"] = max(res["carracing_steps_per_s"], _steps_per_second(theirs, seconds))
    res["resets_episode_steps"] = _mean_episode_steps(default, RESET_STEERING)
    ours.close()
    default.close()
    race.close()
    traffic.close()
    res["reset_ms"] = bench_resets(rounds, camera, theirs)
    if theirs is not None:
        res["ratio"] = res["e2edrive_steps_per_s"] / res["carracing_steps_per_s"]
        res["resets_ratio"] = res["resets_steps_per_s"] / res["carracing_steps_per_s"]
        res["race_ratio"] = res["race_steps_per_s"] / res["carracing_steps_per_s"]
        res["traffic_ratio"] = res["traffic_steps_per_s"] / res["carracing_steps_per_s"]
        theirs.close()
    else:
        res["carracing_note"] = f"CarRacing-v3 not measured ({why}); install Box2D with: pip install box2d"

    both = bench_vector(seconds, rounds, camera, vector_envs, RESET_STEERING)
    vec = res["vector_steps_per_s"] = both["async"]
    ours = res["drive_vector_steps_per_s"] = both["drive_vector"]
    if "2" in vec:
        res["vector_ratio_2"] = vec["2"] / vec["plain"]
        res["drive_vector_ratio_2"] = ours["2"] / vec["plain"]
        res["drive_vector_paired_ratio_2"] = both["drive_vector_paired"]["2"]
        res["vector_rounds"] = rounds
        if "1" in vec:
            res["vector_scaling_2"] = vec["2"] / vec["1"]

    from sim import Camera, camera_from_name, load_track
    track = load_track("procedural:1")
    cam = Camera(track, camera_from_name(camera))
    p, h = track.point_at(100.0), track.heading_at(100.0)
    cam.render(p[0], p[1], h)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(200):
            cam.render(p[0], p[1], h + i * 1e-3)
        n += 200
    res["render_frames_per_s"] = n / (time.perf_counter() - t0)
    res["memory"] = bench_memory(camera) if memory else {"note": "peak RSS not measured (--skip-memory)"}
    return res


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux the memory map's own high-water mark
    (`VmHWM`): `ru_maxrss` of a process started by another also counts the parent's resident memory
    at the start (the kernel carries it over the fork and exec), so it would report the bench's own
    size, not the measured run's."""
    import resource
    import sys

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def memory_cycle(camera: str = "birdseye", n_tracks: int = 20, passes: int = 2, steps: int = 300) -> dict:
    """Drive `passes` times through procedural:0..n_tracks-1 with a new random palette each episode
    (the expert steers, up to `steps` steps per episode) and report this process's peak RSS."""
    import gymnasium as gym

    import sim

    env = gym.make("E2EDrive-v0", camera=camera, randomise_palette=True, track=f"procedural:0-{n_tracks - 1}")
    expert = sim.Expert()
    episodes = 0
    for p in range(passes):
        for i in range(n_tracks):
            env.reset(seed=p * n_tracks + i, options={"track": f"procedural:{i}"})
            episodes += 1
            for _ in range(steps):
                _, _, term, trunc, _ = env.step(expert.act(env))
                if term or trunc:
                    break
    return {"peak_rss_mb": peak_rss_mb(), "tracks": n_tracks, "episodes": episodes, "passes": passes,
            "steps_per_episode": steps}


def bench_memory(camera: str) -> dict:
    """`memory_cycle` in a fresh process, so nothing else this bench did counts in its peak."""
    import subprocess
    import sys

    code = f"import json, agent.bench as b; print(json.dumps(b.memory_cycle({camera!r})))"
    try:
        import resource  # noqa: F401  (Unix only)
    except ImportError:
        return {"note": "peak RSS not measured (no `resource` module on this system)"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], check=False)
    if r.returncode != 0:
        return {"note": f"peak RSS not measured: {(r.stderr.strip().splitlines() or ['?'])[-1]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_torch(seconds: float, camera: str, device: str) -> dict:
    import torch

    from agent.model import build_model
    from agent.preprocess import preprocess
    from sim import camera_from_name

    cam = camera_from_name(camera)
    from agent.train import bf16_supported, pick_device

    dev = pick_device(device)
    res: dict = {"device": str(dev)}
    try:
        from agent.train import TrainConfig
        batch = TrainConfig().batch
    except Exception:
        batch = 128
    frames = np.random.default_rng(0).integers(0, 256, (batch, cam.height, cam.width, 3), dtype=np.uint8)
    cores = os.cpu_count() or 1
    for arch in ("pilotnet", "small"):
        model = build_model(arch, cam).to(dev)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.as_tensor(preprocess(frames)).to(dev)
        y = torch.zeros(batch, 1, device=dev)
        best, best_threads = 0.0, torch.get_num_threads()
        # like `train`, try one thread and all cores: on a busy CPU more threads can be slower
        for threads in sorted({1, cores}) if dev.type == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            rate = _train_rate(model, opt, x, y, seconds, bf16=False)
            res[f"{arch}_train_frames_per_s_{threads}_threads"] = rate
            if rate > best:
                best, best_threads = rate, threads
        res[f"{arch}_train_frames_per_s"] = best
        if bf16_supported(dev):  # `train --precision bf16` (on GPUs, auto), at the faster thread count,
            torch.set_num_threads(best_threads)  # alternating with float32 rounds: a ratio of neighbours
            pairs = [(_train_rate(model, opt, x, y, seconds / 2, bf16=True),
                      _train_rate(model, opt, x, y, seconds / 2, bf16=False)) for _ in range(2)]
            res[f"{arch}_train_bf16_frames_per_s"] = max(b for b, _ in pairs)
            res[f"{arch}_train_bf16_ratio"] = float(np.median([b / f for b, f in pairs]))
        res[f"{arch}_params"] = sum(p.numel() for p in model.parameters())
        # latency: frame -> steering at batch 1 on the CPU with one thread, as the driving loops run it,
        # in torch and in onnxruntime side by side
        from agent.export import compare_latency
        lat = compare_latency(model, cam, seconds=min(seconds, 2.0) / 2)
        res[f"{arch}_cpu_latency_ms"] = lat["torch_ms"]
        if "onnxruntime_ms" in lat:
            res[f"{arch}_onnxruntime_latency_ms"] = lat["onnxruntime_ms"]
        else:
            res["onnxruntime_note"] = lat["onnxruntime_note"]
    res["batch"] = batch
    return res


def _train_rate(model, opt, x, y, seconds: float, bf16: bool) -> float:
    """Training frames/s of `model` on the batch (x, y): forward, MSE, backward, optimiser step."""
    import torch

    def step() -> None:
        with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):  # untimed: the first steps of a precision build its kernels
        step()
    n, batch = 0, len(x)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3 * batch:
        step()
        n += batch
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def bench_data(data_dir: str, samples: int) -> dict:
    """Samples/s of `FrameDataset` (+ collate) with the frames decoded in RAM and read from the frame
    cache, interleaved batch by batch so both see the same machine load; the same random samples, with
    and without the default augmentation, each batch taken as the DataLoader takes it
    (`__getitems__`: a batch's frames read together). Both sides first make every sample once,
    untimed, so both are timed in the same state, that of every epoch after the first: the track maps
    the viewpoint shifts need are drawn (they are shared, so whichever side came first would pay for
    both) and the cache's frames are in the OS page cache. With the default augmentation, also train
    frames/s: each batch followed by a PilotNet training step (1 thread)."""
    import torch
    import torch.nn.functional as F

    from agent.dataset import NO_AUGMENT, AugmentConfig, FrameDataset, collate, load_drives
    from agent.model import build_model

    with open(os.devnull, "w") as quiet:
        sets = {"ram": load_drives(data_dir, cache=False, stream=quiet), "cache": load_drives(data_dir, stream=quiet)}
    res: dict = {"frames": sets["ram"].frames, "samples": samples}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model("pilotnet", sets["ram"].env.camera)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for name, aug in (("no_augment", NO_AUGMENT), ("augment", AugmentConfig())):
        ds = {k: FrameDataset(v.drives, v.env, aug) for k, v in sets.items()}
        idx = np.random.default_rng(1).integers(0, len(ds["ram"]), samples).tolist()
        batches = [idx[start:start + 64] for start in range(0, samples, 64)]
        for b, batch in enumerate(batches):  # untimed: maps drawn, frames in the page cache
            x_ram, x_cache = (collate(ds[side].__getitems__(batch))[0] for side in ("ram", "cache"))
            if b == 0 and not bool((x_ram == x_cache).all()):  # the two sides must do the same work
                raise RuntimeError(f"{data_dir}: the frame cache gave other samples than the decoded drives")
        spent = {"ram": 0.0, "cache": 0.0}
        trained = {"ram": 0.0, "cache": 0.0}
        for b, batch in enumerate(batches):
            for side in ("ram", "cache") if b % 2 else ("cache", "ram"):
                t = time.perf_counter()
                x, y = collate(ds[side].__getitems__(batch))
                spent[side] += time.perf_counter() - t
                if name == "augment":
                    t = time.perf_counter()
                    loss = F.mse_loss(model(x), y[:, :1])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    trained[side] += time.perf_counter() - t
        for side, s in spent.items():
            res[f"{name}_{side}_samples_per_s"] = samples / s
            if name == "augment":
                res[f"train_{side}_frames_per_s"] = samples / (s + trained[side])
    torch.set_num_threads(threads)
    return res


def main(args) -> int:
    if args.seconds <= 0:
        raise UserError(f"--seconds must be positive, got {args.seconds}")
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
    if args.data and args.data_samples < 64:
        raise UserError(f"--data-samples must be at least 64 (one batch), got {args.data_samples}")
    if not args.skip_training:
        try:
            from agent.train import pick_device
        except ImportError:
            pass  # no torch: the training figures are skipped with a note
        else:
            pick_device(args.device)  # a bad --device fails now, not after the simulator rounds
    from sim import camera_from_name
    try:
        camera_from_name(args.camera)
    except ValueError as e:
        raise UserError(f"--camera: {e}") from None
    print(f"benchmarking E2EDrive-v0 ({args.camera}) against CarRacing-v3, {args.rounds} rounds of "
          f"{args.seconds:g} s each ...", flush=True)
    try:
        counts = tuple(int(v) for v in args.vector_envs.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--vector-envs: expected numbers like 1,2,4,8, got {args.vector_envs!r}") from None
    if any(n < 1 for n in counts):
        raise UserError(f"--vector-envs: sizes must be at least 1, got {args.vector_envs!r}")
    res = {"env": bench_env(args.seconds, args.rounds, args.camera, counts, memory=not args.skip_memory)}
    e = res["env"]
    rows = [["E2EDrive-v0 steps/s, one track (procedural:1), small random steering",
             f"{e['e2edrive_steps_per_s']:,.0f}"],
            [f"E2EDrive-v0 steps/s, default config (procedural:0-19, terminate), constant steering "
             f"{RESET_STEERING:g}: a reset every {e['resets_episode_steps']:.0f} steps",
             f"{e['resets_steps_per_s']:,.0f}"],
            ["E2EDrive-v0 task=race steps/s (1 env, dynamic car)", f"{e['race_steps_per_s']:,.0f}"],
            ["E2EDrive-v0 task=traffic steps/s (1 env, default density)", f"{e['traffic_steps_per_s']:,.0f}"]]
    if "carracing_steps_per_s" in e:
        rows += [["CarRacing-v3 steps/s (1 env, its resets included)", f"{e['carracing_steps_per_s']:,.0f}"],
                 ["ratio E2EDrive / CarRacing, one track", f"{e['ratio']:.1f}x"],
                 ["ratio E2EDrive / CarRacing, default config with resets", f"{e['resets_ratio']:.1f}x"],
                 ["ratio E2EDrive race / CarRacing", f"{e['race_ratio']:.1f}x"],
                 ["ratio E2EDrive traffic / CarRacing", f"{e['traffic_ratio']:.1f}x"]]
    r = e["reset_ms"]
    rows += [["E2EDrive-v0 reset, first visit (generating the track), CPU ms", f"{r['generated']:.1f}"],
             ["E2EDrive-v0 reset, first visit in a process (track on disk), CPU ms", f"{r['from_disk']:.1f}"],
             ["E2EDrive-v0 reset, revisit, CPU ms", f"{r['revisit']:.2f}"]]
    if "carracing" in r:
        rows += [["CarRacing-v3 reset (a new track each time), CPU ms", f"{r['carracing']:.1f}"]]
    for n, v in e["vector_steps_per_s"].items():
        what = ("one plain env (gym.make, no vector env)" if n == "plain"
                else f"gym.make_vec(..., vectorization_mode='async'), {n} env{'s' * (n != '1')}")
        rows += [[f"{what}, total steps/s (default config, with resets)", f"{v:,.0f}"]]
    for n, v in e["drive_vector_steps_per_s"].items():
        rows += [[f"sim.vector.DriveVectorEnv, {n} env{'s' * (n != '1')}, total steps/s", f"{v:,.0f}"]]
    if "vector_scaling_2" in e:
        rows += [["ratio async 2 envs / async 1 env", f"{e['vector_scaling_2']:.2f}x"]]
    if "vector_ratio_2" in e:
        rows += [["ratio async 2 envs / 1 plain env (with resets)", f"{e['vector_ratio_2']:.2f}x"],
                 ["ratio DriveVectorEnv 2 envs / 1 plain env (with resets)", f"{e['drive_vector_ratio_2']:.2f}x"],
                 [f"ratio DriveVectorEnv 2 envs / 1 plain env, median of {e['vector_rounds']} rounds' ratios",
                  f"{e['drive_vector_paired_ratio_2']:.2f}x"]]
    rows += [["render only, frames/s", f"{e['render_frames_per_s']:,.0f}"]]
    m = e["memory"]
    if "peak_rss_mb" in m:
        rows += [[f"peak RSS, {m['tracks']} tracks x {m['passes']} passes, random palettes, "
                  f"expert up to {m['steps_per_episode']} steps each, MB", f"{m['peak_rss_mb']:,.0f}"]]
    if not args.skip_training:
        try:
            res["torch"] = bench_torch(args.seconds, args.camera, args.device)
        except ImportError as err:
            res["torch_note"] = f"training not measured: {err}"
        else:
            t = res["torch"]
            for arch in ("pilotnet", "small"):
                rows += [[f"{arch} ({t[f'{arch}_params']:,} params) training frames/s, batch {t['batch']}, "
                          f"{t['device']}", f"{t[f'{arch}_train_frames_per_s']:,.0f}"],
                         *([[f"{arch} training frames/s, bf16 autocast (`train --precision bf16`)",
                              f"{t[f'{arch}_train_bf16_frames_per_s']:,.0f} "
                              f"({t[f'{arch}_train_bf16_ratio']:.2f}x float32 in alternating rounds)"]]
                           if f"{arch}_train_bf16_frames_per_s" in t else []),
                         [f"{arch} policy latency per frame, batch 1, cpu, 1 thread: torch",
                          f"{t[f'{arch}_cpu_latency_ms']:.2f} ms"]]
                if f"{arch}_onnxruntime_latency_ms" in t:
                    ort_ms = t[f"{arch}_onnxruntime_latency_ms"]
                    rows += [[f"{arch} policy latency per frame, batch 1, cpu, 1 thread: onnxruntime",
                              f"{ort_ms:.2f} ms ({t[f'{arch}_cpu_latency_ms'] / ort_ms:.1f}x torch's speed)"]]
    if args.data:
        res["data"] = d = bench_data(args.data, args.data_samples)
        for name, what in (("augment", "default augmentation"), ("no_augment", "no augmentation")):
            ram, cache = d[f"{name}_ram_samples_per_s"], d[f"{name}_cache_samples_per_s"]
            rows += [[f"training samples/s, {what}, {d['frames']:,} frames: in RAM / frame cache",
                      f"{ram:,.0f} / {cache:,.0f} ({cache / ram:.2f}x)"]]
        ram, cache = d["train_ram_frames_per_s"], d["train_cache_frames_per_s"]
        rows += [["train frames/s (those batches + a pilotnet step, cpu, 1 thread): in RAM / frame cache",
                  f"{ram:,.1f} / {cache:,.1f} ({cache / ram:.2f}x)"]]
    print(table(["measure", "value"], rows, title="\nE2E Drive bench"))
    for note in (e.get("carracing_note"), m.get("note"), res.get("torch", {}).get("onnxruntime_note")):
        if note:
            print(note)
    if args.json:
        write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0
