"""One street scene: background, objects and clutter placed and occluded, then shifted.

Everything is drawn with vectorized numpy and cv2 primitives: a 256x320
scene takes a few milliseconds.
"""
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..low_light import LowLight
from .background import draw_buildings, draw_ground, draw_hills, draw_sky
from .camera import camera_response, random_camera
from .clutter import CLUTTER_BUILDERS
from .raster import Item, draw, place
from .semantic import object_label
from .shapes import OBJECT_BUILDERS, SYNTHETIC_CLASSES
from .shifts import DEFAULT_ATMOSPHERIC_LIGHT, apply_shifts

__all__ = ["generate_scene", "generate_labelled_scene"]

# Annotated objects are drawn between these box heights (pixels / fraction of H).
MIN_OBJECT_PX = 12.0
MAX_OBJECT_FRAC = 0.6
# An object more hidden than this (by nearer objects or clutter) is not drawn.
MAX_HIDDEN_FRACTION = 0.7
# Visible boxes below this height (px) or area (px^2) are not drawn either.
MIN_BOX_HEIGHT = 6
MIN_BOX_AREA = 36
MIN_OBJECTS, MAX_OBJECTS = 2, 10
# Clutter stays below this fraction of the image height and width, so that no
# near crate or bush hides most of a scene.
CLUTTER_MAX_FRAC = 0.4

# Class frequencies: roughly balanced so that every class is learnable from a
# few hundred images, with more cars and people than buses as on real streets.
_CLASS_WEIGHTS = np.array([0.2, 0.15, 0.22, 0.14, 0.13, 0.16])


def _resolve_occlusion(items: List[Item]) -> List[Tuple[Item, Optional[list], float]]:
    """Decide front to back what is drawn; return (item, visible box, visible fraction).

    Objects hidden more than MAX_HIDDEN_FRACTION, or whose visible box is too
    small, are dropped *before* painting, so no unlabelled object pixels remain.
    Clutter is always kept (box None). The result is ordered near to far.
    """
    covered = np.zeros_like(items[0].mask) if items else None
    kept = []
    for it in sorted(items, key=lambda i: i.depth):
        if it.shape.category < 0:
            covered |= it.mask
            kept.append((it, None, 1.0))
            continue
        area = int(it.mask.sum())
        if area == 0:
            continue
        visible = it.mask & ~covered
        frac = float(visible.sum()) / area
        if frac < 1.0 - MAX_HIDDEN_FRACTION:
            continue
        x, y, w, h = cv2.boundingRect(visible.astype(np.uint8))
        if h < MIN_BOX_HEIGHT or w * h < MIN_BOX_AREA:
            continue
        covered |= it.mask
        kept.append((it, [x, y, w, h], frac))
    return kept


def _sample_objects(rng, cam, n, min_px, max_px) -> List[Item]:
    classes = rng.choice(len(SYNTHETIC_CLASSES), size=n, p=_CLASS_WEIGHTS / _CLASS_WEIGHTS.sum())
    return [place(OBJECT_BUILDERS[c](rng), rng, cam, min_px, max_px) for c in classes]


def generate_labelled_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    beta: float = 0.0,
    atmospheric_light: Union[float, Sequence[float]] = DEFAULT_ATMOSPHERIC_LIGHT,
    night: Optional[LowLight] = None,
) -> Tuple[np.ndarray, np.ndarray, List[dict], np.ndarray]:
    """:func:`generate_scene` plus its per-pixel labels: ``(image, depth, annotations, labels)``.

    ``labels`` is a uint8 HxW map of indices into
    :data:`~mic_det.data.synthetic.semantic.SEMANTIC_CLASSES`, painted with the
    image's geometry (objects by their placement masks, near over far). Image,
    depth and annotations are those :func:`generate_scene` gives for the same
    ``rng`` state, byte for byte; fog and night do not change the labels.
    """
    labels = np.zeros((height, width), np.uint8)
    img, depth, annotations = _draw_scene(rng, height, width, beta, atmospheric_light, night, labels)
    return img, depth, annotations, labels


def generate_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    beta: float = 0.0,
    atmospheric_light: Union[float, Sequence[float]] = DEFAULT_ATMOSPHERIC_LIGHT,
    night: Optional[LowLight] = None,
) -> Tuple[np.ndarray, np.ndarray, List[dict]]:
    """Draw one street scene (:func:`generate_labelled_scene` adds its label map).

    Args:
        rng: the scene's only source of randomness (same state -> same scene).
        height, width: image size in pixels.
        beta, atmospheric_light: fog (see :func:`mic_det.data.fog.apply_fog`);
            ``beta = 0`` is the clear domain. Fog goes on before the camera's
            sensor noise and does not draw from ``rng``, so the same ``rng``
            state gives the same scene at every ``beta``.
        night: the night model (see :mod:`mic_det.data.low_light`), None =
            daylight. Like fog it goes on before the camera's response; its
            noise comes from a jumped copy of ``rng`` that leaves ``rng`` as
            it was, so scene, boxes and camera grain are those of daylight.

    Returns:
        image: uint8 HxWx3 RGB.
        depth: float32 HxW distance in metres (sky = SKY_DEPTH); every object's
            pixels carry its ground-contact distance.
        annotations: COCO-style dicts near to far: ``bbox`` (XYWH, pixels, the
            visible extent), ``category_id`` (1-based in SYNTHETIC_CLASSES order),
            ``area`` (box area), ``iscrowd`` 0, plus ``depth`` (m) and
            ``visible_fraction`` for analysis.
    """
    return _draw_scene(rng, height, width, beta, atmospheric_light, night, None)


def _draw_scene(rng, height, width, beta, atmospheric_light, night, labels: Optional[np.ndarray]):
    """generate_scene's drawing; paints ``labels`` too when given (no other difference)."""
    cam = random_camera(rng, height, width)
    img = np.zeros((height, width, 3), np.float32)
    depth = cam.ground_depth()
    draw_sky(img, rng, cam, labels)
    if rng.random() < 0.7:
        draw_hills(img, depth, rng, cam, labels)
    draw_ground(img, rng, cam, labels)
    if rng.random() < 0.8:
        draw_buildings(img, depth, rng, cam, labels)
    img = np.clip(img, 0, 255).astype(np.uint8)

    max_px = MAX_OBJECT_FRAC * height
    min_px = min(MIN_OBJECT_PX, max_px / 2)
    clutter = [place(CLUTTER_BUILDERS[rng.integers(len(CLUTTER_BUILDERS))](rng), rng, cam, 8,
                     CLUTTER_MAX_FRAC * height, max_width=CLUTTER_MAX_FRAC * width)
               for _ in range(rng.integers(2, 9))]
    objects = _sample_objects(rng, cam, int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)), min_px, max_px)
    kept = _resolve_occlusion(clutter + objects)
    for _ in range(20):  # heavy occlusion can leave too few objects: add more
        if sum(b is not None for _, b, _ in kept) >= MIN_OBJECTS:
            break
        objects += _sample_objects(rng, cam, 1, min_px, max_px)
        kept = _resolve_occlusion(clutter + objects)

    annotations = []
    for it, box, frac in kept:
        if box is not None:
            annotations.append({
                "bbox": [float(v) for v in box],
                "category_id": it.shape.category + 1,
                "area": float(box[2] * box[3]),
                "iscrowd": 0,
                "depth": float(np.float32(it.depth)),  # equal to the depth map's value
                "visible_fraction": round(frac, 3),
            })
    for it, _, _ in reversed(kept):  # back to front
        draw(img, it.ops)
        depth[it.mask] = it.depth
        if labels is not None:
            labels[it.mask] = object_label(it.shape.category)

    img = apply_shifts(img, depth, rng, beta, atmospheric_light, night)
    return camera_response(img, rng), depth, annotations
