"""Pygame windows for people: the one module in sim/ that imports pygame.

`ImageWindow` shows pictures (env `render_mode="human"`). `DriveViewer` is the driving window of
`play` and `watch`: the world around the car, the network's camera frame as an inset, a HUD. The
steering inputs (keyboard, mouse, gamepad) are small classes with a pure `step` so tests can drive
them without a person. `run_window` is the one window loop: `play` (data/play.py) and `watch`
(agent/watch.py) each give it a `WindowSession` that chooses the actions and keeps the score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pygame

from .render import Camera, CameraConfig

LEFT_KEYS = (pygame.K_LEFT, pygame.K_a)
RIGHT_KEYS = (pygame.K_RIGHT, pygame.K_d)
UP_KEYS = (pygame.K_UP, pygame.K_w)
DOWN_KEYS = (pygame.K_DOWN, pygame.K_s)


class ImageWindow:
    """A window that shows RGB pictures at a steady frame rate (env `render_mode="human"`)."""

    def __init__(self, title: str, width: int, height: int):
        pygame.display.init()
        pygame.display.set_caption(title)
        self.screen = pygame.display.set_mode((width, height))
        self.clock = pygame.time.Clock()

    def show(self, rgb: np.ndarray, fps: float = 20.0) -> None:
        pygame.event.pump()
        surf = pygame.surfarray.make_surface(np.ascontiguousarray(rgb.swapaxes(0, 1)))
        self.screen.blit(surf, (0, 0))
        pygame.display.flip()
        self.clock.tick(fps)

    def close(self) -> None:
        pygame.display.quit()


# -- commands and steering inputs -------------------------------------------------------------------

class RealTimeClock:
    """Keeps a loop on a fixed real-time schedule: `tick(fps)` sleeps until the next slot, and when the
    loop has fallen behind (a slow machine, a slow draw) it does not sleep, so the simulation keeps
    real time; `behind` tells the caller it may skip drawing this frame to catch up. More than
    `max_lag_s` behind, it gives up catching up and restarts the schedule from now."""

    def __init__(self, max_lag_s: float = 0.5):
        import time
        self._now = time.perf_counter
        self._sleep = time.sleep
        self.max_lag_s = max_lag_s
        self._next: float | None = None
        self.behind = False

    def tick(self, fps: float) -> None:
        now = self._now()
        if self._next is None or now - self._next > self.max_lag_s:
            self._next = now
        self._next += 1.0 / fps
        wait = self._next - now
        self.behind = wait < 0
        if wait > 0:
            self._sleep(wait)


def command_for(event: pygame.event.Event) -> str | None:
    """The window command an event means: quit, pause, restart, takeover, faster, slower (or None)."""
    if event.type == pygame.QUIT:
        return "quit"
    if event.type != pygame.KEYDOWN:
        return None
    return {
        pygame.K_ESCAPE: "quit", pygame.K_p: "pause", pygame.K_r: "restart",
        pygame.K_t: "takeover", pygame.K_SPACE: "takeover",
        pygame.K_PLUS: "faster", pygame.K_EQUALS: "faster", pygame.K_KP_PLUS: "faster",
        pygame.K_MINUS: "slower", pygame.K_KP_MINUS: "slower",
    }.get(event.key)


class KeyboardSteering:
    """Smooth steering from keys (arrows or A/D): the command ramps towards full lock while a key
    is held and glides back to centre when it is released, once per control period. Bang-bang
    -1/0/+1 labels would teach a network to jerk the wheel."""

    kind = "keyboard"

    def __init__(self, dt: float = 0.05, ramp_s: float = 0.5, return_s: float = 0.25, pedal_s: float = 0.3):
        self.up_rate = dt / ramp_s  # change per step while a key is held
        self.back_rate = dt / return_s  # change per step towards centre (also when reversing)
        self.pedal_rate = dt / pedal_s  # Up/Down (W/S) press the pedal in this long, and release it as fast
        self.value = 0.0
        self.pedal = 0.0
        self.held: set[str] = set()

    def handle(self, event: pygame.event.Event) -> bool:
        """Track held keys from KEYDOWN/KEYUP (posted events do not update pygame.key.get_pressed)."""
        if event.type not in (pygame.KEYDOWN, pygame.KEYUP):
            return False
        name = ("left" if event.key in LEFT_KEYS else "right" if event.key in RIGHT_KEYS
                else "up" if event.key in UP_KEYS else "down" if event.key in DOWN_KEYS else None)
        if name is None:
            return False
        (self.held.add if event.type == pygame.KEYDOWN else self.held.discard)(name)
        return True

    def step(self, left: bool, right: bool) -> float:
        """Advance one control period with these keys held; returns the command in [-1, 1]."""
        target = -1.0 if left and not right else 1.0 if right and not left else 0.0
        v = self.value
        if target == 0.0:  # released: glide back to centre
            v = max(0.0, v - self.back_rate) if v > 0 else min(0.0, v + self.back_rate)
        elif v * target < 0:  # the other key: the wheel comes back and turns over, faster than either alone
            v = max(-1.0, min(1.0, v + target * (self.back_rate + self.up_rate)))
        else:
            v = max(-1.0, min(1.0, v + target * self.up_rate))
        self.value = v = 0.0 if abs(v) < 1e-9 else v  # float steps must land exactly on centre
        return v

    def update(self) -> float:
        return self.step("left" in self.held, "right" in self.held)

    def throttle(self) -> float:
        """Advance the pedal one control period: it ramps towards full throttle (Up/W) or full brake
        (Down/S) while a key is held, and back to 0 when released, like the steering."""
        target = float("up" in self.held) - float("down" in self.held)
        step = self.pedal_rate
        self.pedal = target if abs(target - self.pedal) <= step else self.pedal + math.copysign(step, target - self.pedal)
        return self.pedal

    @property
    def touched(self) -> bool:
        """The person is steering: a steering key is held (letting go hands control back)."""
        return bool(self.held & {"left", "right"})

    def reset(self) -> None:
        self.value = 0.0
        self.pedal = 0.0
        self.held.clear()


class MouseSteering:
    """Steering from the mouse's horizontal position: the window centre is straight ahead, the
    edges of the central `span` fraction are full lock. Buttons: left accelerates, right brakes."""

    kind = "mouse"

    def __init__(self, width: int, span: float = 0.8):
        self.centre = width / 2.0
        self.half = max(1.0, span * width / 2.0)
        self.x = self.centre
        self.buttons = (False, False)
        self.moved = False

    def handle(self, event: pygame.event.Event) -> bool:
        if event.type == pygame.MOUSEMOTION:
            self.x = float(event.pos[0])
            self.moved = True
            return True
        if event.type in (pygame.MOUSEBUTTONDOWN, pygame.MOUSEBUTTONUP) and event.button in (1, 3):
            down = event.type == pygame.MOUSEBUTTONDOWN
            self.buttons = (down, self.buttons[1]) if event.button == 1 else (self.buttons[0], down)
            return True
        return False

    def step(self, x: float) -> float:
        return max(-1.0, min(1.0, (x - self.centre) / self.half))

    def update(self) -> float:
        return self.step(self.x)

    def throttle(self) -> float:
        return float(self.buttons[0]) - float(self.buttons[1])

    @property
    def touched(self) -> bool:
        return self.moved and abs(self.update()) > 0.05

    def reset(self) -> None:
        pass


class GamepadSteering:
    """Steering from a gamepad's axis 0 (left stick) with a small dead zone. Throttle: the right
    trigger (axis 5) accelerates and the left one (axis 4) brakes on a pad with triggers; otherwise
    axis 1 pushed forward accelerates, pulled back brakes. `read_axis(i)` is injectable so tests need
    no device."""

    kind = "gamepad"
    BRAKE_TRIGGER, THROTTLE_TRIGGER = 4, 5

    def __init__(self, read_axis: Callable[[int], float] | None = None, deadzone: float = 0.08,
                 triggers: bool | None = None):
        if read_axis is None:
            pygame.joystick.init()
            stick = pygame.joystick.Joystick(0)
            read_axis = stick.get_axis
            self.name = stick.get_name()
            triggers = stick.get_numaxes() > self.THROTTLE_TRIGGER if triggers is None else triggers
        else:
            self.name = "custom"
        self.read_axis = read_axis
        self.deadzone = deadzone
        self.triggers = bool(triggers)
        self._trigger_seen = [False, False]  # some pads report 0 (half pressed) until a trigger first moves

    def handle(self, event: pygame.event.Event) -> bool:
        return event.type == pygame.JOYAXISMOTION

    def _axis(self, i: int) -> float:
        v = float(self.read_axis(i))
        if abs(v) < self.deadzone:
            return 0.0
        return max(-1.0, min(1.0, math.copysign((abs(v) - self.deadzone) / (1 - self.deadzone), v)))

    def update(self) -> float:
        return self._axis(0)

    def _trigger(self, i: int, which: int) -> float:
        """A trigger from released (-1) to fully pressed (+1), as 0..1."""
        v = float(self.read_axis(i))
        self._trigger_seen[which] = self._trigger_seen[which] or v != 0.0
        return max(0.0, min(1.0, (v + 1.0) / 2.0)) if self._trigger_seen[which] else 0.0

    def throttle(self) -> float:
        if self.triggers:
            return self._trigger(self.THROTTLE_TRIGGER, 1) - self._trigger(self.BRAKE_TRIGGER, 0)
        return -self._axis(1)

    @property
    def touched(self) -> bool:
        return self._axis(0) != 0.0

    def reset(self) -> None:
        pass


INPUTS = ("auto", "keyboard", "mouse", "gamepad")


def make_input(name: str, dt: float, window_width: int):
    """The steering input for `--input`: auto means a gamepad if one is connected, else the keyboard."""
    if name not in INPUTS:
        raise ValueError(f"unknown input {name!r} (choose from {', '.join(INPUTS)})")
    if name in ("auto", "gamepad"):
        pygame.joystick.init()
        if pygame.joystick.get_count() > 0:
            return GamepadSteering()
        if name == "gamepad":
            from .errors import UserError
            raise UserError("--input gamepad: no gamepad is connected (try --input keyboard)")
        name = "keyboard"
    if name == "mouse":
        return MouseSteering(window_width)
    return KeyboardSteering(dt)


# -- the driving window ---------------------------------------------------------------------------

@dataclass
class Hud:
    """What the HUD shows besides the env's info; filled in by the loop each frame."""

    mode: str = "play"  # "play", "watch" or "assist"
    steering: float = 0.0  # the command the car gets now
    policy_steering: float | None = None  # watch/assist: what the network says
    expert_steering: float | None = None  # watch: what the autopilot would do
    throttle: float | None = None
    recording: bool = False
    paused: bool = False
    person_driving: bool = True  # watch/assist: False while the policy has control
    interventions: int = 0
    speedup: int = 1
    input_name: str = "keyboard"
    laps_target: int | None = None
    drives_saved: int = 0
    message: str = ""
    inset_overlay: np.ndarray | None = None  # RGB picture shown instead of the camera frame (saliency)


BG = (24, 26, 30)
FG = (232, 232, 232)
DIM = (150, 155, 165)
RED = (230, 40, 40)
BLUE = (80, 160, 255)
YELLOW = (250, 200, 40)
GREEN = (90, 210, 110)


class DriveViewer:
    """The play/watch window: world view on the left (with the camera inset), HUD panel on the right.

    `events()` reads from `event_source` (pygame.event.get by default): tests post real pygame
    events and the same loop code handles them."""

    def __init__(self, title: str = "E2E Drive", world_px: int = 560, view_m: float = 80.0,
                 panel_px: int = 300, event_source: Callable[[], list] | None = None):
        pygame.display.init()
        pygame.font.init()
        pygame.display.set_caption(title)
        self.world_px, self.view_m, self.panel_px = world_px, view_m, panel_px
        self.size = (world_px + panel_px, world_px)
        self.screen = pygame.display.set_mode(self.size)
        self.event_source = event_source or pygame.event.get
        self.font = _font(20)
        self.small = _font(16)
        self.big = _font(34, bold=True)
        self._cam: Camera | None = None
        self._cam_key: tuple | None = None
        self._minimap: tuple | None = None
        self.frame_no = 0
        self._texts: dict[tuple, pygame.Surface] = {}

    def events(self) -> list:
        return list(self.event_source())

    def draw(self, env, info: dict, obs: np.ndarray, hud: Hud) -> None:
        """Draw one frame of the window from the env's state and the HUD data."""
        e = env.unwrapped
        self.frame_no += 1
        self.screen.fill(BG, (self.world_px, 0, self.panel_px, self.world_px))
        self.screen.blit(_surface(self._world(e)), (0, 0))
        self._inset(hud.inset_overlay if hud.inset_overlay is not None else obs,
                    "saliency" if hud.inset_overlay is not None else "network input")
        self._panel(e, info, hud)
        if hud.paused:
            self._banner("PAUSED  (P to go on)")
        elif hud.message:
            self._banner(hud.message)
        pygame.display.flip()

    def screenshot(self) -> np.ndarray:
        """The window as an RGB array (H, W, 3): for tests and videos."""
        return pygame.surfarray.array3d(self.screen).swapaxes(0, 1).copy()

    def close(self) -> None:
        pygame.display.quit()

    # -- pieces ------------------------------------------------------------------------------
    def _world(self, e) -> np.ndarray:
        key = (id(e.track), e.cfg.car)
        if self._cam_key != key:
            cfg = CameraConfig(width=self.world_px, height=self.world_px, view_width_m=self.view_m,
                               car_row=0.7, map_res_m=e.cfg.camera.map_res_m)
            self._cam = Camera(e.track, cfg, e.cfg.car.length_m, e.cfg.car.width_m, e.cfg.car.wheelbase_m)
            self._cam_key = key
            self._minimap = None
        self._cam.set_palette(e.palette)
        return self._cam.render(e.car.x, e.car.y, e.car.yaw, e.visible_cars(self._cam))

    def _inset(self, rgb: np.ndarray, label: str) -> None:
        h, w = rgb.shape[:2]
        box = 200
        scale = box / max(h, w)
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        surf = pygame.transform.scale(_surface(rgb), size)
        x0, y0 = 10, 10
        pygame.draw.rect(self.screen, (0, 0, 0), (x0 - 3, y0 - 3, size[0] + 6, size[1] + 26))
        pygame.draw.rect(self.screen, FG, (x0 - 3, y0 - 3, size[0] + 6, size[1] + 26), 1)
        self.screen.blit(surf, (x0, y0))
        self._text(f"{label} {w}x{h}", (x0 + 2, y0 + size[1] + 3), self.small, FG)

    def _panel(self, e, info: dict, hud: Hud) -> None:
        x0 = self.world_px + 16
        width = self.panel_px - 32
        y = 12
        title = {"play": "PLAY", "watch": "WATCH", "assist": "ASSIST"}.get(hud.mode, hud.mode.upper())
        self._text(f"E2E Drive  {title}", (x0, y), self.font, FG)
        if hud.recording:  # a red light that blinks once a second (at 20 frames per second)
            on = (self.frame_no // 10) % 2 == 0 or hud.paused
            cx = self.world_px + self.panel_px - 60
            pygame.draw.circle(self.screen, RED if on else (90, 30, 30), (cx, y + 11), 8)
            self._text("REC", (cx + 12, y + 2), self.font, RED if on else DIM)
        y += 30
        self._text(_short(str(info.get("track", "")), 30), (x0, y), self.small, DIM)
        y += 26
        self._text(f"{info.get('speed', 0.0) * 3.6:5.0f}", (x0, y), self.big, FG)
        self._text("km/h", (x0 + 100, y + 12), self.font, DIM)
        y += 48
        if hud.throttle is not None:  # the pedal as two bars: throttle (green) and brake (red)
            for name, value, colour in (("throttle", max(hud.throttle, 0.0), GREEN),
                                        ("brake", max(-hud.throttle, 0.0), RED)):
                bx = x0 + 80
                self._text(name, (x0, y - 1), self.small, DIM)
                pygame.draw.rect(self.screen, (60, 64, 72), (bx, y, x0 + width - bx, 14))
                pygame.draw.rect(self.screen, colour, (bx, y, int(value * (x0 + width - bx)), 14))
                y += 20
            y += 4

        who = "" if hud.mode == "play" else ("  (you)" if hud.person_driving else "  (policy)")
        self._text(f"steering {hud.steering:+.2f}{who}", (x0, y), self.small, DIM)
        y += 18
        self._bar(x0, y, width, hud.steering, FG if hud.person_driving else BLUE, height=16)
        y += 22
        if hud.policy_steering is not None:
            self._text(f"policy  {hud.policy_steering:+.2f}", (x0, y), self.small, BLUE)
            self._bar(x0 + 120, y + 3, width - 120, hud.policy_steering, BLUE, height=10)
            y += 20
        if hud.expert_steering is not None:
            self._text(f"expert  {hud.expert_steering:+.2f}", (x0, y), self.small, YELLOW)
            self._bar(x0 + 120, y + 3, width - 120, hud.expert_steering, YELLOW, height=10)
            y += 20
        y += 6

        laps = f"{info.get('lap', 0) + 1}" + (f" / {hud.laps_target}" if hud.laps_target else "")
        rows = [
            ("lap", laps),
            ("lap time", _clock(info.get("lap_time", 0.0))),
            ("last lap", _clock(info["last_lap_time"]) if info.get("lap", 0) > 0 else "--"),
            ("lap done", f"{100 * info.get('lap_fraction', 0.0):.0f} %"),
            ("cross-track", f"{info.get('cte', 0.0):+.2f} m"),
            ("off track", str(info.get("off_track_count", 0))),
        ]
        if hud.mode != "play":
            rows.append(("interventions", str(hud.interventions)))
            rows.append(("control", "YOU" if hud.person_driving else "POLICY"))
        if hud.mode == "watch":
            rows.append(("speed-up", f"{hud.speedup}x"))
        if hud.mode != "watch":
            rows.append(("drives saved", str(hud.drives_saved)))
        rows.append(("input", hud.input_name))
        for name, value in rows:
            self._text(name, (x0, y), self.font, DIM)
            colour = FG
            if name == "control":
                colour = YELLOW if hud.person_driving else BLUE
            if name == "off track" and info.get("off_track_count", 0):
                colour = RED
            self._text(value, (x0 + 140, y), self.font, colour)
            y += 24

        y += 4
        self._minimap_draw(e, (x0, y, width, self.world_px - y - 74))

        help_lines = {
            "play": (["arrows/WASD steer   P pause", "R restart lap   Esc save + quit"] if hud.throttle is None
                     else ["Left/Right steer  Up/Down gas, brake", "P pause  R restart  Esc save + quit"]),
            "assist": ["steer to take over, let go to hand back", "P pause   R restart   Esc save + quit"],
            "watch": ["T/Space take over   arrows steer", "+/- speed   P pause   Esc quit"],
        }.get(hud.mode, [])
        hy = self.world_px - 22 * len(help_lines) - 8
        for line in help_lines:
            self._text(line, (x0, hy), self.small, DIM)
            hy += 22

    def _minimap_draw(self, e, rect: tuple[int, int, int, int]) -> None:
        x, y, w, h = rect
        if h < 30:
            return
        if self._minimap is None or self._minimap[0] != rect:
            lo, hi = e.track.bounds
            scale = min(w / max(hi[0] - lo[0], 1e-6), h / max(hi[1] - lo[1], 1e-6))
            ox = x + (w - (hi[0] - lo[0]) * scale) / 2
            oy = y + (h + (hi[1] - lo[1]) * scale) / 2
            pts = [(ox + (px - lo[0]) * scale, oy - (py - lo[1]) * scale) for px, py in e.track.xy[::4]]
            self._minimap = (rect, lo, scale, ox, oy, pts)
        _, lo, scale, ox, oy, pts = self._minimap
        pygame.draw.lines(self.screen, (120, 120, 128), True, pts, 3)
        s0 = e.track.point_at(0.0)
        pygame.draw.circle(self.screen, FG, (int(ox + (s0[0] - lo[0]) * scale), int(oy - (s0[1] - lo[1]) * scale)), 3)
        pygame.draw.circle(self.screen, RED, (int(ox + (e.car.x - lo[0]) * scale),
                                              int(oy - (e.car.y - lo[1]) * scale)), 5)

    def _bar(self, x: int, y: int, w: int, value: float, colour, height: int = 12) -> None:
        pygame.draw.rect(self.screen, (60, 64, 72), (x, y, w, height))
        v = max(-1.0, min(1.0, float(value)))
        mid = x + w // 2
        if v >= 0:
            pygame.draw.rect(self.screen, colour, (mid, y, int(v * w / 2), height))
        else:
            pygame.draw.rect(self.screen, colour, (mid + int(v * w / 2), y, int(-v * w / 2), height))
        pygame.draw.line(self.screen, FG, (mid, y - 2), (mid, y + height + 1), 1)

    def _banner(self, text: str) -> None:
        surf = self.big.render(text, True, FG)
        r = surf.get_rect(center=(self.world_px // 2, self.world_px // 2 - 60))
        pygame.draw.rect(self.screen, (0, 0, 0), r.inflate(24, 14))
        self.screen.blit(surf, r)

    def _text(self, text: str, pos: tuple[float, float], font, colour) -> None:
        key = (text, id(font), colour)
        surf = self._texts.get(key)
        if surf is None:  # most HUD strings repeat frame after frame: render each once
            if len(self._texts) > 2000:
                self._texts.clear()
            surf = self._texts[key] = font.render(text, True, colour)
        self.screen.blit(surf, pos)


def _font(size: int, bold: bool = False):
    """DejaVu Sans when the system has it (crisp digits), else pygame's bundled font."""
    try:
        path = pygame.font.match_font("dejavusans,dejavusansmono,freesans,arial", bold=bold)
    except (OSError, ValueError, RuntimeError):  # fc-list missing or broken: fall back to the bundled font
        path = None
    return pygame.font.Font(path, size) if path else pygame.font.Font(None, int(size * 1.3))


def _surface(rgb: np.ndarray) -> pygame.Surface:
    """An RGB array as a surface without transposing (surfarray wants (W, H, 3): a slow copy)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return pygame.image.frombuffer(rgb.tobytes(), (rgb.shape[1], rgb.shape[0]), "RGB")


def _clock(seconds: float) -> str:
    if math.isnan(seconds):
        return "--:--.-"
    m, s = divmod(float(seconds), 60.0)
    return f"{int(m):02d}:{s:04.1f}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]


# -- the window loop of `play` and `watch` ----------------------------------------------------------

class WindowSession:
    """What a command does inside `run_window`; override what it needs (all do nothing here).

    The loop owns the window, the env, the clock and the keys every window shares (Esc quit, P pause,
    R restart, +/- speed where `speeds` has more than one); the session chooses each action and
    keeps its own score."""

    speeds: tuple[int, ...] = (1,)  # the speed-ups +/- step through (watch: 1x..8x)

    def open(self, env, viewer: DriveViewer) -> None:
        """The window and env exist (e.g. size a mouse input from the window)."""

    def begin(self, spec: str, obs: np.ndarray, info: dict) -> None:
        """A drive of track `spec` starts (after each reset, also after R)."""

    def handle(self, event: pygame.event.Event, command: str | None) -> None:
        """An event the loop does not handle itself (steering keys, T takeover...)."""

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        """The action for this step; `obs` is what the car's camera sees now."""
        raise NotImplementedError

    def stepped(self, obs: np.ndarray, info: dict) -> None:
        """The env stepped."""

    def frame(self, obs: np.ndarray, info: dict) -> None:
        """Once per window frame, before it is drawn."""

    def end(self, outcome: str, info: dict) -> None:
        """The drive ended: "next" (laps done or out of steps), "restart" (R) or "quit" (Esc, window
        closed, or `max_steps`)."""


def run_window(cfg, session: WindowSession, hud: Hud, *, title: str, realtime: bool = True, clock=None,
               event_source: Callable[[], list] | None = None,
               person: Callable[[np.ndarray, dict], None] | None = None,
               max_steps: int | None = None) -> bool:
    """Drive the tracks of `cfg.track` one after another in a window with `session` at the wheel.

    Off-track puts the car back (a person needs no restart). `person(obs, info)` runs before each
    window frame's events are read (tests post real key events there); `clock` is anything with
    `.tick(fps)` (`realtime=False` and no clock: as fast as the CPU goes); `max_steps` bounds the
    session (tests). Returns True when the person quit before the last track was done."""
    from dataclasses import replace

    from .env import DriveEnv
    from .track import load_track, parse_spec

    specs = parse_spec(cfg.track)
    load_track(specs[0])  # a bad track fails here, before the window opens
    if cfg.off_track == "terminate":
        cfg = replace(cfg, off_track="recover")
    env = DriveEnv(config=cfg)
    fps = env.metadata["render_fps"]
    viewer = DriveViewer(title, event_source=event_source)
    if realtime and clock is None:
        clock = RealTimeClock()
    steps, track_i, outcome = 0, 0, "next"
    try:
        session.open(env, viewer)
        while track_i < len(specs) and outcome != "quit":
            obs, info = env.reset(seed=track_i, options={"track": specs[track_i]})
            hud.paused = False
            session.begin(specs[track_i], obs, info)
            outcome = None
            while outcome is None:
                if person is not None:
                    person(obs, info)
                for event in viewer.events():
                    command = command_for(event)
                    if command in ("quit", "restart"):
                        outcome = command
                    elif command == "pause":
                        hud.paused = not hud.paused
                    elif command in ("faster", "slower") and len(session.speeds) > 1:
                        i = session.speeds.index(hud.speedup) + (1 if command == "faster" else -1)
                        hud.speedup = session.speeds[min(max(i, 0), len(session.speeds) - 1)]
                    else:
                        session.handle(event, command)
                if outcome is not None:
                    break
                if hud.paused:
                    viewer.draw(env, info, obs, hud)
                    if clock is not None:
                        clock.tick(fps)
                    continue
                for _ in range(hud.speedup):
                    obs, _, terminated, truncated, info = env.step(session.act(obs, info))
                    steps += 1
                    session.stepped(obs, info)
                    if terminated or truncated:
                        outcome = "next"
                        break
                    if max_steps is not None and steps >= max_steps:
                        outcome = "quit"
                        break
                session.frame(obs, info)
                if not getattr(clock, "behind", False):  # behind real time: skip a draw, keep 20 Hz
                    viewer.draw(env, info, obs, hud)
                if clock is not None and outcome is None:
                    clock.tick(fps)
            session.end(outcome, info)
            if outcome == "next":
                track_i += 1
    finally:
        viewer.close()
        env.close()
    return outcome == "quit"


def is_key_down(event: pygame.event.Event) -> bool:
    """A key went down (steering keys pressed, not released)."""
    return event.type == pygame.KEYDOWN
