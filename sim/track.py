"""Closed tracks in metres: procedural generation, CSV loading, SPEC parsing and projection.

A track is a closed centerline resampled at a fixed spacing, with right and left widths at each
point. Everything downstream (car, camera, expert, metrics) asks the track two questions: where is
arc length s, and where is this pose relative to the centerline. Pure numpy.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import atomic_write, cache_dir

REAL_DIR = Path(__file__).resolve().parent / "circuits"  # package data: 25 real circuits, LGPL-3.0
SPACING_M = 1.0  # centerline resampling step; projection and rendering rely on it being small
MIN_POINTS = 5  # fewer CSV points than this cannot describe a closed track
MIN_RADIUS_M = 12.0  # tightest corner the generator makes (the car turns at ~4.5 m)


class TrackError(UserError, ValueError):
    """A track or track SPEC that cannot be used; the message is one line naming the source."""


@dataclass(frozen=True)
class Projection:
    """Where a position lies relative to the centerline."""

    s: float  # arc length of the nearest centerline point, in [0, length)
    offset: float  # signed lateral offset, positive to the left of the driving direction
    heading_error: float  # car yaw minus track heading, wrapped to [-pi, pi)
    index: int  # index of the centerline segment the point projects onto


@dataclass(eq=False)
class Track:
    """A closed track. `xy` are centerline points (N, 2) with no repeated closing point."""

    name: str
    xy: np.ndarray
    width_right: np.ndarray
    width_left: np.ndarray
    source: str = ""
    s: np.ndarray = field(init=False, repr=False)
    heading: np.ndarray = field(init=False, repr=False)
    curvature: np.ndarray = field(init=False, repr=False)
    length: float = field(init=False)

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, dtype=np.float64)
        self.width_right = np.asarray(self.width_right, dtype=np.float64)
        self.width_left = np.asarray(self.width_left, dtype=np.float64)
        seg = np.roll(self.xy, -1, axis=0) - self.xy
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        self._seg = seg
        self._seg_len = np.maximum(seg_len, 1e-9)
        self.s = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]])
        self.length = float(seg_len.sum())
        self.heading = np.arctan2(seg[:, 1], seg[:, 0])
        dtheta = _wrap(np.roll(self.heading, -1) - np.roll(self.heading, 1))
        ds = np.roll(self.s, -1) - np.roll(self.s, 1)
        ds[0] += self.length
        ds[-1] += self.length
        self.curvature = dtheta / np.maximum(ds, 1e-9)
        # x, y, segment dx, dy and squared length per point, as rows: a window of them is one slice
        self._columns = np.stack([self.xy[:, 0], self.xy[:, 1], seg[:, 0], seg[:, 1], self._seg_len ** 2])

    # -- geometry -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.xy)

    def index_at(self, s: float) -> int:
        return int(np.searchsorted(self.s, s % self.length, side="right") - 1)

    def point_at(self, s: float) -> np.ndarray:
        """Centerline position at arc length s (any real s, wraps around)."""
        s = s % self.length
        i = self.index_at(s)
        t = (s - self.s[i]) / self._seg_len[i]
        return self.xy[i] + t * self._seg[i]

    def heading_at(self, s: float) -> float:
        return float(self.heading[self.index_at(s)])

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Left and right edge polylines (N, 2), using vertex normals so edges stay smooth."""
        h = np.arctan2(*(np.roll(self.xy, -1, 0) - np.roll(self.xy, 1, 0))[:, ::-1].T)
        normal = np.stack([-np.sin(h), np.cos(h)], axis=1)  # points left
        return self.xy + normal * self.width_left[:, None], self.xy - normal * self.width_right[:, None]

    def project(self, x: float, y: float, yaw: float = 0.0, s_hint: float | None = None,
                window: tuple[float, float] = (-30.0, 60.0)) -> Projection:
        """Project a position onto the centerline.

        With `s_hint` only segments within `window` metres of it are searched, so a track that
        crosses itself (Suzuka) never makes the car jump to the other branch.
        """
        n = len(self.xy)
        first, count = 0, n
        if s_hint is not None:
            step = self.length / n
            lo = int(math.floor(window[0] / step))
            hi = int(math.ceil(window[1] / step))
            first, count = (self.index_at(s_hint) + lo) % n, hi - lo + 1
        # the same arithmetic as on (N, 2) arrays, per coordinate, on a slice when the window
        # does not wrap: a step's projection is a few dozen small numpy calls, not a hundred
        end = first + count
        if end <= n:
            x0, y0, d0, d1, len2 = self._columns[:, first:end]
        elif count <= n:  # the window wraps past the start line
            x0, y0, d0, d1, len2 = np.concatenate([self._columns[:, first:], self._columns[:, :end - n]], 1)
        else:  # a track shorter than the window
            x0, y0, d0, d1, len2 = self._columns.take((first + np.arange(count)) % n, 1)
        rel0, rel1 = x - x0, y - y0
        t = np.minimum(np.maximum((rel0 * d0 + rel1 * d1) / len2, 0.0), 1.0)  # np.clip, with less overhead
        diff0, diff1 = rel0 - d0 * t, rel1 - d1 * t
        dist2 = diff0 * diff0 + diff1 * diff1
        k = int(np.argmin(dist2))
        i = (first + k) % n
        cross = float(d0[k]) * float(rel1[k]) - float(d1[k]) * float(rel0[k])
        offset = math.copysign(math.sqrt(dist2[k]), cross) if cross != 0 else 0.0
        s = (float(self.s[i]) + float(t[k]) * float(self._seg_len[i])) % self.length
        heading_error = (yaw - float(self.heading[i]) + math.pi) % (2 * math.pi) - math.pi
        return Projection(s=s, offset=float(offset), heading_error=heading_error, index=i)

    def half_width(self, index: int, offset: float) -> float:
        """Distance from the centerline to the edge on the side of `offset`."""
        return float(self.width_left[index] if offset >= 0 else self.width_right[index])

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        w = max(self.width_left.max(), self.width_right.max())
        return self.xy.min(0) - w, self.xy.max(0) + w

    def min_radius(self) -> float:
        return float(1.0 / max(np.abs(self.curvature).max(), 1e-9))

    def tightest_corner(self, window_m: float = 10.0) -> float:
        """Radius in metres of the sharpest `window_m` of road (heading change over that stretch).

        Unlike `min_radius`, which reads single-point curvature, this ignores the point-to-point
        noise of surveyed centerlines, so it is what a car a few metres long actually has to turn."""
        k = max(1, int(round(window_m * len(self.xy) / self.length)))
        h = np.unwrap(np.concatenate([self.heading, self.heading[:k]]))
        turn = np.abs(h[k:] - h[:-k]).max()
        return float(k * self.length / len(self.xy) / max(turn, 1e-9))


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


# -- building tracks ------------------------------------------------------------------------------
def _catmull_rom_closed(pts: np.ndarray, per_segment: int = 12) -> np.ndarray:
    """Dense points on the closed Catmull-Rom spline through `pts`."""
    p0, p1, p2, p3 = np.roll(pts, 1, 0), pts, np.roll(pts, -1, 0), np.roll(pts, -2, 0)
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[None, :, None]
    a = 2 * p1
    b = p2 - p0
    c = 2 * p0 - 5 * p1 + 4 * p2 - p3
    d = -p0 + 3 * p1 - 3 * p2 + p3
    out = 0.5 * (a[:, None] + b[:, None] * t + c[:, None] * t**2 + d[:, None] * t**3)
    return out.reshape(-1, pts.shape[1])


def resample_closed(xy: np.ndarray, values: list[np.ndarray], spacing: float = SPACING_M
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Smoothly resample a closed polyline (and per-point values) at a uniform arc-length step."""
    cols = np.column_stack([xy] + [v[:, None] for v in values])
    dense = _catmull_rom_closed(cols)
    closed = np.vstack([dense, dense[:1]])
    seg = np.hypot(*np.diff(closed[:, :2], axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    n = max(int(round(total / spacing)), MIN_POINTS)
    s_new = np.linspace(0.0, total, n, endpoint=False)
    res = np.column_stack([np.interp(s_new, cum, closed[:, j]) for j in range(closed.shape[1])])
    return res[:, :2], [res[:, 2 + j] for j in range(len(values))]


def make_track(name: str, xy: np.ndarray, width_right: np.ndarray, width_left: np.ndarray,
               source: str = "") -> Track:
    xy_r, (wr, wl) = resample_closed(np.asarray(xy, float), [np.asarray(width_right, float),
                                                            np.asarray(width_left, float)])
    return Track(name=name, xy=xy_r, width_right=wr, width_left=wl, source=source)


def load_csv(path: str | os.PathLike) -> Track:
    """Load a centerline CSV: `x_m, y_m, w_tr_right_m, w_tr_left_m` per row, '#' comments."""
    path = Path(path)
    if not path.exists():
        raise TrackError(f"{path}: track file not found")
    if path.is_dir():
        raise TrackError(f"{path}: is a folder, expected a CSV file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise TrackError(f"{path}: not a text CSV file (undecodable bytes)") from None
    except OSError as e:
        raise TrackError(f"{path}: cannot read ({e.strerror})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise TrackError(f"{path}:{lineno}: expected 4 columns (x_m, y_m, w_tr_right_m, w_tr_left_m), "
                             f"found {len(parts)}")
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise TrackError(f"{path}:{lineno}: not a number in {line[:60]!r}") from None
        if not all(math.isfinite(v) for v in vals):
            raise TrackError(f"{path}:{lineno}: NaN or infinite value")
        if vals[2] <= 0 or vals[3] <= 0:
            raise TrackError(f"{path}:{lineno}: track widths must be positive, found {vals[2]:g}, {vals[3]:g}")
        rows.append(vals)
    if not rows:
        raise TrackError(f"{path}: empty track file (no data rows)")
    if len(rows) < MIN_POINTS:
        raise TrackError(f"{path}: only {len(rows)} points, a closed track needs at least {MIN_POINTS}")
    arr = np.array(rows)
    if np.hypot(*(arr[-1, :2] - arr[0, :2])) < 1e-6:
        arr = arr[:-1]  # tolerate an explicitly repeated closing point
    seg = np.hypot(*np.diff(np.vstack([arr[:, :2], arr[:1, :2]]), axis=0).T)
    if (seg < 1e-6).any():
        raise TrackError(f"{path}: repeated consecutive points (zero-length segment)")
    total = seg.sum()
    if seg.max() > 0.5 * total:
        raise TrackError(f"{path}: does not form a closed loop (one gap is half the track)")
    return make_track(path.stem, arr[:, :2], arr[:, 2], arr[:, 3], source=str(path))


# -- procedural generation -----------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorStyle:
    """Knobs of the procedural generator. `standard` makes varied circuits; `challenge` makes the
    shapes the standard style rarely makes (hairpins, chicanes, narrow and width-changing roads),
    kept apart as a held-out test set."""

    n_corners: tuple[int, int] = (8, 16)
    radius_jitter: float = 0.35
    length_m: tuple[float, float] = (800.0, 4000.0)
    width_m: tuple[float, float] = (8.0, 14.0)
    width_variation: float = 0.15
    hairpins: tuple[int, int] = (0, 1)
    chicanes: tuple[int, int] = (0, 1)
    min_radius_m: float = 18.0


STYLES = {
    "procedural": GeneratorStyle(),
    "challenge": GeneratorStyle(n_corners=(10, 18), radius_jitter=0.45, length_m=(1000.0, 3000.0),
                                width_m=(7.0, 10.0), width_variation=0.35, hairpins=(2, 4),
                                chicanes=(2, 4), min_radius_m=MIN_RADIUS_M),
}


def generate(seed: int, style: str = "procedural") -> Track:
    """A seeded random closed circuit; the same seed gives the same track on every machine."""
    cfg = STYLES[style]
    rng = np.random.default_rng([seed, 0 if style == "procedural" else 1])
    for _attempt in range(200):
        track = _try_generate(rng, cfg)
        if track is not None:
            track.name = f"{style}:{seed}"
            track.source = f"{style}:{seed}"
            return track
    raise TrackError(f"{style}:{seed}: generator found no valid track")  # pragma: no cover


def generate_cached(seed: int, style: str = "procedural") -> Track:
    """`generate`, remembered on disk: a generated track is saved (centerline and widths as one
    float64 array, about 100 kB) under the cache folder, keyed by a digest of this file, so later processes load it in a
    fraction of a millisecond and any change to the generator starts afresh. The folder is
    `$E2E_DRIVE_CACHE`, else `$XDG_CACHE_HOME/e2e-drive`, else `~/.cache/e2e-drive`; `E2E_DRIVE_CACHE=off`
    turns it off. A cache that cannot be read or written is ignored."""
    path = _cache_path(seed, style)
    if path is not None and path.exists():
        try:
            cols = np.load(path)  # x, y, width_right, width_left per centerline point
            if cols.ndim == 2 and cols.shape[1] == 4 and len(cols) >= MIN_POINTS and cols.dtype == np.float64:
                return Track(name=f"{style}:{seed}", xy=cols[:, :2], width_right=cols[:, 2], width_left=cols[:, 3],
                             source=f"{style}:{seed}")
        except (OSError, ValueError, EOFError):
            pass  # a damaged entry: generate again and overwrite it
    track = generate(seed, style)
    if path is not None:
        cols = np.column_stack([track.xy, track.width_right, track.width_left])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: np.save(f, cols))
        except OSError:
            pass  # read-only or full disk: the track is still good, just not remembered
    return track


@functools.cache
def _generator_digest() -> str:
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]


def _cache_path(seed: int, style: str) -> Path | None:
    root = cache_dir("tracks")
    return None if root is None else root / f"{style}-{seed}-{_generator_digest()}.npy"


def _try_generate(rng: np.random.Generator, cfg: GeneratorStyle) -> Track | None:
    n = int(rng.integers(cfg.n_corners[0], cfg.n_corners[1] + 1))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    angles = (np.linspace(0, 2 * np.pi, n, endpoint=False) + angles) / 2  # spread, not uniform
    radii = 1.0 + rng.uniform(-cfg.radius_jitter, cfg.radius_jitter, n)
    ctrl = np.stack([np.cos(angles) * radii, np.sin(angles) * radii * rng.uniform(0.55, 1.0)], 1)
    target = rng.uniform(*cfg.length_m)
    ctrl = ctrl * (target / _closed_length(ctrl))
    ctrl = _insert_features(rng, ctrl, cfg)
    xy = _polyline_resample(ctrl)
    smooth = _round_corners(_smooth_closed(xy, rng.uniform(4.0, 30.0)), cfg.min_radius_m)
    if smooth is None:
        return None
    k = len(ctrl)
    base_w = rng.uniform(*cfg.width_m)
    w = np.clip(base_w * (1.0 + rng.uniform(-cfg.width_variation, cfg.width_variation, k)), 7.0, 14.0)
    asym = rng.uniform(-0.08, 0.08, k)
    # widths vary smoothly: interpolate per-control-point values along the closed curve
    u = np.linspace(0, k, len(smooth), endpoint=False)
    wr = np.interp(u, np.arange(k + 1), np.append(w * (0.5 + asym), w[0] * (0.5 + asym[0])))
    wl = np.interp(u, np.arange(k + 1), np.append(w * (0.5 - asym), w[0] * (0.5 - asym[0])))
    xy_r, (wr, wl) = resample_closed(smooth[::5], [wr[::5], wl[::5]])
    track = Track(name="", xy=xy_r, width_right=wr, width_left=wl)
    if not (0.8 * cfg.length_m[0] <= track.length <= 1.1 * cfg.length_m[1]):
        return None
    if track.min_radius() < min(cfg.min_radius_m, MIN_RADIUS_M) * 0.95:
        return None
    if _self_intersects(track):
        return None
    return track


def _closed_length(xy: np.ndarray) -> float:
    return float(np.hypot(*np.diff(np.vstack([xy, xy[:1]]), axis=0).T).sum())


def _polyline_resample(pts: np.ndarray) -> np.ndarray:
    """Points every ~2.5 m along a closed polygon with straight sides."""
    closed = np.vstack([pts, pts[:1]])
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    s = np.linspace(0, cum[-1], max(int(cum[-1] / 2.5), 100), endpoint=False)
    return np.column_stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])])


def _smooth_closed(xy: np.ndarray, sigma_m: float) -> np.ndarray:
    """Periodic Gaussian smoothing of a uniformly spaced closed curve (sigma in metres)."""
    step = _closed_length(xy) / len(xy)
    sig = sigma_m / step
    half = int(np.ceil(3 * sig))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sig) ** 2)
    k /= k.sum()
    padded = np.vstack([xy[-half:], xy, xy[:half]]) if half else xy
    return np.column_stack([np.convolve(padded[:, j], k, mode="valid") for j in range(2)])


def _round_corners(xy: np.ndarray, min_radius: float, max_iter: int = 3000) -> np.ndarray | None:
    """Locally diffuse only the too-tight stretches of a closed curve until every corner has at
    least `min_radius`; straights and wide bends are left exactly as they are.

    Every 8th iteration finds the tight points (Menger curvature over +-2 points, then widened by
    10 points each way); the 7 iterations between move each of them to the mean of its 6
    neighbours, all at once. Only the windows around tight stretches are computed."""
    xy = xy.copy()
    n = len(xy)
    near = None  # the points whose curvature may have changed since the last check (None: all)
    for it in range(0, max_iter, 8):
        if near is None:
            a, b, c = np.roll(xy, 2, 0), xy, np.roll(xy, -2, 0)
        else:  # elsewhere nothing moved within 2 points, and nothing there was tight
            a, b, c = xy[(near - 2) % n], xy[near], xy[(near + 2) % n]
        xa, ca, cx = b - a, c - a, c - b
        ab = np.hypot(xa[:, 0], xa[:, 1])
        bc = np.hypot(cx[:, 0], cx[:, 1])
        ac = np.hypot(ca[:, 0], ca[:, 1])
        cross = np.abs(xa[:, 0] * ca[:, 1] - xa[:, 1] * ca[:, 0])
        kappa = 2 * cross / np.maximum(ab * bc * ac, 1e-12)  # Menger curvature
        over = kappa * min_radius > 1.0
        if not over.any():
            return xy
        if near is None:
            tight = over
        else:
            tight = np.zeros(n, bool)
            tight[near[over]] = True
        near = _diffuse(xy, tight, min(7, max_iter - it - 1))
    return None


def _diffuse(xy: np.ndarray, tight: np.ndarray, steps: int) -> np.ndarray | None:
    """`steps` times, in place: each point within 10 of a tight one becomes the mean of its 6
    neighbours (+-3), all from the same previous positions. Works only on the stretches that move,
    with 3 points of context each side, laid end to end: each step is a few slice additions.
    Returns the points within 13 of a tight one (all whose curvature can have changed), or None
    when that is the whole ring."""
    n = len(xy)
    k = 13  # moved points (10 around a tight one) and their context (3 more)
    count = np.concatenate([[0], np.cumsum(np.concatenate([tight[-k:], tight, tight[:k]]))])
    moves = count[k + 11:n + k + 11] > count[3:n + 3]  # a tight point within +-10
    window = count[2 * k + 1:] > count[:n]  # ... within +-13
    if window.all():  # no stretch stands still: no place to cut the ring open
        _diffuse_all(xy, moves, steps)
        return None
    start = int(np.argmin(window))  # a point outside every window: the ring is cut open there
    inside = np.flatnonzero(window)
    cut = int(np.searchsorted(inside, start))
    where = np.concatenate([inside[cut:], inside[:cut]])
    p = xy[where]
    move = moves[where][3:-3, None]
    ahead3, ahead2, ahead1, centre, back1, back2, back3 = (p[i:len(p) - 6 + i] for i in (6, 5, 4, 3, 2, 1, 0))
    s = np.empty_like(centre)
    for _ in range(steps):  # views of p: each step sees the previous one's moves
        np.add(ahead3, ahead2, out=s)
        s += ahead1
        s += back1
        s += back2
        s += back3
        np.divide(s, 6, out=centre, where=move)  # the mean, written only where points move
    xy[where] = p
    return where


def _diffuse_all(xy: np.ndarray, tight: np.ndarray, steps: int) -> None:
    for _ in range(steps):
        avg = sum(np.roll(xy, k, 0) for k in (-3, -2, -1, 1, 2, 3)) / 6
        xy[tight] = avg[tight]


def _insert_features(rng: np.random.Generator, ctrl: np.ndarray, cfg: GeneratorStyle) -> np.ndarray:
    """Add hairpins (a tongue pushed out and back) and chicanes (a sideways jog) between corners."""
    pts = [p for p in ctrl]
    n_hair = int(rng.integers(cfg.hairpins[0], cfg.hairpins[1] + 1))
    n_chic = int(rng.integers(cfg.chicanes[0], cfg.chicanes[1] + 1))
    for kind in ["hairpin"] * n_hair + ["chicane"] * n_chic:
        i = int(rng.integers(0, len(pts)))
        a, b = pts[i], pts[(i + 1) % len(pts)]
        d = b - a
        L = np.hypot(*d)
        if L < 120.0:
            continue
        t = d / L
        nrm = np.array([-t[1], t[0]])
        if np.dot(nrm, (a + b) / 2) < 0:
            nrm = -nrm  # push outward so the tongue does not cut across the circuit
        if kind == "hairpin":
            depth = min(rng.uniform(50.0, 140.0), 0.6 * L)
            gap = rng.uniform(15.0, 22.0)
            m = (a + b) / 2
            new = [m - t * gap, m - t * gap + nrm * depth, m + t * gap + nrm * depth, m + t * gap]
        else:
            jog = rng.uniform(8.0, 16.0) * rng.choice([-1, 1])
            c = (a + b) / 2
            new = [c - t * 45, c - t * 15 + nrm * jog, c + t * 15 + nrm * jog, c + t * 45]
        pts[i + 1:i + 1] = new
    return np.array(pts)


def _self_intersects(track: Track, margin: float = 6.0) -> bool:
    """True when two parts of the road that are far apart along the track come close in space.

    Only pairs closer than the largest clearance can count, so points are binned in cells of that
    size and each is compared with the points of its own and the 8 neighbouring cells."""
    step = 4
    pts = track.xy[::step]
    w = np.maximum(track.width_left, track.width_right)[::step]
    s = track.s[::step]
    cell_m = 2 * float(w.max()) + margin  # no clearance is larger
    cell = np.floor((pts - pts.min(0)) / cell_m).astype(np.int64) + 1
    stride = int(cell[:, 1].max()) + 2
    key = cell[:, 0] * stride + cell[:, 1]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    i_all, j_all = [], []
    for d in (-stride - 1, -stride, -stride + 1, -1, 0, 1, stride - 1, stride, stride + 1):
        lo = np.searchsorted(sorted_key, key + d, "left")
        count = np.searchsorted(sorted_key, key + d, "right") - lo
        total = int(count.sum())
        if total == 0:
            continue
        i = np.repeat(np.arange(len(key)), count)
        j = order[np.repeat(lo - np.cumsum(count) + count, count) + np.arange(total)]
        i_all.append(i)
        j_all.append(j)
    i, j = np.concatenate(i_all), np.concatenate(j_all)
    diff = pts[i] - pts[j]
    dist = np.hypot(diff[:, 0], diff[:, 1])
    ds = np.abs(s[i] - s[j])
    ds = np.minimum(ds, track.length - ds)
    clearance = w[i] + w[j] + margin
    # Points close along the track are near in space by construction; look only at distant ones,
    # where "distant" must exceed the road's own width so a tight hairpin is not a crossing.
    far = ds > np.maximum(clearance * 2.0, 40.0)
    return bool((far & (dist < clearance)).any())


# -- SPEC -----------------------------------------------------------------------------------------
def parse_spec(spec: str) -> list[str]:
    """Expand a track SPEC into single-track specs, checking each part.

    A SPEC is a comma-separated list of parts: `procedural:7`, `procedural:0-19`, `challenge:0-9`,
    `real:all`, `real:NAME` (a built-in real circuit, any case), a CSV file, or a folder of CSVs.
    Real circuits expand to `real:Name` so recordings and reports name them the same on every machine.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise TrackError("empty track SPEC: give e.g. procedural:0-19, real:all, a CSV file or a folder of CSVs")
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise TrackError(f"{spec!r}: empty item in track SPEC")
        head, sep, tail = part.partition(":")
        if sep and head in STYLES:
            lo, dash, hi = tail.partition("-")
            try:
                a = int(lo)
                b = int(hi) if dash else a
            except ValueError:
                raise TrackError(f"{part}: bad track SPEC, expected {head}:SEED or {head}:FIRST-LAST "
                                 "with whole numbers") from None
            if a < 0 or b < a:
                raise TrackError(f"{part}: bad seed range (need 0 <= FIRST <= LAST)")
            out.extend(f"{head}:{i}" for i in range(a, b + 1))
            continue
        if sep and head == "real":
            out.extend(f"real:{n}" for n in (real_circuit_names() if tail.lower() == "all" else [_real_name(tail)]))
            continue
        path = Path(part).expanduser()
        if path.is_dir():
            csvs = sorted(path.glob("*.csv"))
            if not csvs:
                raise TrackError(f"{path}: folder has no .csv track files")
            out.extend(str(c) for c in csvs)
        elif path.exists():
            out.append(str(path))
        elif sep and not path.suffix:
            raise TrackError(f"{part}: unknown track kind {head!r} (use {', '.join(STYLES)}, real, a CSV or a folder)")
        else:
            raise TrackError(f"{path}: track file not found")
    return out


def real_circuit_names() -> list[str]:
    """Names of the built-in real circuits (the CSVs shipped in sim/circuits), sorted."""
    return sorted(p.stem for p in REAL_DIR.glob("*.csv"))


def _real_name(name: str) -> str:
    """The built-in circuit called `name` in any letter case, spelled as its file is."""
    names = real_circuit_names()
    by_lower = {n.lower(): n for n in names}
    if name.strip().lower() not in by_lower:
        raise TrackError(f"real:{name}: no built-in real circuit of that name (have {', '.join(names[:8])}, ... "
                         f"{len(names)} in all; real:all drives every one, `run_drive.py tracks real:all` lists them)")
    return by_lower[name.strip().lower()]


TRACK_CACHE_SIZE = 128  # tracks kept per process (a few hundred kB each), least recently used dropped
_CACHE: OrderedDict[str, Track] = OrderedDict()


def load_track(spec: str) -> Track:
    """One track from a single-track spec (`procedural:7` or a CSV path); the last
    `TRACK_CACHE_SIZE` are kept per process, so a revisit returns the same object."""
    if spec in _CACHE:
        _CACHE.move_to_end(spec)
        return _CACHE[spec]
    head, sep, tail = spec.partition(":")
    if sep and head in STYLES:
        try:
            seed = int(tail)
        except ValueError:
            raise TrackError(f"{spec}: bad track SPEC, expected {head}:SEED with a whole number") from None
        if seed < 0:
            raise TrackError(f"{spec}: seed must be >= 0")
        track = generate_cached(seed, head)
    elif sep and head == "real":
        name = _real_name(tail)
        track = load_csv(REAL_DIR / f"{name}.csv")
        track.source = f"real:{name}"
    else:
        track = load_csv(spec)
    _CACHE[spec] = track
    while len(_CACHE) > TRACK_CACHE_SIZE:
        _CACHE.popitem(last=False)
    return track


def load_tracks(spec: str) -> list[Track]:
    return [load_track(s) for s in parse_spec(spec)]


def forget(spec: str) -> None:
    """Drop one track from this process's cache (the disk cache keeps it): the next `load_track`
    of it is a first visit again. For measuring resets."""
    _CACHE.pop(spec, None)
