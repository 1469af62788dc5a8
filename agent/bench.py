"""`run_drive.py bench`: speed measured side by side in one run, so ratios survive noisy machines.

E2EDrive-v0 steps/s against Gymnasium's CarRacing-v3 (same loop, same wrappers, alternating rounds),
a vectorised env's total steps/s, render-only frames/s, and (with torch) training frames/s and the
policy's latency per frame at batch 1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.files import atomic_write_text
from sim.progress import table

EXAMPLES = """examples:
  python run_drive.py bench                       # everything, ~1 minute
  python run_drive.py bench --seconds 2 --json bench.json
  python run_drive.py bench --skip-training       # simulator only
CarRacing-v3 needs Box2D: pip install box2d  (the bench says so when it is missing)."""


def add_arguments(p) -> None:
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement round (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best round counts (default 2)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--skip-training", action="store_true", help="skip the torch measurements")
    p.add_argument("--camera", default="birdseye", help="camera preset for E2EDrive-v0 (default birdseye)")
    p.add_argument("--device", default="auto", help="device for the training measurement: auto, cpu, cuda, cuda:N")


def _steps_per_second(env, seconds: float, seed: int = 0) -> float:
    env.reset(seed=seed)
    env.action_space.seed(seed)
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(50):
            _, _, term, trunc, _ = env.step(env.action_space.sample() * 0.3)
            n += 1
            if term or trunc:
                env.reset()
        if time.perf_counter() > deadline:
            break
    return n / (time.perf_counter() - t0)


def bench_env(seconds: float, rounds: int, camera: str) -> dict:
    import gymnasium as gym

    import sim  # noqa: F401  (registers E2EDrive-v0)

    ours = gym.make("E2EDrive-v0", track="procedural:1", camera=camera)
    race = gym.make("E2EDrive-v0", track="procedural:1", camera=camera, task="race")
    traffic = gym.make("E2EDrive-v0", track="procedural:1", camera=camera, task="traffic")  # default density
    try:
        theirs = gym.make("CarRacing-v3")
    except Exception as e:  # gymnasium raises DependencyNotInstalled without Box2D
        theirs = None
        why = str(e).splitlines()[0]
    res: dict = {"e2edrive_steps_per_s": 0.0, "race_steps_per_s": 0.0, "traffic_steps_per_s": 0.0}
    if theirs is not None:
        res["carracing_steps_per_s"] = 0.0
    for _ in range(rounds):
        res["e2edrive_steps_per_s"] = max(res["e2edrive_steps_per_s"], _steps_per_second(ours, seconds))
        res["race_steps_per_s"] = max(res["race_steps_per_s"], _steps_per_second(race, seconds))
        res["traffic_steps_per_s"] = max(res["traffic_steps_per_s"], _steps_per_second(traffic, seconds))
        if theirs is not None:
            res["carracing_steps_per_s"] = max(res["carracing_steps_per_s"], _steps_per_second(theirs, seconds))
    if theirs is not None:
        res["ratio"] = res["e2edrive_steps_per_s"] / res["carracing_steps_per_s"]
        res["race_ratio"] = res["race_steps_per_s"] / res["carracing_steps_per_s"]
        res["traffic_ratio"] = res["traffic_steps_per_s"] / res["carracing_steps_per_s"]
        theirs.close()
    else:
        res["carracing_note"] = f"CarRacing-v3 not measured ({why}); install Box2D with: pip install box2d"
    ours.close()
    race.close()
    traffic.close()

    n_envs = max(2, min(4, os.cpu_count() or 2))
    vec = gym.make_vec("E2EDrive-v0", num_envs=n_envs, vectorization_mode="async", track="procedural:1",
                       camera=camera)
    vec.reset(seed=0)
    acts = np.zeros((n_envs, 1), np.float32)
    vec.step(acts)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        vec.step(acts)
        n += n_envs
    res["vector_envs"] = n_envs
    res["vector_total_steps_per_s"] = n / (time.perf_counter() - t0)
    vec.close()

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
    return res


def bench_torch(seconds: float, camera: str, device: str) -> dict:
    import torch

    from agent.model import build_model
    from agent.preprocess import preprocess
    from sim import camera_from_name

    cam = camera_from_name(camera)
    from agent.train import pick_device

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
        best = 0.0
        # like `train`, try one thread and all cores: on a busy CPU more threads can be slower
        for threads in sorted({1, cores}) if dev.type == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds or n < 3 * batch:
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += batch
            if dev.type == "cuda":
                torch.cuda.synchronize()
            rate = n / (time.perf_counter() - t0)
            res[f"{arch}_train_frames_per_s_{threads}_threads"] = rate
            best = max(best, rate)
        res[f"{arch}_train_frames_per_s"] = best
        res[f"{arch}_params"] = sum(p.numel() for p in model.parameters())
        # latency: frame -> steering at batch 1 on the CPU with one thread, as the driving loops run it
        model = model.cpu().eval()
        torch.set_num_threads(1)
        one = frames[:1]
        with torch.inference_mode():
            for _ in range(10):
                model(torch.as_tensor(preprocess(one)))
            k = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < min(seconds, 2.0):
                model(torch.as_tensor(preprocess(one)))
                k += 1
        res[f"{arch}_cpu_latency_ms"] = 1000 * (time.perf_counter() - t0) / k
    res["batch"] = batch
    return res


def main(args) -> int:
    if args.seconds <= 0:
        raise UserError(f"--seconds must be positive, got {args.seconds}")
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
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
    res = {"env": bench_env(args.seconds, args.rounds, args.camera)}
    e = res["env"]
    rows = [["E2EDrive-v0 steps/s (1 env)", f"{e['e2edrive_steps_per_s']:,.0f}"],
            ["E2EDrive-v0 task=race steps/s (1 env, dynamic car)", f"{e['race_steps_per_s']:,.0f}"],
            ["E2EDrive-v0 task=traffic steps/s (1 env, default density)", f"{e['traffic_steps_per_s']:,.0f}"]]
    if "carracing_steps_per_s" in e:
        rows += [["CarRacing-v3 steps/s (1 env)", f"{e['carracing_steps_per_s']:,.0f}"],
                 ["ratio E2EDrive / CarRacing", f"{e['ratio']:.1f}x"],
                 ["ratio E2EDrive race / CarRacing", f"{e['race_ratio']:.1f}x"],
                 ["ratio E2EDrive traffic / CarRacing", f"{e['traffic_ratio']:.1f}x"]]
    rows += [[f"E2EDrive-v0 async vector env, {e['vector_envs']} envs, total steps/s",
              f"{e['vector_total_steps_per_s']:,.0f}"],
             ["render only, frames/s", f"{e['render_frames_per_s']:,.0f}"]]
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
                         [f"{arch} policy latency per frame, batch 1, cpu, 1 thread",
                          f"{t[f'{arch}_cpu_latency_ms']:.2f} ms"]]
    print(table(["measure", "value"], rows, title="\nE2E Drive bench"))
    if "carracing_note" in e:
        print(e["carracing_note"])
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0
