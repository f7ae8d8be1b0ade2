"""The scene behind the objects: sky, distant hills, the road and its sides, facades."""
from typing import Optional

import cv2
import numpy as np

from .camera import Camera
from .palette import glass_colour, hsv
from .raster import FP, SHIFT
from .semantic import BUILDING, ROAD, SIDEWALK, SKY, TERRAIN

__all__ = ["lowfreq_noise", "draw_sky", "draw_hills", "draw_ground", "draw_buildings"]


def lowfreq_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: random values on a coarse grid, upsampled."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / 2, -1, 1)


def draw_sky(img: np.ndarray, rng: np.random.Generator, cam: Camera, labels: Optional[np.ndarray] = None) -> None:
    """Vertical gradient (blue day or grey overcast) with soft clouds.

    ``labels`` (here and below): a uint8 label map painted with the same
    geometry (see :mod:`.semantic`); it never changes what is drawn from ``rng``.
    """
    if rng.random() < 0.7:
        top = np.array(hsv(rng.uniform(0.55, 0.63), rng.uniform(0.3, 0.7), rng.uniform(0.65, 0.95)))
    else:
        top = np.array(hsv(0.6, rng.uniform(0.0, 0.1), rng.uniform(0.55, 0.85)))
    low = top + (255 - top) * rng.uniform(0.3, 0.7)
    rows = max(1, int(np.ceil(cam.horizon)) + 1)
    a = np.linspace(0, 1, rows, dtype=np.float32)[:, None, None]
    sky = top * (1 - a) + low * a
    clouds = np.clip(lowfreq_noise(rng, rows, cam.width, 24) * rng.uniform(0.5, 1.5), 0, 1)
    sky = sky + (250 - sky) * clouds[:, :, None] * 0.8
    img[:rows] = sky[: img.shape[0]]
    if labels is not None:
        labels[:rows] = SKY


def draw_hills(img: np.ndarray, depth: np.ndarray, rng: np.random.Generator, cam: Camera,
               labels: Optional[np.ndarray] = None) -> None:
    """A distant ridge or tree line just above the horizon."""
    bumps = 0.5 + 0.5 * lowfreq_noise(rng, 1, cam.width, 40)[0]
    ridge = cam.horizon - bumps * cam.height * rng.uniform(0.02, 0.1)
    rows = np.arange(cam.height)[:, None]
    mask = (rows >= ridge[None, :]) & (rows < cam.horizon + 1)
    col = np.array(hsv(rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.6)))
    img[mask] = col
    if labels is not None:
        labels[mask] = TERRAIN
    depth[mask] = rng.uniform(300, 600)


def wedge(cam: Camera, x0: float, x1: float) -> np.ndarray:
    """Ground strip between lateral offsets x0 < x1 (m), from the vanishing point down."""
    k = (cam.height + 2 - cam.horizon) / cam.mount
    pts = [(cam.vp_x, cam.horizon), (cam.vp_x + x1 * k, cam.height + 2), (cam.vp_x + x0 * k, cam.height + 2)]
    return np.round(np.array(pts) * FP).astype(np.int32)


def draw_ground(img: np.ndarray, rng: np.random.Generator, cam: Camera, labels: Optional[np.ndarray] = None) -> None:
    """Terrain, sidewalks, kerbs, asphalt and dashed lane marks, all in perspective."""
    h = int(np.floor(cam.horizon))
    if rng.random() < 0.5:  # grass
        terrain = hsv(rng.uniform(0.18, 0.35), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.55))
    else:  # dirt, gravel
        terrain = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.1, 0.3), rng.uniform(0.45, 0.7))
    img[h:] = terrain
    if labels is not None:
        labels[h:] = TERRAIN
    left, right = -rng.uniform(3.0, 9.0), rng.uniform(3.0, 9.0)
    walk = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.2), rng.uniform(0.55, 0.8))
    kerb = hsv(0, 0, rng.uniform(0.7, 0.9))
    asphalt = hsv(0.6, rng.uniform(0.0, 0.1), rng.uniform(0.25, 0.45))
    ww = rng.uniform(2.0, 4.0)
    for a, b, col, label in ((left - ww, left, walk, SIDEWALK), (right, right + ww, walk, SIDEWALK),
                             (left - 0.2, left, kerb, SIDEWALK), (right, right + 0.2, kerb, SIDEWALK),
                             (left, right, asphalt, ROAD)):
        cv2.fillPoly(img, [wedge(cam, a, b)], col, cv2.LINE_AA, SHIFT)
        if labels is not None:
            cv2.fillPoly(labels, [wedge(cam, a, b)], label, cv2.LINE_8, SHIFT)
    mark = (240.0, 240.0, 235.0) if rng.random() < 0.8 else (235.0, 200.0, 60.0)
    lanes = [0.5 * (left + right)] if right - left > 7 else []
    lanes += [left + 0.3, right - 0.3]
    dash, period = rng.uniform(2.0, 4.0), rng.uniform(8.0, 12.0)
    for i, x in enumerate(lanes):
        solid = i > 0 or len(lanes) == 2
        d = cam.min_ground_depth() * 0.7 + (0 if solid else rng.uniform(0, period))
        while d < 80:
            d1 = 80.0 if solid else d + dash
            quad = [(cam.col_of(x - 0.07, d), cam.row_of(d)), (cam.col_of(x + 0.07, d), cam.row_of(d)),
                    (cam.col_of(x + 0.07, d1), cam.row_of(d1)), (cam.col_of(x - 0.07, d1), cam.row_of(d1))]
            cv2.fillPoly(img, [np.round(np.array(quad) * FP).astype(np.int32)], mark, cv2.LINE_AA, SHIFT)
            d = d1 + period
    tex = lowfreq_noise(rng, cam.height - h, cam.width, 6)
    img[h:] *= (1 + 0.08 * tex)[:, :, None]


def draw_buildings(img: np.ndarray, depth: np.ndarray, rng: np.random.Generator, cam: Camera,
                   labels: Optional[np.ndarray] = None) -> None:
    """Fronto-parallel facades with window grids on both sides of the road, far to near."""
    blocks = []
    for side in (-1, 1):
        for _ in range(rng.integers(0, 4)):
            d = rng.uniform(25, 110)
            x_near = side * rng.uniform(8, 25)
            width = rng.uniform(8, 35)
            blocks.append((d, min(x_near, x_near + side * width), max(x_near, x_near + side * width)))
    for d, x0, x1 in sorted(blocks, reverse=True):
        c0, c1 = int(round(cam.col_of(x0, d))), int(round(cam.col_of(x1, d)))
        base = int(round(cam.row_of(d)))
        top = int(round(base - cam.focal * rng.uniform(6, 35) / d))
        c0, c1, top = max(c0, 0), min(c1, cam.width), max(top, 0)
        if c1 - c0 < 2 or base - top < 2:
            continue
        facade = np.array(hsv(rng.uniform(0.0, 0.15), rng.uniform(0.05, 0.4), rng.uniform(0.35, 0.8)))
        region = img[top:base, c0:c1]
        region[:] = facade
        if labels is not None:
            labels[top:base, c0:c1] = BUILDING
        period = cam.focal * rng.uniform(2.8, 3.6) / d
        if period >= 3:
            yy = (np.arange(top, base)[:, None] - base) % period
            xx = (np.arange(c0, c1)[None, :] - c0) % period
            win = (yy > 0.3 * period) & (yy < 0.8 * period) & (xx > 0.25 * period) & (xx < 0.75 * period)
            region[win] = np.array(glass_colour(rng))
        depth[top:base, c0:c1] = d
