import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdigits import models
from flaxdigits.models import CNN


def init(model, batch=1):
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((batch, 28, 28, 1), jnp.float32))


def shapes(model):
    """The variables' shapes only: counting parameters needs no computation."""
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_cnn_parameter_count_is_exact():
    # conv 3x3 1->32: 320; conv 3x3 32->64: 18,496; dense 7*7*64->128: 401,536;
    # dense 128->10: 1,290.
    assert models.count_params(shapes(CNN())) == 320 + 18_496 + 401_536 + 1_290 == 421_642


def test_cnn_widths_are_configurable():
    assert models.count_params(shapes(CNN(conv_features=(4, 8), dense_features=16))) == 40 + 296 + (7 * 7 * 8 * 16 + 16) + 170


def test_cnn_maps_images_to_logits_and_probabilities():
    model = CNN()
    variables = init(model)
    images = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
    logits = model.apply(variables, images)
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32
    probs = models.probabilities(model, variables, images)
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-6)


def test_create_model_by_name_and_from_a_config():
    assert isinstance(models.create_model("cnn", dense_features=8), CNN)
    with pytest.raises(ValueError, match="not one of"):
        models.create_model("resnet")
    from configs import deep

    model = models.model_from_config(deep.get_config())
    assert isinstance(model, models.DeepCNN) and model.block_features == (48, 96)


def test_deep_cnn_kernel_size_sets_the_blocks_kernels_not_the_stems():
    images = jnp.zeros((2, 28, 28, 1))
    for kernel in (3, 5, 7):
        model = models.DeepCNN(kernel_size=kernel)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        shapes = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.shape
                  for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])}
        assert shapes["Conv_0/kernel"] == (5, 5, 1, 32)  # the stem
        assert shapes["Conv_1/kernel"] == (kernel, kernel, 32, 48)
        assert shapes["Conv_4/kernel"] == (kernel, kernel, 96, 96)
        assert model.apply(jax.tree.map(jnp.zeros_like, variables), images).shape == (2, 10)


@pytest.mark.slow  # a subprocess
def test_importing_models_pulls_in_no_data_or_launcher_stack():
    # flax itself imports absl.logging (and so absl.flags' module); what must not happen is
    # that flaxdigits.models defines flags of its own or drags in TF, tfds, pandas or configs.
    code = """
import json, sys
from absl import flags
import flax.linen
before = set(flags.FLAGS)
from flaxdigits.models import CNN
heavy = [m for m in sys.modules if m.split('.')[0] in
         ('tensorflow', 'tensorflow_datasets', 'pandas', 'launch', 'configs', 'optax',
          'orbax', 'matplotlib', 'flask')
         or m.startswith('ml_collections.config_flags')
         or (m.startswith('flaxdigits.') and m != 'flaxdigits.models')]
print(json.dumps({'heavy': heavy, 'new_flags': sorted(set(flags.FLAGS) - before)}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"heavy": [], "new_flags": []}


def test_dropout_acts_only_in_training():
    model = CNN(dropout_rate=0.5)
    variables = init(model)
    images = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    eval_a = model.apply(variables, images)
    np.testing.assert_array_equal(eval_a, model.apply(variables, images, train=False))
    train_a = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
    train_b = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(
        train_a, model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)}))


def test_max_pool_2x2_matches_flax_max_pool_including_odd_sizes():
    import flax.linen as nn

    for shape in [(2, 28, 28, 3), (2, 7, 7, 5), (1, 5, 6, 1)]:
        x = jax.random.normal(jax.random.key(0), shape)
        np.testing.assert_array_equal(models.max_pool_2x2(x),
                                      nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("model", [models.FastCNN(),
                                   pytest.param(models.DeepCNN(), marks=pytest.mark.slow)],
                         ids=["fast_cnn", "deep_cnn"])
def test_batchnorm_models_build_and_run(model):
    variables = init(model, batch=2)
    assert set(variables) == {"params", "batch_stats"}
    images = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    assert model.apply(variables, images).shape == (4, 10)


def test_fast_cnn_parameter_count_is_exact():
    # conv 5x5 1->32 (no bias, BN follows): 800, BN 64; conv 3x3 32->64: 18,432, BN 128;
    # dense 3*3*64->128: 73,856; dense 128->10: 1,290.
    assert models.count_params(shapes(models.FastCNN())) == (
        800 + 64 + 18_432 + 128 + 73_856 + 1_290)


@pytest.mark.slow
def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
    model = CNN(conv_features=(4, 8), dense_features=16, dtype=jnp.bfloat16)
    variables = init(model)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    logits = model.apply(variables, jnp.ones((2, 28, 28, 1)))
    assert logits.dtype == jnp.float32  # cast back for the loss
    hidden = model.apply(variables, jnp.ones((2, 28, 28, 1)), capture_intermediates=True,
                         mutable=["intermediates"])[1]["intermediates"]
    assert hidden["Dense_0"]["__call__"][0].dtype == jnp.bfloat16
