"""The six annotated classes as metric side views, built from random parts.

The classes come in pairs that differ only in a detail, as in Cityscapes:
person / rider on a bicycle / bicycle alone, car / truck (a car-like cab
before a cargo box) / bus (a long body with a row of windows).
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .palette import Colour, dark_colour, glass_colour, hsv, paint_colour, shade, skin_colour

__all__ = ["SYNTHETIC_CLASSES", "Shape", "rect", "wheel", "OBJECT_BUILDERS"]

SYNTHETIC_CLASSES = ("person", "rider", "car", "truck", "bus", "bicycle")


@dataclass
class Shape:
    """An object in its own metric side view, before placement.

    ``parts`` are drawn in order; coordinates are metres with x along the
    object's length (0..length) and y up from the ground. Part kinds:
    ``("poly", [(x, y), ...], colour)``, ``("ellipse", (x, y), (rx, ry), thick, colour)``
    (``thick`` in m, -1 = filled), ``("line", (x0, y0), (x1, y1), thick, colour)``.
    """

    parts: list
    length: float
    height: float
    category: int = -1  # index into SYNTHETIC_CLASSES; -1 = clutter
    squash: Tuple[float, float] = (1.0, 1.0)  # range of horizontal foreshortening


def rect(x0: float, y0: float, x1: float, y1: float, colour: Colour) -> tuple:
    return ("poly", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)


def wheel(x: float, r: float, tyre: Colour, hub: Colour) -> list:
    return [("ellipse", (x, r), (r, r), -1, tyre), ("ellipse", (x, r), (0.5 * r, 0.5 * r), -1, hub)]


def _person(rng: np.random.Generator) -> Shape:
    """A standing/walking figure seen from the front: head, torso, arms, legs."""
    h = rng.uniform(1.55, 1.92)
    w = 0.36 * h
    c = w / 2
    shirt, pants, skin = paint_colour(rng), shade(paint_colour(rng), 0.6), skin_colour(rng)
    stride = rng.uniform(-0.02, 0.07) * h
    swing = rng.uniform(0.0, 0.05) * h
    leg, arm = 0.08 * h, 0.055 * h
    parts = [
        ("line", (c - 0.05 * h, 0.47 * h), (c - 0.05 * h - stride, 0.03 * h), leg, pants),
        ("line", (c + 0.05 * h, 0.47 * h), (c + 0.05 * h + stride, 0.03 * h), leg, pants),
        ("poly", [(c - 0.13 * h, 0.82 * h), (c + 0.13 * h, 0.82 * h),
                  (c + 0.10 * h, 0.45 * h), (c - 0.10 * h, 0.45 * h)], shirt),
        ("line", (c - 0.12 * h, 0.79 * h), (c - 0.15 * h - swing, 0.48 * h), arm, shirt),
        ("line", (c + 0.12 * h, 0.79 * h), (c + 0.15 * h + swing, 0.48 * h), arm, shirt),
        ("ellipse", (c, 0.9 * h), (0.065 * h, 0.075 * h), -1, skin),
    ]
    if rng.random() < 0.5:  # hair or a hat
        parts.append(("ellipse", (c, 0.94 * h), (0.068 * h, 0.04 * h), -1, dark_colour(rng)))
    return Shape(parts, w, h, category=SYNTHETIC_CLASSES.index("person"))


def _bicycle_parts(rng: np.random.Generator) -> Tuple[list, dict]:
    """Two wheels and a diamond frame, side view; returns parts and key points."""
    r = rng.uniform(0.31, 0.36)
    wb = rng.uniform(1.0, 1.12)
    frame, tyre = paint_colour(rng), dark_colour(rng)
    rear, front = (r, r), (r + wb, r)
    bb = (r + 0.42 * wb, 0.9 * r)
    seat = (r + 0.3 * wb, r + 0.55)
    head = (r + 0.88 * wb, r + 0.52)
    bar = (r + 0.84 * wb, r + 0.7)
    saddle = (seat[0] - 0.03, r + 0.66)
    t = 0.045
    parts = [
        ("ellipse", rear, (r, r), 0.06, tyre),
        ("ellipse", front, (r, r), 0.06, tyre),
        ("line", rear, bb, t, frame),
        ("line", rear, seat, t, frame),
        ("line", bb, saddle, t, frame),
        ("line", bb, head, t, frame),
        ("line", seat, head, t, frame),
        ("line", head, front, t, frame),
        ("line", head, bar, t, frame),
        ("line", bar, (bar[0] + 0.12, bar[1] + 0.02), t, dark_colour(rng)),
        ("line", (saddle[0] - 0.12, saddle[1]), (saddle[0] + 0.1, saddle[1]), 0.06, dark_colour(rng)),
    ]
    return parts, {"r": r, "length": 2 * r + wb, "saddle": saddle, "bar": bar, "bb": bb}


def _bicycle(rng: np.random.Generator) -> Shape:
    parts, k = _bicycle_parts(rng)
    return Shape(parts, k["length"], k["bar"][1] + 0.03, SYNTHETIC_CLASSES.index("bicycle"), (0.6, 1.0))


def _rider(rng: np.random.Generator) -> Shape:
    """A figure sitting on a bicycle, leaning to the handlebar; the box covers both."""
    parts, k = _bicycle_parts(rng)
    s = rng.uniform(0.9, 1.06)  # body size relative to a 1.75 m adult
    shirt, pants, skin = paint_colour(rng), shade(paint_colour(rng), 0.6), skin_colour(rng)
    hip = (k["saddle"][0], k["saddle"][1] + 0.05)
    lean = np.deg2rad(rng.uniform(15, 40))
    shoulder = (hip[0] + 0.55 * s * np.sin(lean), hip[1] + 0.55 * s * np.cos(lean))
    head = (shoulder[0] + 0.12 * s * np.sin(lean), shoulder[1] + 0.2 * s)
    phase = rng.uniform(0, 2 * np.pi)
    body = []
    for p in (phase, phase + np.pi):
        pedal = (k["bb"][0] + 0.17 * np.cos(p), k["bb"][1] + 0.17 * np.sin(p))
        knee = ((hip[0] + pedal[0]) / 2 + 0.2 * s, (hip[1] + pedal[1]) / 2 + 0.08 * s)
        body += [("line", hip, knee, 0.13 * s, pants), ("line", knee, pedal, 0.11 * s, pants)]
    body += [
        ("line", hip, shoulder, 0.24 * s, shirt),
        ("line", shoulder, k["bar"], 0.08 * s, shirt),
        ("ellipse", head, (0.11 * s, 0.12 * s), -1, skin),
    ]
    if rng.random() < 0.5:  # helmet
        body.append(("ellipse", (head[0], head[1] + 0.05 * s), (0.12 * s, 0.08 * s), -1, paint_colour(rng)))
    top = head[1] + 0.12 * s
    return Shape(parts + body, k["length"], top, SYNTHETIC_CLASSES.index("rider"), (0.6, 1.0))


def _car(rng: np.random.Generator) -> Shape:
    """Side view: low body, a glazed cabin with a slanted windscreen, two wheels."""
    L, h, r = rng.uniform(3.8, 4.9), rng.uniform(1.35, 1.65), rng.uniform(0.29, 0.34)
    body, glass, tyre = paint_colour(rng), glass_colour(rng), dark_colour(rng)
    y0, y1 = 0.22, 0.58 * h
    c0, c1 = rng.uniform(0.15, 0.25) * L, rng.uniform(0.72, 0.85) * L  # cabin foot
    t0, t1 = c0 + rng.uniform(0.08, 0.15) * L, c1 - rng.uniform(0.12, 0.2) * L  # roof
    parts = [
        ("poly", [(0, y0 + 0.05), (0, y1 - 0.05), (0.03 * L, y1), (0.96 * L, y1),
                  (L, y1 - 0.1), (L, y0 + 0.05), (0.97 * L, y0), (0.03 * L, y0)], body),
        ("poly", [(c0, y1), (t0, h), (t1, h), (c1, y1)], body),
        ("poly", [(c0 + 0.06, y1 + 0.04), (t0 + 0.04, h - 0.07), (t1 - 0.04, h - 0.07),
                  (c1 - 0.08, y1 + 0.04)], glass),
        ("line", ((t0 + t1) / 2, y1), ((t0 + t1) / 2, h - 0.05), 0.07, body),
        rect(0.97 * L, y1 - 0.22, L, y1 - 0.1, (235.0, 225.0, 170.0)),
        rect(0.0, y1 - 0.22, 0.03 * L, y1 - 0.1, (200.0, 30.0, 30.0)),
    ]
    parts += wheel(0.18 * L, r, tyre, (150.0, 150.0, 150.0))
    parts += wheel(0.8 * L, r, tyre, (150.0, 150.0, 150.0))
    return Shape(parts, L, h, SYNTHETIC_CLASSES.index("car"), (0.45, 1.0))


def _truck(rng: np.random.Generator) -> Shape:
    """A car-like cab in front of a tall cargo box on a chassis, three wheels."""
    Lb, hb = rng.uniform(4.0, 7.0), rng.uniform(3.0, 3.8)
    Lc, hc = rng.uniform(1.8, 2.3), rng.uniform(2.4, 2.9)
    gap = 0.25
    L = Lb + gap + Lc
    cab, glass, tyre = paint_colour(rng), glass_colour(rng), dark_colour(rng)
    box = hsv(0, 0, rng.uniform(0.75, 0.95)) if rng.random() < 0.5 else paint_colour(rng)
    x = Lb + gap
    parts = [
        rect(0, 0.55, L - 0.1, 0.95, (60.0, 60.0, 60.0)),
        rect(0, 0.9, Lb, hb, box),
        ("poly", [(x, 0.55), (x, hc), (x + 0.7 * Lc, hc), (L, 0.6 * hc), (L, 0.55)], cab),
        ("poly", [(x + 0.4 * Lc, 0.62 * hc), (x + 0.4 * Lc, hc - 0.15), (x + 0.67 * Lc, hc - 0.15),
                  (x + 0.93 * Lc, 0.62 * hc)], glass),
    ]
    if rng.random() < 0.5:  # a painted band or logo on the box
        parts.append(rect(0.1 * Lb, 0.45 * hb, 0.9 * Lb, 0.6 * hb, paint_colour(rng)))
    r = rng.uniform(0.45, 0.52)
    for wx in (0.15 * Lb, 0.75 * Lb, x + 0.5 * Lc):
        parts += wheel(wx, r, tyre, (140.0, 140.0, 140.0))
    return Shape(parts, L, hb, SYNTHETIC_CLASSES.index("truck"), (0.45, 1.0))


def _bus(rng: np.random.Generator) -> Shape:
    """A long box with chamfered corners, a row of windows, a door and two wheels."""
    L, h, r = rng.uniform(9.5, 12.5), rng.uniform(2.9, 3.3), 0.5
    body, glass, tyre = paint_colour(rng), glass_colour(rng), dark_colour(rng)
    parts = [
        ("poly", [(0, 0.3), (0, h - 0.2), (0.2, h), (L - 0.3, h), (L, h - 0.35), (L, 0.3)], body),
    ]
    if rng.random() < 0.6:
        parts.append(rect(0, 0.42 * h, L, 0.5 * h, paint_colour(rng)))
    n = int(L / rng.uniform(1.2, 1.6))
    x0, x1 = 0.35, L - 2.2
    step = (x1 - x0) / n
    for i in range(n):
        parts.append(rect(x0 + i * step + 0.08, 0.56 * h, x0 + (i + 1) * step - 0.08, 0.88 * h, glass))
    parts.append(rect(L - 1.1, 0.5 * h, L - 0.08, 0.9 * h, glass))  # windscreen side
    parts.append(rect(L - 2.0, 0.32, L - 1.3, 0.88 * h, shade(glass, 0.7)))  # door
    parts += wheel(0.2 * L, r, tyre, (140.0, 140.0, 140.0))
    parts += wheel(0.8 * L, r, tyre, (140.0, 140.0, 140.0))
    return Shape(parts, L, h, SYNTHETIC_CLASSES.index("bus"), (0.45, 1.0))


OBJECT_BUILDERS = (_person, _rider, _car, _truck, _bus, _bicycle)
