"""Block masks of the masked view (the "M" in MIC); its colour/blur augmentation is in
:mod:`mic_det.augment`.

All of this works on the *normalized, padded* batch that Detectron2 feeds its
backbone (``ImageList.tensor``), because that is the tensor the student sees:

* a hidden pixel is set to 0, which in normalized space is the dataset mean
  colour -- the reference code masks after normalization, so hidden regions
  look like "average image", not black;
* padding (everything outside ``image_sizes[i]``) is never touched, so the
  masked batch pads exactly like the unmasked one;
* every mask is drawn on the images' device, per image and per call.

Shape shorthand: B images, C channels, H x W padded size.
"""

import math
import operator
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "BlockMaskGenerator",
    "apply_block_mask",
    "mask_ratio_drawn",
    "valid_region_mask",
]

Device = Union[str, torch.device]


# ----------------------------------------------------------------------------- masks
def _is_int(value) -> bool:
    """True for Python/numpy integers (not bools, not floats like 32.0)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


class BlockMaskGenerator:
    """Random block masks: about a fraction ``ratio`` of ``block_size`` squares hidden.

    The grid is anchored at pixel (0, 0) of the padded batch, i.e. at the top-left
    corner of every image (Detectron2 pads right/bottom only), so block boundaries
    fall at multiples of ``block_size`` in network-input pixels; blocks cut by the
    right/bottom edge are kept partial.
    """

    def __init__(self, block_size: int, ratio: float):
        if not _is_int(block_size) or block_size < 1:
            raise ValueError(f"block_size (MIC.MASK_BLOCK_SIZE) must be an int >= 1, got {block_size!r}")
        if not (0.0 <= float(ratio) < 1.0):
            raise ValueError(
                f"ratio (MIC.MASK_RATIO) must be in [0, 1) (the expected fraction of hidden blocks), got {ratio!r}"
            )
        self.block_size = int(block_size)
        self.ratio = float(ratio)

    @classmethod
    def from_config(cls, cfg) -> "BlockMaskGenerator":
        """Build from ``cfg.MIC.MASK_BLOCK_SIZE`` and ``cfg.MIC.MASK_RATIO``."""
        return cls(cfg.MIC.MASK_BLOCK_SIZE, cfg.MIC.MASK_RATIO)

    def __call__(
        self,
        batch_size: int,
        height: int,
        width: int,
        device: Device,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Draw a fresh mask for each of ``batch_size`` images.

        Args:
            batch_size, height, width: shape of the (padded) batch to mask.
            device: where the mask is created; nothing is built on the host.
            generator: optional RNG (it must live on ``device``) for reproducible draws.

        Returns:
            Tensor of shape (B, 1, H, W), float32, 1 = visible and 0 = hidden.
        """
        for name, value, low in (
            ("batch_size", batch_size, 0),
            ("height", height, 1),
            ("width", width, 1),
        ):
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        batch_size, height, width = int(batch_size), int(height), int(width)
        b = self.block_size
        grid_h, grid_w = math.ceil(height / b), math.ceil(width / b)
        # 1 - U[0, 1) is U(0, 1]: v > ratio then holds with probability exactly
        # 1 - ratio, and ratio == 0 can never hide a block (torch.rand can return 0).
        v = 1.0 - torch.rand((batch_size, 1, grid_h, grid_w), device=device, generator=generator)
        keep = (v > self.ratio).to(torch.float32)
        keep = keep.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)
        return keep[:, :, :height, :width].contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_size={self.block_size}, ratio={self.ratio})"


def valid_region_mask(
    image_sizes: Sequence[Tuple[int, int]], batch_shape: Sequence[int], device: Device
) -> torch.Tensor:
    """Bool (B, 1, H, W) tensor, True inside each image and False on its padding.

    Built by slicing on ``device`` rather than from a host tensor, so it costs no
    host->device copy.
    """
    n, _, height, width = batch_shape
    if len(image_sizes) != n:
        raise ValueError(f"Got {len(image_sizes)} image sizes for a batch of {n} images")
    valid = torch.zeros((n, 1, height, width), dtype=torch.bool, device=device)
    for i, (h, w) in enumerate(image_sizes):
        h, w = int(h), int(w)
        if not (0 <= h <= height and 0 <= w <= width):
            raise ValueError(
                f"image_sizes[{i}] = {(h, w)} does not fit in the padded batch "
                f"of size {(height, width)}"
            )
        valid[i, :, :h, :w] = True
    return valid


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"Expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")


def apply_block_mask(
    images: torch.Tensor, mask: torch.Tensor, image_sizes: Sequence[Tuple[int, int]]
) -> torch.Tensor:
    """Hide the masked pixels of a normalized padded batch; return a new tensor.

    Args:
        images: (B, C, H, W) normalized batch (``ImageList.tensor``); 0 == mean colour.
        mask: (B, 1, H, W) with 1 = visible, 0 = hidden (from :class:`BlockMaskGenerator`).
        image_sizes: (h, w) of each image before padding (``ImageList.image_sizes``).

    Hidden pixels become exactly 0 (the dataset mean colour after denormalization);
    padding keeps its value whatever the mask says, so the student sees padding
    identical to an unmasked batch.
    """
    _check_batch(images)
    b, _, h, w = images.shape
    if mask.shape != (b, 1, h, w):
        raise ValueError(f"mask must have shape {(b, 1, h, w)}, got {tuple(mask.shape)}")
    valid = valid_region_mask(image_sizes, images.shape, images.device)
    hidden = valid & (mask.to(images.device) <= 0.5)
    # torch.where instead of a product: exact zeros, and no NaN/inf leaking through 0 * x.
    return torch.where(hidden, torch.zeros((), dtype=images.dtype, device=images.device), images)


def mask_ratio_drawn(mask: torch.Tensor, image_sizes: Sequence[Tuple[int, int]]) -> float:
    """Fraction of hidden pixels inside the images (padding excluded), for logging.

    The drawn ratio differs from ``ratio`` because of the finite number of blocks
    and the partial blocks at the edges; logging it shows what the student got.
    """
    _check_batch(mask)
    valid = valid_region_mask(image_sizes, mask.shape, mask.device)
    num_valid = valid.sum()
    if int(num_valid) == 0:
        return 0.0
    hidden = (valid & (mask <= 0.5)).sum()
    return float(hidden) / float(num_valid)

