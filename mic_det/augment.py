"""Colour jitter and Gaussian blur of the masked (student) view, on torchvision's tensor ops.

Works on the *normalized, padded* batch that Detectron2 feeds its backbone
(``ImageList.tensor``), before the block mask is applied, as in the reference
(lhoyer/MIC, ``det/maskrcnn_benchmark/modeling/masking.py``: colour jitter,
then blur, then mask). Each image is cut out of its padding, taken back to
RGB in [0, 1] (honouring ``INPUT.FORMAT``), jittered, renormalized, blurred,
and written back; padding is never read or written.

The RGB image is clamped to [0, 1] before the colour operations and after each
one. Undoing the normalization of a black (or white) pixel gives a value a
hair outside [0, 1] whenever ``PIXEL_STD`` is not 1, and torchvision's
rgb -> hsv conversion (``adjust_hue``) turns a pixel whose largest channel is
0 and smallest below 0 into NaN. On pixels inside the range the clamps change
nothing, so the operations are torchvision's own; values far outside it (a
batch that is not a normalized 0..255 image) are jittered as the nearest
colour in range.

What the reference does, and where this differs (on purpose):

* On/off: the reference applies colour jitter when ``U > p`` with ``p = 0.2``
  and blur when ``U > 0.5``, ``U ~ U[0, 1]`` -- its ``p`` is the probability
  of *not* jittering -- but draws ``U`` once, when the run starts, so a run
  jitters always or never. Here ``color_jitter_prob`` / ``blur_prob`` are the
  probabilities of *applying*, drawn per image and per call (0.8 / 0.5 match
  the reference's rates).
* Colour jitter: kornia 0.5.8's ``ColorJitter(s, s, s, s)`` with ``s = 0.2``,
  factors per image, the four operations in a random order. Its brightness
  adds U[-s, s] and its contrast multiplies by U[1-s, 1+s]; torchvision's
  (PIL's) brightness multiplies by U[1-s, 1+s] and its contrast blends with the
  image's mean gray -- the form kornia itself adopted from 0.6 on. Saturation
  U[1-s, 1+s] and hue U[-s, s] of a turn are the same in both. The order is
  drawn per image here (per batch there). The reference also denormalizes to
  0..255 BGR (its ``denorm`` lacks the ``/ 255`` of the segmentation code) and
  kornia clamps to [0, 1], which leaves a near-black image; here the jitter
  runs on RGB in [0, 1].
* Blur: sigma ~ U[0.15, 1.15] (per call there, per image here), kernel size
  the largest odd number <= ceil(0.1 * side) per axis (of the padded batch
  there, of the image here), reflect border, on normalized values (the same as
  blurring pixels: the kernel sums to 1). Run as two 1-D passes, which equals
  the 2-D kernel with reflect padding and costs kx + ky instead of kx * ky.

Every random number is drawn on the images' device; their values are read
back once per call (the torchvision ops take Python floats).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torchvision.transforms.v2 import functional as TF

__all__ = ["MaskAugmentation", "BLUR_SIGMA_RANGE", "blur_kernel_size"]

# Sigma range of the Gaussian blur, as in the MIC reference code.
BLUR_SIGMA_RANGE = (0.15, 1.15)

# Colour operations in the order of the factors drawn for them.
_COLOR_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def blur_kernel_size(length: int) -> int:
    """The reference's blur kernel size along a side of ``length`` pixels.

    The largest odd integer <= ceil(0.1 * length) (1, i.e. no blur, below 21 pixels).
    """
    k = math.ceil(0.1 * int(length))
    return max(1, k if k % 2 == 1 else k - 1)


class MaskAugmentation:
    """Colour jitter and Gaussian blur for the masked (student) view.

    Args:
        pixel_mean, pixel_std: the model's normalization (``MODEL.PIXEL_MEAN/STD``),
            in the channel order of ``input_format``, on a 0..255 scale.
        color_jitter_prob: probability that an image is colour-jittered at a call.
        color_jitter_strength: s; brightness, contrast, saturation factors
            ~ U[1-s, 1+s], hue shift ~ U[-s, s] of a turn. At most 0.5 (the
            largest hue shift torchvision takes).
        blur_prob: probability that an image is blurred at a call.
        input_format: "BGR" or "RGB" (``INPUT.FORMAT``).
    """

    _FORMATS = {"BGR": [2, 1, 0], "RGB": [0, 1, 2]}

    def __init__(
        self,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        color_jitter_prob: float = 0.8,
        color_jitter_strength: float = 0.2,
        blur_prob: float = 0.5,
        input_format: str = "BGR",
    ):
        mean = torch.as_tensor(pixel_mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(pixel_std, dtype=torch.float32).flatten()
        if mean.numel() != 3 or std.numel() != 3:
            raise ValueError(
                "pixel_mean and pixel_std need 3 values (colour images), "
                f"got {mean.numel()} and {std.numel()}"
            )
        if not bool((std > 0).all()):
            raise ValueError(f"pixel_std must be positive, got {std.tolist()}")
        for name, p in (("color_jitter_prob", color_jitter_prob), ("blur_prob", blur_prob)):
            if not (0.0 <= float(p) <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {p!r}")
        if not (0.0 <= float(color_jitter_strength) <= 0.5):
            raise ValueError(
                "color_jitter_strength must be in [0, 0.5] (hue shifts of U[-s, s] turns), "
                f"got {color_jitter_strength!r}"
            )
        if input_format not in self._FORMATS:
            raise ValueError(
                f"MaskAugmentation supports input_format in {sorted(self._FORMATS)}, got {input_format!r}"
            )
        self.pixel_mean = mean
        self.pixel_std = std
        self.color_jitter_prob = float(color_jitter_prob)
        self.color_jitter_strength = float(color_jitter_strength)
        self.blur_prob = float(blur_prob)
        self.input_format = input_format
        self._to_rgb = self._FORMATS[input_format]  # a channel swap or the identity: its own inverse
        self._stats_cache: Dict[Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg) -> "MaskAugmentation":
        """Build from ``cfg.MIC.MASK_AUG`` and the model's pixel statistics / input format."""
        aug = cfg.MIC.MASK_AUG
        return cls(
            cfg.MODEL.PIXEL_MEAN,
            cfg.MODEL.PIXEL_STD,
            color_jitter_prob=aug.COLOR_JITTER_PROB,
            color_jitter_strength=aug.COLOR_JITTER_STRENGTH,
            blur_prob=aug.BLUR_PROB,
            input_format=cfg.INPUT.FORMAT,
        )

    def __call__(
        self,
        images: torch.Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Return an augmented copy of the normalized padded batch ``images`` (B, 3, H, W).

        Args:
            images: ``ImageList.tensor``; it is not modified.
            image_sizes: (h, w) of each image before padding (``ImageList.image_sizes``).
            generator: optional RNG on the images' device, for reproducible draws.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"MaskAugmentation needs a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
        n, _, height, width = images.shape
        if len(image_sizes) != n:
            raise ValueError(f"Got {len(image_sizes)} image sizes for a batch of {n} images")
        for i, (h, w) in enumerate(image_sizes):
            if not (0 <= int(h) <= height and 0 <= int(w) <= width):
                raise ValueError(f"image_sizes[{i}] = {(h, w)} does not fit in the padded batch {(height, width)}")
        out = images.clone()  # the caller may modify the result in place
        if n == 0 or (self.color_jitter_prob == 0.0 and self.blur_prob == 0.0):
            return out
        for i, draw in enumerate(self._draw(n, images.device, generator)):
            h, w = int(image_sizes[i][0]), int(image_sizes[i][1])
            if h > 0 and w > 0 and (draw["jitter"] or draw["blur"]):
                out[i, :, :h, :w] = self._augment(images[i, :, :h, :w], draw)
        return out

    # ---------------------------------------------------------------- internals
    def _draw(self, n: int, device: torch.device, generator: Optional[torch.Generator]) -> List[dict]:
        """Per image: on/off of each operation and its parameters.

        All of it is drawn for every image, on or off, so a seeded run makes the
        same number of draws whatever comes up; one host read for the batch.
        """
        s = self.color_jitter_strength
        u = torch.rand((n, 10), device=device, generator=generator).tolist()
        draws = []
        for row in u:
            order = sorted(range(4), key=lambda k: row[6 + k])  # a random permutation
            draws.append(
                {
                    "jitter": row[0] < self.color_jitter_prob,
                    "blur": row[1] < self.blur_prob,
                    "factors": [1.0 - s + 2.0 * s * row[2], 1.0 - s + 2.0 * s * row[3],
                                1.0 - s + 2.0 * s * row[4], s * (2.0 * row[5] - 1.0)],
                    "order": order,
                    "sigma": BLUR_SIGMA_RANGE[0] + (BLUR_SIGMA_RANGE[1] - BLUR_SIGMA_RANGE[0]) * row[9],
                }
            )
        return draws

    def _stats(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pixel mean/std as (3, 1, 1) float32 on ``device`` (copied there once, then cached)."""
        key = (device, torch.float32)
        if key not in self._stats_cache:
            self._stats_cache[key] = (
                self.pixel_mean.to(device).view(3, 1, 1),
                self.pixel_std.to(device).view(3, 1, 1),
            )
        return self._stats_cache[key]

    def _augment(self, image: torch.Tensor, draw: dict) -> torch.Tensor:
        """One unpadded normalized image (3, h, w): jitter in RGB [0, 1] space, then blur."""
        x = image.float()
        if draw["jitter"]:
            mean, std = self._stats(x.device)
            # Clamped: the round trip through the normalization leaves black a hair
            # below 0 (white a hair above 1), where rgb -> hsv divides by zero.
            rgb = ((x * std + mean) / 255.0)[self._to_rgb].clamp_(0.0, 1.0)
            for k in draw["order"]:
                rgb = _COLOR_OPS[k](rgb, draw["factors"][k]).clamp_(0.0, 1.0)
            x = (rgb[self._to_rgb] * 255.0 - mean) / std
        if draw["blur"]:
            sigma = [draw["sigma"], draw["sigma"]]
            kx, ky = blur_kernel_size(x.shape[-1]), blur_kernel_size(x.shape[-2])
            if kx > 1:
                x = TF.gaussian_blur(x, [kx, 1], sigma)
            if ky > 1:
                x = TF.gaussian_blur(x, [1, ky], sigma)
        return x.to(image.dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(color_jitter_prob={self.color_jitter_prob}, "
            f"color_jitter_strength={self.color_jitter_strength}, blur_prob={self.blur_prob}, "
            f"input_format={self.input_format!r})"
        )
