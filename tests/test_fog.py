"""The optical fog model: I = R t + A (1 - t), t = exp(-beta d)."""
import numpy as np
import pytest

from mic_det.data.fog import (
    CITYSCAPES_BASELINE,
    CITYSCAPES_FOCAL,
    apply_fog,
    depth_from_disparity,
    heuristic_depth,
    transmission,
)


def _scene(h=6, w=8, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.0, 200.0, (h, w)).astype(np.float32)
    return image, depth


def test_transmission_is_exp_minus_beta_depth():
    depth = np.array([[0.0, 10.0], [50.0, np.inf]], np.float32)
    t = transmission(depth, 0.02)
    assert t.dtype == np.float32 and t.shape == depth.shape
    np.testing.assert_allclose(t, [[1.0, np.exp(-0.2)], [np.exp(-1.0), 0.0]], rtol=1e-6)
    assert transmission(np.array([-5.0]), 0.1)[0] == 1.0  # invalid negative depth: no fog, no gain


def test_transmission_rejects_negative_beta():
    with pytest.raises(ValueError, match="beta"):
        transmission(np.ones((2, 2)), -0.01)


def test_fogged_pixels_follow_the_model():
    image, depth = _scene()
    beta, a = 0.03, (0.7, 0.8, 0.9)
    foggy = apply_fog(image, depth, beta, a)
    assert foggy.dtype == np.uint8 and foggy.shape == image.shape
    for y, x in [(0, 0), (2, 5), (5, 7), (3, 1)]:
        t = np.exp(-beta * depth[y, x])
        expected = image[y, x] * t + np.array(a) * 255 * (1 - t)
        np.testing.assert_allclose(foggy[y, x], expected, atol=0.51)


def test_zero_beta_is_identity():
    image, depth = _scene(seed=1)
    np.testing.assert_array_equal(apply_fog(image, depth, 0.0), image)


def test_deeper_is_closer_to_atmospheric_light():
    image = np.zeros((1, 5, 3), np.uint8)  # black scene: the fog alone makes the colour
    depth = np.array([[0.0, 5.0, 20.0, 80.0, 1000.0]], np.float32)
    foggy = apply_fog(image, depth, 0.05, 0.8)[0, :, 0].astype(int)
    assert foggy[0] == 0
    assert np.all(np.diff(foggy) > 0)
    assert foggy[-1] == round(0.8 * 255)


def test_scalar_light_is_grey_and_depth_may_carry_a_channel_axis():
    image, depth = _scene(seed=2)
    a = apply_fog(image, depth, 0.02, 0.6)
    b = apply_fog(image, depth[:, :, None], 0.02, (0.6, 0.6, 0.6))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "image, depth, light, match",
    [
        (np.zeros((4, 5, 3), np.uint8), np.zeros((5, 4)), 0.8, "does not match"),
        (np.zeros((4, 5), np.uint8), np.zeros((4, 5)), 0.8, "HxWx3"),
        (np.zeros((4, 5, 3), np.float32), np.zeros((4, 5)), 0.8, "uint8"),
        (np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5)), (0.8, 0.8), "scalar or 3"),
        (np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5)), 200, r"\[0, 1\]"),
    ],
)
def test_apply_fog_rejects_bad_input(image, depth, light, match):
    with pytest.raises(ValueError, match=match):
        apply_fog(image, depth, 0.02, light)


def test_heuristic_depth_is_a_ground_plane():
    d = heuristic_depth(100, 7, near=3.0, far=150.0, horizon=0.4)
    assert d.shape == (100, 7) and d.dtype == np.float32
    assert np.all(d == d[:, :1])  # constant along rows
    assert d[-1, 0] == pytest.approx(3.0)
    assert np.all(d[:40, 0] == pytest.approx(150.0))  # horizon and above
    col = d[:, 0]
    assert np.all(np.diff(col) <= 0)  # nearer towards the bottom
    # Ground plane: d * (row - horizon_row) is constant where not clipped.
    horizon_row = 0.4 * 99
    rows = np.arange(100)
    ground = (col < 150.0) & (rows > horizon_row)
    prod = col[ground] * (rows[ground] - horizon_row)
    np.testing.assert_allclose(prod, prod[-1], rtol=1e-5)


def test_heuristic_depth_rejects_bad_ranges():
    with pytest.raises(ValueError):
        heuristic_depth(10, 10, near=5.0, far=2.0)
    with pytest.raises(ValueError):
        heuristic_depth(0, 10)


def test_depth_from_cityscapes_disparity():
    raw = np.array([[0, 1, 257], [2561, 25601, 65535]], np.uint16)
    d = depth_from_disparity(raw, invalid_depth=999.0)
    bf = CITYSCAPES_BASELINE * CITYSCAPES_FOCAL
    assert d.dtype == np.float32
    assert d[0, 0] == 999.0 and d[0, 1] == 999.0  # no match / zero disparity
    np.testing.assert_allclose(d[0, 2], bf / 1.0, rtol=1e-6)
    np.testing.assert_allclose(d[1, 0], bf / 10.0, rtol=1e-6)
    np.testing.assert_allclose(d[1, 1], bf / 100.0, rtol=1e-6)
    assert np.all(np.diff(d[1]) < 0)  # larger disparity = nearer


def test_depth_from_disparity_refuses_8bit_reads():
    with pytest.raises(ValueError, match="IMREAD_UNCHANGED"):
        depth_from_disparity(np.ones((3, 3), np.uint8))
