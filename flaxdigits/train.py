"""Training: TrainState, the jitted train and eval steps, and `train_and_evaluate`.

Data flows one way: Dataset (numpy, host) -> batches -> train_step -> metrics -> log and
`workdir/metrics.jsonl`. Time is counted in steps; epochs are converted to steps once.
"""

import functools
import json
import logging
import math
import pathlib
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from flaxdigits import augment as augment_lib
from flaxdigits import checkpoint as checkpoint_lib
from flaxdigits import data as data_lib
from flaxdigits import evaluate as evaluate_lib
from flaxdigits import models
from flaxdigits import parallel
from flaxdigits.errors import FlaxDigitsError, RunStopped

Batch = dict[str, Any]


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, optimizer state) plus BatchNorm's running
    statistics: an empty dict for models without BatchNorm."""

    batch_stats: Any = None


def model_variables(state: TrainState) -> dict:
    """The variables `model.apply` takes: params, and batch_stats where the model has them."""
    if state.batch_stats:
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}


# ---------------------------------------------------------------------------------------
# Steps


def cross_entropy(logits_bk: jax.Array, labels_bk: jax.Array) -> jax.Array:
    """Categorical cross-entropy per example, on one-hot (or soft) labels."""
    return optax.softmax_cross_entropy(logits_bk.astype(jnp.float32), labels_bk)


# fold_in of the step key that gives the augmentation key (the step key itself is dropout's).
AUGMENT_STREAM = 1


def _train_step(state: TrainState, batch: Batch, dropout_key: jax.Array,
                augment: Optional[augment_lib.Strength] = None):
    step_key = jax.random.fold_in(dropout_key, state.step)
    images = batch["image"]
    if augment is not None:
        images = augment_lib.augment_batch(jax.random.fold_in(step_key, AUGMENT_STREAM),
                                           images, augment)

    def loss_fn(params):
        variables = {**model_variables(state), "params": params}
        logits_bk, updates = state.apply_fn(variables, images, train=True,
                                            rngs={"dropout": step_key},
                                            mutable=["batch_stats"])
        return cross_entropy(logits_bk, batch["label"]).mean(), (logits_bk, updates)

    (loss, (logits_bk, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get("batch_stats", state.batch_stats))
    accuracy = jnp.mean(logits_bk.argmax(-1) == batch["label"].argmax(-1))
    return state, {"loss": loss, "accuracy": accuracy}


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("augment",))
def train_step(state: TrainState, batch: Batch, dropout_key: jax.Array, augment=None):
    """One Adam step on batch {'image': (B, 28, 28, 1), 'label': one-hot (B, 10)}.

    The step's randomness is `dropout_key` folded with the step number, so a resumed run
    draws exactly the keys an uninterrupted one would, and no key needs checkpointing.
    `augment` (an augment.Strength) transforms each image first, with a key derived from
    the same step key. BatchNorm statistics (if any) are updated from the batch. Returns the
    new state and {'loss', 'accuracy'} of the batch, computed before the update.
    """
    return _train_step(state, batch, dropout_key, augment)


@functools.partial(jax.jit, donate_argnums=0,
                   static_argnames=("batch_size", "sharding", "augment"))
def train_step_on_device(state: TrainState, train_data: Batch, order: jax.Array,
                         index_in_epoch: jax.Array, dropout_key: jax.Array, *,
                         batch_size: int, sharding=None, augment=None):
    """`train_step` on batch `index_in_epoch` of the epoch order `order`, gathered on the
    device from the device-resident `train_data`: no host work and no transfer per step.
    `sharding` splits the batch across the devices of the mesh."""
    rows = jax.lax.dynamic_slice_in_dim(order, index_in_epoch * batch_size, batch_size)
    batch = {name: array[rows] for name, array in train_data.items()}
    if sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, sharding)
    return _train_step(state, batch, dropout_key, augment)


@jax.jit
def eval_step(state: TrainState, batch: Batch):
    """Sums over one padded batch; `batch['mask']` is 1 for real examples, 0 for padding."""
    logits_bk = state.apply_fn(model_variables(state), batch["image"])
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


def eval_batches(split: data_lib.Split, batch_size: int, sharding=None) -> list[Batch]:
    """`split` as padded batches of `batch_size`, placed on the device(s) once, so that
    evaluating after every epoch transfers nothing."""
    batches = []
    for start in range(0, len(split), batch_size):
        batch = pad_batch(split.images[start:start + batch_size],
                          split.labels[start:start + batch_size], batch_size)
        batches.append({k: parallel.put(v, sharding) if sharding is not None
                        else jnp.asarray(v) for k, v in batch.items()})
    return batches


def evaluate(state: TrainState, split, batch_size: int = 1000) -> dict:
    """Loss and accuracy over `split` (a Split, or its `eval_batches`), every example
    counted exactly once: every batch has the same shape, so there is one compilation."""
    batches = split if isinstance(split, list) else eval_batches(split, batch_size)
    totals, in_flight = None, []
    for batch in batches:
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        in_flight.append(sums["count"])
        if len(in_flight) > MAX_STEPS_IN_FLIGHT:  # see MAX_STEPS_IN_FLIGHT
            in_flight.pop(0).block_until_ready()
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count,
            "accuracy": int(totals["correct"]) / count,
            "count": count}


# ---------------------------------------------------------------------------------------
# Building the state


def compute_dtype(config: ml_collections.ConfigDict):
    name = config.get("dtype", "float32")
    if name not in ("float32", "bfloat16"):
        raise FlaxDigitsError(f"config.dtype={name!r} must be 'float32' or 'bfloat16'")
    return jnp.dtype(name)


def create_model(model_config: ml_collections.ConfigDict, dtype=jnp.float32):
    kwargs = model_config.to_dict()
    name = kwargs.pop("name")
    try:
        return models.create_model(name, dtype=dtype, **kwargs)
    except (ValueError, TypeError) as e:
        raise FlaxDigitsError(f"config.model: {e}") from None


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
    lr = optim_config.learning_rate
    if optim_config.schedule == "constant":
        return optax.constant_schedule(lr)
    if optim_config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=max(total_steps, 1))
    if optim_config.schedule == "one_cycle":
        # Warm up to `learning_rate` over the first `warmup_fraction` of training, then
        # anneal (cosine) to nearly 0: lets BatchNorm networks train fast at high rates.
        return optax.cosine_onecycle_schedule(
            max(total_steps, 1), lr, pct_start=optim_config.get("warmup_fraction", 0.25))
    raise FlaxDigitsError(f"config.optim.schedule={optim_config.schedule!r} must be "
                          f"'constant', 'cosine' or 'one_cycle'")


def create_train_state(config, model, key: jax.Array, total_steps: int,
                       sharding=None) -> TrainState:
    """A fresh TrainState; with `sharding`, built directly in that placement (replicated
    on every device of the mesh)."""
    tx = optax.adam(learning_rate_schedule(config.optim, total_steps))

    def build(key):
        dummy = jnp.zeros((1, data_lib.IMAGE_SIDE, data_lib.IMAGE_SIDE, 1), jnp.float32)
        variables = model.init(key, dummy)
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}))

    return jax.jit(build, out_shardings=sharding)(key)


# ---------------------------------------------------------------------------------------
# Bookkeeping: time in steps, metrics on disk, progress in the log


def is_time(step: int, every: int) -> bool:
    """True at steps `every`, 2*`every`, ... (steps count from 1 once done); never if <= 0."""
    return every > 0 and step % every == 0


class MetricWriter:
    """One JSON object per line in `path`, flushed at once so a crash loses nothing.

    A resumed run first drops the records after its checkpoint (and any final record), so
    the file ends up as an uninterrupted run would have written it.
    """

    def __init__(self, path: pathlib.Path, resume_step: int = 0):
        self.path = path
        kept = []
        if resume_step and path.is_file():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("step", 0) <= resume_step and not record.get("final"):
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))

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


def host_metrics(pending: list, first_step: int) -> dict[str, list[float]]:
    """Pulls per-step device metrics to the host; stops the run at a non-finite loss."""
    pending = jax.device_get(pending)
    losses = [float(m["loss"]) for m in pending]
    for offset, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise FlaxDigitsError(
                f"training diverged: loss is {loss} at step {first_step + offset + 1}; "
                f"try a lower config.optim.learning_rate")
    return {"loss": losses, "accuracy": [float(m["accuracy"]) for m in pending]}


def new_loop_state() -> dict:
    """Host-side bookkeeping that a checkpoint carries along with the TrainState.

    Per-step values, not running sums: a run resumed anywhere then averages exactly the same
    numbers in the same order as an uninterrupted one.
    """
    return {"window": {"loss": [], "accuracy": []}, "epoch": {"loss": [], "accuracy": []}}


# How many dispatched training steps may wait for the device: enough to hide the host's
# dispatch time, few enough to keep every device's queue short.
MAX_STEPS_IN_FLIGHT = 2


class StopSignals:
    """Within `with`, SIGTERM and SIGINT ask the loop to stop after the current step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: Optional[int] = None
        self.previous = {}

    def _handle(self, signum, frame):
        if self.received is None:
            logging.warning("%s received: stopping after this step, with a checkpoint",
                            signal.Signals(signum).name)
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals need the main one
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@functools.partial(jax.jit, static_argnames=("size", "sharding"))
def _epoch_order(key, epoch, *, size, sharding):
    order = jax.random.permutation(jax.random.fold_in(key, epoch), size)
    return order if sharding is None else jax.lax.with_sharding_constraint(order, sharding)


def epoch_order(key: jax.Array, epoch: int, size: int, sharding=None) -> jax.Array:
    """The order of the training examples in `epoch` (a device array): a function of the
    key and epoch only, so a resumed run shuffles exactly as an uninterrupted one."""
    return _epoch_order(key, epoch, size=size, sharding=sharding)


# ---------------------------------------------------------------------------------------
# The run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *,
                       stop_at_step: Optional[int] = None) -> dict:
    """Trains `config.num_epochs` epochs, validating after each; tests at the end.

    Writes `workdir/config.json`, `workdir/metrics.jsonl` and `workdir/checkpoints/`; resumes
    from the latest checkpoint if there is one. Returns the final metrics of the last step
    (`test_accuracy` and `test_loss` where the data has a labelled test split) and, under
    'report', the report of the best checkpoint (see `evaluate.write_report`). SIGTERM or
    SIGINT stops the run after the current step with a checkpoint (raising RunStopped); so does
    `stop_at_step` (returning {'stopped_at_step': step}), for tests and time-boxed sessions.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints)
    try:
        return _train_and_evaluate(config, workdir, checkpoints, stop_at_step)
    finally:
        checkpoints.close()  # waits for a save still being written


def _train_and_evaluate(config, workdir, checkpoints, stop_at_step):
    if checkpoints.steps():
        checkpoint_lib.check_resumable(workdir, config)
    (workdir / checkpoint_lib.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + "\n")
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
    checkpoint_every = config.checkpoint_every_steps or steps_per_epoch

    # Every device of every host: the batch is split across them, the rest replicated.
    mesh = parallel.data_mesh()
    parallel.check_divisible(config.batch_size, mesh, "batch_size")
    parallel.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    train_data = {"image": parallel.put(train.images, replicated),
                  "label": parallel.put(train.labels, replicated)}
    val_batches = (None if dataset.validation is None else
                   eval_batches(dataset.validation, config.eval_batch_size, batch_sharding))

    try:
        augment = augment_lib.from_config(config)
    except ValueError as e:
        raise FlaxDigitsError(str(e)) from None
    if augment is not None:
        logging.info("Augmentation of training batches: %s", augment)

    init_key, shuffle_key, dropout_key = jax.random.split(jax.random.key(config.seed), 3)
    model = create_model(config.model, compute_dtype(config))
    state = create_train_state(config, model, init_key, total_steps, sharding=replicated)
    logging.info("Model %s: %d parameters", config.model.name, models.count_params(
        {"params": state.params}))

    loop, start_step = new_loop_state(), 0
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, loop, start_step = restored
        logging.info("resumed from step %d (%s)", start_step, checkpoints.directory)
    if start_step >= total_steps:
        logging.info("This run already finished at step %d: re-reporting, not retraining",
                      start_step)

    writer = MetricWriter(workdir / "metrics.jsonl", resume_step=start_step)
    progress = Progress(total_steps, start_step)
    start_time = time.monotonic()
    pending = []  # device metrics of the steps after `flushed_step`, not yet on the host
    flushed_step = start_step

    def flush(done):
        nonlocal pending, flushed_step
        window = host_metrics(pending, flushed_step)
        pending, flushed_step = [], done
        for part in ("window", "epoch"):
            for name in ("loss", "accuracy"):
                loop[part][name] += window[name]

    order, order_epoch = None, None
    with StopSignals() as stop:
        for step in range(start_step, total_steps):
            epoch, index_in_epoch = divmod(step, steps_per_epoch)
            if order_epoch != epoch:
                order = epoch_order(shuffle_key, epoch, len(train), replicated)
                order_epoch = epoch
            state, metrics = train_step_on_device(
                state, train_data, order, index_in_epoch, dropout_key,
                batch_size=config.batch_size, augment=augment,
                sharding=batch_sharding if mesh.devices.size > 1 else None)
            pending.append(metrics)  # stays on the device until the next log point
            if len(pending) > MAX_STEPS_IN_FLIGHT:
                # Bounded asynchrony: the host runs at most this many steps ahead of the
                # device (XLA:CPU deadlocks in collectives with an unbounded queue).
                pending[-1 - MAX_STEPS_IN_FLIGHT]["loss"].block_until_ready()

            done = step + 1
            log_now = is_time(done, config.log_every_steps)
            end_of_epoch = done % steps_per_epoch == 0
            stopping = stop.received is not None or done == stop_at_step
            save_now = is_time(done, checkpoint_every) or end_of_epoch or stopping
            if not (log_now or end_of_epoch or save_now):
                continue
            flush(done)
            rate, eta = None, None
            if log_now or end_of_epoch:
                rate, eta = progress.report(done)
            if log_now:
                window = loop["window"]
                record = {"step": done, "train_loss": float(np.mean(window["loss"])),
                          "train_accuracy": float(np.mean(window["accuracy"])),
                          "steps_per_second": rate}
                loop["window"] = {"loss": [], "accuracy": []}
                writer.write(record)
                logging.info("step %d/%d: loss %.4f, accuracy %.4f, %.1f steps/s, ETA %s",
                             done, total_steps, record["train_loss"],
                             record["train_accuracy"], rate, format_seconds(eta))
            val_accuracy = None
            if end_of_epoch:
                record = {"step": done, "epoch": epoch + 1,
                          "train_loss": float(np.mean(loop["epoch"]["loss"])),
                          "train_accuracy": float(np.mean(loop["epoch"]["accuracy"]))}
                loop["epoch"] = {"loss": [], "accuracy": []}
                if dataset.validation is not None:
                    val = evaluate(state, val_batches)
                    record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                    val_accuracy = val["accuracy"]
                record["elapsed_seconds"] = time.monotonic() - start_time
                writer.write(record)
                logging.info("epoch %d/%d: %s, ETA %s", epoch + 1, config.num_epochs,
                             ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                       if k.startswith(("train_", "val_"))),
                             format_seconds(eta))
                # The rate just reported included validation; measure the next window afresh.
                progress = Progress(total_steps, done)
            if save_now:
                checkpoints.save(done, state, loop, val_accuracy)
            if stopping:
                checkpoints.wait()
                if stop.received is not None:
                    name = signal.Signals(stop.received).name
                    raise RunStopped(
                        f"stopped by {name} at step {done}/{total_steps}; checkpoint saved in "
                        f"{checkpoints.directory}; run the same command to resume",
                        stop.received)
                logging.info("Stopped at step %d as asked; checkpoint saved", done)
                return {"stopped_at_step": done}

    final = {"step": total_steps, "final": True,
             "train_seconds": time.monotonic() - start_time}
    test_batches = (None if dataset.test is None else
                    eval_batches(dataset.test, config.eval_batch_size, batch_sharding))
    for name, batches in (("val", val_batches), ("test", test_batches)):
        if batches is not None:
            result = evaluate(state, batches)
            final.update({f"{name}_loss": result["loss"], f"{name}_accuracy": result["accuracy"]})
    if dataset.test is not None:
        logging.info("Test: loss %.4f, accuracy %.4f over %d examples", final["test_loss"],
                     final["test_accuracy"], len(dataset.test))
    else:
        logging.info("No labelled test split in %s", dataset.source)
    writer.write(final)

    # The run ends with the report of the model that --mode=evaluate and --mode=predict use:
    # the checkpoint with the best validation accuracy (usually the last one).
    checkpoints.wait()
    best_step = checkpoints.best_step()
    trained = checkpoint_lib.Trained(model, checkpoints.restore_variables(best_step), config,
                                     best_step)
    report = evaluate_lib.write_report(workdir, trained, dataset, config)
    return {**final, "report": report}
