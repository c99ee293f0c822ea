"""Flax linen models: plain modules, usable from any JAX code.

    from flaxdigits.models import CNN
    model = CNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    logits_bk = model.apply(variables, images_bhwc)   # float32 (N, 28, 28, 1) in [0, 1]

This module imports jax and flax only (and the package's constants): nothing of the data,
training or launcher stacks.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxdigits import NUM_CLASSES


def max_pool_2x2(x_bhwc: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2; an odd last row or column is dropped (VALID padding).

    The same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`, written as a reshape and a
    max: its gradient is a compare-and-select instead of XLA's select-and-scatter, which made
    the base CNN's training step about 1.7x slower on CPU (benchmarks/speed.py).
    """
    b, h, w, c = x_bhwc.shape
    x_bhwc = x_bhwc[:, :h // 2 * 2, :w // 2 * 2]
    return x_bhwc.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nn.Module):
    """The seed's network: (conv 3x3 -> relu -> max-pool 2x2) per entry of `conv_features`,
    then dense -> relu -> [dropout] -> dense(num_classes). Returns float32 logits; see
    `probabilities`. Dropout acts only with `train=True`, which needs a 'dropout' rng.
    `dtype` is the computation dtype (e.g. jnp.bfloat16); parameters stay float32."""

    conv_features: Sequence[int] = (32, 64)
    dense_features: int = 128
    dropout_rate: float = 0.0
    num_classes: int = NUM_CLASSES
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images_bhwc: jax.Array, train: bool = False) -> jax.Array:
        x = images_bhwc.astype(self.dtype)
        for features in self.conv_features:
            x = nn.Conv(features, kernel_size=(3, 3), dtype=self.dtype)(x)
            x = nn.relu(x)
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense_features, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class FastCNN(nn.Module):
    """A CNN built for time-to-accuracy on CPUs (configs/fast.py).

    A 5x5 stride-2 stem works at 14x14 from the start, so the first block costs a quarter of
    a full-resolution one; BatchNorm lets it train at a high learning rate:
    conv 5x5/2 -> BN -> relu -> pool -> conv 3x3 -> BN -> relu -> pool -> [dense -> relu]
    -> [dropout] -> dense. BatchNorm uses batch statistics with `train=True` (pass
    mutable=['batch_stats']) and the running averages otherwise.
    """

    conv_features: Sequence[int] = (32, 64)
    dense_features: int = 128  # 0: no hidden dense layer
    dropout_rate: float = 0.0
    num_classes: int = NUM_CLASSES
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images_bhwc: jax.Array, train: bool = False) -> jax.Array:
        x = images_bhwc.astype(self.dtype)
        for index, features in enumerate(self.conv_features):
            stem = index == 0
            x = nn.Conv(features, kernel_size=(5, 5) if stem else (3, 3),
                        strides=(2, 2) if stem else (1, 1), use_bias=False, dtype=self.dtype)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
            x = max_pool_2x2(nn.relu(x))
        x = x.reshape((x.shape[0], -1))
        if self.dense_features:
            x = nn.relu(nn.Dense(self.dense_features, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class DeepCNN(nn.Module):
    """A deeper BatchNorm CNN for accuracy (configs/deep.py).

    A 5x5 stride-2 stem (to 14x14), then one block per entry of `block_features`, each
    `convs_per_block` x (conv `kernel_size` x `kernel_size` -> BN -> relu) and a 2x2
    max-pool, then dense -> BN -> relu -> dropout -> dense (An et al. 2020 ensemble kernel
    sizes 3, 5 and 7). BatchNorm uses batch statistics with `train=True` (pass
    mutable=['batch_stats']) and the running averages otherwise.
    """

    stem_features: int = 32
    block_features: Sequence[int] = (48, 96)
    convs_per_block: int = 2
    kernel_size: int = 3  # of the blocks' convolutions ('SAME' padding: odd sizes)
    dense_features: int = 256
    dropout_rate: float = 0.3
    num_classes: int = NUM_CLASSES
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images_bhwc: jax.Array, train: bool = False) -> jax.Array:
        def conv_bn_relu(x, features, kernel, stride=1):
            x = nn.Conv(features, (kernel, kernel), strides=(stride, stride), use_bias=False,
                        dtype=self.dtype)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
            return nn.relu(x)

        x = conv_bn_relu(images_bhwc.astype(self.dtype), self.stem_features, 5, stride=2)
        for features in self.block_features:
            for _ in range(self.convs_per_block):
                x = conv_bn_relu(x, features, self.kernel_size)
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.dense_features, use_bias=False, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class LineReader(nn.Module):
    """A segmentation-free reader of a line of digits (a CRNN trained with CTC): a strip
    (N, LINE_STRIP, W, 1) in [0, 1], W a multiple of 4 (serving/preprocess.line_strip) ->
    float32 logits (N, W / 4, 11) per column frame, class 0 the CTC blank and 1 + d digit
    d. Four conv 3x3 + BatchNorm + relu blocks pool the height to 3 and the width by 4;
    then a dense layer and residual 1-D convolutions along the line. Trained by
    training/line.py (config.line_reader); serving/reading.py weighs its reading against
    segmentation's (docs/reading.md)."""

    conv_features: Sequence[int] = (16, 32, 64, 64)
    sequence_features: int = 128
    sequence_blocks: int = 2

    @nn.compact
    def __call__(self, strip_bhwc: jax.Array, train: bool = False) -> jax.Array:
        x = strip_bhwc
        for index, features in enumerate(self.conv_features):
            x = nn.Conv(features, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            # The width is pooled by 4 in all, the height by 8 (a 24-px strip -> 3 rows).
            window = (2, 2) if index < 2 else (2, 1) if index == 2 else None
            if window is not None:
                x = nn.max_pool(x, window_shape=window, strides=window)
        b, h, w, c = x.shape
        x_bwf = jnp.transpose(x, (0, 2, 1, 3)).reshape(b, w, h * c)
        x_bwf = nn.relu(nn.Dense(self.sequence_features)(x_bwf))
        for _ in range(self.sequence_blocks):
            y = nn.Conv(self.sequence_features, (5,))(x_bwf)
            x_bwf = x_bwf + nn.relu(nn.BatchNorm(use_running_average=not train,
                                                 momentum=0.9)(y))
        return nn.Dense(NUM_CLASSES + 1)(x_bwf).astype(jnp.float32)


# Model names as configs spell them (`config.model.name`).
MODELS = {"cnn": CNN, "fast_cnn": FastCNN, "deep_cnn": DeepCNN}


def create_model(name: str, **kwargs) -> nn.Module:
    """The model called `name` in MODELS, built with `kwargs` (the rest of config.model).
    Lists (as a config read back from JSON has them) become tuples: modules are hashable."""
    if name not in MODELS:
        raise ValueError(f"model name {name!r} is not one of {sorted(MODELS)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return MODELS[name](**kwargs)


def model_from_config(config) -> nn.Module:
    """The module that `config.model` and `config.dtype` describe (a checked config, or one
    read back from a workdir's config.json)."""
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    return create_model(config.model.name, dtype=jnp.dtype(config.get("dtype", "float32")),
                        **kwargs)


def probabilities(model: nn.Module, variables, images_bhwc: jax.Array) -> jax.Array:
    """Softmax class probabilities (N, num_classes) for float32 images in [0, 1]."""
    return jax.nn.softmax(model.apply(variables, images_bhwc), axis=-1)


def count_params(variables) -> int:
    """Number of scalar parameters in `variables['params']` (arrays, or the shapes that
    `jax.eval_shape(model.init, ...)` gives)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"]))
