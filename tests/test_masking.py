"""Block masks and the masking of the normalized batch (the augmentation: tests/test_augment.py).

Statistical checks use seeded generators (deterministic, never flaky) and bounds
of 4 binomial standard deviations, so a wrong ratio, block size, grid anchor or a
draw shared between images fails them.
"""

import math

import pytest
import torch

from detectron2.config import get_cfg

from mic_det.config import add_mic_config
from mic_det.masking import BlockMaskGenerator, apply_block_mask, mask_ratio_drawn

PIXEL_MEAN = [103.53, 116.28, 123.675]  # Detectron2's BGR defaults
PIXEL_STD = [57.375, 57.12, 58.395]
SENTINEL = 1234.5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _anchors(mask: torch.Tensor, b: int) -> torch.Tensor:
    """The value of each block: the pixel at its top-left corner."""
    return mask[:, :, ::b, ::b]


def _binomial_bound(p: float, n: int) -> float:
    return 4.0 * math.sqrt(p * (1.0 - p) / n)


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _denormalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return images * std + mean


def _padded_batch(sizes, height, width, seed=0):
    """Normalized random images in a padded batch whose padding holds SENTINEL."""
    g = _gen(seed)
    images = torch.full((len(sizes), 3, height, width), SENTINEL)
    for i, (h, w) in enumerate(sizes):
        pixels = torch.rand((1, 3, h, w), generator=g) * 200.0 + 25.0
        images[i, :, :h, :w] = _normalize(pixels)[0]
    return images


def _padding(images, sizes):
    """All padding values of a batch, flattened."""
    parts = []
    for i, (h, w) in enumerate(sizes):
        parts += [images[i, :, h:, :].flatten(), images[i, :, :h, w:].flatten()]
    return torch.cat(parts)


# --------------------------------------------------------------- BlockMaskGenerator
@pytest.mark.parametrize(
    "block_size, ratio",
    [(0, 0.5), (-3, 0.5), (2.5, 0.5), (True, 0.5), (32, -0.1), (32, 1.0), (32, 1.5)],
)
def test_mask_generator_rejects_bad_arguments(block_size, ratio):
    with pytest.raises(ValueError):
        BlockMaskGenerator(block_size, ratio)


def test_mask_generator_rejects_bad_shapes():
    gen = BlockMaskGenerator(8, 0.5)
    with pytest.raises(ValueError):
        gen(2, 0, 10, "cpu")
    with pytest.raises(ValueError):
        gen(-1, 10, 10, "cpu")


@pytest.mark.parametrize("block_size, ratio", [(1, 0.5), (8, 0.3), (16, 0.7), (32, 0.5), (5, 0.9)])
def test_hidden_block_fraction_is_ratio(block_size, ratio):
    gen, g = BlockMaskGenerator(block_size, ratio), _gen(1)
    hidden, total = 0, 0
    for _ in range(5):
        # 8 x 8 blocks, the last row/column partial.
        size = block_size * 7 + max(1, block_size // 2)
        mask = gen(64, size, size, "cpu", generator=g)
        assert mask.shape == (64, 1, size, size) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        blocks = _anchors(mask, block_size)
        hidden += int((blocks == 0).sum())
        total += blocks.numel()
    assert abs(hidden / total - ratio) < _binomial_bound(ratio, total)


def test_mask_is_constant_on_blocks_anchored_at_top_left():
    b, height, width = 16, 70, 45  # partial blocks at the bottom and right edges
    mask = BlockMaskGenerator(b, 0.5)(200, height, width, "cpu", generator=_gen(2))
    blocks = _anchors(mask, b)
    assert blocks.shape[-2:] == (math.ceil(height / b), math.ceil(width / b))
    # Every pixel takes the value of the block it falls in, with blocks at multiples of b.
    rows = torch.arange(height) // b
    cols = torch.arange(width) // b
    assert torch.equal(mask, blocks[:, :, rows][:, :, :, cols])
    # Neighbouring blocks are independent (disagree with prob 2 r (1 - r) = 0.5), so
    # the blocks are not coarser than b.
    horizontal = (blocks[..., 1:] != blocks[..., :-1]).float().mean().item()
    vertical = (blocks[:, :, 1:] != blocks[:, :, :-1]).float().mean().item()
    assert abs(horizontal - 0.5) < 0.06 and abs(vertical - 0.5) < 0.06


def test_masks_independent_across_images_and_calls():
    gen = BlockMaskGenerator(1, 0.5)
    g = _gen(3)
    first = gen(2, 64, 64, "cpu", generator=g)
    a, b = first[0].flatten(), first[1].flatten()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 4.0 / math.sqrt(a.numel())
    for image in first:
        assert abs(1.0 - image.mean().item() - 0.5) < _binomial_bound(0.5, a.numel())
    # Fresh on every call, with an explicit generator and with the global one.
    assert not torch.equal(first, gen(2, 64, 64, "cpu", generator=g))
    assert not torch.equal(gen(2, 64, 64, "cpu"), gen(2, 64, 64, "cpu"))


def test_ratio_zero_hides_nothing():
    mask = BlockMaskGenerator(1, 0.0)(16, 128, 128, "cpu", generator=_gen(4))
    assert bool((mask == 1).all())


def test_seeded_generator_is_reproducible_and_device_is_honoured():
    gen = BlockMaskGenerator(8, 0.5)
    m1 = gen(3, 40, 50, "cpu", generator=_gen(5))
    m2 = gen(3, 40, 50, torch.device("cpu"), generator=_gen(5))
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, gen(3, 40, 50, "cpu", generator=_gen(6)))
    # The meta device holds no data: a mask built on the host and moved would still
    # land there, but building there must work without any host tensor.
    assert gen(3, 40, 50, "meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    mask = BlockMaskGenerator(8, 0.5)(2, 40, 50, "cuda", generator=g)
    assert mask.is_cuda
    images = torch.randn(2, 3, 40, 50, device="cuda")
    assert apply_block_mask(images, mask, [(40, 50), (30, 20)]).is_cuda


def test_mask_generator_from_config():
    cfg = add_mic_config(get_cfg())
    cfg.MIC.MASK_BLOCK_SIZE, cfg.MIC.MASK_RATIO = 16, 0.7
    gen = BlockMaskGenerator.from_config(cfg)
    assert (gen.block_size, gen.ratio) == (16, 0.7)


# ----------------------------------------------------------------- apply_block_mask
def test_hidden_pixels_take_the_mean_colour_and_padding_is_untouched():
    sizes = [(30, 40), (22, 17)]
    images = _padded_batch(sizes, 32, 40)
    before = images.clone()
    mask = BlockMaskGenerator(4, 0.5)(2, 32, 40, "cpu", generator=_gen(7))
    mask[1] = 0.0  # hide all of image 1, padding included: the padding must survive
    out = apply_block_mask(images, mask, sizes)

    assert torch.equal(images, before), "the input batch was modified"
    pixels = _denormalize(out)
    for i, (h, w) in enumerate(sizes):
        hidden = (mask[i, 0, :h, :w] == 0).expand(3, h, w)
        assert bool(hidden.any())
        assert bool((out[i, :, :h, :w][hidden] == 0).all())
        mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1).expand(3, h, w)
        torch.testing.assert_close(pixels[i, :, :h, :w][hidden], mean[hidden])
        assert torch.equal(out[i, :, :h, :w][~hidden], images[i, :, :h, :w][~hidden])
    assert bool((_padding(out, sizes) == SENTINEL).all())


def test_apply_block_mask_rejects_mismatched_inputs():
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError):
        apply_block_mask(images, torch.ones(2, 1, 8, 7), [(8, 8), (8, 8)])
    with pytest.raises(ValueError):
        apply_block_mask(images, torch.ones(2, 1, 8, 8), [(8, 8)])
    with pytest.raises(ValueError):
        apply_block_mask(images, torch.ones(2, 1, 8, 8), [(8, 8), (9, 8)])


def test_mask_ratio_drawn_counts_only_the_image_area():
    mask = torch.zeros(2, 1, 4, 6)
    mask[0, :, :, 2:4] = 1.0  # image 0 (4 x 4): left half hidden; padding hidden too
    mask[1] = 1.0  # image 1 (2 x 6): nothing hidden
    assert mask_ratio_drawn(mask, [(4, 4), (2, 6)]) == pytest.approx(8 / 28)
    assert mask_ratio_drawn(mask[:1], [(0, 0)]) == 0.0

    big = BlockMaskGenerator(8, 0.3)(32, 256, 256, "cpu", generator=_gen(8))
    assert abs(mask_ratio_drawn(big, [(256, 256)] * 32) - 0.3) < _binomial_bound(0.3, 32 * 32 * 32)
