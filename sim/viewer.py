"""Pygame windows. The only module in sim/ that imports pygame, and only when a window is wanted."""

from __future__ import annotations

import numpy as np
import pygame


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
