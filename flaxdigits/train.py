"""Training: TrainState, the jitted train and eval steps, and `train_and_evaluate`.

Data flows one way: Dataset (numpy, host) -> batches -> train_step -> metrics -> log and
`workdir/metrics.jsonl`. Time is counted in steps; epochs are converted to steps once.
"""

import functools
import json
import logging
import math
import pathlib
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from flaxdigits import data as data_lib
from flaxdigits import models
from flaxdigits.errors import FlaxDigitsError

TrainState = train_state.TrainState
Batch = dict[str, Any]


# ---------------------------------------------------------------------------------------
# Steps


def cross_entropy(logits_bk: jax.Array, labels_bk: jax.Array) -> jax.Array:
    """Categorical cross-entropy per example, on one-hot (or soft) labels."""
    return optax.softmax_cross_entropy(logits_bk, labels_bk)


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: Batch):
    """One Adam step on batch {'image': (B, 28, 28, 1), 'label': one-hot (B, 10)}.

    Returns the new state and {'loss', 'accuracy'} of the batch, computed before the update.
    """

    def loss_fn(params):
        logits_bk = state.apply_fn({"params": params}, batch["image"])
        return cross_entropy(logits_bk, batch["label"]).mean(), logits_bk

    (loss, logits_bk), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    accuracy = jnp.mean(logits_bk.argmax(-1) == batch["label"].argmax(-1))
    return state, {"loss": loss, "accuracy": accuracy}


@jax.jit
def eval_step(state: TrainState, batch: Batch):
    """Sums over one padded batch; `batch['mask']` is 1 for real examples, 0 for padding."""
    logits_bk = state.apply_fn({"params": state.params}, batch["image"])
    mask = batch["mask"]
    correct = (logits_bk.argmax(-1) == batch["label"].argmax(-1)) & mask
    return {
        "loss_sum": jnp.sum(jnp.where(mask, cross_entropy(logits_bk, batch["label"]), 0.0)),
        "correct": jnp.sum(correct, dtype=jnp.int32),
        "count": jnp.sum(mask, dtype=jnp.int32),
    }


def pad_batch(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Batch:
    """A batch of exactly `batch_size` rows: zeros appended, masked out."""
    count = len(images)
    pad = batch_size - count
    return {
        "image": np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]),
        "label": np.concatenate([labels, np.zeros((pad, *labels.shape[1:]), labels.dtype)]),
        "mask": np.arange(batch_size) < count,
    }


def evaluate(state: TrainState, split: data_lib.Split, batch_size: int) -> dict:
    """Loss and accuracy over `split`, every example counted exactly once.

    One compiled shape: every batch is `batch_size` rows, the last one padded and masked.
    """
    totals = None
    for start in range(0, len(split), batch_size):
        batch = pad_batch(split.images[start:start + batch_size],
                          split.labels[start:start + batch_size], batch_size)
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count,
            "accuracy": int(totals["correct"]) / count,
            "count": count}


# ---------------------------------------------------------------------------------------
# Building the state


def create_model(model_config: ml_collections.ConfigDict):
    kwargs = model_config.to_dict()
    name = kwargs.pop("name")
    try:
        return models.create_model(name, **kwargs)
    except (ValueError, TypeError) as e:
        raise FlaxDigitsError(f"config.model: {e}") from None


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
    lr = optim_config.learning_rate
    if optim_config.schedule == "constant":
        return optax.constant_schedule(lr)
    if optim_config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=max(total_steps, 1))
    raise FlaxDigitsError(
        f"config.optim.schedule={optim_config.schedule!r} must be 'constant' or 'cosine'")


def create_train_state(config, model, key: jax.Array, total_steps: int) -> TrainState:
    dummy = jnp.zeros((1, data_lib.IMAGE_SIDE, data_lib.IMAGE_SIDE, 1), jnp.float32)
    params = model.init(key, dummy)["params"]
    tx = optax.adam(learning_rate_schedule(config.optim, total_steps))
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


# ---------------------------------------------------------------------------------------
# Bookkeeping: time in steps, metrics on disk, progress in the log


def is_time(step: int, every: int) -> bool:
    """True at steps `every`, 2*`every`, ... (steps count from 1 once done); never if <= 0."""
    return every > 0 and step % every == 0


class MetricWriter:
    """One JSON object per line in `path`, flushed at once so a crash loses nothing."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.path.write_text("")

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class Progress:
    """Steps per second since the last report, and the time left at that rate."""

    def __init__(self, total_steps: int, first_step: int = 0, now: Optional[float] = None):
        self.total_steps = total_steps
        self.last_step = first_step
        self.last_time = time.monotonic() if now is None else now

    def report(self, step: int, now: Optional[float] = None) -> tuple[float, float]:
        """(steps/s since the last report, ETA in seconds); `now` for tests."""
        now = time.monotonic() if now is None else now
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        return rate, (self.total_steps - step) / max(rate, 1e-9)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def host_metrics(pending: list, first_step: int) -> dict[str, np.ndarray]:
    """Pulls per-step device metrics to the host; stops the run at a non-finite loss."""
    pending = jax.device_get(pending)
    losses = np.array([float(m["loss"]) for m in pending])
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        raise FlaxDigitsError(
            f"training diverged: loss is {losses[bad[0]]} at step {first_step + bad[0] + 1}; "
            f"try a lower config.optim.learning_rate")
    accuracies = np.array([float(m["accuracy"]) for m in pending])
    return {"loss": losses, "accuracy": accuracies}


def epoch_order(key: jax.Array, epoch: int, size: int) -> np.ndarray:
    """The order of the training examples in `epoch`: a function of the key and epoch only."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), size))


# ---------------------------------------------------------------------------------------
# The run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Trains `config.num_epochs` epochs, validating after each; tests at the end.

    Writes `workdir/config.json` and `workdir/metrics.jsonl`; returns the final metrics
    (`test_accuracy` and `test_loss` where the data has a labelled test split).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    logging.info("Config:\n%s", config)
    logging.info("JAX devices: %s", jax.devices())

    dataset = data_lib.load_dataset(config.data)
    train = dataset.train
    logging.info("Examples: train %d, validation %d, test %d", len(train),
                 len(dataset.validation or []), len(dataset.test or []))
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise FlaxDigitsError(
            f"config.batch_size={config.batch_size} is larger than the training split "
            f"({len(train)} examples)")
    if config.num_epochs < 1:
        raise FlaxDigitsError(f"config.num_epochs={config.num_epochs} must be at least 1")
    total_steps = config.num_epochs * steps_per_epoch

    init_key, shuffle_key = jax.random.split(jax.random.key(config.seed))
    model = create_model(config.model)
    state = create_train_state(config, model, init_key, total_steps)
    logging.info("Model %s: %d parameters", config.model.name, models.count_params(
        {"params": state.params}))

    writer = MetricWriter(workdir / "metrics.jsonl")
    progress = Progress(total_steps)
    start_time = time.monotonic()
    pending, pending_first_step = [], 0  # device metrics not yet pulled to the host
    epoch_sums = {"loss": 0.0, "accuracy": 0.0}
    logging.info("Training %d epochs x %d steps of %d examples", config.num_epochs,
                 steps_per_epoch, config.batch_size)

    order = None
    for step in range(total_steps):
        epoch, index_in_epoch = divmod(step, steps_per_epoch)
        if index_in_epoch == 0:
            order = epoch_order(shuffle_key, epoch, len(train))
        rows = order[index_in_epoch * config.batch_size:(index_in_epoch + 1) * config.batch_size]
        state, metrics = train_step(state, {"image": train.images[rows],
                                            "label": train.labels[rows]})
        pending.append(metrics)

        done = step + 1
        end_of_epoch = done % steps_per_epoch == 0
        if not (is_time(done, config.log_every_steps) or end_of_epoch):
            continue
        window = host_metrics(pending, pending_first_step)
        pending, pending_first_step = [], done
        for name in epoch_sums:
            epoch_sums[name] += float(window[name].sum())
        rate, eta = progress.report(done)
        if is_time(done, config.log_every_steps):
            record = {"step": done, "train_loss": float(window["loss"].mean()),
                      "train_accuracy": float(window["accuracy"].mean()),
                      "steps_per_second": rate}
            writer.write(record)
            logging.info("step %d/%d: loss %.4f, accuracy %.4f, %.1f steps/s, ETA %s", done,
                         total_steps, record["train_loss"], record["train_accuracy"], rate,
                         format_seconds(eta))
        if end_of_epoch:
            record = {"step": done, "epoch": epoch + 1,
                      "train_loss": epoch_sums["loss"] / steps_per_epoch,
                      "train_accuracy": epoch_sums["accuracy"] / steps_per_epoch}
            epoch_sums = {"loss": 0.0, "accuracy": 0.0}
            if dataset.validation is not None:
                val = evaluate(state, dataset.validation, config.eval_batch_size)
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            record["elapsed_seconds"] = time.monotonic() - start_time
            writer.write(record)
            logging.info("epoch %d/%d: %s, ETA %s", epoch + 1, config.num_epochs,
                         ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                   if k.startswith(("train_", "val_"))), format_seconds(eta))
            # The rate just reported included validation; measure the next window afresh.
            progress = Progress(total_steps, done)

    final = {"step": total_steps, "train_seconds": time.monotonic() - start_time}
    if dataset.validation is not None:  # the last epoch's figures: the weights are the same
        final.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    if dataset.test is not None:
        test = evaluate(state, dataset.test, config.eval_batch_size)
        final.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        logging.info("Test: loss %.4f, accuracy %.4f over %d examples", test["loss"],
                     test["accuracy"], test["count"])
    else:
        logging.info("No labelled test split in %s", dataset.source)
    writer.write(final)
    return final
