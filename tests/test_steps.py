"""flaxdigits/training/steps.py and optim.py: the jitted steps, pinned by golden values."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flaxdigits import data, models, testing
from flaxdigits.training import loop, optim, steps
from tests.conftest import tiny_config


@functools.lru_cache
def _initial_state(config_json: str):
    config = ml_collections.ConfigDict(json.loads(config_json))
    model = models.model_from_config(config)
    return steps.create_train_state(model, optim.create_optimizer(config.optim, 100),
                                    jax.random.key(0), averaged=config.optim.ema_decay > 0)


def small_state(config=None):
    """A fresh initial state of `config` (default: tiny). One is built per config and copied:
    the steps donate the state they are given, and building one compiles."""
    state = _initial_state((config or tiny_config()).to_json())
    return jax.tree_util.tree_map(jnp.copy, state)


def synthetic_batch(count, seed=0):
    images, labels = testing.synthetic_digits(count, seed)
    return {"image": data.to_model_inputs(images), "label": data.one_hot(labels)}


def test_golden_values_of_the_tiny_config():
    """The tiny config's parameter count and first-step loss on fixed synthetic digits.

    If you changed the model, its initialisation, the loss or the optimizer on purpose,
    update these values (and say so in the commit). If you did not, a change here means
    training no longer computes what it did: find out why before updating anything.
    """
    state = small_state()
    # conv 3x3 1->4: 40; conv 3x3 4->8: 296; dense 7*7*8->16: 6,288; dense 16->10: 170.
    assert models.count_params({"params": state.params}) == 40 + 296 + 6_288 + 170 == 6_794
    state, metrics = steps.train_step(state, synthetic_batch(32), jax.random.key(0))
    assert float(metrics["loss"]) == pytest.approx(2.30814, abs=2e-4)  # ~ln(10): chance
    assert float(metrics["accuracy"]) == 5 / 32
    _, metrics = steps.train_step(state, synthetic_batch(32), jax.random.key(0))
    assert float(metrics["loss"]) == pytest.approx(2.29007, abs=2e-4)


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch():
    state = small_state(tiny_config(**{"optim.schedule": "constant",
                                       "optim.learning_rate": 1e-2}))
    batch = synthetic_batch(32)
    losses = []
    for _ in range(30):
        state, metrics = steps.train_step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30


def test_dropout_key_is_folded_with_the_step():
    config = tiny_config(**{"model.dropout_rate": 0.5})
    batch = synthetic_batch(32)
    key = jax.random.key(7)
    # Same step and key: same update. The key used at step 1 differs from step 0's.
    _, metrics_a = steps.train_step(small_state(config), batch, key)
    _, metrics_b = steps.train_step(small_state(config), batch, key)
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
    state = small_state(config)
    state = state.replace(step=state.step + 1)
    _, metrics_shifted = steps.train_step(state, batch, key)
    assert float(metrics_shifted["loss"]) != float(metrics_a["loss"])


def test_evaluation_counts_every_example_exactly_once():
    state = small_state()
    whole = synthetic_batch(200)
    logits = jax.jit(state.apply_fn)({"params": state.params}, whole["image"])
    for count in (1, 63, 64, 65, 200):
        batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in data.padded_batches(
            {"image": whole["image"][:count], "label": whole["label"][:count]}, 64)]
        result = loop.evaluate(state, batches)
        assert result["count"] == count
        # The same figures as one unpadded pass over the examples.
        assert result["accuracy"] == pytest.approx(
            np.mean(np.argmax(logits[:count], -1) == whole["label"][:count].argmax(-1)))
        assert result["loss"] == pytest.approx(float(np.mean(steps.cross_entropy(
            logits[:count], whole["label"][:count]))), rel=1e-5)


def test_epoch_order_is_a_permutation_fixed_by_key_and_epoch():
    key = jax.random.key(0)
    order = steps.epoch_order(key, 3, 50)
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(order, steps.epoch_order(key, 3, 50))
    assert not np.array_equal(order, steps.epoch_order(key, 4, 50))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "one_cycle"])
def test_schedules(schedule):
    config = tiny_config(**{"optim.schedule": schedule, "optim.learning_rate": 0.01})
    rates = [float(optim.learning_rate_schedule(config.optim, 100)(s)) for s in (0, 25, 99)]
    if schedule == "constant":
        assert rates == pytest.approx([0.01] * 3)
    elif schedule == "cosine":
        assert rates[0] == pytest.approx(0.01) and rates[2] < 1e-4
    else:  # warm up for 25% of the run, then anneal
        assert rates[0] < rates[1] == pytest.approx(0.01, rel=0.01) and rates[2] < 1e-4


@pytest.mark.slow
def test_batchnorm_statistics_update_in_training_and_are_used_in_evaluation():
    state = small_state(tiny_config(**{"model.name": "fast_cnn"}))
    batch = synthetic_batch(64)
    before = jax.tree_util.tree_map(np.asarray, state.batch_stats)
    assert before, "FastCNN has BatchNorm statistics"
    state, _ = steps.train_step(state, batch, jax.random.key(0))
    after = jax.tree_util.tree_map(np.asarray, state.batch_stats)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                         jax.tree_util.tree_leaves(after))]
    assert all(changed)  # every running mean and variance moved

    # Evaluation uses the running averages: an example's logits do not depend on the
    # batch it is in, and the statistics are not updated.
    variables = steps.model_variables(state)
    apply = jax.jit(state.apply_fn)
    alone = apply(variables, batch["image"][:1])
    in_batch = apply(variables, batch["image"])[:1]
    np.testing.assert_allclose(alone, in_batch, rtol=1e-5, atol=1e-5)
    # And they matter: other statistics give other logits.
    shifted = jax.tree_util.tree_map(lambda x: x + 1.0, state.batch_stats)
    other = apply({"params": state.params, "batch_stats": shifted}, batch["image"][:1])
    assert not np.allclose(alone, other)


def test_the_parameters_average_follows_the_warmed_up_decay_and_is_what_evaluation_uses():
    config = tiny_config(**{"optim.ema_decay": 0.999})
    state = small_state(config)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), state.ema_params, state.params))
    before = jax.tree_util.tree_map(np.asarray, state.params)
    recipe = steps.Recipe(ema_decay=0.999)
    state, _ = steps.train_step(state, synthetic_batch(32), jax.random.key(0), recipe=recipe)
    decay = 2 / 11  # min(0.999, (1 + t) / (10 + t)) after t = 1 step
    for average, old, new in zip(*(jax.tree_util.tree_leaves(t) for t in
                                   (state.ema_params, before, state.params))):
        np.testing.assert_allclose(average, decay * old + (1 - decay) * np.asarray(new),
                                   rtol=1e-5, atol=1e-7)
    assert steps.model_variables(state)["params"] is state.ema_params
    # Without an average, evaluation uses the parameters, and the state has no average.
    plain = small_state()
    assert plain.ema_params is None and steps.model_variables(plain)["params"] is plain.params


def test_label_smoothing_trains_towards_spread_targets():
    batch = synthetic_batch(32)
    smoothing = 0.1
    _, plain = steps.train_step(small_state(), batch, jax.random.key(0))
    _, smooth = steps.train_step(small_state(), batch, jax.random.key(0),
                                 recipe=steps.Recipe(label_smoothing=smoothing))
    # Same logits (computed before the update): the smoothed loss adds the spread part.
    logits = small_state().apply_fn(steps.model_variables(small_state()), batch["image"])
    targets = batch["label"] * (1 - smoothing) + smoothing / 10
    expected = float(jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), -1)))
    assert float(smooth["loss"]) == pytest.approx(expected, rel=1e-5)
    assert abs(float(smooth["loss"]) - float(plain["loss"])) > 1e-5  # near-uniform logits: small
    assert float(smooth["accuracy"]) == float(plain["accuracy"])
