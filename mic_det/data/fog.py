"""The optical fog model behind Foggy Cityscapes (Sakaridis et al., IJCV 2018).

A camera looking through homogeneous fog sees

    I(x) = R(x) * t(x) + A * (1 - t(x)),      t(x) = exp(-beta * d(x))

``R`` is the clear image, ``A`` the atmospheric light (the colour of the fog
itself), ``d`` the distance from the camera in metres and ``beta`` the
attenuation coefficient in 1/m. The visibility (meteorological optical range)
is about ``3 / beta``: Foggy Cityscapes' densest setting ``beta = 0.02`` sees
about 150 m.

Because the fog is a function of depth, far objects lose their contrast first
and near ones stay visible; this is what makes fog a *domain shift* (small and
far objects disappear into the fog) rather than a global colour change. All
functions here are pure numpy so that both the synthetic generator and
``tools/foggify.py`` (user images) share one definition.
"""
from typing import Sequence, Union

import numpy as np

__all__ = [
    "CITYSCAPES_BASELINE",
    "CITYSCAPES_FOCAL",
    "transmission",
    "apply_fog",
    "heuristic_depth",
    "depth_from_disparity",
]

# Stereo rig of Cityscapes (camera.json of every frame is within ~1% of these):
# baseline in metres, horizontal focal length in pixels at 2048x1024.
CITYSCAPES_BASELINE = 0.209313
CITYSCAPES_FOCAL = 2262.52

AtmosphericLight = Union[float, Sequence[float]]


def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """Fraction of the scene's light that reaches the camera: ``exp(-beta * depth)``.

    Args:
        depth: distance from the camera in metres, any shape. ``inf`` is allowed
            (e.g. sky) and gives 0.
        beta: attenuation coefficient in 1/m, >= 0. 0 means no fog.

    Returns:
        float32 array of ``depth``'s shape in [0, 1]. Negative depths (invalid
        input) are clipped to 0 distance rather than amplifying the scene.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (an attenuation coefficient), got {beta}")
    depth = np.maximum(np.asarray(depth, dtype=np.float32), 0.0)
    t = np.exp(-np.float32(beta) * depth)
    return np.clip(t, 0.0, 1.0).astype(np.float32, copy=False)


def _atmospheric_light_vector(atmospheric_light: AtmosphericLight) -> np.ndarray:
    """``A`` as 3 float32 values in [0, 255], one per channel of the image."""
    a = np.asarray(atmospheric_light, dtype=np.float32).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.size != 3:
        raise ValueError(
            f"atmospheric_light must be a scalar or 3 values (one per channel), got {atmospheric_light!r}"
        )
    if np.any(a < 0) or np.any(a > 1):
        raise ValueError(
            f"atmospheric_light is a fraction of 255 and must lie in [0, 1], got {atmospheric_light!r}"
        )
    return a * 255.0


def apply_fog(
    image: np.ndarray,
    depth: np.ndarray,
    beta: float,
    atmospheric_light: AtmosphericLight = 0.8,
) -> np.ndarray:
    """Render homogeneous fog of density ``beta`` over a clear image.

    Args:
        image: uint8 HxWx3 clear image ``R``. The channel order is kept, so a
            per-channel ``atmospheric_light`` is given in the same order.
        depth: HxW distance map in metres (e.g. from :func:`depth_from_disparity`,
            :func:`heuristic_depth` or the synthetic generator).
        beta: attenuation coefficient in 1/m (0 = no fog, Foggy Cityscapes uses
            0.005, 0.01 and 0.02).
        atmospheric_light: ``A`` as a fraction of 255: a scalar (grey fog) or one
            value per channel. Foggy Cityscapes estimates it per image; a light
            grey around 0.8 looks like daylight fog without saturating.

    Returns:
        uint8 HxWx3 foggy image ``R * t + A * (1 - t)``, rounded to nearest.
    """
    image = np.asarray(image)
    depth = np.asarray(depth)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.shape != image.shape[:2]:
        raise ValueError(
            f"depth map shape {depth.shape} does not match image shape {image.shape[:2]} "
            f"(one distance per pixel is needed)"
        )
    a = _atmospheric_light_vector(atmospheric_light)
    t = transmission(depth, beta)[:, :, None]
    foggy = image.astype(np.float32) * t + a * (1.0 - t)
    return np.clip(np.rint(foggy), 0, 255).astype(np.uint8)


def heuristic_depth(
    height: int,
    width: int,
    near: float = 3.0,
    far: float = 150.0,
    horizon: float = 0.45,
) -> np.ndarray:
    """A depth guess for images that come without a depth map.

    Models the view of a road camera: a flat ground plane seen in perspective,
    whose distance grows as ``1 / (row - horizon_row)`` from ``near`` at the
    bottom row up to the horizon, and everything at or above the horizon line
    (sky, building fronts, tree tops) at ``far``. This is wrong for any object
    that stands up from the ground (it gets the depth of the ground behind
    it), but it gets the main effect of fog right: the bottom of the image stays
    clear, the top fades. Depth is constant along each row.

    Args:
        height, width: output size in pixels.
        near: distance in metres of the ground seen by the bottom row (a car
            camera sees the road from about 3 m on).
        far: distance given to the horizon and above. ``far = 150`` at Foggy
            Cityscapes' ``beta = 0.02`` leaves about 5% of the scene's light, so
            tall structures fade but are not erased.
        horizon: row of the horizon as a fraction of the height from the top.

    Returns:
        float32 HxW depth in metres, in [near, far].
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if not 0 < near <= far:
        raise ValueError(f"need 0 < near <= far, got near={near}, far={far}")
    if not 0.0 <= horizon < 1.0:
        raise ValueError(f"horizon is a fraction of the height in [0, 1), got {horizon}")
    horizon_row = horizon * (height - 1)
    rows = np.arange(height, dtype=np.float64)
    below = rows - horizon_row
    # Ground plane: d(row) = near * (bottom - horizon) / (row - horizon).
    span = max(height - 1 - horizon_row, 1e-6)
    with np.errstate(divide="ignore"):
        d = np.where(below > 0, near * span / np.maximum(below, 1e-9), far)
    d = np.clip(d, near, far).astype(np.float32)
    return np.repeat(d[:, None], width, axis=1)


def depth_from_disparity(
    disparity: np.ndarray,
    baseline: float = CITYSCAPES_BASELINE,
    focal: float = CITYSCAPES_FOCAL,
    invalid_depth: float = 1000.0,
) -> np.ndarray:
    """Metric depth from a Cityscapes ``*_disparity.png``, as Foggy Cityscapes needs it.

    Cityscapes stores disparity as 16-bit PNG values ``p``: ``disparity = (p - 1)
    / 256`` for ``p > 0`` and ``p = 0`` marks pixels where stereo matching failed
    (mostly sky, reflections and occlusion borders). Depth is then ``baseline *
    focal / disparity``. Invalid pixels, and ``p = 1`` (zero disparity,
    infinitely far), are given ``invalid_depth``: far enough to be fully fogged,
    which is right for sky, the largest invalid region. Foggy Cityscapes
    inpaints these holes instead; that refinement is not reproduced here.

    Args:
        disparity: the PNG's raw values (read it with ``cv2.IMREAD_UNCHANGED``
            so that it stays 16-bit), HxW.
        baseline: stereo baseline in metres (Cityscapes: 0.209313).
        focal: horizontal focal length in pixels *at the resolution of the
            disparity map* (Cityscapes at 2048x1024: 2262.52; scale it if the
            map was resized).
        invalid_depth: depth in metres for pixels without a valid disparity.

    Returns:
        float32 HxW depth in metres.
    """
    disparity = np.asarray(disparity)
    if disparity.dtype == np.uint8:
        raise ValueError(
            "disparity is 8-bit: Cityscapes disparity PNGs are 16-bit, read them with "
            "cv2.imread(path, cv2.IMREAD_UNCHANGED) so that the values are not truncated"
        )
    if disparity.ndim != 2:
        raise ValueError(f"disparity must be HxW, got shape {disparity.shape}")
    if baseline <= 0 or focal <= 0:
        raise ValueError(f"baseline and focal must be positive, got {baseline}, {focal}")
    p = disparity.astype(np.float64)
    disp = (p - 1.0) / 256.0
    valid = (p > 0) & (disp > 0)
    depth = np.full(p.shape, invalid_depth, dtype=np.float64)
    depth[valid] = baseline * focal / disp[valid]
    return depth.astype(np.float32)
