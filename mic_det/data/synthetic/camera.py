"""The road camera: pinhole geometry over a flat ground, and the sensor's response.

Every pixel of a scene gets a metric depth from this geometry, which is what
the depth-dependent domain shifts (fog, night lamps) act on.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["SKY_DEPTH", "Camera", "random_camera", "camera_response"]

# Depth given to the sky (metres): far enough that any fog covers it entirely
# and no lamp lights it.
SKY_DEPTH = 1000.0


@dataclass
class Camera:
    """A pinhole camera at height ``mount`` (m) above a flat ground, looking level.

    A ground point at distance ``d`` is seen at row ``horizon + focal * mount / d``
    and a lateral offset ``X`` (m) at column ``vp_x + focal * X / d``.
    """

    height: int
    width: int
    focal: float
    mount: float
    horizon: float
    vp_x: float

    def row_of(self, depth: float) -> float:
        return self.horizon + self.focal * self.mount / depth

    def col_of(self, lateral: float, depth: float) -> float:
        return self.vp_x + self.focal * lateral / depth

    def ground_depth(self) -> np.ndarray:
        """Per-row distance of the ground (SKY_DEPTH at and above the horizon), HxW."""
        below = np.arange(self.height, dtype=np.float64) + 0.5 - self.horizon
        with np.errstate(divide="ignore"):
            d = np.where(below > 0, self.focal * self.mount / np.maximum(below, 1e-9), SKY_DEPTH)
        d = np.minimum(d, SKY_DEPTH).astype(np.float32)
        return np.repeat(d[:, None], self.width, axis=1)

    def min_ground_depth(self) -> float:
        """Nearest distance whose ground contact is still inside the image."""
        return self.focal * self.mount / max(self.height - 1 - self.horizon, 1.0)


def random_camera(rng: np.random.Generator, height: int, width: int) -> Camera:
    # Focal ~1.1x the width is Cityscapes' field of view (2262 px at 2048).
    return Camera(
        height=height,
        width=width,
        focal=width * rng.uniform(0.95, 1.25),
        mount=rng.uniform(1.2, 1.8),
        horizon=height * rng.uniform(0.3, 0.5),
        vp_x=width * rng.uniform(0.35, 0.65),
    )



def camera_response(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure gain and sensor grain, the same in both domains.

    The grain is drawn on 2x2 blocks: it still breaks up the flat colours a
    detector could otherwise key on, at a quarter of the entropy, which keeps
    the PNGs of a set small.
    """
    h, w = img.shape[:2]
    grain = rng.normal(0.0, rng.uniform(1.0, 3.0), ((h + 1) // 2, (w + 1) // 2, 3)).astype(np.float32)
    grain = np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)[:h, :w]
    out = img.astype(np.float32) * np.float32(rng.uniform(0.85, 1.1)) + grain
    return np.rint(np.minimum(np.maximum(out, 0), 255)).astype(np.uint8)
