"""flaxdigits/evaluation/inference.py: predictions, TTA and ensembles."""

import jax
import numpy as np
import pytest

from flaxdigits import augment, data, models, testing
from flaxdigits.evaluation import inference
from tests.conftest import tiny_config


def untrained(seed, name="fast_cnn"):
    config = tiny_config(**{"model.name": name, "seed": seed})
    model = models.model_from_config(config)
    variables = jax.jit(model.init)(jax.random.key(seed), np.zeros((1, 28, 28, 1), np.float32))
    return inference.Trained(model, variables, config, 0)


def digits(count):
    return data.to_model_inputs(testing.synthetic_digits(count)[0])


def test_predictions_do_not_depend_on_batching():
    member = untrained(0, "cnn")
    images = digits(37)
    whole = inference.predict_probabilities(member.model, member.variables, images, 1000)
    batched = inference.predict_probabilities(member.model, member.variables, images, 8)
    assert whole.shape == (37, 10)
    np.testing.assert_allclose(whole, batched, atol=1e-6)
    np.testing.assert_allclose(whole.sum(-1), 1.0, atol=1e-5)
    log_probabilities = inference.predict_log_probabilities(member.model, member.variables,
                                                            images, 8)
    np.testing.assert_allclose(np.exp(log_probabilities), whole, atol=1e-6)


def test_tta_averages_the_views_it_names():
    member = untrained(0)
    images = digits(12)
    got = inference.predict_probabilities(member.model, member.variables, images, 5,
                                          tta_views=3)
    assert augment.TTA_VIEWS[1:3] == ((0.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, 0.0))
    move = jax.jit(jax.vmap(augment.transform, in_axes=(0, None, None, None, None)))
    views = [images] + [np.asarray(move(images, *v)) for v in augment.TTA_VIEWS[1:3]]
    apply = jax.jit(member.model.apply)
    expected = np.mean([jax.nn.softmax(apply(member.variables, v)) for v in views], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, inference.predict_probabilities(
        member.model, member.variables, images, 5), atol=1e-4)  # the views changed something
    with pytest.raises(ValueError, match="tta_views=10 must be between 1 and 9"):
        inference.predict_probabilities(member.model, member.variables, images, tta_views=10)


@pytest.mark.slow
def test_ensemble_is_the_mean_of_its_members():
    members = [untrained(0), untrained(1)]
    images = digits(7)
    each = [inference.predict_probabilities(m.model, m.variables, images) for m in members]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(inference.ensemble_probabilities(members, images),
                               (each[0] + each[1]) / 2, atol=1e-6)
