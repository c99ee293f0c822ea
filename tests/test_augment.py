"""flaxdigits/augment.py: random rotation, scaling, translation and elastic distortion on
the device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdigits import augment, data, testing
from tests.conftest import tiny_config

STRONG = augment.Strength(rotation_degrees=15.0, scale=0.15, translation_pixels=3.0)


def digits(count=16):
    return jnp.asarray(data.to_model_inputs(testing.synthetic_digits(count)[0]))


def test_keeps_shape_dtype_and_range():
    images = digits()
    out = augment.augment_batch(jax.random.key(0), images, STRONG)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_deterministic_per_key_and_different_across_keys():
    images = digits()
    a = augment.augment_batch(jax.random.key(1), images, STRONG)
    b = augment.augment_batch(jax.random.key(1), images, STRONG)
    c = augment.augment_batch(jax.random.key(2), images, STRONG)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).mean()) > 0.01


def test_identity_at_strength_zero():
    images = digits()
    out = augment.augment_batch(jax.random.key(0), images, augment.Strength())
    np.testing.assert_array_equal(out, images)  # exactly: integer sample points
    assert augment.from_config(tiny_config()) is None  # and the step skips it altogether
    strength = augment.from_config(tiny_config(**{"augment.scale": 0.1}))
    assert strength == augment.Strength(0.0, 0.1, 0.0)


def test_really_changes_each_image_differently():
    images = jnp.repeat(digits(1), 8, axis=0)  # the same digit 8 times
    out = np.asarray(augment.augment_batch(jax.random.key(0), images, STRONG))
    changed = np.abs(out - np.asarray(images)).mean(axis=(1, 2, 3))
    assert (changed > 0.01).all()
    assert len({round(float(x), 4) for x in changed}) == 8  # one draw per example


def test_each_transform_does_what_it_says():
    square = np.zeros((1, 28, 28, 1), np.float32)
    square[0, 10:18, 10:18] = 1.0  # an 8x8 square around the centre (13.5, 13.5)
    square = jnp.asarray(square)

    def mass_and_centre(image):
        image = np.asarray(image)[0, :, :, 0]
        rows, cols = np.indices(image.shape)
        mass = image.sum()
        return mass, (rows * image).sum() / mass, (cols * image).sum() / mass

    moved = augment.augment_batch(jax.random.key(3), square,
                                  augment.Strength(translation_pixels=4.0))
    mass, row, col = mass_and_centre(moved)
    assert mass == pytest.approx(64, rel=0.02)  # moving keeps the ink
    assert (row, col) != pytest.approx((13.5, 13.5), abs=0.2)
    assert abs(row - 13.5) <= 4 and abs(col - 13.5) <= 4

    for key in range(5):
        scaled = augment.augment_batch(jax.random.key(key), square, augment.Strength(scale=0.3))
        mass, row, col = mass_and_centre(scaled)
        assert 64 * 0.7 ** 2 * 0.9 <= mass <= 64 * 1.3 ** 2 * 1.1  # area scales with s^2
        assert (row, col) == pytest.approx((13.5, 13.5), abs=0.05)  # about the centre

    turned = augment.augment_batch(jax.random.key(0), square,
                                   augment.Strength(rotation_degrees=45.0))
    mass, row, col = mass_and_centre(turned)
    assert mass == pytest.approx(64, rel=0.05)
    assert (row, col) == pytest.approx((13.5, 13.5), abs=0.05)


ELASTIC = augment.Strength(elastic_alpha=34.0, elastic_sigma=4.0)
augment_batch = jax.jit(augment.augment_batch, static_argnums=2)  # one compilation, not many


def test_elastic_displacement_is_smooth_and_scales_with_alpha():
    field = np.asarray(augment.elastic_displacement(jax.random.key(0), 28, 28, 34.0, 4.0))
    assert field.shape == (2, 28, 28)
    rms = np.sqrt(np.mean(field ** 2))
    assert 0.8 < rms < 3.0  # Simard's 34 and 4: pixels move by a pixel or two
    # Smooth: neighbours move almost alike (raw uniform noise would differ by ~0.8 alpha).
    step = np.abs(np.diff(field, axis=1)).mean() + np.abs(np.diff(field, axis=2)).mean()
    assert step < 0.3 * rms
    half = np.asarray(augment.elastic_displacement(jax.random.key(0), 28, 28, 17.0, 4.0))
    np.testing.assert_allclose(half, field / 2, rtol=1e-5, atol=1e-6)
    # A larger sigma is smoother still.
    smoother = np.asarray(augment.elastic_displacement(jax.random.key(0), 28, 28, 34.0, 8.0))
    assert np.abs(np.diff(smoother, axis=1)).mean() < np.abs(np.diff(field, axis=1)).mean()


def test_elastic_distortion_bends_each_digit_its_own_way():
    images = jnp.repeat(digits(1), 6, axis=0)
    out = np.asarray(augment_batch(jax.random.key(0), images, ELASTIC))
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    changed = np.abs(out - np.asarray(images)).mean(axis=(1, 2, 3))
    assert (changed > 0.005).all() and len({round(float(x), 5) for x in changed}) == 6
    # The ink stays roughly where it was: a bend, not a move off the canvas.
    assert out.sum() == pytest.approx(float(images.sum()), rel=0.15)
    assert augment.from_config(tiny_config(**{"augment.elastic_alpha": 34.0})) == ELASTIC


def test_elastic_draws_leave_the_affine_draws_as_they_were():
    # Runs without elastic distortion augment as before it existed: its noise has a key
    # stream of its own, so a near-zero alpha gives the affine-only images.
    images = digits()
    affine = augment_batch(jax.random.key(5), images, STRONG)
    barely = augment_batch(jax.random.key(5), images, STRONG._replace(elastic_alpha=1e-6))
    np.testing.assert_allclose(barely, affine, atol=1e-4)
