import json

import jax
import numpy as np
import pytest

from flaxdigits import data as data_lib
from flaxdigits import train
from flaxdigits.errors import FlaxDigitsError
from tests import helpers


def small_state(config=None, total_steps=100):
    config = config or helpers.tiny_config()
    model = train.create_model(config.model)
    return train.create_train_state(config, model, jax.random.key(0), total_steps)


def synthetic_split(count, seed=0):
    images, labels = helpers.synthetic_digits(count, seed)
    return data_lib.Split(data_lib.to_model_inputs(images), data_lib.one_hot(labels))


def test_loss_falls_on_a_fixed_batch():
    state = small_state(helpers.tiny_config(**{"optim.schedule": "constant",
                                               "optim.learning_rate": 1e-2}))
    split = synthetic_split(32)
    batch = {"image": split.images, "label": split.labels}
    losses = []
    for _ in range(30):
        state, metrics = train.train_step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30


@pytest.mark.parametrize("count", [1, 63, 64, 65, 200])
def test_evaluation_counts_every_example_exactly_once(count):
    state = small_state()
    split = synthetic_split(count)
    result = train.evaluate(state, split, batch_size=64)
    assert result["count"] == count
    # Same figures as one unpadded pass over the whole split.
    logits = state.apply_fn({"params": state.params}, split.images)
    expected_accuracy = np.mean(np.argmax(logits, -1) == split.label_ids)
    expected_loss = float(np.mean(train.cross_entropy(logits, split.labels)))
    assert result["accuracy"] == pytest.approx(expected_accuracy)
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_padding_is_masked_out():
    batch = train.pad_batch(np.ones((3, 28, 28, 1), np.float32), np.eye(10)[:3], 5)
    assert batch["image"].shape == (5, 28, 28, 1) and batch["label"].shape == (5, 10)
    np.testing.assert_array_equal(batch["mask"], [True, True, True, False, False])


def test_non_finite_loss_names_the_step():
    pending = [{"loss": np.float32(0.5), "accuracy": np.float32(1.0)},
               {"loss": np.float32(np.nan), "accuracy": np.float32(0.0)}]
    with pytest.raises(FlaxDigitsError, match="loss is nan at step 12"):
        train.host_metrics(pending, first_step=10)


def test_diverging_run_stops_with_the_step(tmp_path):
    helpers.write_idx_folder(tmp_path / "data", 200, 20)
    config = helpers.tiny_config(**{"data.dir": str(tmp_path / "data"),
                                    "optim.learning_rate": 1e30, "log_every_steps": 1})
    with pytest.raises(FlaxDigitsError, match=r"training diverged: loss is (nan|inf) at step \d+"):
        train.train_and_evaluate(config, tmp_path / "work")


def test_is_time_and_progress_with_explicit_timestamps():
    assert [s for s in range(1, 11) if train.is_time(s, 4)] == [4, 8]
    assert not train.is_time(5, 0)
    progress = train.Progress(total_steps=1000, first_step=0, now=100.0)
    rate, eta = progress.report(200, now=110.0)
    assert rate == pytest.approx(20.0) and eta == pytest.approx(40.0)
    rate, eta = progress.report(300, now=115.0)
    assert rate == pytest.approx(20.0) and eta == pytest.approx(35.0)
    assert train.format_seconds(3725) == "1:02:05"


def test_epoch_order_is_a_permutation_fixed_by_key_and_epoch():
    key = jax.random.key(0)
    order = train.epoch_order(key, 3, 50)
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(order, train.epoch_order(key, 3, 50))
    assert not np.array_equal(order, train.epoch_order(key, 4, 50))


def test_bad_model_and_schedule_settings():
    with pytest.raises(FlaxDigitsError, match="config.model"):
        train.create_model(helpers.tiny_config(**{"model.name": "vgg"}).model)
    with pytest.raises(FlaxDigitsError, match="config.optim.schedule='linear'"):
        small_state(helpers.tiny_config(**{"optim.schedule": "linear"}))


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_train_and_evaluate_writes_config_and_metrics_and_is_deterministic(tmp_path):
    helpers.write_idx_folder(tmp_path / "data", 400, 100)
    config = helpers.tiny_config(**{"data.dir": str(tmp_path / "data"), "num_epochs": 2,
                                    "log_every_steps": 4, "optim.learning_rate": 1e-2})
    final = train.train_and_evaluate(config, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["batch_size"] == 32
    records = read_metrics(tmp_path / "a")
    epochs = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["step"] for r in epochs] == [11, 22]  # 360 training examples // 32
    assert all("val_accuracy" in r and "train_loss" in r for r in epochs)
    assert [r["step"] for r in records if "epoch" not in r][:3] == [4, 8, 12]
    assert records[-1]["test_accuracy"] == final["test_accuracy"]
    assert final["test_accuracy"] > 0.5  # the synthetic digits are easy

    train.train_and_evaluate(config, tmp_path / "b")
    timing = ("steps_per_second", "elapsed_seconds", "train_seconds")

    def strip(records):
        return [{k: v for k, v in r.items() if k not in timing} for r in records]

    assert strip(read_metrics(tmp_path / "b")) == strip(records)


def test_batch_larger_than_training_split(tmp_path):
    helpers.write_idx_folder(tmp_path / "data", 20, 10)
    config = helpers.tiny_config(**{"data.dir": str(tmp_path / "data"), "batch_size": 64})
    with pytest.raises(FlaxDigitsError, match="batch_size=64 is larger than the training split"):
        train.train_and_evaluate(config, tmp_path / "work")


@pytest.mark.skipif(not helpers.MNIST_DIR.is_dir(),
                    reason=f"real MNIST not found at {helpers.MNIST_DIR}")
def test_integration_real_mnist_reaches_98_percent(tmp_path):
    config = helpers.tiny_config(**{
        "data.dir": str(helpers.MNIST_DIR), "num_epochs": 1, "batch_size": 64,
        "eval_batch_size": 1000, "log_every_steps": 200, "model.conv_features": (16, 32),
        "model.dense_features": 64, "optim.learning_rate": 2e-3})
    final = train.train_and_evaluate(config, tmp_path)
    assert final["test_accuracy"] >= 0.98, final


def test_dropout_key_is_folded_with_the_step():
    config = helpers.tiny_config(**{"model.dropout_rate": 0.5})
    split = synthetic_split(32)
    batch = {"image": split.images, "label": split.labels}
    key = jax.random.key(7)
    # Same step and key: same update. The key used at step 1 differs from step 0's.
    _, metrics_a = train.train_step(small_state(config), batch, key)
    _, metrics_b = train.train_step(small_state(config), batch, key)
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
    state = small_state(config)
    state = state.replace(step=state.step + 1)
    _, metrics_shifted = train.train_step(state, batch, key)
    assert float(metrics_shifted["loss"]) != float(metrics_a["loss"])


def test_batchnorm_statistics_update_in_training_and_are_used_in_evaluation():
    config = helpers.tiny_config(**{"model.name": "fast_cnn"})
    state = small_state(config)
    split = synthetic_split(64)
    before = jax.tree_util.tree_map(np.asarray, state.batch_stats)
    assert before, "FastCNN has BatchNorm statistics"
    state, _ = train.train_step(state, {"image": split.images, "label": split.labels},
                                jax.random.key(0))
    after = jax.tree_util.tree_map(np.asarray, state.batch_stats)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                         jax.tree_util.tree_leaves(after))]
    assert all(changed)  # every running mean and variance moved

    # Evaluation uses the running averages: an example's logits do not depend on the
    # batch it is in, and the statistics are not updated.
    variables = train.model_variables(state)
    alone = state.apply_fn(variables, split.images[:1])
    in_batch = state.apply_fn(variables, split.images)[:1]
    np.testing.assert_allclose(alone, in_batch, rtol=1e-5, atol=1e-5)
    train.evaluate(state, split, batch_size=32)
    for a, b in zip(jax.tree_util.tree_leaves(after),
                    jax.tree_util.tree_leaves(state.batch_stats)):
        np.testing.assert_array_equal(a, b)
    # And they matter: other statistics give other logits.
    shifted = jax.tree_util.tree_map(lambda x: x + 1.0, state.batch_stats)
    other = state.apply_fn({"params": state.params, "batch_stats": shifted}, split.images[:1])
    assert not np.allclose(alone, other)
