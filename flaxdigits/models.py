"""Flax linen models: plain modules, usable from any JAX code.

    from flaxdigits.models import CNN
    model = CNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    logits_bk = model.apply(variables, images_bhwc)   # float32 (N, 28, 28, 1) in [0, 1]

This module imports jax and flax only: nothing of the data, training or launcher stacks.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NUM_CLASSES = 10


class CNN(nn.Module):
    """The seed's network: (conv 3x3 -> relu -> max-pool 2x2) per entry of `conv_features`,
    then dense -> relu -> [dropout] -> dense(num_classes). Returns logits; see
    `probabilities`. Dropout acts only with `train=True`, which needs a 'dropout' rng."""

    conv_features: Sequence[int] = (32, 64)
    dense_features: int = 128
    dropout_rate: float = 0.0
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, images_bhwc: jax.Array, train: bool = False) -> jax.Array:
        x = images_bhwc
        for features in self.conv_features:
            x = nn.Conv(features, kernel_size=(3, 3))(x)
            x = nn.relu(x)
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense_features)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


# Model names as configs spell them (`config.model.name`).
MODELS = {"cnn": CNN}


def create_model(name: str, **kwargs) -> nn.Module:
    """The model called `name` in MODELS, built with `kwargs` (the rest of config.model)."""
    if name not in MODELS:
        raise ValueError(f"config.model.name={name!r} is not one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


def probabilities(model: nn.Module, variables, images_bhwc: jax.Array) -> jax.Array:
    """Softmax class probabilities (N, num_classes) for float32 images in [0, 1]."""
    return jax.nn.softmax(model.apply(variables, images_bhwc), axis=-1)


def count_params(variables) -> int:
    """Number of scalar parameters in `variables['params']`."""
    return sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(variables["params"]))
