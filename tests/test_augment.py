"""Colour jitter and blur of the masked view (mic_det/augment.py).

Statistical checks use seeded generators (deterministic, never flaky) and bounds
of 4 binomial standard deviations, so a probability read the reference's way
round (p = probability of *not* applying), or one draw shared by the batch or
by the run, fails them.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from torchvision.transforms.v2 import functional as TF

from mic_det.augment import BLUR_SIGMA_RANGE, MaskAugmentation, blur_kernel_size
from mic_det.config import add_mic_config

from .test_masking import (
    PIXEL_MEAN,
    PIXEL_STD,
    SENTINEL,
    _binomial_bound,
    _denormalize,
    _gen,
    _normalize,
    _padded_batch,
    _padding,
)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(color_jitter_prob=-0.1),
        dict(blur_prob=1.5),
        dict(color_jitter_strength=0.6),  # hue shifts beyond half a turn
        dict(input_format="L"),
        dict(pixel_std=[1.0, 0.0, 1.0]),
        dict(pixel_mean=[0.0]),
    ],
)
def test_rejects_bad_arguments(kwargs):
    args = dict(pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    args.update(kwargs)
    with pytest.raises(ValueError):
        MaskAugmentation(**args)


def test_rejects_sizes_that_do_not_fit():
    aug = MaskAugmentation(PIXEL_MEAN, PIXEL_STD)
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 3, 8, 8), [(8, 8)])
    with pytest.raises(ValueError):
        aug(torch.zeros(1, 3, 8, 8), [(9, 8)])
    with pytest.raises(ValueError):
        aug(torch.zeros(1, 1, 8, 8), [(8, 8)])


def test_zero_probabilities_are_the_identity():
    sizes = [(20, 30), (12, 9)]
    images = _padded_batch(sizes, 20, 30)
    out = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, color_jitter_prob=0.0, blur_prob=0.0)(images, sizes)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("jitter, blur", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_changes_every_image_and_leaves_padding(jitter, blur):
    # Sides >= 21 pixels, so the reference's kernel (0.1 x side) is wider than 1.
    sizes = [(40, 50), (30, 25), (40, 36)]
    images = _padded_batch(sizes, 40, 50)
    before = images.clone()
    out = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, jitter, 0.4, blur)(images, sizes, generator=_gen(9))
    assert torch.equal(images, before), "the input batch was modified"
    assert bool(torch.isfinite(out).all())
    for i, (h, w) in enumerate(sizes):
        assert not torch.allclose(out[i, :, :h, :w], images[i, :, :h, :w], atol=1e-3)
    assert bool((_padding(out, sizes) == SENTINEL).all())


def test_jitter_is_done_in_pixel_space():
    # White images: brightness scales and clamps at 255; contrast, saturation and
    # hue cannot tint a uniform gray. Jittering normalized (or 0..255, as the
    # reference does) values instead would exceed 255 or blacken the image.
    n = 32
    images = _normalize(torch.full((n, 3, 6, 7), 255.0))
    aug = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 1.0, 0.5, 0.0)
    pixels = _denormalize(aug(images, [(6, 7)] * n, generator=_gen(10)))
    assert float(pixels.max()) <= 255.0 + 1e-3
    torch.testing.assert_close(pixels[:, :1].expand_as(pixels), pixels, atol=1e-3, rtol=0)
    darkened = (pixels[:, 0, 0, 0] < 254.0).sum().item()
    assert 0 < darkened < n  # brightness factor ~ U[0.5, 1.5]: about half below 1
    assert float(pixels.min()) >= 255.0 * 0.5 * 0.5 - 1e-3  # never darker than two factors of 0.5


def test_input_format_is_honoured():
    """A BGR batch and the same colours as RGB come out as the same colours.

    Hue and saturation act on RGB; reading BGR as RGB would rotate the hue of
    red-blue images the wrong way and this would differ.
    """
    sizes = [(16, 16)] * 8
    bgr_pixels = torch.rand(8, 3, 16, 16, generator=_gen(20)) * 255.0
    bgr = (bgr_pixels - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    rgb = bgr.flip(1)
    out_bgr = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 1.0, 0.5, 0.0, "BGR")(bgr, sizes, _gen(21))
    out_rgb = MaskAugmentation(PIXEL_MEAN[::-1], PIXEL_STD[::-1], 1.0, 0.5, 0.0, "RGB")(rgb, sizes, _gen(21))
    torch.testing.assert_close(out_bgr.flip(1), out_rgb, atol=1e-4, rtol=0)
    assert not torch.allclose(out_bgr, bgr, atol=1e-2)


def test_zero_strength_jitter_round_trips():
    sizes = [(10, 12), (7, 12)]
    images = _padded_batch(sizes, 10, 12)
    out = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 1.0, 0.0, 0.0)(images, sizes)
    torch.testing.assert_close(out, images, atol=1e-4, rtol=0)


def test_blur_does_not_pull_in_padding():
    sizes = [(46, 50), (29, 33)]
    images = torch.full((2, 3, 46, 50), SENTINEL)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = 0.7
    out = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 0.0, 0.2, 1.0)(images, sizes, generator=_gen(11))
    for i, (h, w) in enumerate(sizes):
        torch.testing.assert_close(out[i, :, :h, :w], torch.full((3, h, w), 0.7))
    assert bool((_padding(out, sizes) == SENTINEL).all())


def test_blur_smooths_and_keeps_the_mean():
    n = 16
    images = torch.randn(n, 3, 32, 32, generator=_gen(12))
    out = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 0.0, 0.2, 1.0)(images, [(32, 32)] * n, _gen(13))

    def roughness(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))

    # sigma ~ U[0.15, 1.15]: near 0.15 the blur is all but the identity, above ~0.5
    # it clearly smooths; it never roughens and (kernel sums to 1) keeps the mean.
    ratio = roughness(out) / roughness(images)
    assert bool((ratio <= 1.0 + 1e-6).all())
    assert int((ratio < 0.8).sum()) >= n // 2
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=0.05, rtol=0)


@pytest.mark.parametrize(
    "length, size", [(8, 1), (20, 1), (21, 3), (50, 5), (70, 7), (128, 13), (160, 15), (800, 79), (1600, 159)]
)
def test_blur_kernel_size_is_the_references(length, size):
    # The reference: floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2).
    k = math.ceil(0.1 * length)
    assert size == math.floor(k - 0.5 + k % 2)
    assert blur_kernel_size(length) == size


def test_blur_kernel_and_sigma_per_image_from_an_impulse():
    """Impulse responses: support = the reference's kernel of the *image's* sides, sigma in range.

    A 70 x 50 image in a 96 x 96 padded batch: kernel 7 (rows) x 5 (columns),
    not the padded batch's 9 x 9. The centre-to-neighbour ratio of a sampled
    Gaussian is exp(1 / (2 sigma^2)), which gives each image's sigma back.
    """
    n, (h, w) = 32, (70, 50)
    images = torch.zeros(n, 3, 96, 96)
    cy, cx = 35, 25
    images[:, :, cy, cx] = 1.0
    out = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 0.0, 0.2, 1.0)(images, [(h, w)] * n, _gen(22))
    assert bool((out[:, :, h:] == 0).all()) and bool((out[:, :, :, w:] == 0).all())
    rows = (out[:, 0].abs() > 0).any(dim=2).sum(dim=1)  # (n,) extent along the height
    cols = (out[:, 0].abs() > 0).any(dim=1).sum(dim=1)
    assert int(rows.max()) == 7 and int(cols.max()) == 5
    ratio = out[:, 0, cy, cx] / out[:, 0, cy, cx + 1]
    sigma = torch.sqrt(1.0 / (2.0 * torch.log(ratio.double())))
    low, high = BLUR_SIGMA_RANGE
    assert bool((sigma >= low - 1e-3).all()) and bool((sigma <= high + 1e-3).all())
    assert float(sigma.min()) < 0.5 and float(sigma.max()) > 0.8  # drawn per image
    # Separable passes give the 2-D Gaussian: the response is its outer product.
    i = int(sigma.argmax())
    gy = out[i, 0, cy - 3 : cy + 4, cx]
    gx = out[i, 0, cy, cx - 2 : cx + 3]
    torch.testing.assert_close(out[i, 0, cy - 3 : cy + 4, cx - 2 : cx + 3], torch.outer(gy, gx) / gy[3], atol=1e-6, rtol=1e-4)


def test_blur_equals_a_hand_made_gaussian_with_reflect_border():
    """One image, its sigma read back from the impulse test's formula, against F.conv2d."""
    g = _gen(23)
    image = torch.randn(1, 3, 40, 30, generator=g)
    impulse = torch.zeros(1, 3, 40, 30)
    impulse[:, :, 20, 15] = 1.0
    aug = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 0.0, 0.2, 1.0)
    response = aug(impulse, [(40, 30)], _gen(24))[0, 0]
    out = aug(image, [(40, 30)], _gen(24))  # the same draws
    sigma = math.sqrt(1.0 / (2.0 * math.log(float(response[20, 15] / response[20, 16]))))
    ky, kx = blur_kernel_size(40), blur_kernel_size(30)  # 3, 3

    def gauss(k):
        x = torch.arange(k, dtype=torch.float64) - k // 2
        e = torch.exp(-(x**2) / (2 * sigma**2))
        return e / e.sum()

    kernel = torch.outer(gauss(ky), gauss(kx)).float().expand(3, 1, ky, kx)
    padded = F.pad(image, (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
    torch.testing.assert_close(out, F.conv2d(padded, kernel, groups=3), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["jitter", "blur"])
def test_on_off_is_drawn_per_image_and_per_call(which):
    p, n, calls = 0.3, 8, 150
    kwargs = dict(color_jitter_prob=p, blur_prob=0.0) if which == "jitter" else dict(color_jitter_prob=0.0, blur_prob=p)
    aug = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, color_jitter_strength=0.5, **kwargs)
    sizes = [(24, 24)] * n  # kernel 3 x 3
    images = _padded_batch(sizes, 24, 24)
    g = _gen(14)
    changed = torch.stack(
        [(aug(images, sizes, g) - images).abs().amax(dim=(1, 2, 3)) > 1e-4 for _ in range(calls)]
    )  # (calls, images)
    freq = changed.float().mean(dim=0)
    # p is the probability of applying (the reference's p = 0.3 would apply 70% of the time).
    # A blur with sigma near 0.15 changes nothing measurable (its neighbour tap is ~1e-10),
    # which lowers the blur's observed rate by a few percent only.
    assert bool(((freq - p).abs() < _binomial_bound(p, calls)).all()), freq
    # Not one draw shared by the batch: images disagree within a call, often.
    mixed_calls = (changed.any(dim=1) & ~changed.all(dim=1)).float().mean().item()
    assert mixed_calls > 0.5
    # Not one draw per run either: each image is on in some calls and off in others.
    assert bool((changed.any(dim=0) & ~changed.all(dim=0)).all())


def test_generator_is_reproducible():
    sizes = [(32, 32)] * 4
    images = _padded_batch(sizes, 32, 32)
    aug = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 0.5, 0.2, 0.5)
    assert torch.equal(aug(images, sizes, _gen(15)), aug(images, sizes, _gen(15)))
    assert not torch.equal(aug(images, sizes, _gen(15)), aug(images, sizes, _gen(16)))


def test_from_config_and_the_reference_rates():
    cfg = add_mic_config(get_cfg())
    aug = MaskAugmentation.from_config(cfg)
    # The reference jitters when U > 0.2 and blurs when U > 0.5: rates 0.8 and 0.5.
    assert (aug.color_jitter_prob, aug.color_jitter_strength, aug.blur_prob) == (0.8, 0.2, 0.5)
    assert aug.input_format == "BGR"
    cfg.MIC.MASK_AUG.COLOR_JITTER_PROB, cfg.MIC.MASK_AUG.BLUR_PROB = 0.3, 0.1
    aug = MaskAugmentation.from_config(cfg)
    assert (aug.color_jitter_prob, aug.blur_prob) == (0.3, 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmentation_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(2, 3, 40, 50, device="cuda")
    out = MaskAugmentation(PIXEL_MEAN, PIXEL_STD, 1.0, 0.2, 1.0)(images, [(40, 50), (30, 20)], g)
    assert out.is_cuda and bool(torch.isfinite(out).all())


# ------------------------------------------- the ends of the pixel range, any normalisation
# ImageNet statistics in both channel orders: Detectron2's BGR defaults with a real
# std (synthetic classification / segmentation) and torchvision's RGB ones (DeepLab).
IMAGENET = {
    "BGR": ([103.53, 116.28, 123.675], [57.375, 57.12, 58.395]),
    "RGB": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
}


def _pixels(kind: str, n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """(n, 3, h, w) pixels on 0..255: black, white, dark (0..20, a third exact zeros) or in range (25..225)."""
    g = _gen(seed)
    if kind == "black":
        return torch.zeros(n, 3, h, w)
    if kind == "white":
        return torch.full((n, 3, h, w), 255.0)
    if kind == "dark":
        pixels = torch.randint(0, 21, (n, 3, h, w), generator=g).float()
        return pixels * (torch.rand(n, 1, h, w, generator=g) > 1 / 3)  # black pixels among dark ones
    return torch.rand(n, 3, h, w, generator=g) * 200.0 + 25.0


def _stats(fmt):
    mean, std = IMAGENET[fmt]
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("kind", ["black", "white", "dark"])
@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_output_is_finite_at_the_ends_of_the_pixel_range(fmt, kind):
    """Black, white and dark images under a std other than 1 never come out NaN.

    Denormalising black gives values a hair below 0, where torchvision's
    rgb -> hsv (adjust_hue) divides by a zero maximum.
    """
    n, calls = 8, 40
    mean, std = _stats(fmt)
    aug = MaskAugmentation(*IMAGENET[fmt], color_jitter_prob=1.0, color_jitter_strength=0.2,
                           blur_prob=0.5, input_format=fmt)
    g = _gen(30)
    bad = 0
    for c in range(calls):
        images = (_pixels(kind, n, 16, 16, seed=100 + c) - mean) / std
        out = aug(images, [(16, 16)] * n, g)
        bad += int((~torch.isfinite(out)).flatten(1).any(dim=1).sum())
    assert bad == 0, f"{bad} of {n * calls} jittered {kind} images ({fmt}) are not finite"


def _torchvision_jitter(pixels: torch.Tensor, fmt: str, draw: dict) -> torch.Tensor:
    """torchvision's four ops on the exact pixels (3, h, w) as RGB in [0, 1], in the drawn order, back on 0..255."""
    to_rgb = [2, 1, 0] if fmt == "BGR" else [0, 1, 2]
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    rgb = (pixels / 255.0)[to_rgb]
    for k in draw["order"]:
        rgb = ops[k](rgb, draw["factors"][k])
    return rgb[to_rgb] * 255.0


@pytest.mark.parametrize("kind", ["in_range", "dark", "black", "white"])
@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_jitter_is_torchvisions_on_the_exact_pixels(fmt, kind):
    """The jitter is torchvision's, on the pixels the normalised batch stands for.

    In range it is what it always was; at the ends of the range too (black
    stays black, up to the round trip through the normalisation).
    """
    n, seed = 16, 31
    mean, std = _stats(fmt)
    pixels = _pixels(kind, n, 12, 14, seed=32)
    aug = MaskAugmentation(*IMAGENET[fmt], color_jitter_prob=1.0, color_jitter_strength=0.5,
                           blur_prob=0.0, input_format=fmt)
    out = aug((pixels - mean) / std, [(12, 14)] * n, _gen(seed)) * std + mean
    draws = aug._draw(n, pixels.device, _gen(seed))  # the draws of that call
    assert len({tuple(d["order"]) for d in draws}) > 4  # hue first, last, in between
    expected = torch.stack([_torchvision_jitter(pixels[i], fmt, draws[i]) for i in range(n)])
    bad = int((~torch.isfinite(out)).flatten(1).any(dim=1).sum())
    assert bad == 0, f"{bad} of {n} jittered {kind} images ({fmt}) are not finite"
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=0)  # on 0..255
    if kind == "black":
        assert float(out.abs().max()) < 1e-3
