"""Colours of the painted world: vehicle paint, skin, dark rubber, glass."""
import colorsys
from typing import Tuple

import numpy as np

__all__ = ["Colour", "hsv", "paint_colour", "skin_colour", "dark_colour", "glass_colour", "shade"]

Colour = Tuple[float, float, float]


def hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (255.0 * r, 255.0 * g, 255.0 * b)


def paint_colour(rng: np.random.Generator) -> Colour:
    """A vehicle/clothing colour: saturated hues or white/grey/black, like real paint."""
    if rng.random() < 0.35:
        return hsv(0.0, 0.0, rng.choice([0.12, 0.35, 0.6, 0.85, 0.95]) + rng.uniform(-0.05, 0.05))
    return hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95))


def skin_colour(rng: np.random.Generator) -> Colour:
    return hsv(rng.uniform(0.03, 0.09), rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.95))


def dark_colour(rng: np.random.Generator) -> Colour:
    return hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.08, 0.3))


def glass_colour(rng: np.random.Generator) -> Colour:
    return hsv(rng.uniform(0.52, 0.64), rng.uniform(0.15, 0.45), rng.uniform(0.2, 0.55))


def shade(colour: Colour, factor: float) -> Colour:
    return tuple(float(min(255.0, c * factor)) for c in colour)
