"""On-device data augmentation: random rotation, scaling, translation and elastic distortion
of each digit.

Pure JAX, jit-compiled inside the training step; every example gets its own transform,
drawn from a key that the step derives from its step number, so a resumed run augments
exactly as an uninterrupted one. Off unless `config.augment` sets a strength (configs/base.py
keeps it off). Evaluation sees the digits as they are, or the fixed TTA_VIEWS where
`config.inference.tta_views` asks for test-time augmentation.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class Strength(NamedTuple):
    """The largest transform drawn; each example draws uniformly within these bounds."""

    rotation_degrees: float = 0.0  # turned by up to this many degrees either way
    scale: float = 0.0  # resized by a factor in [1 - scale, 1 + scale]
    translation_pixels: float = 0.0  # moved by up to this many pixels along each axis
    # Elastic distortion (Simard et al. 2003; torchvision's ElasticTransform means the
    # same): every pixel moved by uniform noise in [-1, 1] smoothed by a Gaussian of
    # `elastic_sigma` pixels, times `elastic_alpha`. Simard's 34 and 4 move a pixel by
    # about 1.7 px (root mean square, measured); 0 = off.
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0

    @property
    def is_identity(self) -> bool:
        return not (self.rotation_degrees or self.scale or self.translation_pixels
                    or self.elastic_alpha)


def from_config(config) -> Optional[Strength]:
    """The Strength that `config.augment` asks for (checked by config.validate), or None
    for no augmentation."""
    section = config.augment
    strength = Strength(float(section.rotation_degrees), float(section.scale),
                        float(section.translation_pixels),
                        float(section.elastic_alpha), float(section.elastic_sigma))
    return None if strength.is_identity else strength


# Test-time views, (degrees, scale, shift rows, shift cols); the first is the digit as it
# is. `config.inference.tta_views = n` averages the predictions of the first n.
TTA_VIEWS = (
    (0.0, 1.0, 0.0, 0.0),
    (0.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, 0.0), (0.0, 1.0, 0.0, 1.0), (0.0, 1.0, 0.0, -1.0),
    (6.0, 1.0, 0.0, 0.0), (-6.0, 1.0, 0.0, 0.0), (0.0, 1.08, 0.0, 0.0), (0.0, 0.92, 0.0, 0.0),
)


def transform(image_hwc: jax.Array, degrees, scale, shift_rows, shift_cols,
              displacement: Optional[jax.Array] = None) -> jax.Array:
    """One image turned by `degrees`, resized by `scale` about its centre and moved by
    (`shift_rows`, `shift_cols`) pixels; bilinear sampling, black outside the image.
    `displacement` (2, H, W), if given, is added to where each output pixel samples (rows,
    then columns): an elastic distortion."""
    height, width, _ = image_hwc.shape
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    shift = jnp.stack([jnp.asarray(shift_rows, jnp.float32), jnp.asarray(shift_cols, jnp.float32)])
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")
    # Each output pixel samples the input where the inverse transform sends it.
    out = jnp.stack([rows, cols]) - (centre + shift)[:, None, None]
    angle = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    source_rows = (cos * out[0] + sin * out[1]) / scale + centre[0]
    source_cols = (-sin * out[0] + cos * out[1]) / scale + centre[1]
    if displacement is not None:
        source_rows, source_cols = source_rows + displacement[0], source_cols + displacement[1]
    channels = [jax.scipy.ndimage.map_coordinates(image_hwc[..., c], [source_rows, source_cols],
                                                  order=1, mode="constant", cval=0.0)
                for c in range(image_hwc.shape[-1])]
    return jnp.stack(channels, axis=-1).astype(image_hwc.dtype)


def gaussian_smoothing(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix M: M @ x smooths x along its first axis with a Gaussian of
    `sigma`; each row sums to 1, so the edges keep the amplitude of the middle."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def elastic_displacement(key: jax.Array, height: int, width: int, alpha: float,
                         sigma: float) -> jax.Array:
    """A random smooth displacement field (2, height, width) in pixels."""
    noise = jax.random.uniform(key, (2, height, width), minval=-1.0, maxval=1.0)
    rows, cols = gaussian_smoothing(height, sigma), gaussian_smoothing(width, sigma)
    # Separable: smooth the columns of each field, then its rows.
    return alpha * jnp.einsum("ij,cjk,lk->cil", rows, noise, cols)


ELASTIC_STREAM = 0xE1A5  # folded into an example's key for its displacement field


def affine_one(key: jax.Array, image_hwc: jax.Array, strength: Strength) -> jax.Array:
    """One image with a transform drawn uniformly within `strength`."""
    rotate_key, scale_key, shift_key = jax.random.split(key, 3)
    degrees = strength.rotation_degrees * jax.random.uniform(rotate_key, minval=-1.0, maxval=1.0)
    scale = 1.0 + strength.scale * jax.random.uniform(scale_key, minval=-1.0, maxval=1.0)
    shift = strength.translation_pixels * jax.random.uniform(
        shift_key, (2,), minval=-1.0, maxval=1.0)
    displacement = None
    if strength.elastic_alpha:
        height, width, _ = image_hwc.shape
        # (Its own key stream: the affine draws stay those of runs without it.)
        elastic_key = jax.random.fold_in(key, ELASTIC_STREAM)
        displacement = elastic_displacement(elastic_key, height, width,
                                            strength.elastic_alpha, strength.elastic_sigma)
    return transform(image_hwc, degrees, scale, shift[0], shift[1], displacement)


def augment_batch(key: jax.Array, images_bhwc: jax.Array, strength: Strength) -> jax.Array:
    """Each image of the batch transformed with its own draw; shape, dtype and the [0, 1]
    range are kept (bilinear sampling only averages pixels)."""
    keys = jax.random.split(key, images_bhwc.shape[0])
    return jax.vmap(affine_one, in_axes=(0, 0, None))(keys, images_bhwc, strength)
