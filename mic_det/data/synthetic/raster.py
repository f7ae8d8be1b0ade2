"""Placing a metric shape in front of the camera and rasterising it with cv2."""
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from .camera import Camera
from .shapes import Shape

__all__ = ["SHIFT", "FP", "Item", "place", "to_pixels", "draw"]

# Fixed-point bits for cv2 drawing: sub-pixel placement keeps far (small)
# objects' shapes intact.
SHIFT = 3
FP = 1 << SHIFT


@dataclass
class Item:
    """A shape placed in a scene: its pixel drawing ops and its full in-image mask."""

    shape: Shape
    depth: float
    ops: list
    mask: np.ndarray = field(repr=False)


def place(shape: Shape, rng: np.random.Generator, cam: Camera, min_px: float, max_px: float,
          max_width: Optional[float] = None) -> Item:
    """Pick a distance from a log-uniform box height, then a column; return pixel ops.

    Sampling the *pixel* height log-uniformly (rather than the distance) spreads
    objects evenly over scales, which a small detector learns from best.
    """
    h_px = np.exp(rng.uniform(np.log(min_px), np.log(max_px)))
    depth = cam.focal * shape.height / h_px
    if depth < cam.min_ground_depth():  # feet below the image: stand a little behind its edge
        depth = cam.min_ground_depth() * rng.uniform(1.0, 1.25)
    squash = rng.uniform(*shape.squash)
    width_px = cam.focal * shape.length * squash / depth
    max_width = 0.9 * cam.width if max_width is None else max_width
    if width_px > max_width:  # keep long vehicles mostly in the frame
        depth *= width_px / max_width
    scale = cam.focal / depth
    cx = rng.uniform(0.03, 0.97) * cam.width
    flip = -1.0 if rng.random() < 0.5 else 1.0
    ops = to_pixels(shape, cx, cam.row_of(depth), scale, flip * squash)
    mask = np.zeros((cam.height, cam.width), np.uint8)
    draw(mask, ops, colour=255, line_type=cv2.LINE_8)
    return Item(shape, float(depth), ops, mask.astype(bool))


def to_pixels(shape: Shape, cx: float, base_row: float, scale: float, sx: float) -> list:
    """Metric parts -> cv2 ops in fixed point (``SHIFT`` bits), centred at column ``cx``."""
    half = shape.length / 2

    def pt(p):
        return (int(round((cx + (p[0] - half) * scale * sx) * FP)),
                int(round((base_row - p[1] * scale) * FP)))

    def thick(t):
        return -1 if t < 0 else max(1, int(round(t * scale)))

    ops = []
    for part in shape.parts:
        kind = part[0]
        if kind == "poly":
            ops.append(("poly", np.array([pt(p) for p in part[1]], np.int32), part[2]))
        elif kind == "ellipse":
            axes = (max(1, int(round(part[2][0] * scale * abs(sx) * FP))),
                    max(1, int(round(part[2][1] * scale * FP))))
            ops.append(("ellipse", pt(part[1]), axes, thick(part[3]), part[4]))
        else:
            ops.append(("line", pt(part[1]), pt(part[2]), thick(part[3]), part[4]))
    return ops


def draw(canvas: np.ndarray, ops: list, colour=None, line_type: int = cv2.LINE_AA) -> None:
    for op in ops:
        col = op[-1] if colour is None else colour
        if op[0] == "poly":
            cv2.fillPoly(canvas, [op[1]], col, line_type, SHIFT)
        elif op[0] == "ellipse":
            cv2.ellipse(canvas, op[1], op[2], 0, 0, 360, col, op[3], line_type, SHIFT)
        else:
            cv2.line(canvas, op[1], op[2], col, op[3], line_type, SHIFT)
