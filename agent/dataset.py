"""Recorded drives to training batches: load, clean, split by drive, balance, augment.

Frames are decoded once into the on-disk frame cache (`data.frame_cache`) and read a sample at a time,
so memory does not grow with the data (or, with `cache=False`, decoded into memory as uint8). Each training sample is one recorded frame, possibly
re-rendered from a pose shifted sideways or rotated (PilotNet's side cameras, done exactly: the
simulator draws what the camera would have seen there, and the expert says how to steer back),
mirrored with its steering negated, and jittered in light, colour, shadow and noise. Batches end in
`agent.preprocess.preprocess`, the function the driving policy calls too.

Race drives carry a second label, the throttle. Mirroring leaves it as it is (the car and the track
are symmetric). A viewpoint shift keeps the recorded throttle too: the race expert's throttle depends
only on the speed and the arc length, and a sideways shift of at most 1.5 m and 8 degrees changes the
arc length by well under a metre; the steering label is the race expert's at the shifted pose, and the
re-rendered frame gets the speed gauge of the recorded speed.
"""

from __future__ import annotations

import math
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from data.frame_cache import CacheUnwritable, FrameStore, cache_root, cached_drive
from data.recording import Drive, find_drives, read_drive, read_meta
from sim.car import VIEW_ROTATE_DEG, VIEW_SHIFT_M, CarState, shifted_pose
from sim.env import EnvConfig
from sim.errors import UserError
from sim.expert import task_expert_steering
from sim.render import N_LABELS, Camera, CameraConfig, default_palette, draw_speed_gauge
from sim.track import Track, load_track
from sim.traffic import CarBoxes

from .preprocess import preprocess

EXPERT_SOURCES = ("autopilot", "expert", "dagger")  # labels are the expert's own: shifted labels are exact
SMOOTH_SOURCES = ("keyboard",)
MAP_BYTES = 1 << 30  # drawn track maps a FrameDataset keeps for viewpoint shifts, per process  # step-like labels that `smooth=None` smooths by default


@dataclass(frozen=True)
class AugmentConfig:
    """How each training frame is varied. Probabilities are per sample."""

    shift_prob: float = 0.5  # re-render from a shifted/rotated pose with a corrective label
    max_shift_m: float = VIEW_SHIFT_M  # sideways, either way
    max_rotate_deg: float = VIEW_ROTATE_DEG  # yaw, either way
    correction: str = "auto"  # "expert": expert steering at the new pose; "delta": label + expert's change;
    #                           "auto": expert for autopilot/DAgger drives, delta for human ones
    mirror_prob: float = 0.5  # flip left-right and negate the steering
    light_prob: float = 0.8  # brightness and colour jitter
    brightness: float = 0.3  # gain in [1 - b, 1 + b]
    colour: float = 0.1  # per-channel gain in [1 - c, 1 + c]
    shadow_prob: float = 0.3  # a dark quadrilateral across the frame
    noise_std: float = 3.0  # pixel noise, in 0..255 levels

    def __post_init__(self) -> None:
        if self.correction not in ("auto", "expert", "delta"):
            raise ValueError(f"correction must be auto, expert or delta, not {self.correction!r}")


NO_AUGMENT = AugmentConfig(shift_prob=0.0, mirror_prob=0.0, light_prob=0.0, shadow_prob=0.0, noise_std=0.0)


@dataclass
class DriveData:
    """One recorded drive, cleaned and ready to sample from."""

    name: str
    frames: np.ndarray | FrameStore  # (n, H, W, 3) uint8; a FrameStore reads from the frame cache when indexed
    labels: np.ndarray  # (n,) float32 steering in [-1, 1]; (n, 2) steering and throttle in the race task
    pose: np.ndarray  # (n, 5) float64: x, y, yaw, speed, s
    source: str
    track_spec: str
    palette: np.ndarray  # (256, 3) the colours the frames were drawn with
    track: Track | None = None  # None when the track cannot be loaded here: no viewpoint shifts then
    dropped: int = 0  # frames removed as bad data (off track, interventions and the second before)
    cars: np.ndarray | None = None  # (n, 12, 4) task traffic: the other cars each frame was drawn with
    shifted_labels: np.ndarray | None = None  # (n, k, 3) traffic expert drives: shift, turn, exact steering

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DriveSet:
    """All drives of a data folder, with the env settings they were recorded with."""

    drives: list[DriveData]
    env: EnvConfig  # camera and car of the recordings (track left at its default)
    warnings: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(len(d) for d in self.drives)


def smooth_labels(labels: np.ndarray, sigma_s: float, dt: float) -> np.ndarray:
    """Gaussian smoothing in time: keyboard steering jumps between -1, 0 and 1, a driver's intent does not."""
    sigma = sigma_s / dt
    if sigma <= 0.3 or len(labels) < 2:
        return labels.astype(np.float32)
    r = math.ceil(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(labels.astype(np.float64), r, mode="edge")
    return np.clip(np.convolve(padded, k, mode="valid"), -1, 1).astype(np.float32)


def _bad_mask(off: np.ndarray, intervention: np.ndarray, before: int) -> np.ndarray:
    """Frames off the track or put back by the env, and `before` frames leading up to each."""
    bad = off | intervention
    if before > 0 and bad.any():
        idx = np.flatnonzero(bad)
        spread = (idx[:, None] - np.arange(before + 1)[None, :]).ravel()
        bad = bad.copy()
        bad[spread[spread >= 0]] = True
    return bad


def _palette_from_meta(meta: dict) -> np.ndarray:
    lut = default_palette()
    pal = meta.get("palette")
    try:
        arr = np.asarray(pal, dtype=np.float64)
        # drives recorded before the traffic colours existed carry fewer labels: keep the defaults
        if arr.ndim == 2 and arr.shape[1] == 3 and 0 < len(arr) <= N_LABELS and np.all(np.isfinite(arr)):
            lut[:len(arr)] = np.clip(arr, 0, 255).astype(np.uint8)
    except (TypeError, ValueError):
        pass
    return lut


def load_drives(data_dir: str | os.PathLike, camera: CameraConfig | None = None, smooth: float | None = None,
                drop_before_s: float = 1.0, stream=None, cache: bool = True,
                cache_dir: str | os.PathLike | None = None) -> DriveSet:
    """Read every drive under `data_dir`, dropping bad frames.

    With `cache` (the default, unless `E2E_DRIVE_CACHE=off`) the frames stay on disk, decoded once into
    the frame cache (`data.frame_cache`, in `cache_dir` or `cache_root()`), and each `DriveData.frames` is a
    `FrameStore` that reads a frame when it is indexed: memory does not grow with the data. Without,
    every frame is decoded into RAM (27,648 bytes per 96x96 frame). Labels, poses and everything else
    are in memory either way.

    All drives must share one camera (and `camera`, when given). `smooth` is the label smoothing in
    seconds; None smooths keyboard drives by 0.25 s and leaves the rest. Problems with the folder as
    a whole are `UserError`s; a single unreadable drive or chunk is skipped with a warning line.
    """
    from sim.progress import Progress

    data_dir = Path(data_dir)
    try:
        paths = find_drives(data_dir)
    except UserError as e:
        raise UserError(f"--data {e}") from None
    if not paths:
        raise UserError(f"--data {data_dir}: no recorded drives in this folder (make some with "
                        "`run_drive.py record --autopilot --tracks procedural:0-19 --out DIR`)")
    warnings: list[str] = []
    env: EnvConfig | None = None
    first_meta = ""
    metas: dict[Path, EnvConfig] = {}
    for path in paths:  # settings first (cheap), so a mismatch fails before any frame is decoded
        meta_path = path / "meta.json"
        try:
            meta = read_meta(path)
        except UserError as e:
            warnings.append(f"skipped drive: {e}")
            continue
        try:
            denv = EnvConfig.from_dict(meta["env"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{meta_path}: bad 'env' settings ({type(e).__name__}: {e})") from None
        if env is not None and denv.task != env.task:
            raise UserError(f"--data {data_dir}: drives of two tasks ({env.task} in {first_meta}, {denv.task} in "
                            f"{meta_path}); train on drives of one task")
        want = camera or (env.camera if env else None)
        if want is not None and denv.camera != want:
            other = first_meta if camera is None else "the requested camera"
            raise UserError(f"{meta_path}: recorded with camera {denv.camera.kind} "
                            f"{denv.camera.width}x{denv.camera.height}, but {other} is {want.kind} "
                            f"{want.width}x{want.height}; train on drives of one camera")
        if env is not None and denv.car.dt != env.car.dt:
            raise UserError(f"{meta_path}: recorded at dt={denv.car.dt} s, but {first_meta} at dt={env.car.dt} s")
        if env is not None and denv.task != env.task:
            raise UserError(f"--data {data_dir}: drives of two tasks ({env.task} in {first_meta}, {denv.task} in "
                            f"{meta_path}); train on drives of one task")
        if env is None:
            env = EnvConfig(camera=denv.camera, car=denv.car, task=denv.task, race_car=denv.race_car,
                            speed_gauge=denv.speed_gauge, traffic=denv.traffic)
            first_meta = str(meta_path)
        metas[path] = denv
    stream = stream if stream is not None else sys.stderr
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    cache = cache and root is not None  # E2E_DRIVE_CACHE=off: decode into memory
    read: dict[Path, Drive] = {}
    built = 0

    def read_one(path: Path, wait: bool) -> bool:
        """Read one drive into `read`; False when another process is caching it right now."""
        nonlocal built
        try:
            if not cache:
                read[path] = read_drive(path)
                return True
            got = cached_drive(path, root, wait=wait)
        except CacheUnwritable:
            raise
        except UserError as e:
            warnings.append(f"skipped drive: {e}")
            return True
        if got is None:
            return False
        read[path], new = got
        built += new
        return True

    with Progress(len(metas), "loading drives", stream=stream) as bar:
        # a drive another process is caching right now (another DDP rank) is taken last, once it is done
        waiting = []
        for path in metas:
            if read_one(path, wait=False):
                bar.update(1, cached=built)
            else:
                waiting.append(path)
        for path in waiting:
            read_one(path, wait=True)
            bar.update(1, cached=built)
    drives: list[DriveData] = []
    for path, denv in metas.items():
        d = read.pop(path, None)
        if d is None:
            continue
        warnings.extend(d.warnings)
        if len(d) == 0:
            warnings.append(f"{path}: drive has no readable frames, skipped")
            continue
        source = str(d.meta.get("source", "unknown"))
        labels = np.clip(np.nan_to_num(d.steering, nan=0.0), -1, 1).astype(np.float32)
        sigma = smooth if smooth is not None else (0.25 if source in SMOOTH_SOURCES else 0.0)
        if sigma > 0:
            labels = smooth_labels(labels, sigma, denv.car.dt)
        if denv.task == "race":
            if d.throttle is None:
                warnings.append(f"{path}: race drive without throttle labels, skipped")
                continue
            throttle = np.clip(np.nan_to_num(d.throttle, nan=0.0), -1, 1).astype(np.float32)
            if sigma > 0:
                throttle = smooth_labels(throttle, sigma, denv.car.dt)
            labels = np.stack([labels, throttle], 1)
        # DAgger drives keep the second before an intervention: the expert's labels there are the
        # very corrections DAgger collects (the policy drifted off; the label steers back)
        before = 0 if source == "dagger" else round(drop_before_s / denv.car.dt)
        keep = ~_bad_mask(d.off_track, d.intervention, before)
        st = d.state
        pose = np.stack([st["x"], st["y"], st["yaw"], st["speed"], st["s"]], 1)
        keep &= np.all(np.isfinite(pose), 1)
        if not keep.any():
            warnings.append(f"{path}: every frame is off track or marked bad, skipped")
            continue
        spec = str(d.meta.get("track", ""))
        try:
            # traffic: a view re-rendered from a shifted pose needs the other cars of that moment;
            # drives recorded before they were kept beside the frames get no viewpoint shifts
            track = None if denv.task == "traffic" and d.cars is None else load_track(spec)
            if track is None:
                warnings.append(f"{path}: a traffic drive recorded before drives kept the other cars: no "
                                "viewpoint shifts for it (record it again to have them)")
        except (UserError, ValueError, OSError):
            track = None
            warnings.append(f"{path}: track {spec!r} not found here: no viewpoint shifts for this drive")
        frames = d.frames.subset(keep) if isinstance(d.frames, FrameStore) else np.ascontiguousarray(d.frames[keep])
        drives.append(DriveData(
            name=str(path.relative_to(data_dir)) if path != data_dir else path.name,
            frames=frames, labels=labels[keep], pose=pose[keep],
            source=source, track_spec=spec, palette=_palette_from_meta(d.meta), track=track,
            dropped=int((~keep).sum()), cars=None if d.cars is None else d.cars[keep],
            shifted_labels=None if d.shifted_labels is None else d.shifted_labels[keep]))
    if built:
        size = sum(d.frames.nbytes for d in drives if isinstance(d.frames, FrameStore))
        print(f"decoded the frames of {built} drive(s) into the frame cache {root} "
              f"({size / 1e9:.2f} GB for all {len(drives)}; safe to delete, rebuilt when needed)", file=stream)
    if not drives:
        raise UserError(f"--data {data_dir}: no usable frames in {len(paths)} drive(s)"
                        + (f" ({warnings[0]})" if warnings else ""))
    return DriveSet(drives=drives, env=env, warnings=warnings)


def split_by_drive(n_drives: int, val_fraction: float = 0.15, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of training and validation drives: whole drives, never frames, so neighbouring
    (nearly identical) frames cannot sit on both sides. One drive alone gives no validation set."""
    if n_drives < 2 or val_fraction <= 0:
        return list(range(n_drives)), []
    n_val = min(n_drives - 1, max(1, round(n_drives * val_fraction)))
    order = np.random.default_rng(seed).permutation(n_drives)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def balance_weights(labels: np.ndarray, bins: int = 15, power: float = 0.7, speeds: np.ndarray | None = None,
                    max_speed: float = 1.0, speed_bins: int = 10) -> np.ndarray:
    """Sampling weights that lift the rare curve frames against the many straight ones: inverse
    frequency of the |steering| histogram, softened by `power` (0 = no balancing, 1 = flat). Labels
    (n, 2) of the race task are balanced by their steering column and, given `speeds`, jointly by the
    speed too (in `speed_bins` up to `max_speed`): the rare launches from a standstill and the slow
    hairpins are lifted against the many frames at full throttle."""
    labels = labels[:, 0] if labels.ndim == 2 else labels
    mag = np.clip(np.abs(labels), 0, 1)
    idx = np.minimum((mag * bins).astype(int), bins - 1)
    if speeds is not None:
        fast = np.clip(np.asarray(speeds, np.float64) / max_speed, 0, 1)
        idx = idx * speed_bins + np.minimum((fast * speed_bins).astype(int), speed_bins - 1)
        bins *= speed_bins
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    w = (1.0 / np.maximum(counts[idx], 1.0)) ** power
    return w / w.sum()


def corrective_label(track: Track, env: EnvConfig, pose: np.ndarray, label: float, shift_m: float,
                     rotate_rad: float, mode: str) -> float:
    """The steering for the shifted pose: the task's expert's there ("expert"), or the recorded label
    plus the expert's change between the two poses ("delta", for human labels the expert did not make)."""
    x, y, yaw, speed, s = (float(v) for v in pose)
    nx, ny, nyaw = shifted_pose(x, y, yaw, shift_m, rotate_rad)
    ns = track.project(nx, ny, nyaw, s_hint=s).s
    new = task_expert_steering(env.task, track, CarState(nx, ny, nyaw, speed), ns, env)
    if mode == "expert":
        return new
    old = task_expert_steering(env.task, track, CarState(x, y, yaw, speed),
                               track.project(x, y, yaw, s_hint=s).s, env)
    return max(-1.0, min(1.0, label + new - old))


def noise_bank(shape: tuple[int, int], std: float, seed: int = 0, n: int = 16) -> np.ndarray:
    """A few fixed pixel-noise fields (int16 levels) to add to frames: drawing fresh Gaussian noise
    per frame would cost more than the rest of the augmentation together."""
    if std <= 0:
        return np.zeros((0, *shape, 3), np.int16)
    rng = np.random.default_rng(seed)
    return np.round(rng.standard_normal((n, *shape, 3)) * std).astype(np.int16)


def photometric(frame: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                noise: np.ndarray | None = None) -> np.ndarray:
    """Light, colour, shadow and noise jitter of a uint8 frame (OpenCV saturating arithmetic: fast)."""
    if rng.random() < cfg.light_prob:
        gain = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness) * rng.uniform(1 - cfg.colour, 1 + cfg.colour, 3)
        frame = cv2.multiply(frame, (*gain.tolist(), 0.0))
    if rng.random() < cfg.shadow_prob:
        h, w = frame.shape[:2]
        top, bottom = np.sort(rng.uniform(0, w, 2)), np.sort(rng.uniform(0, w, 2))
        quad = np.array([[top[0], 0], [top[1], 0], [bottom[1], h], [bottom[0], h]], np.int32)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, quad, 1)
        k = rng.uniform(0.45, 0.8)
        frame = frame.copy()
        cv2.copyTo(cv2.multiply(frame, (k, k, k, 0.0)), mask, frame)
    if noise is not None and len(noise):
        frame = cv2.add(frame, noise[int(rng.integers(len(noise)))], dtype=cv2.CV_8U)
    return frame


class FrameDataset(torch.utils.data.Dataset):
    """Samples (frame uint8 (H, W, 3), steering float32) from drives, augmented per `augment`.

    Randomness comes from (seed, epoch, index), so a sample is the same whatever worker makes it.
    `set_epoch` changes it between epochs.
    """

    def __init__(self, drives: Sequence[DriveData], env: EnvConfig, augment: AugmentConfig = NO_AUGMENT,
                 seed: int = 0, index: np.ndarray | None = None, map_bytes: int = MAP_BYTES):
        self.drives = list(drives)
        self.map_bytes = int(map_bytes)
        self.env = env
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        if index is None:
            index = np.concatenate([np.stack([np.full(len(d), i), np.arange(len(d))], 1)
                                    for i, d in enumerate(self.drives)]) if self.drives else np.zeros((0, 2))
        self.index = np.asarray(index, np.int64).reshape(-1, 2)
        if len(self.index):
            starts = np.cumsum([0] + [len(d) for d in self.drives])
            at = starts[self.index[:, 0]] + self.index[:, 1]
            self.labels = np.concatenate([d.labels for d in self.drives])[at]
            self.speeds = np.concatenate([d.pose[:, 3] for d in self.drives])[at]
        else:
            self.labels = np.zeros(0, np.float32)
            self.speeds = np.zeros(0)
        cam = env.camera
        self.noise = noise_bank((cam.height, cam.width), augment.noise_std, seed)
        self._cameras: OrderedDict[int, Camera] = OrderedDict()  # least recently used first
        self._map_held: dict[int, int] = {}
        if augment.shift_prob > 0:  # draw the track maps now, before any worker process forks
            for d in self.drives:
                if d.track is not None:
                    self._camera(d).render(*d.pose[0, :3])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def _camera(self, d: DriveData) -> Camera:
        """The camera of the drive's track. A map draws the tiles its views need and keeps them, so
        over many samples each track's map grows towards its whole road (~3-34 MB): past `map_bytes`
        in all, the least recently used cameras are dropped (their maps are drawn again if needed)."""
        key = id(d.track)
        cam = self._cameras.pop(key, None)
        if cam is None:
            car = self.env.car
            cam = Camera(d.track, self.env.camera, car.length_m, car.width_m, car.wheelbase_m)
        self._cameras[key] = cam
        # what each map held when last seen: the one in hand is counted anew (its last view drew tiles)
        self._map_held[key] = cam.map.resident_bytes
        while len(self._cameras) > 1 and sum(self._map_held.values()) > self.map_bytes:
            oldest = next(iter(self._cameras))
            del self._cameras[oldest], self._map_held[oldest]
        cam.set_palette(d.palette)
        return cam

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The samples at `indices`, exactly as `self[i]` for each: what a DataLoader asks for a batch.
        The recorded frames the batch needs are read together, drive by drive (`FrameStore` reads
        them in file order, one system call per run of neighbouring frames), instead of one read per
        sample; samples re-rendered from a shifted pose read no frame at all."""
        plans = [self._plan(int(i)) for i in indices]
        need: dict[int, list[int]] = {}  # drive -> positions in the batch that need its recorded frame
        for k, (di, _fi, frame, *_rest) in enumerate(plans):
            if frame is None:
                need.setdefault(di, []).append(k)
        frames: list = [p[2] for p in plans]
        for di, ks in need.items():
            store = self.drives[di].frames
            if isinstance(store, FrameStore):  # on disk: the drive's frames of this batch in one go
                for k, frame in zip(ks, store[np.array([plans[k][1] for k in ks], np.int64)]):
                    frames[k] = frame
            else:  # in memory: views, copied once when the batch is stacked
                for k in ks:
                    frames[k] = store[plans[k][1]]
        return [self._finish(frame, *plan[3:]) for frame, plan in zip(frames, plans)]

    def _plan(self, i: int):
        """Everything sample `i` decides before its recorded frame is needed: (drive, frame, the frame
        re-rendered from a shifted pose or None when the recorded one is used, labels, steering, rng)."""
        di, fi = self.index[i].tolist()
        d = self.drives[di]
        labels = np.array(d.labels[fi], np.float32).reshape(-1)
        label = float(labels[0])  # the steering; a throttle label (race) rides along unchanged
        a = self.augment
        if a == NO_AUGMENT:
            return di, fi, None, labels, label, None
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        frame = None  # the recorded frame, read only when used: a re-rendered sample needs none
        if d.track is not None and rng.random() < a.shift_prob:
            shift = rng.uniform(-a.max_shift_m, a.max_shift_m)
            rot = math.radians(rng.uniform(-a.max_rotate_deg, a.max_rotate_deg))
            mode = a.correction if a.correction != "auto" else ("expert" if d.source in EXPERT_SOURCES else "delta")
            cars = None
            if self.env.task == "traffic":
                cars = None if d.cars is None else CarBoxes.from_rows(d.cars[fi], self.env.traffic)
                if d.shifted_labels is not None and mode == "expert":
                    # one of the shifts the recorder labelled: the traffic expert's plan needs the other
                    # cars' motion, known only while recording
                    shift, rot, exact = d.shifted_labels[fi, int(rng.integers(d.shifted_labels.shape[1]))].tolist()
                    mode = None
                else:  # keep the label's traffic part; add the change of the lane expert's steering
                    mode = "delta"
            x, y, yaw = shifted_pose(*d.pose[fi, :3], shift, rot)
            frame = self._camera(d).render(x, y, yaw, cars)
            if self.env.task == "race" and self.env.speed_gauge:
                frame = draw_speed_gauge(frame, d.pose[fi, 3] / self.env.race_car.max_speed_mps)
            label = exact if mode is None else corrective_label(d.track, self.env, d.pose[fi], label, shift, rot, mode)
        return di, fi, frame, labels, label, rng

    def _finish(self, frame: np.ndarray, labels: np.ndarray, label: float,
                rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Mirror and photometric jitter (drawn from the sample's own rng, after `_plan`'s draws)."""
        if rng is None:  # no augmentation
            return frame, labels
        a = self.augment
        if rng.random() < a.mirror_prob:
            frame = frame[:, ::-1]
            label = -label
        frame = photometric(np.ascontiguousarray(frame), rng, a, self.noise)
        labels[0] = label
        return frame, labels


def collate(batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples and run `preprocess` (in the worker, when there are workers); labels (N, outputs)."""
    frames = np.stack([b[0] for b in batch])
    labels = np.array([b[1] for b in batch], np.float32).reshape(len(batch), -1)
    return torch.from_numpy(preprocess(frames)), torch.from_numpy(labels)


class BalancedSampler(torch.utils.data.Sampler):
    """`num_samples` indices drawn with replacement by `weights`, new each epoch, split across DDP
    ranks (each rank gets its own share, like `DistributedSampler`, but balanced)."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.p = np.asarray(weights, np.float64) / np.sum(weights)
        self.per_rank = math.ceil(num_samples / world)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        idx = rng.choice(len(self.p), size=self.per_rank * self.world, replace=True, p=self.p)
        return iter(idx[self.rank::self.world].tolist())


def val_index(drives: Sequence[DriveData], max_frames: int = 4000) -> np.ndarray:
    """Evenly spaced (drive, frame) pairs of the validation drives, at most `max_frames`."""
    full = np.concatenate([np.stack([np.full(len(d), i), np.arange(len(d))], 1) for i, d in enumerate(drives)])
    if len(full) > max_frames:
        full = full[np.linspace(0, len(full) - 1, max_frames).astype(int)]
    return full
