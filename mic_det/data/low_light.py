"""A night model: dim ambient light, lamps near the camera, a camera at high gain.

Where fog (:mod:`mic_det.data.fog`) *adds* light that hides far objects, night
*takes light away* and lets the sensor's noise hide them. A street at night,
seen by a camera that has raised its exposure and gain as far as it can, is

    E(x) = exposure + lamp_gain * lamp_colour / (1 + (d(x) / lamp_distance)^2)
    S(x) = blur(R(x) * E(x))
    I(x) = S(x) + n(x),        n(x) ~ N(0, shot_noise * S(x) + read_noise^2)

per pixel ``x`` and channel. ``R`` is the daylight image, read as the scene's
radiance (in the 0-255 units of the image, which, like the fog model, treats
pixel values as linear in light; the generator paints in those units), ``d``
the distance in metres, ``E`` the light falling on the scene relative to
daylight, ``S`` the signal on the sensor and ``n`` its noise. The defaults,
and why (their measured cost to a detector is in
:mod:`mic_det.data.synthetic.shifts`):

* ``exposure = 0.25``: what is left of the sky's light (moon, sky glow, far
  city lights) once the camera has made its longest exposure at its highest
  gain: the whole scene, near and far, at a quarter of its daylight level.
  Lower values (0.12-0.15) made far objects all but black; without the lamps
  (exposure alone) a daylight detector lost 80% of its AP50, too much to adapt.
* ``lamp_gain = 0.8``, ``lamp_distance = 12`` m: the light of the camera's own
  surroundings (headlights, the nearest street lamps). It falls off with the
  inverse square of the distance beyond ``lamp_distance``, where it is half
  as strong, and stays finite at the camera: at 3 m the scene gets ~1.0 of
  daylight, at the median object distance (13 m) ~0.62, beyond 40 m ~0.3
  (ambient only). So, as in fog, near objects stay plain and far, small ones
  fade, but by a different mechanism (little light and much noise instead of
  contrast lost to airlight), which is the point of a second shift.
* ``lamp_colour = (1.0, 0.78, 0.5)`` (RGB): the orange cast of high-pressure
  sodium lamps (~2000 K), partly corrected by the camera's white balance.
* ``shot_noise = 1.0``, ``read_noise = 3.0`` (image units): the
  Poisson-Gaussian model of a raw sensor (Foi et al., IEEE TIP 2008) in its
  usual Gaussian form. Shot noise, whose variance grows with the signal, has
  variance ``shot_noise * S``: the gain of a camera at high ISO, one image
  unit per photo-electron; read noise is there even in the dark. A dark far
  object at S ~ 20 gets noise of std ~5, against daylight grain of 1-3. It is
  drawn per channel on 2x2 blocks: demosaicing spreads a photosite's noise
  over its neighbours, and block noise keeps PNGs small.
* ``blur_sigma = 0.7`` px: a wide-open aperture and a long exposure soften
  the image slightly. Applied to the light before the sensor, so the noise
  stays sharp, as in real night frames.

All of it is pure numpy (+ cv2 for the blur), deterministic given ``rng``.
"""
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = ["LowLight", "illumination", "noise_std", "apply_low_light"]


@dataclass(frozen=True)
class LowLight:
    """The night model's parameters; the defaults (the built-in night domain's) are explained above."""

    exposure: float = 0.25
    lamp_gain: float = 0.8
    lamp_distance: float = 12.0
    lamp_colour: Tuple[float, float, float] = (1.0, 0.78, 0.5)
    shot_noise: float = 1.0
    read_noise: float = 3.0
    blur_sigma: float = 0.7

    def __post_init__(self):
        colour = tuple(float(c) for c in np.asarray(self.lamp_colour, dtype=np.float64).reshape(-1))
        if len(colour) == 1:
            colour = colour * 3
        object.__setattr__(self, "lamp_colour", colour)
        if len(colour) != 3 or min(colour) < 0:
            raise ValueError(f"lamp_colour must be one or three values >= 0, got {self.lamp_colour!r}")
        for name in ("exposure", "lamp_gain", "shot_noise", "read_noise", "blur_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lamp_distance <= 0:
            raise ValueError(f"lamp_distance is a distance in metres and must be > 0, got {self.lamp_distance}")

    def as_dict(self) -> dict:
        """Plain floats and lists (for info files); ``LowLight(**d)`` reads it back."""
        d = asdict(self)
        d["lamp_colour"] = list(self.lamp_colour)
        return {k: (float(v) if not isinstance(v, list) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "LowLight":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def illumination(depth: np.ndarray, night: LowLight = LowLight()) -> np.ndarray:
    """``E``: light on the scene relative to daylight, HxWx3 float32, from an HxW depth map.

    The lamp light is ``lamp_gain`` at the camera, half of it at
    ``lamp_distance`` and falls as ``1 / d^2`` beyond; depth may be ``inf``.
    """
    d = np.maximum(np.asarray(depth, dtype=np.float32), 0.0)
    falloff = 1.0 / (1.0 + np.square(d / np.float32(night.lamp_distance)))
    lamp = np.float32(night.lamp_gain) * np.asarray(night.lamp_colour, np.float32)
    return (np.float32(night.exposure) + falloff[..., None] * lamp).astype(np.float32)


def noise_std(signal: np.ndarray, night: LowLight = LowLight()) -> np.ndarray:
    """Standard deviation of the sensor noise at ``signal`` (image units): sqrt(a S + b^2)."""
    s = np.maximum(np.asarray(signal, dtype=np.float32), 0.0)
    return np.sqrt(np.float32(night.shot_noise) * s + np.float32(night.read_noise) ** 2)


def _block_normal(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    z = rng.standard_normal(((h + 1) // 2, (w + 1) // 2, c), dtype=np.float32)
    return np.repeat(np.repeat(z, 2, axis=0), 2, axis=1)[:h, :w]


def apply_low_light(
    image: np.ndarray,
    depth: np.ndarray,
    night: LowLight = LowLight(),
    rng: Union[np.random.Generator, int, Sequence[int], None] = None,
) -> np.ndarray:
    """Turn a daylight image into the same scene at night.

    Args:
        image: uint8 HxWx3 daylight image. ``lamp_colour`` is in its channel
            order (RGB for the generator; reverse it for a BGR image).
        depth: HxW distance map in metres (``inf`` allowed, e.g. sky).
        night: the model's parameters.
        rng: the noise's random stream (a Generator, or a seed for one). The
            same stream gives the same image.

    Returns:
        uint8 HxWx3 night image, rounded to nearest.
    """
    image = np.asarray(image)
    depth = np.asarray(depth)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.shape != image.shape[:2]:
        raise ValueError(f"depth map shape {depth.shape} does not match image shape {image.shape[:2]}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    signal = image.astype(np.float32) * illumination(depth, night)
    if night.blur_sigma > 0:
        signal = cv2.GaussianBlur(signal, (0, 0), night.blur_sigma, borderType=cv2.BORDER_REFLECT)
    h, w, c = signal.shape
    out = signal + _block_normal(rng, h, w, c) * noise_std(signal, night)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def describe(night: Optional[LowLight]) -> str:
    """One line for logs: the parameters that matter."""
    if night is None:
        return "no night"
    return (f"exposure {night.exposure:g}, lamps {night.lamp_gain:g} at {night.lamp_distance:g} m "
            f"colour {tuple(round(c, 3) for c in night.lamp_colour)}, noise shot {night.shot_noise:g} "
            f"read {night.read_noise:g}, blur {night.blur_sigma:g} px")
