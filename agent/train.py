"""`run_drive.py train`: behavioural cloning of the steering CNN on recorded drives.

One visible loop: sample balanced, augmented batches, regress the recorded steering (MSE), check the
validation drives after each epoch, keep the best policy (`save_policy`) in the output folder, and a
resumable checkpoint (safetensors + JSON, no pickle) every epoch and every minute. Runs on CPU, one
GPU, or several under `torchrun --nproc_per_node N` (DDP: NCCL on GPUs, gloo on CPUs).

The output folder is the policy folder: `model.safetensors` + `card.json` (the best epoch), plus
`train_state.json` and `train_state_*.safetensors` (to resume), `loss_curves.png`, `history.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sim.errors import UserError
from sim.files import atomic_savefig, atomic_write
from sim.progress import Progress, table
from sim.render import CameraConfig, camera_from_name

from .dataset import (
    NO_AUGMENT,
    AugmentConfig,
    BalancedSampler,
    FrameDataset,
    balance_weights,
    collate,
    load_drives,
    split_by_drive,
    val_index,
)
from .model import ARCHS, CARD_FILE, build_model, count_parameters, save_policy

EXAMPLES = """examples:
  python run_drive.py train --data data/drives/auto --out data/models/pilot --minutes 10
  python run_drive.py train --data data/drives/auto --out data/models/pilot --minutes 20 --resume
  python run_drive.py train --data data/drives/me --out data/models/mine --epochs 8 --arch small --smooth 0.3
  torchrun --standalone --nproc_per_node 4 run_drive.py train --data data/drives/auto --out data/models/ddp \\
      --epochs 20 --device cuda

The output folder is the policy (load it with `eval --model DIR`). --minutes and --epochs are totals:
after a kill, the same command with --resume trains only what is left."""

STATE_JSON = "train_state.json"
STATE_RE = re.compile(r"^train_state_\d{8}\.safetensors$")
CHECKPOINT_EVERY_S = 60.0
PLOT_EVERY_S = 60.0  # matplotlib is slow to start: curves after the first epoch, then at most once a minute


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run; saved in the checkpoint and the policy card."""

    arch: str = "pilotnet"
    batch: int = 64
    lr: float = 1e-3
    lr_final: float = 0.05  # cosine decay to this fraction of lr at the end of the budget
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.15
    balance: float = 0.7  # 0 = sample frames as recorded, 1 = flat |steering| histogram
    epoch_frames: int | None = None  # samples per epoch; None: as many as training frames
    smooth: float | None = None  # label smoothing (s); None: keyboard drives 0.25 s, others none
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @staticmethod
    def from_dict(d: dict) -> TrainConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return TrainConfig(**d)


@dataclass
class TrainResult:
    out: Path
    epochs: float
    steps: int
    best_val_loss: float
    best_epoch: int
    minutes: float
    frames_per_s: float
    device: str


# -- small helpers ---------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when there is a GPU), `cpu`, `cuda` or `cuda:N`; anything else is a `UserError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
        return dev
    raise UserError(f"--device {name}: unknown device (use auto, cpu, cuda or cuda:N)")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pick_threads(arch: str, camera: CameraConfig, batch: int, most: int) -> tuple[int, dict[int, float]]:
    """The torch thread count that trains fastest here and now, from a few timed steps of each.

    On a shared CPU, more threads can be several times slower than one (each step waits for the
    slowest thread), so the count is measured, not assumed."""
    if most <= 1:
        return 1, {}
    x = torch.rand(min(batch, 64), 3, camera.height, camera.width)
    y = torch.zeros(len(x), 1)
    net = build_model(arch, camera)
    speed = {}
    for n in sorted({1, most}):
        torch.set_num_threads(n)
        F.mse_loss(net(x), y).backward()  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            F.mse_loss(net(x), y).backward()
        speed[n] = 3 * len(x) / (time.perf_counter() - t)
    best = max(speed, key=speed.get)
    torch.set_num_threads(best)
    return best, speed


def lr_at(cfg: TrainConfig, frac: float, step: int, warmup: int = 100) -> float:
    """Short linear warm-up, then cosine decay from lr to lr * lr_final over the budget."""
    frac = min(max(frac, 0.0), 1.0)
    cos = cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * cos * min(1.0, (step + 1) / warmup)


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


# -- checkpoints -------------------------------------------------------------------------------------
def save_checkpoint(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Model, optimizer and RNG tensors to `train_state_<step>.safetensors`, then `train_state.json`
    naming it (with its hash). Each file is atomic and the JSON goes last, so a kill at any moment
    leaves the previous checkpoint whole."""
    from safetensors.torch import save

    model = getattr(model, "module", model)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for name, t in st.items():
            tensors[f"opt.{pid}.{name}"] = (t if torch.is_tensor(t) else torch.tensor(t)).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    blob = save(tensors)
    name = f"train_state_{state['step']:08d}.safetensors"
    atomic_write(out / name, blob)
    meta = dict(state, tensors=name, sha256=hashlib.sha256(blob).hexdigest(), param_groups=osd["param_groups"])
    _write_json(out / STATE_JSON, meta)
    for p in out.iterdir():
        if STATE_RE.match(p.name) and p.name != name:
            p.unlink(missing_ok=True)


def load_checkpoint(out: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The saved training state and its tensors, or None when there is no checkpoint."""
    from safetensors.torch import load

    path = out / STATE_JSON
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        name = meta["tensors"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: unreadable training checkpoint ({type(e).__name__})") from None
    if not isinstance(name, str) or not STATE_RE.match(name):
        raise UserError(f"{path}: checkpoint must name a train_state_*.safetensors file in its folder")
    tpath = out / name
    if not tpath.is_file():
        raise UserError(f"{tpath}: checkpoint tensors missing")
    blob = tpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise UserError(f"{tpath}: does not match {STATE_JSON} (hash differs)")
    try:
        return meta, load(blob)
    except Exception as e:  # noqa: BLE001 - a damaged untrusted file, whatever safetensors says
        raise UserError(f"{tpath}: not a valid safetensors file ({str(e).splitlines()[0][:100]})") from None


def restore(meta: dict, tensors: dict[str, torch.Tensor], model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])


# -- plots -----------------------------------------------------------------------------------------
def plot_curves(history: list[dict], path: Path) -> None:
    """Training and validation loss per epoch, and the learning rate, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    if any(h.get("val_loss") is not None for h in history):
        ax[0].plot(ep, [h.get("val_loss") for h in history], "s-", label="validation")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("MSE of steering")
    ax[0].set_yscale("log")
    ax[0].grid(alpha=0.3)
    ax[0].legend()
    ax[1].plot(ep, [h["lr"] for h in history], "o-")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("learning rate (end of epoch)")
    ax[1].grid(alpha=0.3)
    fig.suptitle(f"training: {path.parent.name}")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)


# -- distributed -----------------------------------------------------------------------------------
def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run directly."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def warm_start(model: torch.nn.Module, init_from: str | os.PathLike, arch: str, camera: CameraConfig) -> None:
    """Start from a trained policy's weights instead of random ones (DAgger retrains this way)."""
    from .model import load_policy

    policy = load_policy(init_from)
    if policy.card["arch"] != arch:
        raise UserError(f"--init-from {init_from}: a {policy.card['arch']} network, but training a {arch} one")
    if policy.camera != camera:
        raise UserError(f"--init-from {init_from}: trained on another camera than these drives")
    model.load_state_dict(policy.model.state_dict())


# -- the run ---------------------------------------------------------------------------------------
def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: parent folder {out.parent} does not exist")
    if out.is_dir() and not (resume or overwrite) and ((out / CARD_FILE).exists() or (out / STATE_JSON).exists()):
        raise UserError(f"--out {out}: already holds a trained policy; add --resume to continue it, "
                        "--overwrite to replace it, or choose another folder")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder is not writable")
    if not out.is_dir() and not os.access(out.parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot create it, {out.parent} is not writable")


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, minutes: float | None = None,
          epochs: int | None = None, cfg: TrainConfig = TrainConfig(), device: str = "auto",
          resume: bool = False, overwrite: bool = False, workers: int | None = None, camera: str | None = None,
          verbose: bool = True, init_from: str | os.PathLike | None = None, **overrides) -> TrainResult:
    """Train a policy on the drives under `data_dir` into `out_dir` (the policy folder).

    The budget is `minutes` of training (validation included, loading not) or `epochs`, both totals
    across resumes; with neither, 10 epochs. `overrides` replace fields of `cfg` (arch=, batch=, lr=,
    seed=, ...). With `resume`, the checkpoint's settings are used and the budget is what is left.
    """
    t_start = time.perf_counter()
    cfg = replace(cfg, **overrides)
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise UserError(f"--minutes {minutes}: must be a positive number")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs}: must be a whole number >= 1")
    if cfg.arch not in ARCHS:
        raise UserError(f"--arch {cfg.arch}: unknown architecture (choose from {', '.join(ARCHS)})")
    if cfg.batch < 1:
        raise UserError(f"--batch {cfg.batch}: must be >= 1")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UserError(f"--lr {cfg.lr}: must be a positive number")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers}: must be >= 0")
    if cfg.smooth is not None and not (0 <= cfg.smooth < 10):
        raise UserError(f"--smooth {cfg.smooth}: must be between 0 and 10 seconds")
    try:
        want_cam = camera_from_name(camera) if camera else None
    except ValueError as e:
        raise UserError(f"--camera {camera}: {e}") from None
    rank, world, local_rank = _dist_env()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
    main_rank = rank == 0
    log = sys.stderr if (verbose and main_rank) else io.StringIO()
    say = (lambda *a: print(*a, file=sys.stdout, flush=True)) if (verbose and main_rank) else (lambda *a: None)
    out = Path(out_dir)
    if main_rank:
        _check_out(out, resume, overwrite)

    ckpt = load_checkpoint(out) if resume else None
    if resume and ckpt is None:
        say(f"note: no checkpoint in {out} yet; starting a new run")
    if ckpt is not None:
        cfg = TrainConfig.from_dict(ckpt[0]["config"])
        if minutes is None and epochs is None:
            minutes, epochs = ckpt[0].get("minutes_budget"), ckpt[0].get("epochs_budget")
        if ckpt[0].get("camera"):
            saved_cam = CameraConfig(**ckpt[0]["camera"])
            if want_cam is not None and want_cam != saved_cam:
                raise UserError(f"--camera {camera}: the checkpoint in {out} was trained on another camera")
            want_cam = saved_cam
    if minutes is None and epochs is None:
        epochs = 10

    # threads: all cores to the maths on CPU, shared fairly between DDP ranks and loader workers
    if workers is None:
        workers = min(6, max(cpu_count() - 1, 0)) if dev.type == "cuda" else 0
    threads = max(1, cpu_count() // world - workers)
    if dev.type == "cpu":
        torch.set_num_threads(threads)

    data = load_drives(data_dir, camera=want_cam, smooth=cfg.smooth, stream=log)
    if ckpt is None and want_cam is None:
        # an arch must fit the frames: fail now with a clear line, not inside the first batch
        build_model(cfg.arch, data.env.camera)
    for w in data.warnings[:5]:
        print(f"warning: {w}", file=log)
    if len(data.warnings) > 5:
        print(f"warning: ... and {len(data.warnings) - 5} more", file=log)
    if main_rank:
        try:
            out.mkdir(exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create folder ({e.strerror})") from None
        for stale in [*out.glob(".*.tmp"), *out.glob(".*.tmp.png")]:  # temp files of a killed run
            stale.unlink(missing_ok=True)
    train_ids, val_ids = split_by_drive(len(data.drives), cfg.val_fraction, cfg.seed)
    train_drives = [data.drives[i] for i in train_ids]
    val_drives = [data.drives[i] for i in val_ids]
    train_ds = FrameDataset(train_drives, data.env, cfg.augment, seed=cfg.seed)
    val_ds = FrameDataset(val_drives, data.env, NO_AUGMENT, index=val_index(val_drives)) if val_drives else None
    weights = balance_weights(train_ds.labels, power=cfg.balance)
    epoch_frames = cfg.epoch_frames or len(train_ds)
    sampler = BalancedSampler(weights, epoch_frames, seed=cfg.seed, rank=rank, world=world)

    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
    if dev.type == "cpu" and threads > 1:
        chosen, speeds = pick_threads(cfg.arch, data.env.camera, cfg.batch, threads)
        say(f"torch threads: {chosen} (" + ", ".join(f"{n}: {v:.0f} frames/s" for n, v in speeds.items()) + ")")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, data.env.camera).to(dev)
    if init_from is not None and ckpt is None:
        warm_start(model, init_from, cfg.arch, data.env.camera)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    epoch, batch_in_epoch, step, trained_s, frames_seen = 0, 0, 0, 0.0, 0
    best = {"val_loss": float("inf"), "epoch": -1.0, "index": -1}
    if ckpt is not None:
        meta, tensors = ckpt
        try:
            restore(meta, tensors, model, opt)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise UserError(f"{out / STATE_JSON}: checkpoint does not fit the model "
                            f"({str(e).splitlines()[0][:100]})") from None
        epoch, batch_in_epoch, step = meta["epoch"], meta["batch_in_epoch"], meta["step"]
        trained_s, frames_seen, history, best = meta["trained_s"], meta["frames_seen"], meta["history"], meta["best"]
        say(f"resuming {out} at epoch {epoch + 1}, batch {batch_in_epoch} ({trained_s / 60:.1f} min trained)")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    loader_kw = {"batch_size": cfg.batch, "collate_fn": collate, "num_workers": workers,
                 "pin_memory": dev.type == "cuda"}
    if workers > 0:
        import multiprocessing as mp

        loader_kw.update(prefetch_factor=4,
                         multiprocessing_context=mp.get_context("fork" if sys.platform == "linux" else "spawn"))
    steps_per_epoch = math.ceil(sampler.per_rank / cfg.batch)
    budget_s = minutes * 60 if minutes is not None else None
    total_steps = epochs * steps_per_epoch if epochs is not None else None
    params = count_parameters(model)
    say(f"training {cfg.arch} ({params:,} parameters) on {dev}{f' x{world}' if world > 1 else ''}: "
        f"{len(train_drives)} training drives ({len(train_ds):,} frames), {len(val_drives)} validation drives "
        f"({len(val_ds) if val_ds else 0:,} frames); batch {cfg.batch}, "
        + (f"{minutes:g} minutes" if minutes is not None else f"{epochs} epochs of {epoch_frames:,} samples"))

    def progress_frac() -> float:
        fr = [trained_s / budget_s] if budget_s else []
        if total_steps:
            fr.append(step / total_steps)
        return max(fr)

    def state() -> dict:
        return {"config": asdict(cfg), "camera": asdict(data.env.camera), "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "step": step, "trained_s": trained_s,
                "frames_seen": frames_seen, "history": history, "best": best, "minutes_budget": minutes,
                "epochs_budget": epochs, "world_size": world}

    def card() -> dict:
        return {
            "arch": cfg.arch, "env": data.env.to_dict(),
            "data": {"dir": str(data_dir), "drives": len(data.drives), "frames": data.frames,
                     "train_drives": [d.name for d in train_drives], "val_drives": [d.name for d in val_drives],
                     "sources": sorted({d.source for d in data.drives}),
                     "dropped_frames": sum(d.dropped for d in data.drives)},
            "training": {"epochs": round(epoch + batch_in_epoch / steps_per_epoch, 3), "steps": step,
                         "best_val_loss": best["val_loss"], "best_epoch": best["epoch"],
                         "minutes": round(trained_s / 60, 2), "frames_seen": frames_seen,
                         "frames_per_s": round(frames_seen / max(trained_s, 1e-9), 1), "device": str(dev),
                         "world_size": world, "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                         "torch": torch.__version__, "config": asdict(cfg),
                         "init_from": None if init_from is None else str(init_from)},
        }

    def validate() -> float | None:
        if val_ds is None:
            return None
        net.eval()
        tot = torch.zeros(2, dtype=torch.float64, device=dev)
        vs = (torch.utils.data.distributed.DistributedSampler(val_ds, world, rank, shuffle=False)
              if world > 1 else None)
        with torch.inference_mode():
            for xb, yb in torch.utils.data.DataLoader(val_ds, batch_size=256, sampler=vs, collate_fn=collate):
                pred = model(xb.to(dev))
                tot[0] += F.mse_loss(pred, yb.to(dev), reduction="sum").double()
                tot[1] += len(yb)
        if world > 1:
            torch.distributed.all_reduce(tot)
        net.train()
        return float(tot[0] / tot[1])

    stop = progress_frac() >= 1.0
    last_ckpt = time.perf_counter()
    last_plot = -math.inf if len(history) == 0 else time.perf_counter()
    while not stop:
        if dev.type == "cpu" and threads > 1 and history:  # the machine's load may have changed
            pick_threads(cfg.arch, data.env.camera, cfg.batch, threads)
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        skip = batch_in_epoch * cfg.batch
        loader = torch.utils.data.DataLoader(train_ds, sampler=order[skip:], **loader_kw)
        net.train()
        loss_sum = torch.zeros((), device=dev)
        loss_n, ep_frames, ep_t = 0, 0, time.perf_counter()
        label = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")
        with Progress(len(order) - skip, label, " frames", stream=log) as bar:
            t_last = time.perf_counter()
            for xb, yb in loader:
                lr = lr_at(cfg, progress_frac(), step)
                for g in opt.param_groups:
                    g["lr"] = lr
                xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
                loss = F.mse_loss(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                loss_n += 1
                step += 1
                batch_in_epoch += 1
                ep_frames += len(xb)
                frames_seen += len(xb) * world
                now = time.perf_counter()
                trained_s += now - t_last
                t_last = now
                if loss_n % 10 == 0 or loss_n == 1:
                    bar.update(0, loss=float(loss_sum) / loss_n, lr=f"{lr:.2e}")
                bar.update(len(xb))
                stop = progress_frac() >= 1.0
                if world > 1:
                    flag = torch.tensor([float(stop)], device=dev)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    stop = bool(flag.item())
                if stop:
                    break
                if main_rank and now - last_ckpt > CHECKPOINT_EVERY_S:
                    save_checkpoint(out, model, opt, state())
                    last_ckpt = time.perf_counter()
                    t_last = last_ckpt  # checkpoint writing is not training time
        t0 = time.perf_counter()
        ep_time = t0 - ep_t  # training only: frames/s of the loop, not of validation
        val = validate()
        trained_s += time.perf_counter() - t0
        done_epoch = batch_in_epoch >= steps_per_epoch
        train_loss = float(loss_sum) / max(loss_n, 1)
        history.append({"epoch": round(epoch + batch_in_epoch / steps_per_epoch, 3), "train_loss": train_loss,
                        "val_loss": val, "lr": lr_at(cfg, progress_frac(), step),
                        "frames_per_s": ep_frames * world / max(ep_time, 1e-9), "minutes": trained_s / 60})
        score = val if val is not None else train_loss
        improved = score < best["val_loss"]
        if improved:
            best = {"val_loss": score, "epoch": history[-1]["epoch"], "index": len(history) - 1}
        if main_rank:
            say(f"epoch {history[-1]['epoch']:g}: train loss {train_loss:.4g}"
                + (f", validation loss {val:.4g}" if val is not None else "")
                + (" (best, saved)" if improved else ""))
            if improved:
                save_policy(out, model, card())
            if done_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            save_checkpoint(out, model, opt, state())
            last_ckpt = time.perf_counter()
            _write_json(out / "history.json", {"history": history, "best": best})
            if time.perf_counter() - last_plot > PLOT_EVERY_S:
                plot_curves(history, out / "loss_curves.png")
                last_plot = time.perf_counter()
        elif done_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        if epochs is not None and epoch >= epochs:
            stop = True
    if main_rank and history:
        plot_curves(history, out / "loss_curves.png")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

    fps = frames_seen / max(trained_s, 1e-9)
    result = TrainResult(out=out, epochs=history[-1]["epoch"] if history else 0.0, steps=step,
                         best_val_loss=best["val_loss"], best_epoch=best["epoch"], minutes=trained_s / 60,
                         frames_per_s=fps, device=str(dev) + (f" x{world}" if world > 1 else ""))
    if main_rank and verbose:
        rows = [(h["epoch"], h["train_loss"], "-" if h["val_loss"] is None else h["val_loss"], h["frames_per_s"],
                 h["minutes"], "*" if i == best["index"] else "") for i, h in enumerate(history)]
        print(table(["epoch", "train loss", "val loss", "frames/s", "minutes", "best"], rows, title="\nEpochs"))
        print(table(["policy", "arch", "parameters", "frames", "best val loss", "train min", "wall min", "frames/s",
                     "device"],
                    [(str(out), cfg.arch, f"{params:,}", f"{data.frames:,}", best["val_loss"], trained_s / 60,
                      (time.perf_counter() - t_start) / 60, fps, result.device)], title="\nSummary"))
        print(f"\nsaved the best policy in {out} (curves: {out / 'loss_curves.png'}); "
              f"evaluate it: python run_drive.py eval --model {out} --tracks procedural:1000-1019")
    return result


# -- command line ----------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="folder of recorded drives (searched recursively)")
    parser.add_argument("--out", required=True, help="policy folder to write (model.safetensors + card.json)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="epochs to train in total (default 10)")
    budget.add_argument("--minutes", type=float, help="minutes of training in total, validation included")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace a policy already in --out")
    parser.add_argument("--arch", default=TrainConfig.arch, help=f"network: {' or '.join(ARCHS)} (default %(default)s)")
    parser.add_argument("--camera", help="expected camera of the drives (e.g. birdseye, dashcam); default: theirs")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="split, sampling and init seed")
    parser.add_argument("--batch", type=int, default=TrainConfig.batch, help="batch size (per process)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate (AdamW, cosine decay)")
    parser.add_argument("--workers", type=int, help="data loader processes (default: 0 on CPU, up to 6 with a GPU)")
    parser.add_argument("--smooth", type=float, help="smooth steering labels over this many seconds "
                        "(default: 0.25 for keyboard drives, none for others)")
    parser.add_argument("--no-augment", action="store_true", help="train on the recorded frames as they are")
    parser.add_argument("--init-from", metavar="MODEL_DIR", help="warm start from this policy's weights")


def main(args) -> int:
    cfg = TrainConfig(arch=args.arch, seed=args.seed, batch=args.batch, lr=args.lr, smooth=args.smooth)
    if args.no_augment:
        cfg = replace(cfg, augment=NO_AUGMENT)
    train(args.data, args.out, minutes=args.minutes, epochs=args.epochs, cfg=cfg, device=args.device,
          resume=args.resume, overwrite=args.overwrite, workers=args.workers, camera=args.camera,
          init_from=args.init_from)
    return 0
