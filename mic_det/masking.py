"""Block masks and the augmentation of the masked view (the "M" in MIC).

All of this works on the *normalized, padded* batch that Detectron2 feeds its
backbone (``ImageList.tensor``), because that is the tensor the student sees:

* a hidden pixel is set to 0, which in normalized space is the dataset mean
  colour -- the reference code masks after normalization, so hidden regions
  look like "average image", not black;
* padding (everything outside ``image_sizes[i]``) is never touched, so the
  masked batch pads exactly like the unmasked one;
* every random draw happens on the images' device, per image and per call.

Shape shorthand: B images, C channels, H x W padded size.
"""

import math
import operator
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch.nn import functional as F

__all__ = [
    "BlockMaskGenerator",
    "apply_block_mask",
    "mask_ratio_drawn",
    "MaskAugmentation",
    "valid_region_mask",
    "jitter_rgb",
    "gaussian_kernels",
    "masked_gaussian_blur",
]

Device = Union[str, torch.device]

# Sigma range of the Gaussian blur, as in the MIC / DAFormer reference code.
BLUR_SIGMA_RANGE = (0.15, 1.15)
# ITU-R 601 luma weights (R, G, B), the grayscale used by common colour jitters.
_LUMA_RGB = (0.299, 0.587, 0.114)


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
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        if not (0.0 <= float(ratio) < 1.0):
            raise ValueError(
                f"ratio must be in [0, 1) (the expected fraction of hidden blocks), got {ratio!r}"
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


# ----------------------------------------------------------------------- augmentation
class MaskAugmentation:
    """Colour jitter and Gaussian blur for the masked (student) view.

    Applied to the normalized batch *before* masking, as in the reference. Every
    on/off decision and every factor is drawn afresh per image and per call (the
    reference drew the jitter on/off once per run, so a run either always or never
    jittered). Colour jitter happens in pixel space ([0, 255] -> scaled to [0, 1]),
    because brightness/contrast/saturation/hue and their clamping are defined there,
    not on mean-subtracted values. Padding is left as it was.

    Jitter order is fixed (brightness, contrast, saturation, hue); the factors are
    brightness/contrast/saturation ~ U[1-s, 1+s], hue shift ~ U[-s/4, s/4] of a
    full turn. Blur: sigma ~ U[0.15, 1.15], odd kernel of radius ceil(3 sigma),
    renormalized at the image border so padding never bleeds in. Only the images
    drawn "on" are computed, which costs one device->host sync per operation.
    """

    _FORMATS = {"BGR": (2, 1, 0), "RGB": (0, 1, 2)}

    def __init__(
        self,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        color_jitter_prob: float = 0.2,
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
        if not (0.0 <= float(color_jitter_strength) <= 1.0):
            raise ValueError(
                f"color_jitter_strength must be in [0, 1] (factors U[1-s, 1+s] must stay >= 0), "
                f"got {color_jitter_strength!r}"
            )
        if input_format not in self._FORMATS:
            raise ValueError(
                f"MaskAugmentation supports input_format in {sorted(self._FORMATS)}, "
                f"got {input_format!r}"
            )
        self.pixel_mean = mean
        self.pixel_std = std
        self.color_jitter_prob = float(color_jitter_prob)
        self.color_jitter_strength = float(color_jitter_strength)
        self.blur_prob = float(blur_prob)
        self.input_format = input_format
        self._rgb_index = self._FORMATS[input_format]
        self._stats_cache: Dict[
            Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]
        ] = {}

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
        """Return an augmented copy of the normalized batch ``images`` (B, 3, H, W)."""
        _check_batch(images)
        if images.shape[1] != 3:
            raise ValueError(f"MaskAugmentation needs 3-channel images, got {images.shape[1]}")
        if self.color_jitter_prob == 0.0 and self.blur_prob == 0.0:
            return images.clone()  # the caller may modify the result in place
        valid = valid_region_mask(image_sizes, images.shape, images.device)
        out = images
        if self.color_jitter_prob > 0.0:
            out = self._color_jitter(out, valid, generator)
        if self.blur_prob > 0.0:
            out = self._blur(out, valid, generator)
        return out

    # ---------------------------------------------------------------- internals
    def _draw(
        self, n: int, device: torch.device, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        """n values of U[0, 1), one per image, on ``device``."""
        return torch.rand((n,), device=device, generator=generator)

    def _stats(self, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pixel mean/std as (1, 3, 1, 1) on ``device`` (copied there once, then cached)."""
        key = (device, dtype)
        if key not in self._stats_cache:
            self._stats_cache[key] = (
                self.pixel_mean.to(device=device, dtype=dtype).view(1, 3, 1, 1),
                self.pixel_std.to(device=device, dtype=dtype).view(1, 3, 1, 1),
            )
        return self._stats_cache[key]

    def _color_jitter(
        self, images: torch.Tensor, valid: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        n, device = images.shape[0], images.device
        s = self.color_jitter_strength
        # Every factor is drawn for every image, jittered or not, so the number of
        # RNG draws per call is fixed and seeded runs stay reproducible.
        on = self._draw(n, device, generator) < self.color_jitter_prob
        factors = [1.0 - s + 2.0 * s * self._draw(n, device, generator) for _ in range(3)]
        hue = (s / 4.0) * (2.0 * self._draw(n, device, generator) - 1.0)

        def jitter(sub: torch.Tensor, sub_valid: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            work = sub.float()
            mean, std = self._stats(device, work.dtype)
            order = list(self._rgb_index)  # a channel swap (or identity): its own inverse
            rgb = (work * std + mean)[:, order] / 255.0
            rgb = jitter_rgb(rgb, *(f[idx] for f in factors), hue[idx], sub_valid)
            return ((rgb[:, order] * 255.0 - mean) / std).to(sub.dtype)

        return _apply_to_selected(images, valid, on, jitter)

    def _blur(
        self, images: torch.Tensor, valid: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        n, device = images.shape[0], images.device
        on = self._draw(n, device, generator) < self.blur_prob
        low, high = BLUR_SIGMA_RANGE
        sigma = low + (high - low) * self._draw(n, device, generator)

        def blur(sub: torch.Tensor, sub_valid: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return masked_gaussian_blur(sub.float(), sigma[idx], sub_valid).to(sub.dtype)

        return _apply_to_selected(images, valid, on, blur)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(color_jitter_prob={self.color_jitter_prob}, "
            f"color_jitter_strength={self.color_jitter_strength}, blur_prob={self.blur_prob}, "
            f"input_format={self.input_format!r})"
        )


def _apply_to_selected(
    images: torch.Tensor, valid: torch.Tensor, on: torch.Tensor, op
) -> torch.Tensor:
    """Copy ``images``, replacing the valid area of each image drawn ``on`` by ``op``'s result.

    Only the selected images are computed (most are not, at the default
    probabilities), at the price of one device->host sync to learn which ones.
    ``op(sub_images, sub_valid, indices)`` gets the selected images and their indices.
    """
    idx = on.nonzero().squeeze(1)
    out = images.clone()
    if idx.numel() == 0:
        return out
    sub, sub_valid = images.index_select(0, idx), valid.index_select(0, idx)
    out[idx] = torch.where(sub_valid, op(sub, sub_valid, idx), sub)
    return out


# ------------------------------------------------------------------ pixel operations
def _per_image(x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) so per-image factors broadcast over a batch."""
    return x.view(-1, 1, 1, 1)


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(dim=1)
    wr, wg, wb = _LUMA_RGB
    return (wr * r + wg * g + wb * b).unsqueeze(1)


def _blend(x: torch.Tensor, anchor: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """anchor + factor * (x - anchor), clamped to the valid colour range [0, 1]."""
    return (anchor + _per_image(factor) * (x - anchor)).clamp_(0.0, 1.0)


def _shift_hue(rgb: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB colours in [0, 1] by ``shift`` turns, per image.

    Value and saturation are preserved; only the hue angle moves.
    """
    r, g, b = rgb.unbind(dim=1)
    value, _ = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # Hue in sextants [0, 6): which channel is the max decides the sextant.
    hue6 = torch.where(
        value == r,
        torch.remainder((g - b) / safe_chroma, 6.0),
        torch.where(value == g, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0),
    )
    hue6 = torch.remainder(hue6 + 6.0 * shift.view(-1, 1, 1), 6.0)
    # HSV -> RGB: channel n is value - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + hue6) mod 6.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + hue6, 6.0)
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=1)


def jitter_rgb(
    rgb: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Colour-jitter RGB images in [0, 1] with per-image factors (each of shape (B,)).

    Brightness scales, contrast blends with the image's mean gray level (over its
    valid area only, so padding does not shift it), saturation blends with the
    per-pixel gray, hue rotates. Factors of 1 and a hue of 0 leave the image as is.
    """
    out = (rgb * _per_image(brightness)).clamp(0.0, 1.0)
    area = valid.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    mean_gray = (_gray(out) * valid).sum(dim=(1, 2, 3), keepdim=True) / area
    out = _blend(out, mean_gray, contrast)
    out = _blend(out, _gray(out), saturation)
    return _shift_hue(out, hue)


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """1-D Gaussian kernels, one per sigma (shape (B,)), as a (B, K) tensor.

    Each kernel has odd support 2 * ceil(3 sigma) + 1 and sums to 1; they share the
    width K of the widest possible one (taps beyond a kernel's own radius are 0) so
    a whole batch blurs with one grouped convolution per direction.
    """
    max_radius = math.ceil(3.0 * BLUR_SIGMA_RANGE[1])
    offsets = torch.arange(-max_radius, max_radius + 1, device=sigma.device, dtype=sigma.dtype)
    sigma = sigma.view(-1, 1)
    radius = torch.ceil(3.0 * sigma)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2) * (offsets.abs() <= radius)
    return weights / weights.sum(dim=1, keepdim=True)


def masked_gaussian_blur(
    images: torch.Tensor, sigma: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Blur each image with its own sigma, using only pixels inside its valid area.

    Normalized convolution: blur(x * valid) / blur(valid). Near the image border
    the kernel is renormalized over the in-image taps, so padding (whatever value
    it holds) never bleeds into the image. Values outside ``valid`` are meaningless.
    """
    n, c, h, w = images.shape
    kernels = gaussian_kernels(sigma.to(images.dtype))  # (B, K)
    k = kernels.shape[1]
    validf = valid.to(images.dtype)
    inside = torch.where(valid, images, torch.zeros((), dtype=images.dtype, device=images.device))
    stacked = torch.cat([inside, validf], dim=1)  # (B, C + 1, H, W)
    groups = n * (c + 1)
    weight = kernels.repeat_interleave(c + 1, dim=0)  # (B * (C + 1), K)
    x = stacked.reshape(1, groups, h, w)
    x = F.conv2d(x, weight.view(groups, 1, 1, k), padding=(0, k // 2), groups=groups)
    x = F.conv2d(x, weight.view(groups, 1, k, 1), padding=(k // 2, 0), groups=groups)
    x = x.view(n, c + 1, h, w)
    blurred, norm = x[:, :c], x[:, c:]
    return blurred / norm.clamp(min=1e-6)
