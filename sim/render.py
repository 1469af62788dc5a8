"""Camera frames from a track and a car pose: the track is drawn once into a label map, and each
frame is one image warp of that map around the pose, then a palette lookup.

Drawing labels (grass, asphalt, lines, kerbs) instead of colours keeps the map at one byte per pixel
and makes palette randomisation free: a new palette is just a new 256-entry lookup table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .track import Track

# label ids in the map
GRASS, GRASS_DARK, ASPHALT, EDGE_LINE, KERB_RED, KERB_WHITE, START_LINE, SKY, CAR_BODY, CAR_GLASS = range(10)
N_LABELS = 10

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


@dataclass(frozen=True)
class CameraConfig:
    """What the car's camera sees. `birdseye` is heading-up from above with the car near the bottom;
    `dashcam` is a forward perspective view of the ground from `height_m` pitched down `pitch_deg`."""

    kind: str = "birdseye"
    width: int = 96
    height: int = 96
    view_width_m: float = 40.0  # birdseye: metres across the frame
    car_row: float = 0.8  # birdseye: the car's centre, as a fraction of the height from the top
    hfov_deg: float = 100.0  # dashcam: horizontal field of view
    height_m: float = 1.6  # dashcam: camera height above the ground
    pitch_deg: float = 14.0  # dashcam: pitched down below the horizon
    forward_m: float = 1.0  # dashcam: camera ahead of the car's centre
    max_range_m: float = 150.0  # dashcam: beyond this distance the ground fades into sky
    draw_car: bool = True  # birdseye: draw our own car in the frame
    supersample: int = 1  # warp at this multiple of the size, then area-average (anti-aliasing)
    map_res_m: float = 0.2  # metres per pixel of the pre-drawn track map

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


class TrackMap:
    """The track drawn once as labels, with the transform from world metres to map pixels."""

    def __init__(self, track: Track, res_m: float = 0.2, margin_m: float = 60.0):
        lo, hi = track.bounds
        lo = lo - margin_m
        hi = hi + margin_m
        span = hi - lo
        res = max(res_m, float(span.max()) / 30000.0)  # OpenCV warps need sides below 32767
        self.res = res
        self.origin = np.array([lo[0], hi[1]])  # world position of pixel (0, 0): top-left
        w, h = int(math.ceil(span[0] / res)), int(math.ceil(span[1] / res))
        self.labels = self._draw(track, w, h)

    def coloured(self, palette: np.ndarray) -> np.ndarray:
        """The map in RGB for a palette; the last few are kept, since cameras share palettes."""
        key = palette[:N_LABELS].tobytes()
        cache = self.__dict__.setdefault("_coloured", {})
        if key not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[key] = cv2.LUT(cv2.merge([self.labels] * 3), palette.reshape(256, 1, 3))
        return cache[key]

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        return np.stack([(xy[..., 0] - self.origin[0]) / self.res, (self.origin[1] - xy[..., 1]) / self.res], -1)

    def _draw(self, track: Track, w: int, h: int) -> np.ndarray:
        shift = 3  # sub-pixel precision for OpenCV drawing
        k = float(1 << shift)

        def px(a: np.ndarray) -> np.ndarray:
            return np.round(self.to_px(a) * k).astype(np.int32)

        # grass with soft darker patches: low-resolution noise, seeded by the track's name
        rng = np.random.default_rng(abs(hash_str(track.name)) % (2**32))
        small = rng.random((max(h // 40, 2), max(w // 40, 2))).astype(np.float32)
        noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        labels = np.where(noise > 0.6, GRASS_DARK, GRASS).astype(np.uint8)

        left, right = track.edges()
        # the road as one quad per centerline segment (works for tracks that cross themselves)
        quads = np.stack([left, np.roll(left, -1, 0), np.roll(right, -1, 0), right], 1)
        cv2.fillPoly(labels, list(px(quads)), ASPHALT, lineType=cv2.LINE_8, shift=shift)

        # kerbs: red/white stripes just outside the edges where the track bends
        bend = np.abs(track.curvature) > 1.0 / 80.0
        bend = np.convolve(bend.astype(float), np.ones(9), "same") > 0
        h_vec = np.arctan2(*(np.roll(track.xy, -1, 0) - np.roll(track.xy, 1, 0))[:, ::-1].T)
        normal = np.stack([-np.sin(h_vec), np.cos(h_vec)], 1)
        kerb_w = 1.2
        stripe = ((track.s // 3.0).astype(int) % 2 == 0)
        for edge, sign in ((left, 1.0), (right, -1.0)):
            outer = edge + sign * normal * kerb_w
            q = np.stack([edge, np.roll(edge, -1, 0), np.roll(outer, -1, 0), outer], 1)
            for lab, sel in ((KERB_RED, bend & stripe), (KERB_WHITE, bend & ~stripe)):
                if sel.any():
                    cv2.fillPoly(labels, list(px(q[sel])), lab, lineType=cv2.LINE_8, shift=shift)

        # edge lines, slightly inside the road
        line_w = max(1, int(round(0.5 / self.res)))
        for edge, sign in ((left, -1.0), (right, 1.0)):
            inner = edge + sign * normal * 0.45
            cv2.polylines(labels, [px(inner)], True, EDGE_LINE, thickness=line_w, lineType=cv2.LINE_8,
                          shift=shift)

        # start/finish line across the road at s = 0
        p0, n0 = track.xy[0], normal[0]
        t0 = np.array([math.cos(track.heading[0]), math.sin(track.heading[0])])
        a, b = p0 + n0 * track.width_left[0], p0 - n0 * track.width_right[0]
        quad = np.array([a, b, b + t0 * 1.5, a + t0 * 1.5])
        cv2.fillPoly(labels, [px(quad)], START_LINE, lineType=cv2.LINE_8, shift=shift)
        return labels


def hash_str(s: str) -> int:
    """A hash that is the same in every process (Python's str hash is salted per process)."""
    h = 1469598103934665603
    for ch in s.encode():
        h = ((h ^ ch) * 1099511628211) % (1 << 63)
    return h


_MAPS: dict[tuple[int, float], TrackMap] = {}


def track_map(track: Track, res_m: float) -> TrackMap:
    """One map per track and resolution per process, shared by every camera looking at it."""
    key = (id(track), res_m)
    if key not in _MAPS:
        if len(_MAPS) > 8:
            _MAPS.clear()
        _MAPS[key] = TrackMap(track, res_m)
    return _MAPS[key]


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

    def render(self, x: float, y: float, yaw: float) -> np.ndarray:
        """The RGB frame (height, width, 3) uint8 seen from the rear-axle pose (x, y, yaw)."""
        cx = x + 0.5 * self.wheelbase * math.cos(yaw)
        cy = y + 0.5 * self.wheelbase * math.sin(yaw)
        src = self.map.coloured(self.palette)
        grass = tuple(int(v) for v in self.palette[GRASS])
        if self.cfg.kind == "birdseye":
            rgb = cv2.warpAffine(src, self._birdseye_matrix(cx, cy, yaw), (self.out_w, self.out_h),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=grass)
            if self._car_mask is not None:
                rgb[self._car_mask[0]] = self.palette[CAR_BODY]
                rgb[self._car_mask[1]] = self.palette[CAR_GLASS]
        else:
            rgb = cv2.warpPerspective(src, self._dashcam_matrix(cx, cy, yaw), (self.out_w, self.out_h),
                                      flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=grass)
            rgb[: self._sky_rows] = self.palette[SKY]
        if self.ss > 1:
            rgb = cv2.resize(rgb, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)
        return rgb

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
