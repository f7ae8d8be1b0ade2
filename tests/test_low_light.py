"""The night model: E = exposure + lamps(d), S = blur(R E), I = S + N(0, a S + b^2)."""
import numpy as np
import pytest

from mic_det.data.low_light import LowLight, apply_low_light, illumination, noise_std
from mic_det.data.synthetic import DEFAULT_NIGHT, generate_scene

QUIET = dict(shot_noise=0.0, read_noise=0.0, blur_sigma=0.0)


def _flat(value, h=64, w=64):
    return np.full((h, w, 3), value, np.uint8)


def test_far_away_only_the_ambient_light_is_left():
    night = LowLight(exposure=0.2, **QUIET)
    out = apply_low_light(_flat(200), np.full((64, 64), np.inf, np.float32), night, rng=0)
    np.testing.assert_array_equal(out, np.full_like(out, 40))  # 200 * 0.2


def test_lamp_light_falls_off_with_depth_and_is_warm():
    night = LowLight(exposure=0.1, lamp_gain=0.8, lamp_distance=10.0, lamp_colour=(1.0, 0.75, 0.5), **QUIET)
    depth = np.tile(np.linspace(0.0, 200.0, 64, dtype=np.float32), (8, 1))
    out = apply_low_light(_flat(200, 8, 64), depth, night, rng=0).astype(int)
    red = out[0, :, 0]
    assert np.all(np.diff(red) <= 0) and red[0] > red[-1] + 100  # nearer = brighter
    assert red[0] == round(200 * (0.1 + 0.8))  # at the camera: ambient + the full lamp
    assert abs(red[-1] - 200 * (0.1 + 0.8 / (1 + 400))) <= 1  # inverse square far away
    e = illumination(np.array([[10.0]]), night)[0, 0]
    np.testing.assert_allclose(e, 0.1 + 0.4 * np.array([1.0, 0.75, 0.5]), rtol=1e-6)  # half at lamp_distance
    assert out[0, 0, 0] > out[0, 0, 1] > out[0, 0, 2]  # sodium: warm near the camera


def test_noise_grows_with_signal():
    night = LowLight(exposure=1.0, lamp_gain=0.0, shot_noise=1.0, read_noise=3.0, blur_sigma=0.0)
    depth = np.full((128, 128), 5.0, np.float32)
    stds = []
    for level in (10, 60, 180):
        out = apply_low_light(_flat(level, 128, 128), depth, night, rng=1).astype(np.float64)
        stds.append(out.std())
        assert abs(out.mean() - level) < 1.0  # zero-mean noise
        assert stds[-1] == pytest.approx(float(noise_std(level, night)), rel=0.15)
    assert stds[0] < stds[1] < stds[2]
    assert float(noise_std(0.0, night)) == pytest.approx(3.0)  # read noise remains in the dark


def test_deterministic_per_seed():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    depth = rng.uniform(1, 100, (32, 48)).astype(np.float32)
    a = apply_low_light(image, depth, DEFAULT_NIGHT, rng=7)
    b = apply_low_light(image, depth, DEFAULT_NIGHT, rng=np.random.default_rng(7))
    c = apply_low_light(image, depth, DEFAULT_NIGHT, rng=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scene_at_night_is_the_same_scene_darker():
    """Same rng state -> same scene, boxes and depth; the rng is left as in daylight."""
    ratios = []
    for i in range(12):
        day_rng, night_rng = np.random.default_rng([2, i]), np.random.default_rng([2, i])
        day, d0, a0 = generate_scene(day_rng, 96, 128)
        night, d1, a1 = generate_scene(night_rng, 96, 128, night=DEFAULT_NIGHT)
        np.testing.assert_array_equal(d0, d1)
        assert a0 == a1
        assert day_rng.random() == night_rng.random()  # the noise did not draw from the scene's stream
        again, _, _ = generate_scene(np.random.default_rng([2, i]), 96, 128, night=DEFAULT_NIGHT)
        np.testing.assert_array_equal(night, again)
        ratios.append(night.mean() / day.mean())
    # The defaults keep about half the mean brightness (56 / 118 on the 100 target val
    # scenes at 256x320, 0.50 here): a quarter of daylight far away, near objects lit.
    assert 0.35 < np.mean(ratios) < 0.6
    assert max(ratios) < 0.75


def test_parameters_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="lamp_distance"):
        LowLight(lamp_distance=0.0)
    with pytest.raises(ValueError, match="exposure"):
        LowLight(exposure=-0.1)
    with pytest.raises(ValueError, match="lamp_colour"):
        LowLight(lamp_colour=(1.0, 0.5))
    assert LowLight(lamp_colour=0.5).lamp_colour == (0.5, 0.5, 0.5)
    assert LowLight.from_dict(DEFAULT_NIGHT.as_dict()) == DEFAULT_NIGHT
    with pytest.raises(ValueError, match="depth"):
        apply_low_light(_flat(10, 4, 4), np.ones((4, 5)), DEFAULT_NIGHT, rng=0)
