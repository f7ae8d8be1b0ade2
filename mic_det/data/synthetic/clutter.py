"""Clutter: things in a street that belong to no class (poles, trees, crates ...).

They occlude objects and give a detector look-alike distractors; they are
never annotated.
"""
import numpy as np

from .palette import hsv, paint_colour, shade
from .shapes import Shape, rect

__all__ = ["CLUTTER_BUILDERS"]


def _pole(rng: np.random.Generator) -> Shape:
    """A pole with a sign, a traffic light or a lamp arm."""
    h, w = rng.uniform(3.0, 7.0), rng.uniform(0.1, 0.2)
    grey = hsv(0, 0, rng.uniform(0.2, 0.6))
    L = 1.2
    c = L / 2
    parts = [rect(c - w / 2, 0, c + w / 2, h, grey)]
    kind = rng.integers(3)
    if kind == 0:
        sign = hsv(rng.choice([0.0, 0.6, 0.15]), 0.85, 0.85)
        parts += [("ellipse", (c, h - 0.35), (0.35, 0.35), -1, sign),
                  ("ellipse", (c, h - 0.35), (0.22, 0.22), -1, (235.0, 235.0, 235.0))]
    elif kind == 1:
        parts.append(rect(c - 0.17, h - 1.0, c + 0.17, h, (30.0, 30.0, 30.0)))
        lit = rng.integers(3)
        for i, col in enumerate(((220.0, 30.0, 20.0), (230.0, 180.0, 20.0), (30.0, 200.0, 60.0))):
            parts.append(("ellipse", (c, h - 0.2 - 0.3 * i), (0.1, 0.1), -1,
                          col if i == lit else shade(col, 0.3)))
    else:
        parts += [("line", (c, h), (c + 0.55, h + 0.1), w, grey),
                  rect(c + 0.35, h - 0.05, c + 0.6, h + 0.12, (230.0, 230.0, 200.0))]
        h += 0.15
    return Shape(parts, L, h)


def _tree(rng: np.random.Generator) -> Shape:
    trunk_h, cw, ch = rng.uniform(1.5, 3.5), rng.uniform(2.0, 5.0), rng.uniform(2.0, 5.0)
    green = hsv(rng.uniform(0.2, 0.38), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.6))
    c = cw / 2
    parts = [rect(c - 0.15, 0, c + 0.15, trunk_h + 0.3 * ch, hsv(0.08, 0.5, 0.3))]
    for _ in range(3):
        ox, oy = rng.uniform(-0.2, 0.2) * cw, rng.uniform(-0.15, 0.15) * ch
        parts.append(("ellipse", (c + ox, trunk_h + ch / 2 + oy), (0.3 * cw, 0.35 * ch), -1,
                      shade(green, rng.uniform(0.8, 1.2))))
    return Shape(parts, cw, trunk_h + ch)


def _bush(rng: np.random.Generator) -> Shape:
    w, h = rng.uniform(0.8, 3.0), rng.uniform(0.5, 1.4)
    col = hsv(rng.uniform(0.18, 0.4), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.55))
    parts = [("ellipse", (w * f, h * 0.45), (w * 0.3, h * 0.45), -1, shade(col, rng.uniform(0.8, 1.2)))
             for f in (0.3, 0.5, 0.7)]
    return Shape(parts, w, h)


def _crate(rng: np.random.Generator) -> Shape:
    """Bins, crates and boxes: plain blocks of random colour."""
    w, h = rng.uniform(0.5, 2.0), rng.uniform(0.5, 1.6)
    col = paint_colour(rng)
    parts = [rect(0, 0, w, h, col), rect(0, h - 0.1, w, h, shade(col, 0.7))]
    return Shape(parts, w, h)


def _fence(rng: np.random.Generator) -> Shape:
    L, h = rng.uniform(2.0, 6.0), rng.uniform(0.8, 1.2)
    col = hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.3, 0.8))
    parts = [rect(0, 0.7 * h, L, 0.8 * h, col), rect(0, 0.3 * h, L, 0.4 * h, col)]
    for x in np.linspace(0.05, L - 0.05, max(2, int(L / 1.2))):
        parts.append(rect(x - 0.05, 0, x + 0.05, h, col))
    return Shape(parts, L, h, squash=(0.5, 1.0))


def _cone(rng: np.random.Generator) -> Shape:
    h = rng.uniform(0.5, 0.8)
    parts = [("poly", [(0, 0), (0.4, 0), (0.2, h)], (240.0, 110.0, 20.0)),
             rect(0.13, 0.45 * h, 0.27, 0.6 * h, (240.0, 240.0, 240.0))]
    return Shape(parts, 0.4, h)


CLUTTER_BUILDERS = (_pole, _pole, _tree, _bush, _crate, _fence, _cone)
