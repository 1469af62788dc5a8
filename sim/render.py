"""Camera frames from a track and a car pose: the track is drawn into a label map, and each frame
is one image warp of that map around the pose, then a palette lookup on the small frame.

Drawing labels (grass, asphalt, lines, kerbs) instead of colours keeps the map at one byte per pixel
and makes palette randomisation free: a new palette is just a new 256-entry lookup table. The map is
drawn lazily, in tiles, as cameras look at them: a reset costs a few tiles, not a whole map.
"""

from __future__ import annotations

import math
import mmap
from collections import OrderedDict
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .track import Track
from .traffic import CarBoxes, rectangle_corners

# label ids in the map
GRASS, GRASS_DARK, ASPHALT, EDGE_LINE, KERB_RED, KERB_WHITE, START_LINE, SKY, CAR_BODY, CAR_GLASS = range(10)
TRAFFIC_BODY = 10  # the other cars (task `traffic`): four colours, labels 10 to 13, none of them red
N_TRAFFIC_COLOURS = 4
N_LABELS = 14

DEFAULT_COLOURS = np.array([
    (86, 150, 64),    # grass
    (74, 136, 56),    # darker grass patches
    (92, 92, 96),     # asphalt
    (235, 235, 235),  # edge line
    (200, 40, 40),    # kerb red
    (240, 240, 240),  # kerb white
    (250, 250, 250),  # start line
    (150, 190, 235),  # sky (dashcam)
    (210, 30, 30),    # car body
    (40, 50, 70),     # car glass
    (40, 90, 215),    # other cars: blue
    (235, 195, 35),   # yellow
    (30, 175, 190),   # teal
    (150, 70, 200),   # purple
], dtype=np.uint8)


def default_palette() -> np.ndarray:
    """RGB colour per label, as a (256, 3) lookup table."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:N_LABELS] = DEFAULT_COLOURS
    return lut


def random_palette(rng: np.random.Generator) -> np.ndarray:
    """Domain randomisation: shift each material's colour and the overall light, keeping the road
    darker than its lines and distinct from the grass so the task stays solvable."""
    base = DEFAULT_COLOURS.astype(np.float64)
    light = rng.uniform(0.65, 1.3)
    tint = rng.uniform(-18, 18, 3)
    cols = base * light + tint
    cols[[GRASS, GRASS_DARK]] += rng.uniform(-30, 30, 3)
    cols[GRASS_DARK] = cols[GRASS] * rng.uniform(0.8, 0.95)
    cols[ASPHALT] = rng.uniform(55, 130) * light + rng.uniform(-8, 8, 3)
    cols[SKY] += rng.uniform(-40, 20, 3)
    lut = np.zeros((256, 3), np.uint8)
    lut[:N_LABELS] = np.clip(cols, 0, 255).astype(np.uint8)
    return lut


# The held-out palette family (the benchmark's unseen look): sand, dry grass or snow beside the road.
# Its ground's red channel is at least HELD_OUT_MIN_GROUND_RED. `random_palette` never reaches that:
# its grass red is at most 86 * 1.3 (light) + 18 (tint) + 30 (grass shift) = 159.8, so no policy
# trained with randomised palettes has seen a frame of this family.
HELD_OUT_MIN_GROUND_RED = 185


def held_out_palette(rng: np.random.Generator) -> np.ndarray:
    """A palette of the held-out family: a bright, non-green ground (sand to snow), a road of darker,
    brownish grey, pale lines and a hazy sky. The road stays darker than the ground and its lines."""
    cols = DEFAULT_COLOURS.astype(np.float64)
    red = rng.uniform(HELD_OUT_MIN_GROUND_RED + 5, 245)
    ground = np.array([red, red * rng.uniform(0.78, 0.97), red * rng.uniform(0.5, 0.92)])
    cols[GRASS] = ground
    cols[GRASS_DARK] = ground * rng.uniform(0.9, 0.97)
    grey = rng.uniform(50, 95)
    cols[ASPHALT] = [grey * 1.08, grey, grey * 0.9]
    cols[[EDGE_LINE, KERB_WHITE, START_LINE]] = rng.uniform(225, 255)
    cols[KERB_RED] = [rng.uniform(20, 60), rng.uniform(60, 120), rng.uniform(170, 230)]  # blue kerbs
    cols[SKY] = [rng.uniform(200, 240), rng.uniform(170, 215), rng.uniform(150, 190)]
    lut = np.zeros((256, 3), np.uint8)
    lut[:N_LABELS] = np.clip(cols, 0, 255).astype(np.uint8)
    return lut


def in_held_out_family(palette: np.ndarray) -> bool:
    """True for a palette of the held-out family (its ground's red at least HELD_OUT_MIN_GROUND_RED)."""
    return int(palette[GRASS, 0]) >= HELD_OUT_MIN_GROUND_RED


@dataclass(frozen=True)
class CameraConfig:
    """What the car's camera sees. `birdseye` is heading-up from above with the car near the bottom;
    `dashcam` is a forward perspective view of the ground from `height_m` pitched down `pitch_deg`."""

    kind: str = "birdseye"
    width: int = 96
    height: int = 96
    view_width_m: float = 40.0  # birdseye: metres across the frame
    car_row: float = 0.8  # birdseye: the car's pose (rear-axle centre), as a fraction of the height from the top
    hfov_deg: float = 100.0  # dashcam: horizontal field of view
    height_m: float = 1.6  # dashcam: camera height above the ground
    pitch_deg: float = 14.0  # dashcam: pitched down below the horizon
    forward_m: float = 1.0  # dashcam: camera ahead of the car's pose (the rear-axle centre)
    max_range_m: float = 150.0  # dashcam: beyond this distance the ground fades into sky
    draw_car: bool = True  # birdseye: draw our own car in the frame
    supersample: int = 1  # warp at this multiple of the size, then area-average (anti-aliasing)
    map_res_m: float = 0.2  # metres per pixel of the pre-drawn track map

    @property
    def view_ahead_m(self) -> float:
        """How far ahead of its centre (the middle of our wheelbase) the frame reaches: the top edge of
        a bird's-eye frame, the far fade of a dashcam's."""
        if self.kind == "birdseye":
            return self.car_row * self.view_width_m * self.height / self.width
        return self.max_range_m + self.forward_m

    def __post_init__(self) -> None:
        if self.kind not in ("birdseye", "dashcam"):
            raise ValueError(f"camera kind must be 'birdseye' or 'dashcam', not {self.kind!r}")
        if self.width < 8 or self.height < 8:
            raise ValueError("camera frame must be at least 8x8 pixels")


CAMERA_PRESETS = {
    "birdseye": CameraConfig(),
    "dashcam": CameraConfig(kind="dashcam", supersample=2),
    "pilotnet": CameraConfig(kind="dashcam", width=200, height=66, hfov_deg=110.0, pitch_deg=10.0,
                             supersample=2),
    "birdseye-66x200": CameraConfig(width=200, height=66, view_width_m=60.0, car_row=0.9),
    # the race task's default: the same bird's-eye view reaching 56 m ahead, far enough to brake from
    # top speed for the corner it sees coming
    "race": CameraConfig(view_width_m=64.0, car_row=0.88),
    # the traffic task's default: 42 m ahead (the lane view shows 32), so a slow car comes into view
    # early enough to pass it; another car is still 9 x 4 pixels
    "traffic": CameraConfig(view_width_m=48.0, car_row=0.88),
}


def camera_from_name(name: str) -> CameraConfig:
    """A preset name, optionally with a size: `birdseye`, `dashcam`, `pilotnet`, `birdseye:128x128`."""
    kind, _, size = name.partition(":")
    if kind not in CAMERA_PRESETS:
        raise ValueError(f"unknown camera {kind!r} (choose from {', '.join(CAMERA_PRESETS)})")
    cfg = CAMERA_PRESETS[kind]
    if size:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise ValueError(f"bad camera size {size!r}, expected WIDTHxHEIGHT like 128x96") from None
        cfg = replace(cfg, width=w, height=h)
    return cfg


def draw_speed_gauge(frame: np.ndarray, fraction: float) -> np.ndarray:
    """Draw the speed into a camera frame, in place, as CarRacing-v3 draws its indicator bar: a white
    bar rising from the bottom on a black strip at both side edges (both, so a mirrored frame shows
    the same gauge). The top pixel is partly lit, so the gauge resolves a fraction of a pixel."""
    h, w = frame.shape[:2]
    bar = max(2, w // 32)
    level = min(1.0, max(0.0, float(fraction))) * h
    full = int(level)
    for cols in (slice(0, bar), slice(w - bar, w)):
        frame[:, cols] = 0
        if full:
            frame[h - full:, cols] = 255
        if full < h:
            frame[h - full - 1, cols] = int(round(255 * (level - full)))
    return frame


TILE_PX = 128  # the map is drawn lazily in square tiles of this many pixels
MAP_CACHE_SIZE = 32  # track maps kept per process (least recently used dropped first) ...
MAP_CACHE_BYTES = 256 << 20  # ... and fewer when their drawn parts take more memory than this
_PAGE = 4096  # memory page: the unit the OS lends a drawn tile's rows in
_CHUNK = 32  # shapes per bounding box when looking for the shapes that reach a tile
_UNDRAWN = 255  # not a label: marks canvas pixels no shape covered (they show the grass)
_NOISE_THRESHOLD = float(np.float32(0.6))  # darker grass above this noise (as float32 compared it)


class TrackMap:
    """The track as a label map (one byte per pixel), with the transform from world metres to map
    pixels.

    The map is drawn lazily, tile by tile: a camera asks for the pixels a frame will read (`ensure`)
    and only tiles not drawn yet are drawn. The array is allocated zeroed, so the operating system
    lends memory only for tiles that were drawn: a reset costs a few tiles, not a full map of
    several megapixels, and memory grows with the part of the track actually driven.
    """

    def __init__(self, track: Track, res_m: float = 0.2, margin_m: float = 60.0):
        lo, hi = track.bounds
        lo = lo - margin_m
        hi = hi + margin_m
        span = hi - lo
        res = max(res_m, float(span.max()) / 30000.0)  # OpenCV warps need sides below 32767
        self.res = res
        self.origin = np.array([lo[0], hi[1]])  # world position of pixel (0, 0): top-left
        w, h = int(math.ceil(span[0] / res)), int(math.ceil(span[1] / res))
        self.width, self.height = w, h
        self.labels = _lazy_zeros(h, w)
        self._drawn = np.zeros((-(-h // TILE_PX), -(-w // TILE_PX)), bool)
        self._pages = np.zeros(-(-h * w // _PAGE), bool)  # pages of `labels` written so far
        self._last_ensured: tuple[int, int, int, int] | None = None
        self._prepare_shapes(track, w, h)

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        return np.stack([(xy[..., 0] - self.origin[0]) / self.res, (self.origin[1] - xy[..., 1]) / self.res], -1)

    def ensure(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Draw every tile under the map pixel box [x0, x1] x [y0, y1] that is not drawn yet."""
        key = (int(x0) // TILE_PX, int(y0) // TILE_PX, int(x1) // TILE_PX, int(y1) // TILE_PX)
        if key == self._last_ensured:  # the same tiles as the last frame: all drawn
            return
        self._last_ensured = key
        ny, nx = self._drawn.shape
        tx0, tx1 = (min(max(t, 0), nx - 1) for t in key[::2])
        ty0, ty1 = (min(max(t, 0), ny - 1) for t in key[1::2])
        block = self._drawn[ty0:ty1 + 1, tx0:tx1 + 1]
        if block.all():
            return
        for ty, tx in zip(*np.nonzero(~block)):
            self._draw_tile(ty0 + int(ty), tx0 + int(tx))

    @property
    def resident_bytes(self) -> int:
        """Memory the drawn tiles hold (whole pages: a tile's rows lie on different pages)."""
        return int(np.count_nonzero(self._pages)) * _PAGE

    # -- drawing ----------------------------------------------------------------------------------
    _SHIFT = 3  # sub-pixel bits of the fixed-point coordinates handed to OpenCV

    def _prepare_shapes(self, track: Track, w: int, h: int) -> None:
        """Every shape of the track in fixed-point map pixels with its pixel bounding box, in the
        order they are painted: road, kerbs, edge lines, start line."""
        k = float(1 << self._SHIFT)

        def px(a: np.ndarray) -> np.ndarray:
            return np.round(self.to_px(a) * k).astype(np.int32)

        # grass with soft darker patches: low-resolution noise, seeded by the track's name
        rng = np.random.default_rng(abs(hash_str(track.name)) % (2**32))
        self._noise = rng.random((max(h // 40, 2), max(w // 40, 2))).astype(np.float32)

        left, right = track.edges()
        px_left, px_right = px(left), px(right)  # points are rounded one by one, so round them once

        def quads(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            """One quad per segment between two polylines: a[i], a[i+1], b[i+1], b[i]."""
            return np.stack([a, np.roll(a, -1, 0), np.roll(b, -1, 0), b], 1)

        layers: list[tuple[int, str, np.ndarray]] = []
        # the road as one quad per centerline segment (works for tracks that cross themselves)
        layers.append((ASPHALT, "fill", quads(px_left, px_right)))

        # kerbs: red/white stripes just outside the edges where the track bends
        bend = np.abs(track.curvature) > 1.0 / 80.0
        bend = np.convolve(bend.astype(float), np.ones(9), "same") > 0
        h_vec = np.arctan2(*(np.roll(track.xy, -1, 0) - np.roll(track.xy, 1, 0))[:, ::-1].T)
        normal = np.stack([-np.sin(h_vec), np.cos(h_vec)], 1)
        kerb_w = 1.2
        stripe = ((track.s // 3.0).astype(int) % 2 == 0)
        for edge, px_edge, sign in ((left, px_left, 1.0), (right, px_right, -1.0)):
            q = quads(px_edge, px(edge + sign * normal * kerb_w))
            for lab, sel in ((KERB_RED, bend & stripe), (KERB_WHITE, bend & ~stripe)):
                layers.append((lab, "fill", q[sel]))

        # edge lines, slightly inside the road: closed polylines, painted segment by segment
        self._line_w = max(1, int(round(0.5 / self.res)))
        for edge, sign in ((left, -1.0), (right, 1.0)):
            pts = px(edge + sign * normal * 0.45)
            layers.append((EDGE_LINE, "line", np.stack([np.roll(pts, 1, 0), pts], 1)))

        # start/finish line across the road at s = 0
        p0, n0 = track.xy[0], normal[0]
        t0 = np.array([math.cos(track.heading[0]), math.sin(track.heading[0])])
        a, b = p0 + n0 * track.width_left[0], p0 - n0 * track.width_right[0]
        layers.append((START_LINE, "fill", px(np.array([[a, b, b + t0 * 1.5, a + t0 * 1.5]]))))

        # pixel boxes, widened by the line thickness and rounding: a shape reaches no pixel outside
        pad = self._line_w + 2
        self._layers = [(lab, kind, shapes) for lab, kind, shapes in layers if len(shapes)]
        los, his = [], []
        for _, _, shapes in self._layers:
            lo, hi = shapes[:, 0], shapes[:, 0]
            for i in range(1, shapes.shape[1]):
                lo, hi = np.minimum(lo, shapes[:, i]), np.maximum(hi, shapes[:, i])
            los.append((lo >> self._SHIFT) - pad)
            his.append((hi >> self._SHIFT) + pad + 1)
        self._layer_start = np.cumsum([0] + [len(s) for _, _, s in self._layers])
        self._lo_px, self._hi_px = np.concatenate(los), np.concatenate(his)
        self._index_tiles()
        # grass noise sampling, per column and per row of the map
        sh, sw = self._noise.shape
        self._noise_x = _bilinear_axis(w, sw)
        self._noise_y = _bilinear_axis(h, sh)

    def _index_tiles(self) -> None:
        """Bounding boxes of runs of `_CHUNK` consecutive shapes: shapes follow the track, so a run
        covers a short stretch of road and a tile only looks inside the few runs that reach it."""
        m = len(self._lo_px)
        pad = -m % _CHUNK
        lo = np.concatenate([self._lo_px, np.full((pad, 2), np.iinfo(np.int32).max, self._lo_px.dtype)])
        hi = np.concatenate([self._hi_px, np.full((pad, 2), np.iinfo(np.int32).min, self._hi_px.dtype)])
        self._chunk_lo = np.stack([lo[:, i].reshape(-1, _CHUNK).min(1) for i in (0, 1)], 1)
        self._chunk_hi = np.stack([hi[:, i].reshape(-1, _CHUNK).max(1) for i in (0, 1)], 1)

    def _shapes_in(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Indices (in painting order) of the shapes whose boxes reach the pixel box [x0, x1) x [y0, y1)."""
        clo, chi = self._chunk_lo, self._chunk_hi
        runs = np.flatnonzero((clo[:, 0] < x1) & (chi[:, 0] > x0) & (clo[:, 1] < y1) & (chi[:, 1] > y0))
        if len(runs) == 0:
            return runs
        ids = (runs[:, None] * _CHUNK + np.arange(_CHUNK)).ravel()
        ids = ids[ids < len(self._lo_px)]
        lo, hi = self._lo_px[ids], self._hi_px[ids]
        return ids[(lo[:, 0] < x1) & (hi[:, 0] > x0) & (lo[:, 1] < y1) & (hi[:, 1] > y0)]

    def _grass(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The grass labels of a pixel box: the noise grid interpolated bilinearly, as
        `cv2.resize(noise, (width, height), INTER_LINEAR)` samples it, evaluated only in the box
        (in float64: on a whole map, a few pixels in ten million fall on the other side of the
        threshold than with OpenCV's float32 arithmetic)."""
        xi, xj, fx = (a[x0:x1] for a in self._noise_x)
        yi, yj, fy = (a[y0:y1] for a in self._noise_y)
        r0 = int(yi[0])
        grid = self._noise[r0:int(yj[-1]) + 1].astype(np.float64)
        across = grid[:, xi] * (1.0 - fx) + grid[:, xj] * fx
        value = across[yi - r0] * (1.0 - fy)[:, None] + across[yj - r0] * fy[:, None]
        return np.where(value > _NOISE_THRESHOLD, GRASS_DARK, GRASS).astype(np.uint8)

    def _draw_tile(self, ty: int, tx: int) -> None:
        """Paint one tile exactly as a full-map drawing would: the shapes that reach the tile are
        painted whole on a canvas that contains them (OpenCV clips nothing, so every pixel comes out
        as on the full map), and the tile is cut from it."""
        x0, y0 = tx * TILE_PX, ty * TILE_PX
        x1, y1 = min(x0 + TILE_PX, self.width), min(y0 + TILE_PX, self.height)
        tile = self._grass(x0, y0, x1, y1)
        ids = self._shapes_in(x0, y0, x1, y1)
        if len(ids):
            lo, hi = self._lo_px[ids].min(0), self._hi_px[ids].max(0)
            cx0, cy0 = min(x0, int(lo[0])), min(y0, int(lo[1]))
            cx1, cy1 = max(x1, int(hi[0])), max(y1, int(hi[1]))
            canvas = np.full((cy1 - cy0, cx1 - cx0), _UNDRAWN, np.uint8)
            offset = np.array([cx0, cy0], np.int32) << self._SHIFT
            bounds = np.searchsorted(ids, self._layer_start)
            for (lab, kind, shapes), i, j, start in zip(self._layers, bounds[:-1], bounds[1:], self._layer_start):
                if j == i:
                    continue
                picked = shapes[ids[i:j] - start] - offset  # (k, corners, 2): k shapes in one call
                if kind == "fill":
                    cv2.fillPoly(canvas, picked, lab, lineType=cv2.LINE_8, shift=self._SHIFT)
                else:
                    cv2.polylines(canvas, picked, False, lab, thickness=self._line_w, lineType=cv2.LINE_8,
                                  shift=self._SHIFT)
            painted = canvas[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
            tile = np.where(painted == _UNDRAWN, tile, painted)
        self.labels[y0:y1, x0:x1] = tile
        self._drawn[ty, tx] = True
        rows = np.arange(y0 * self.width, y1 * self.width, self.width)
        self._pages[(rows + x0) // _PAGE] = True
        self._pages[(rows + (x1 - 1)) // _PAGE] = True


def _lazy_zeros(h: int, w: int) -> np.ndarray:
    """A zeroed uint8 image whose pages the OS provides only when first written. `np.zeros` gives
    that only sometimes: once a large block was freed, the C allocator reuses heap memory and
    clears all of it."""
    if h * w < (1 << 20) or not hasattr(mmap, "MAP_PRIVATE"):
        return np.zeros((h, w), np.uint8)
    buf = mmap.mmap(-1, h * w, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, np.uint8).reshape(h, w)  # the array keeps the mapping alive


def _bilinear_axis(n_dst: int, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of n_dst samples along an axis stretched from n_src: the two source indices and
    the weight of the second, with OpenCV's pixel-centre convention and clamped borders."""
    f = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
    i = np.floor(f)
    f = f - i
    i = i.astype(np.intp)
    f[(i < 0) | (i >= n_src - 1)] = 0.0
    i = np.clip(i, 0, n_src - 1)
    return i, np.minimum(i + 1, n_src - 1), f


def hash_str(s: str) -> int:
    """A hash that is the same in every process (Python's str hash is salted per process)."""
    h = 1469598103934665603
    for ch in s.encode():
        h = ((h ^ ch) * 1099511628211) % (1 << 63)
    return h


_MAPS: OrderedDict[tuple[int, float], tuple[Track, TrackMap]] = OrderedDict()


def track_map(track: Track, res_m: float) -> TrackMap:
    """One map per track and resolution, shared by every camera looking at it. The most recently
    used maps are kept, at most `MAP_CACHE_SIZE` of them and while their drawn parts fit in
    `MAP_CACHE_BYTES` (a camera keeps its own map alive while it lives)."""
    key = (id(track), res_m)
    hit = _MAPS.get(key)
    if hit is not None and hit[0] is track:
        _MAPS.move_to_end(key)
        return hit[1]
    tmap = TrackMap(track, res_m)
    _MAPS[key] = (track, tmap)  # holding the track keeps its id from being reused
    while len(_MAPS) > MAP_CACHE_SIZE or (
            len(_MAPS) > 1 and sum(m.resident_bytes for _, m in _MAPS.values()) > MAP_CACHE_BYTES):
        _MAPS.popitem(last=False)
    return tmap


class Camera:
    """Renders the camera frame for a car pose on one track."""

    def __init__(self, track: Track, cfg: CameraConfig = CameraConfig(), car_length_m: float = 4.4,
                 car_width_m: float = 1.9, wheelbase_m: float = 2.6):
        self.track = track
        self.cfg = cfg
        self.map = track_map(track, cfg.map_res_m)
        self.wheelbase = wheelbase_m
        ss = max(1, int(cfg.supersample))
        self.ss = ss
        self.out_w, self.out_h = cfg.width * ss, cfg.height * ss
        self.palette = default_palette()
        self._sky_rows = 0
        if cfg.kind == "birdseye":
            self.m_per_px = cfg.view_width_m / self.out_w
            self._car_mask = self._make_car_mask(car_length_m, car_width_m) if cfg.draw_car else None
        else:
            self._car_mask = None
            self._prepare_dashcam()

    # -- public ---------------------------------------------------------------------------------
    def set_palette(self, palette: np.ndarray) -> None:
        self.palette = palette

    def render(self, x: float, y: float, yaw: float, cars: CarBoxes | None = None) -> np.ndarray:
        """The RGB frame (height, width, 3) uint8 seen from the rear-axle pose (x, y, yaw), with the
        other `cars` (task traffic) on the road.

        The 1-byte label map is warped to the frame and only then coloured by the palette, so a new
        palette costs nothing and no coloured copy of the map exists."""
        return self.colour(self.render_labels(x, y, yaw, cars))

    def render_labels(self, x: float, y: float, yaw: float, cars: CarBoxes | None = None) -> np.ndarray:
        """The frame as labels (height*ss, width*ss) uint8, before colouring and downsampling. Other
        cars are drawn after the warp, so a frame without them is the same as before."""
        cx = x + 0.5 * self.wheelbase * math.cos(yaw)
        cy = y + 0.5 * self.wheelbase * math.sin(yaw)
        if self.cfg.kind == "birdseye":
            m = self._birdseye_matrix(cx, cy, yaw)
            self._ensure_drawn(m, 0.0)
            lab = cv2.warpAffine(self.map.labels, m, (self.out_w, self.out_h),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=GRASS)
            if cars is not None and len(cars):
                self._draw_cars_birdseye(lab, cars, cx, cy, yaw)
            if self._car_mask is not None:
                lab[self._car_mask[0]] = CAR_BODY
                lab[self._car_mask[1]] = CAR_GLASS
        else:
            m = self._dashcam_matrix(cx, cy, yaw)
            if self._sky_rows < self.out_h:
                self._ensure_drawn(m, float(self._sky_rows))
            lab = cv2.warpPerspective(self.map.labels, m, (self.out_w, self.out_h),
                                      flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=GRASS)
            lab[: self._sky_rows] = SKY
            if cars is not None and len(cars):
                self._draw_cars_dashcam(lab, cars, cx, cy, yaw)
        return lab

    def colour(self, labels: np.ndarray) -> np.ndarray:
        """Labels to the RGB frame with this camera's palette (area-averaged when supersampled)."""
        rgb = cv2.applyColorMap(labels, self.palette.reshape(256, 1, 3))  # a lookup table per label
        if self.ss > 1:
            rgb = cv2.resize(rgb, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)
        return rgb

    def _ensure_drawn(self, m: np.ndarray, top_row: float) -> None:
        """Have the map draw the tiles this frame reads: the pixel centres of the frame's rows from
        `top_row` down, mapped into the map through the warp matrix (2x3 affine or 3x3 homography).
        The image of that rectangle is convex, so its corners bound it."""
        u1, v0, v1 = self.out_w - 1.0, top_row, self.out_h - 1.0
        rows = m.tolist()
        if len(rows) == 2:  # affine: the box follows from the signs of the coefficients
            (a, b, c), (d, e, f) = rows
            x0 = c + min(0.0, a * u1) + min(b * v0, b * v1)
            x1 = c + max(0.0, a * u1) + max(b * v0, b * v1)
            y0 = f + min(0.0, d * u1) + min(e * v0, e * v1)
            y1 = f + max(0.0, d * u1) + max(e * v0, e * v1)
        else:
            (a, b, c), (d, e, f), (g, h, k) = rows
            xs, ys = [], []
            for u in (0.0, u1):
                for v in (v0, v1):
                    w = g * u + h * v + k
                    xs.append((a * u + b * v + c) / w)
                    ys.append((d * u + e * v + f) / w)
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        self.map.ensure(x0 - 2, y0 - 2, x1 + 2, y1 + 2)

    def view_radius_m(self) -> float:
        """How far from the car anything in this camera's frame can be."""
        if self.cfg.kind == "birdseye":
            w = self.cfg.view_width_m
            h = w * self.out_h / self.out_w
            return math.hypot(w / 2, h * max(self.cfg.car_row, 1 - self.cfg.car_row))
        return self.cfg.max_range_m + self.cfg.forward_m

    # -- birdseye --------------------------------------------------------------------------------
    def _birdseye_matrix(self, cx: float, cy: float, yaw: float) -> np.ndarray:
        """2x3 matrix from output pixel (u, v) to map pixel, for a heading-up view."""
        mpp, res = self.m_per_px, self.map.res
        u0, v0 = self.out_w / 2.0, self.cfg.car_row * self.out_h
        c, s = math.cos(yaw), math.sin(yaw)
        # car frame: forward f = (v0 - v) * mpp, left l = (u0 - u) * mpp
        # world X = cx + f c - l s ; Y = cy + f s + l c ; map px = (X - ox)/res, (oy - Y)/res
        ox, oy = self.map.origin
        a_u = (s * mpp) / res  # dX/du = +s*mpp
        a_v = (-c * mpp) / res  # dX/dv = -c*mpp
        b_u = (c * mpp) / res  # d(-Y)/du = c*mpp
        b_v = (s * mpp) / res  # d(-Y)/dv = s*mpp
        X0 = cx + (v0 * c - u0 * s) * mpp
        Y0 = cy + (v0 * s + u0 * c) * mpp
        return np.array([[a_u, a_v, (X0 - ox) / res],
                         [b_u, b_v, (oy - Y0) / res]], dtype=np.float64)

    def _make_car_mask(self, length: float, width: float) -> tuple[tuple[slice, slice], ...]:
        """Our car as two rectangles (body, windscreen) of pixel slices: painting a slice is cheap."""
        u0, v0 = self.out_w / 2.0, self.cfg.car_row * self.out_h
        hl, hw = length / 2 / self.m_per_px, width / 2 / self.m_per_px

        def box(top: float, bottom: float, half: float) -> tuple[slice, slice]:
            return (slice(max(int(round(v0 + top)), 0), max(int(round(v0 + bottom)), 1)),
                    slice(max(int(round(u0 - half)), 0), max(int(round(u0 + half)), 1)))

        return box(-hl, hl, hw), box(-hl * 0.45, -hl * 0.1, hw * 0.7)

    def _draw_cars_birdseye(self, lab: np.ndarray, cars: CarBoxes, cx: float, cy: float, yaw: float) -> None:
        """Each car as a body rectangle with a windscreen, straight into the frame (plain float
        math: only a few cars are ever in view)."""
        mpp = self.m_per_px
        c, s = math.cos(yaw), math.sin(yaw)
        u0, v0 = self.out_w / 2.0, self.cfg.car_row * self.out_h
        hl, hw = cars.length_m / 2, cars.width_m / 2
        # body and windscreen corners in the car's frame (forward, left)
        shape = ((hl, hw), (hl, -hw), (-hl, -hw), (-hl, hw),
                 (0.4 * hl, 0.7 * hw), (0.4 * hl, -0.7 * hw), (0.05 * hl, -0.7 * hw), (0.05 * hl, 0.7 * hw))
        reach = max(self.out_w, self.out_h) * 0.75 + hl / mpp
        for (x, y), heading, label in zip(cars.xy.tolist(), cars.yaw.tolist(), cars.label.tolist()):
            dx, dy = x - cx, y - cy
            u = u0 - (-dx * s + dy * c) / mpp  # left of us is left in the frame
            v = v0 - (dx * c + dy * s) / mpp
            if abs(u - u0) > reach or abs(v - v0) > reach + self.out_h:
                continue
            ca, sa = math.cos(heading - yaw), math.sin(heading - yaw)
            pts = np.array([(8 * (u - (f * sa + lt * ca) / mpp), 8 * (v - (f * ca - lt * sa) / mpp))
                            for f, lt in shape]).round().astype(np.int32)
            cv2.fillConvexPoly(lab, pts[:4], TRAFFIC_BODY + label % N_TRAFFIC_COLOURS, lineType=cv2.LINE_8, shift=3)
            cv2.fillConvexPoly(lab, pts[4:], CAR_GLASS, lineType=cv2.LINE_8, shift=3)

    def _draw_cars_dashcam(self, lab: np.ndarray, cars: CarBoxes, cx: float, cy: float, yaw: float) -> None:
        """Each car ahead as a projected box (far ones first), with a rear window."""
        cfg = self.cfg
        c, s = math.cos(yaw), math.sin(yaw)
        fx, fy = cx + cfg.forward_m * c, cy + cfg.forward_m * s
        rel = cars.xy - (fx, fy)
        fwd = rel[:, 0] * c + rel[:, 1] * s
        visible = np.flatnonzero((fwd > cars.length_m) & (fwd < cfg.max_range_m))
        for i in visible[np.argsort(-fwd[visible])]:
            base = rectangle_corners(cars.xy[i], cars.yaw[i], cars.length_m, cars.width_m, 0.0)
            pts = np.concatenate([np.c_[base, np.zeros(4)], np.c_[base, np.full(4, cars.height_m)]])
            window = rectangle_corners(cars.xy[i], cars.yaw[i], 0.0, cars.width_m * 0.75, -cars.length_m / 2)[:2]
            window = np.concatenate([np.c_[window, np.full(2, cars.height_m * 0.6)],
                                     np.c_[window[::-1], np.full(2, cars.height_m * 0.92)]])
            px = self._project(pts, fx, fy, c, s)
            if px is None:
                continue
            cv2.fillConvexPoly(lab, cv2.convexHull(np.round(px * 8).astype(np.int32)),
                               TRAFFIC_BODY + int(cars.label[i]) % N_TRAFFIC_COLOURS, lineType=cv2.LINE_8, shift=3)
            wpx = self._project(window, fx, fy, c, s)
            if wpx is not None and _facing_camera(cars.xy[i], cars.yaw[i], fx, fy):
                cv2.fillConvexPoly(lab, np.round(wpx * 8).astype(np.int32), CAR_GLASS, lineType=cv2.LINE_8, shift=3)

    def _project(self, pts: np.ndarray, fx: float, fy: float, c: float, s: float) -> np.ndarray | None:
        """World points (n, 3: x, y, height) to output pixels; None if any is behind the camera."""
        cfg = self.cfg
        dx, dy = pts[:, 0] - fx, pts[:, 1] - fy
        forward = dx * c + dy * s
        left = -dx * s + dy * c
        up = pts[:, 2] - cfg.height_m
        th = math.radians(cfg.pitch_deg)
        zc = forward * math.cos(th) - up * math.sin(th)
        if np.any(zc < 0.1):
            return None
        yc = -forward * math.sin(th) - up * math.cos(th)
        f = (self.out_w / 2.0) / math.tan(math.radians(cfg.hfov_deg) / 2)
        return np.stack([f * -left / zc + self.out_w / 2.0, f * yc / zc + self.out_h / 2.0], 1)

    # -- dashcam ---------------------------------------------------------------------------------
    def _prepare_dashcam(self) -> None:
        cfg = self.cfg
        f = (self.out_w / 2.0) / math.tan(math.radians(cfg.hfov_deg) / 2)
        cxp, cyp = self.out_w / 2.0, self.out_h / 2.0
        th = math.radians(cfg.pitch_deg)
        st, ct = math.sin(th), math.cos(th)
        h = cfg.height_m
        # pixel -> normalised camera coords (xc, yc, 1)
        k_inv = np.array([[1 / f, 0, -cxp / f], [0, 1 / f, -cyp / f], [0, 0, 1]])
        # camera coords -> homogeneous ground point (F, L, 1) in the camera-foot frame
        g = np.array([[0.0, -h * st, h * ct],
                      [-h, 0.0, 0.0],
                      [0.0, ct, st]])
        self._ground_from_px = g @ k_inv
        # rows whose ray meets the ground beyond max_range (or never) show sky
        yc_far = (h / cfg.max_range_m * ct - st) / (ct + h / cfg.max_range_m * st)
        v_far = yc_far * f + cyp
        self._sky_rows = int(np.clip(math.ceil(v_far), 0, self.out_h))

    def _dashcam_matrix(self, cx: float, cy: float, yaw: float) -> np.ndarray:
        res = self.map.res
        ox, oy = self.map.origin
        c, s = math.cos(yaw), math.sin(yaw)
        fx = cx + self.cfg.forward_m * c
        fy = cy + self.cfg.forward_m * s
        # ground (F, L, 1) -> map px
        a = np.array([[c / res, -s / res, (fx - ox) / res],
                      [-s / res, -c / res, (oy - fy) / res],
                      [0.0, 0.0, 1.0]])
        return a @ self._ground_from_px


def _facing_camera(centre: np.ndarray, yaw: float, fx: float, fy: float) -> bool:
    """True when the camera sees the car's rear (it is ahead of us, driving away)."""
    return (centre[0] - fx) * math.cos(yaw) + (centre[1] - fy) * math.sin(yaw) > 0
