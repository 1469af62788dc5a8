"""`run_drive.py train`: behavioural cloning of the steering CNN on recorded drives.

One visible loop: sample balanced, augmented batches, regress the recorded steering (MSE), check the
validation drives after each epoch, keep the best policy (`save_policy`) in the output folder, and a
resumable checkpoint (safetensors + JSON, no pickle) every epoch and every minute. Runs on CPU, one
GPU, or several under `torchrun --nproc_per_node N` (DDP: NCCL on GPUs, gloo on CPUs).

The output folder is the policy folder: `model.safetensors` + `card.json` (the best epoch), plus
`train_state.json` and `train_state_*.safetensors` (to resume), `loss_curves.png`, `history.json`, and
TensorBoard event files (`events.out.tfevents.*`, when tensorboard is installed).

`train` reads as a sequence of steps: settle the settings, load the data, make the model, loop over
epochs (`train_epoch`, `validate`, `end_epoch`), checkpoint, report.
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
from sim.files import atomic_savefig, atomic_write, write_json
from sim.progress import Progress, table
from sim.render import CameraConfig, camera_from_name

from .dataset import (
    NO_AUGMENT,
    AugmentConfig,
    BalancedSampler,
    DriveData,
    DriveSet,
    FrameDataset,
    balance_weights,
    collate,
    load_drives,
    split_by_drive,
    val_index,
)
from .model import ARCHS, CARD_FILE, build_model, count_parameters, outputs_for, save_policy, steering_loss

EXAMPLES = """examples:
  python run_drive.py train --data data/drives/auto --out data/models/pilot --minutes 10
  python run_drive.py train --data data/drives/auto --out data/models/pilot --minutes 20 --resume
  python run_drive.py train --data data/drives/me --out data/models/mine --epochs 8 --arch small --smooth 0.3
  python run_drive.py train --data data/drives/traffic --out data/models/traffic --minutes 10 --precision bf16
  torchrun --standalone --nproc_per_node 4 run_drive.py train --data data/drives/auto --out data/models/ddp \\
      --epochs 20 --device cuda
  torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id drive1 \\
      run_drive.py train --data data/drives/auto --out data/models/ddp --minutes 30 --device cuda   # on each machine
  tensorboard --logdir data/models    # the curves and pictures of every run (pip install -e ".[tensorboard]")

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
    precision: str = "auto"  # auto: bf16 autocast on GPUs that have it, float32 on CPU; bf16; float32
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @staticmethod
    def from_dict(d: dict) -> TrainConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return TrainConfig(**d)


@dataclass
class TrainResult:
    """What a run did. `model` is the network as the last step left it (on every rank); the saved
    policy in `out` holds the best epoch's weights."""

    out: Path
    epochs: float
    steps: int
    best_val_loss: float
    best_epoch: int
    minutes: float
    frames_per_s: float
    device: str
    model: torch.nn.Module | None = field(default=None, repr=False)


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


def pick_threads(arch: str, camera: CameraConfig, batch: int, most: int,
                 bf16: bool = False) -> tuple[int, dict[int, float]]:
    """The torch thread count that trains fastest here and now, from a few timed steps of each, in
    the run's precision.

    On a shared CPU, more threads can be several times slower than one (each step waits for the
    slowest thread), so the count is measured, not assumed."""
    if most <= 1:
        return 1, {}
    x = torch.rand(min(batch, 64), 3, camera.height, camera.width)
    y = torch.zeros(len(x), 1)
    net = build_model(arch, camera)

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = net(x).float()
        steering_loss(out, y).backward()

    speed: dict[int, float] = {}
    for n in (1, most):  # warm-up: the first steps at a thread count build its kernels
        torch.set_num_threads(n)
        step()
    for _ in range(2):  # alternating rounds, so a passing load does not decide alone; each count's best
        for n in (1, most):
            torch.set_num_threads(n)
            t = time.perf_counter()
            for _ in range(3):
                step()
            speed[n] = max(speed.get(n, 0.0), 3 * len(x) / (time.perf_counter() - t))
    # one thread only when clearly faster: a near tie is noise, and all the threads is what a run expects
    best = 1 if speed[1] > 1.1 * speed[most] else most
    torch.set_num_threads(best)
    return best, speed


def lr_at(cfg: TrainConfig, frac: float, step: int, warmup: int = 100) -> float:
    """Short linear warm-up, then cosine decay from lr to lr * lr_final over the budget."""
    frac = min(max(frac, 0.0), 1.0)
    cos = cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * cos * min(1.0, (step + 1) / warmup)


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
    write_json(out / STATE_JSON, meta)
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


# -- warm start --------------------------------------------------------------------------------------
def warm_start(model: torch.nn.Module, init_from: str | os.PathLike, arch: str, camera: CameraConfig,
               task: str = "lane") -> None:
    """Start from a trained policy's weights instead of random ones (DAgger retrains this way)."""
    from .model import load_policy

    policy = load_policy(init_from)
    if policy.card["arch"] != arch:
        raise UserError(f"--init-from {init_from}: a {policy.card['arch']} network, but training a {arch} one")
    if policy.camera != camera:
        raise UserError(f"--init-from {init_from}: trained on another camera than these drives")
    if policy.env_config().task != task:
        raise UserError(f"--init-from {init_from}: a {policy.env_config().task} policy, but these drives are {task}")
    model.load_state_dict(policy.model.state_dict())


# -- the run: settings, ranks, data, model, loop, checkpoint, report --------------------------------
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


def _check_settings(cfg: TrainConfig, minutes: float | None, epochs: int | None, workers: int | None) -> None:
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
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision {cfg.precision}: choose from {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a `torchrun` job (rank 0 of 1 when run directly) and its device.

    Rank 0 is the one clock: each step the others take its training time (`agree`), so every rank
    computes the same schedule position, learning rate and stop decision, and all step the same
    number of times. No rank can decide to stop alone."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env(device: str) -> Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = (int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else (0, 0)
        dev = pick_device(device)
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", local)
        return Ranks(rank, world, dev)

    def start(self) -> None:
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)

    def agree(self, value: float) -> float:
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def finish(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def __str__(self) -> str:
        return str(self.device) + (f" x{self.world}" if self.world > 1 else "")


PRECISIONS = ("auto", "bf16", "float32")


def bf16_supported(dev: torch.device) -> bool:
    """Native bf16 maths: GPUs from Ampere on, CPUs with AVX512-BF16 or AMX (oneDNN also runs bf16 on
    other AVX512 CPUs, emulated and slower than float32: those do not count)."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and torch.backends.mkldnn.is_available() and bool(_CPU_BF16_FLAGS & _cpu_flags())


_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere: no bf16 claimed)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def use_bf16(dev: torch.device, precision: str = "auto") -> bool:
    """bf16 autocast: faster maths, no loss scaling needed (bf16 keeps float32's range). Weights,
    optimiser state and saved policies stay float32. `auto` takes it on GPUs only, so CPU training
    (and its published figures) stays float32 unless asked: `bf16` on a CPU with native bf16 trains
    PilotNet ~1.5x faster (`bench`)."""
    if precision == "float32":
        return False
    return bf16_supported(dev) and (precision == "bf16" or dev.type == "cuda")


@dataclass(frozen=True)
class Run:
    """The settled settings of one run: the call's, or the checkpoint's when resuming."""

    cfg: TrainConfig
    data_dir: Path
    out: Path
    ranks: Ranks
    minutes: float | None
    epochs: int | None
    workers: int
    threads: int
    camera: CameraConfig | None  # the camera the drives must have; None: whatever they have
    checkpoint: tuple[dict, dict[str, torch.Tensor]] | None
    init_from: str | os.PathLike | None
    verbose: bool

    @property
    def log(self):
        """Where progress bars and warnings go: stderr on rank 0, nowhere on the others."""
        return sys.stderr if self.verbose else io.StringIO()

    def say(self, *a) -> None:
        if self.verbose:
            print(*a, file=sys.stdout, flush=True)


def settle(cfg: TrainConfig, data_dir, out_dir, minutes: float | None, epochs: int | None, device: str,
           resume: bool, overwrite: bool, workers: int | None, camera: str | None, verbose: bool,
           init_from) -> Run:
    """Check the settings (one `error:` line each), place this rank, and take the checkpoint's
    settings and budget when resuming."""
    _check_settings(cfg, minutes, epochs, workers)
    try:
        want_cam = camera_from_name(camera) if camera else None
    except ValueError as e:
        raise UserError(f"--camera {camera}: {e}") from None
    ranks = Ranks.from_env(device)
    out = Path(out_dir)
    if ranks.main:
        _check_out(out, resume, overwrite)
    ckpt = load_checkpoint(out) if resume else None
    if resume and ckpt is None and verbose and ranks.main:
        print(f"note: no checkpoint in {out} yet; starting a new run", flush=True)
    if ckpt is not None:
        cfg = replace(TrainConfig.from_dict(ckpt[0]["config"]), precision=cfg.precision)  # this call's: a
        # run may go on in another precision (on another machine)
        if minutes is None and epochs is None:
            minutes, epochs = ckpt[0].get("minutes_budget"), ckpt[0].get("epochs_budget")
        if ckpt[0].get("camera"):
            saved_cam = CameraConfig(**ckpt[0]["camera"])
            if want_cam is not None and want_cam != saved_cam:
                raise UserError(f"--camera {camera}: the checkpoint in {out} was trained on another camera")
            want_cam = saved_cam
    if cfg.precision == "bf16" and not bf16_supported(ranks.device):
        raise UserError(f"--precision bf16: {ranks.device} has no native bf16 maths here (use float32 or auto)")
    if minutes is None and epochs is None:
        epochs = 10
    if workers is None:  # all cores to the maths on CPU, shared fairly between DDP ranks and loader workers
        workers = min(6, max(cpu_count() - 1, 0)) if ranks.device.type == "cuda" else 0
    threads = max(1, cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world)) - workers)
    if ranks.device.type == "cpu":
        torch.set_num_threads(threads)
    return Run(cfg, Path(data_dir), out, ranks, minutes, epochs, workers, threads, want_cam, ckpt, init_from,
               verbose and ranks.main)


@dataclass
class TrainData:
    """The drives, split by drive into augmented training samples and plain validation frames."""

    drives: DriveSet
    train_drives: list[DriveData]
    val_drives: list[DriveData]
    train_ds: FrameDataset
    val_ds: FrameDataset | None
    sampler: BalancedSampler


def load_data(run: Run) -> TrainData:
    """Read the drives, warn about skipped ones, split by drive, and set up balanced sampling (each
    rank draws its own share of every epoch)."""
    cfg = run.cfg
    data = load_drives(run.data_dir, camera=run.camera, smooth=cfg.smooth, stream=run.log)
    if run.checkpoint is None and run.camera is None:
        build_model(cfg.arch, data.env.camera)  # an arch must fit the frames: fail now, not in the first batch
    for w in data.warnings[:5]:
        print(f"warning: {w}", file=run.log)
    if len(data.warnings) > 5:
        print(f"warning: ... and {len(data.warnings) - 5} more", file=run.log)
    train_ids, val_ids = split_by_drive(len(data.drives), cfg.val_fraction, cfg.seed)
    train_drives = [data.drives[i] for i in train_ids]
    val_drives = [data.drives[i] for i in val_ids]
    train_ds = FrameDataset(train_drives, data.env, cfg.augment, seed=cfg.seed)
    val_ds = FrameDataset(val_drives, data.env, NO_AUGMENT, index=val_index(val_drives)) if val_drives else None
    race = data.env.task == "race"  # race: balance the speeds too (launches and hairpins are rare)
    weights = balance_weights(train_ds.labels, power=cfg.balance, speeds=train_ds.speeds if race else None,
                              max_speed=data.env.race_car.max_speed_mps)
    sampler = BalancedSampler(weights, cfg.epoch_frames or len(train_ds),
                              seed=cfg.seed, rank=run.ranks.rank, world=run.ranks.world)
    return TrainData(data, train_drives, val_drives, train_ds, val_ds, sampler)


def prepare_out(out: Path) -> None:
    """Create the policy folder and clear the temp files a killed run may have left."""
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create folder ({e.strerror})") from None
    for stale in [*out.glob(".*.tmp"), *out.glob(".*.tmp.png")]:
        stale.unlink(missing_ok=True)


@dataclass
class RunState:
    """Where a run is: what a checkpoint saves and a resume restores (the same on every rank)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    trained_s: float = 0.0  # training and validation time on rank 0's clock; loading and saving not
    frames_seen: int = 0  # over all ranks
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_loss": float("inf"), "epoch": -1.0, "index": -1})

    @staticmethod
    def from_checkpoint(meta: dict) -> RunState:
        return RunState(**{k: meta[k] for k in ("epoch", "batch_in_epoch", "step", "trained_s", "frames_seen",
                                                "history", "best")})


@dataclass(frozen=True)
class Budget:
    """How long to train: minutes, epochs, or both (whichever ends first); totals across resumes."""

    minutes: float | None
    epochs: int | None
    steps_per_epoch: int

    def fraction(self, s: RunState) -> float:
        """How far through the budget `s` is: the cosine schedule's position; >= 1 means stop."""
        done = [s.trained_s / (self.minutes * 60)] if self.minutes is not None else []
        if self.epochs is not None:
            done.append(s.step / (self.epochs * self.steps_per_epoch))
        return max(done)

    def spent(self, s: RunState) -> bool:
        return self.fraction(s) >= 1.0 or (self.epochs is not None and s.epoch >= self.epochs)

    def epoch_of(self, s: RunState) -> float:
        return round(s.epoch + s.batch_in_epoch / self.steps_per_epoch, 3)


def make_model(run: Run, camera: CameraConfig, task: str = "lane"
               ) -> tuple[torch.nn.Module, torch.optim.Optimizer, RunState]:
    """The network and its optimiser: fresh (seeded), warm-started from a policy, or restored. Its
    outputs are the task's actions (the task comes from the drives' metadata)."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, camera, len(outputs_for(task))).to(run.ranks.device)
    if run.init_from is not None and run.checkpoint is None:
        warm_start(model, run.init_from, cfg.arch, camera, task)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = RunState()
    if run.checkpoint is not None:
        meta, tensors = run.checkpoint
        try:
            restore(meta, tensors, model, opt)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise UserError(f"{run.out / STATE_JSON}: checkpoint does not fit the model "
                            f"({str(e).splitlines()[0][:100]})") from None
        state = RunState.from_checkpoint(meta)
        run.say(f"resuming {run.out} at epoch {state.epoch + 1}, batch {state.batch_in_epoch} "
                f"({state.trained_s / 60:.1f} min trained)")
    if run.ranks.agree(state.step) != state.step:
        raise UserError(f"--resume: rank {run.ranks.rank} found another checkpoint in {run.out} than rank 0 "
                        "(on several machines, --out must be a folder they all share)")
    return model, opt, state


def epoch_loader(run: Run, data: TrainData, state: RunState) -> torch.utils.data.DataLoader:
    """This rank's batches for the rest of `state.epoch` (a resumed run skips the batches it did)."""
    data.train_ds.set_epoch(state.epoch)
    data.sampler.set_epoch(state.epoch)
    order = list(iter(data.sampler))[state.batch_in_epoch * run.cfg.batch:]
    kw = {}
    if run.workers > 0:
        import multiprocessing as mp

        kw = {"prefetch_factor": 4,
              "multiprocessing_context": mp.get_context("fork" if sys.platform == "linux" else "spawn")}
    return torch.utils.data.DataLoader(data.train_ds, sampler=order, batch_size=run.cfg.batch, collate_fn=collate,
                                       num_workers=run.workers, pin_memory=run.ranks.device.type == "cuda", **kw)


class Checkpoints:
    """Everything `train` writes into the policy folder (rank 0 only): the resumable training state
    (every epoch, and every minute within one), the best policy, the history and the curves."""

    def __init__(self, run: Run, data: TrainData, model: torch.nn.Module, opt: torch.optim.Optimizer,
                 budget: Budget):
        self.run, self.data, self.model, self.opt, self.budget = run, data, model, opt, budget
        self.last_save = time.perf_counter()
        self.last_plot = -math.inf

    def state(self, state: RunState) -> None:
        if not self.run.ranks.main:
            return
        run = self.run
        meta = {"config": asdict(run.cfg), "camera": asdict(self.data.drives.env.camera), **asdict(state),
                "minutes_budget": self.budget.minutes, "epochs_budget": self.budget.epochs,
                "world_size": run.ranks.world}
        save_checkpoint(run.out, self.model, self.opt, meta)
        self.last_save = time.perf_counter()

    def due(self) -> bool:
        return self.run.ranks.main and time.perf_counter() - self.last_save > CHECKPOINT_EVERY_S

    def epoch(self, state: RunState, improved: bool, final: bool) -> None:
        if not self.run.ranks.main:
            return
        out = self.run.out
        if improved:
            save_policy(out, self.model, self.card(state))
        self.state(state)
        write_json(out / "history.json", {"history": state.history, "best": state.best})
        if final or time.perf_counter() - self.last_plot > PLOT_EVERY_S:
            plot_curves(state.history, out / "loss_curves.png")
            self.last_plot = time.perf_counter()

    def card(self, state: RunState) -> dict:
        run, d, ranks = self.run, self.data.drives, self.run.ranks
        return {
            "arch": run.cfg.arch, "env": d.env.to_dict(), "task": d.env.task, "outputs": outputs_for(d.env.task),
            "data": {"dir": str(run.data_dir), "drives": len(d.drives), "frames": d.frames,
                     "train_drives": [x.name for x in self.data.train_drives],
                     "val_drives": [x.name for x in self.data.val_drives],
                     "sources": sorted({x.source for x in d.drives}),
                     "dropped_frames": sum(x.dropped for x in d.drives)},
            "training": {"epochs": self.budget.epoch_of(state), "steps": state.step,
                         "best_val_loss": state.best["val_loss"], "best_epoch": state.best["epoch"],
                         "minutes": round(state.trained_s / 60, 2), "frames_seen": state.frames_seen,
                         "frames_per_s": round(state.frames_seen / max(state.trained_s, 1e-9), 1),
                         "device": str(ranks.device), "world_size": ranks.world,
                         "precision": "bf16 autocast" if use_bf16(ranks.device, run.cfg.precision) else "float32",
                         "threads": torch.get_num_threads() if ranks.device.type == "cpu" else None,
                         "torch": torch.__version__, "config": asdict(run.cfg),
                         "init_from": None if run.init_from is None else str(run.init_from)},
        }


class TensorBoard:
    """Event files in the policy folder, so `tensorboard --logdir data/models` shows every run: the
    training loss and learning rate every few steps; after each epoch the epoch's losses, frames/s,
    and a picture of validation frames with their true and predicted steering and gradient saliency.
    Rank 0 writes; without the `tensorboard` package, training goes on without it (after a note)."""

    EVERY_STEPS = 10
    N_FRAMES = 6

    def __init__(self, run: Run, state: RunState):
        self.writer = None
        if not run.ranks.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            run.say("note: tensorboard is not installed, so no TensorBoard logs "
                    "(pip install -e \".[tensorboard]\")")
            return
        if run.checkpoint is None:  # a new run in this folder: the curves of an earlier one would mix in
            for old in run.out.glob("events.out.tfevents.*"):
                old.unlink(missing_ok=True)
        # resuming: events a killed session wrote after its last checkpoint are dropped (purge_step)
        self.writer = SummaryWriter(log_dir=str(run.out), purge_step=state.step or None, flush_secs=30)

    def step(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if self.writer is not None and step % self.EVERY_STEPS == 0:
            self.writer.add_scalar("train/loss", float(loss), step)
            self.writer.add_scalar("train/learning_rate", lr, step)

    def epoch(self, state: RunState, model: torch.nn.Module, val_ds: FrameDataset | None) -> None:
        if self.writer is None:
            return
        h, w = state.history[-1], self.writer
        w.add_scalar("epoch/train_loss", h["train_loss"], state.step)
        if h["val_loss"] is not None:
            w.add_scalar("epoch/validation_loss", h["val_loss"], state.step)
        w.add_scalar("epoch/frames_per_s", h["frames_per_s"], state.step)
        w.add_scalar("epoch/learning_rate", h["lr"], state.step)
        if val_ds is not None and len(val_ds):
            w.add_image("validation/steering_and_saliency", self.picture(model, val_ds), state.step, dataformats="HWC")
        w.flush()

    def picture(self, model: torch.nn.Module, val_ds: FrameDataset) -> np.ndarray:
        from .saliency import grid_image, pick_frames, saliency_maps

        idx = pick_frames(len(val_ds), self.N_FRAMES)
        frames = np.stack([val_ds[int(i)][0] for i in idx])
        labels = np.array([val_ds[int(i)][1][0] for i in idx], np.float32)  # the steering (race: throttle too)
        was_training = model.training
        model.eval()
        maps, preds = saliency_maps(model, frames, device=next(model.parameters()).device)
        model.train(was_training)
        return grid_image(frames, {"gradient": maps}, labels, preds, cols=2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train_epoch(run: Run, data: TrainData, net: torch.nn.Module, opt: torch.optim.Optimizer, state: RunState,
                budget: Budget, saves: Checkpoints, tb: TensorBoard) -> tuple[float, float]:
    """Step through the rest of this epoch, or until the budget is spent. Every rank takes the same
    steps with the same learning rate (rank 0's clock decides). Returns this rank's mean training
    loss and the frames/s of all ranks."""
    cfg, dev = run.cfg, run.ranks.device
    bf16 = use_bf16(dev, cfg.precision)
    loader = epoch_loader(run, data, state)
    net.train()
    loss_sum, loss_n, frames, t_start = torch.zeros((), device=dev), 0, 0, time.perf_counter()
    label = f"epoch {state.epoch + 1}" + (f"/{budget.epochs}" if budget.epochs else "")
    with Progress(len(loader.sampler), label, " frames", stream=run.log) as bar:
        t_last = time.perf_counter()
        for xb, yb in loader:
            lr = lr_at(cfg, budget.fraction(state), state.step)
            for g in opt.param_groups:
                g["lr"] = lr
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                loss = steering_loss(net(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            loss_sum += loss.detach()
            loss_n += 1
            frames += len(xb)
            now = time.perf_counter()
            state.step += 1
            state.batch_in_epoch += 1
            state.frames_seen += len(xb) * run.ranks.world
            state.trained_s = run.ranks.agree(state.trained_s + now - t_last)
            tb.step(state.step, loss.detach(), lr)
            t_last = now
            if loss_n % 10 == 0 or loss_n == 1:
                bar.update(0, loss=float(loss_sum) / loss_n, lr=f"{lr:.2e}")
            bar.update(len(xb))
            if budget.spent(state):
                break
            if saves.due():
                saves.state(state)
                t_last = time.perf_counter()  # checkpoint writing is not training time
    elapsed = time.perf_counter() - t_start
    return float(loss_sum) / max(loss_n, 1), frames * run.ranks.world / max(elapsed, 1e-9)


def validate(net: torch.nn.Module, val_ds: FrameDataset | None, ranks: Ranks) -> float | None:
    """Mean squared steering error over the validation frames (each rank scores its share), in float32
    whatever the training's precision: the best epoch is picked on it."""
    if val_ds is None:
        return None
    net.eval()
    model = getattr(net, "module", net)
    dev = ranks.device
    tot = torch.zeros(2, dtype=torch.float64, device=dev)
    share = (torch.utils.data.distributed.DistributedSampler(val_ds, ranks.world, ranks.rank, shuffle=False)
             if ranks.world > 1 else None)
    loader = torch.utils.data.DataLoader(val_ds, batch_size=256, sampler=share, collate_fn=collate,
                                         pin_memory=dev.type == "cuda")
    with torch.inference_mode():
        for xb, yb in loader:
            pred = model(xb.to(dev, non_blocking=True)).float()
            tot[0] += F.mse_loss(pred, yb.to(dev, non_blocking=True), reduction="sum").double()
            tot[1] += len(yb)
    if ranks.world > 1:
        torch.distributed.all_reduce(tot)
    net.train()
    return float(tot[0] / tot[1])


def end_epoch(run: Run, state: RunState, budget: Budget, train_loss: float, val: float | None,
              frames_per_s: float) -> bool:
    """Record the epoch (or the part of one the budget allowed) in the history; True when it is the
    best so far (by validation loss, or training loss without validation drives)."""
    state.history.append({"epoch": budget.epoch_of(state), "train_loss": train_loss, "val_loss": val,
                          "lr": lr_at(run.cfg, budget.fraction(state), state.step), "frames_per_s": frames_per_s,
                          "minutes": state.trained_s / 60})
    score = val if val is not None else train_loss
    improved = score < state.best["val_loss"]
    if improved:
        state.best = {"val_loss": score, "epoch": state.history[-1]["epoch"], "index": len(state.history) - 1}
    if state.batch_in_epoch >= budget.steps_per_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    run.say(f"epoch {state.history[-1]['epoch']:g}: train loss {train_loss:.4g}"
            + (f", validation loss {val:.4g}" if val is not None else "") + (" (best, saved)" if improved else ""))
    return improved


def announce(run: Run, data: TrainData, params: int) -> None:
    cfg, n_val = run.cfg, len(data.val_ds) if data.val_ds else 0
    precision = " (bf16 autocast)" if use_bf16(run.ranks.device, cfg.precision) else ""
    budget = (f"{run.minutes:g} minutes" if run.minutes is not None
              else f"{run.epochs} epochs of {cfg.epoch_frames or len(data.train_ds):,} samples")
    task = data.drives.env.task
    run.say(f"training {cfg.arch} ({params:,} parameters, task {task}: {' and '.join(outputs_for(task))}) on "
            f"{run.ranks}{precision}: {len(data.train_drives)} "
            f"training drives ({len(data.train_ds):,} frames), {len(data.val_drives)} validation drives "
            f"({n_val:,} frames); batch {cfg.batch}, {budget}")


def report(run: Run, params: int, frames: int, state: RunState, result: TrainResult, wall_s: float) -> None:
    """The epochs table, the summary table and what to do next."""
    rows = [(h["epoch"], h["train_loss"], "-" if h["val_loss"] is None else h["val_loss"], h["frames_per_s"],
             h["minutes"], "*" if i == state.best["index"] else "") for i, h in enumerate(state.history)]
    print(table(["epoch", "train loss", "val loss", "frames/s", "minutes", "best"], rows, title="\nEpochs"))
    print(table(["policy", "arch", "parameters", "frames", "best val loss", "train min", "wall min", "frames/s",
                 "device"],
                [(str(run.out), run.cfg.arch, f"{params:,}", f"{frames:,}", state.best["val_loss"],
                  state.trained_s / 60, wall_s / 60, result.frames_per_s, result.device)], title="\nSummary"))
    print(f"\nsaved the best policy in {run.out} (curves: {run.out / 'loss_curves.png'}); "
          f"evaluate it: python run_drive.py eval --model {run.out} --tracks procedural:1000-1019")


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
    run = settle(replace(cfg, **overrides), data_dir, out_dir, minutes, epochs, device, resume, overwrite, workers,
                 camera, verbose, init_from)
    ranks, cfg = run.ranks, run.cfg

    data = load_data(run)
    if ranks.main:
        prepare_out(run.out)
    ranks.start()
    camera_cfg = data.drives.env.camera
    if ranks.device.type == "cpu" and run.threads > 1:
        chosen, speeds = pick_threads(cfg.arch, camera_cfg, cfg.batch, run.threads, use_bf16(ranks.device, cfg.precision))
        run.say(f"torch threads: {chosen} (" + ", ".join(f"{n}: {v:.0f} frames/s" for n, v in speeds.items()) + ")")

    model, opt, state = make_model(run, camera_cfg, data.drives.env.task)
    net = ranks.wrap(model)
    budget = Budget(run.minutes, run.epochs, math.ceil(data.sampler.per_rank / cfg.batch))
    params = count_parameters(model)
    announce(run, data, params)

    saves = Checkpoints(run, data, model, opt, budget)
    tb = TensorBoard(run, state)
    while not budget.spent(state):
        if ranks.device.type == "cpu" and run.threads > 1 and state.history:  # the machine's load may have changed
            pick_threads(cfg.arch, camera_cfg, cfg.batch, run.threads, use_bf16(ranks.device, cfg.precision))
        train_loss, frames_per_s = train_epoch(run, data, net, opt, state, budget, saves, tb)
        t0 = time.perf_counter()
        val = validate(net, data.val_ds, ranks)
        state.trained_s = ranks.agree(state.trained_s + time.perf_counter() - t0)
        improved = end_epoch(run, state, budget, ranks.mean(train_loss), val, frames_per_s)
        saves.epoch(state, improved, final=budget.spent(state))
        tb.epoch(state, model, data.val_ds)
    tb.close()
    ranks.finish()

    result = TrainResult(out=run.out, epochs=state.history[-1]["epoch"] if state.history else 0.0, steps=state.step,
                         best_val_loss=state.best["val_loss"], best_epoch=state.best["epoch"],
                         minutes=state.trained_s / 60, frames_per_s=state.frames_seen / max(state.trained_s, 1e-9),
                         device=str(ranks), model=model)
    if run.verbose:
        report(run, params, data.drives.frames, state, result, time.perf_counter() - t_start)
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
    parser.add_argument("--precision", choices=PRECISIONS, default=TrainConfig.precision,
                        help="bf16 autocast or float32; auto: bf16 on GPUs that have it, float32 on CPU "
                        "(bf16 on a CPU with AVX512-BF16 or AMX: ~1.5x faster)")
    parser.add_argument("--no-augment", action="store_true", help="train on the recorded frames as they are")
    parser.add_argument("--init-from", metavar="MODEL_DIR", help="warm start from this policy's weights")


def main(args) -> int:
    cfg = TrainConfig(arch=args.arch, seed=args.seed, batch=args.batch, lr=args.lr, smooth=args.smooth,
                      precision=args.precision)
    if args.no_augment:
        cfg = replace(cfg, augment=NO_AUGMENT)
    train(args.data, args.out, minutes=args.minutes, epochs=args.epochs, cfg=cfg, device=args.device,
          resume=args.resume, overwrite=args.overwrite, workers=args.workers, camera=args.camera,
          init_from=args.init_from)
    return 0
