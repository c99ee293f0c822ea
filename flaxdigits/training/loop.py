"""The driver: `train_and_evaluate(config, workdir)`.

    checked config -> Dataset -> Trainer (data on the device, the jitted step) -> per-step
    metrics -> metrics.jsonl and the log -> checkpoints -> the report of the best checkpoint

Time is counted in steps; epochs are converted to steps once. The loop body calls out to
small objects (training/hooks.py) for everything but the step itself.
"""

import logging
import signal
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flaxdigits import augment as augment_lib
from flaxdigits import config as config_lib
from flaxdigits import data, logs, models, parallel, runtime
from flaxdigits.checkpoint import Checkpoints
from flaxdigits.errors import FlaxDigitsError, RunStopped
from flaxdigits.evaluation import inference, metrics, report as report_lib
from flaxdigits.training import hooks, line, optim, steps
from flaxdigits.workdir import Workdir

log = logging.getLogger(__name__)

# How many dispatched steps may wait for the device: enough to hide the host's dispatch
# time, few enough to keep every device's queue short (XLA:CPU deadlocks in the all-reduce
# of several host devices when the queue is unbounded).
MAX_STEPS_IN_FLIGHT = 2


class Trainer:
    """The training split on the device(s) and the jitted step over it: the part of a run
    that benchmarks/speed.py times. Parameters and data are replicated on every device of
    the mesh; each batch is gathered on the device and split across the mesh."""

    def __init__(self, config: ml_collections.ConfigDict, train_split: data.Split, mesh=None):
        self.batch_size = config.batch_size
        self.steps_per_epoch = len(train_split) // config.batch_size
        if self.steps_per_epoch == 0:
            raise FlaxDigitsError(
                f"config.batch_size={config.batch_size} is larger than the training split "
                f"({len(train_split)} examples)")
        self.mesh = mesh if mesh is not None else parallel.data_mesh()
        self.replicated = parallel.replicated(self.mesh)
        self.batch_sharding = parallel.batch_sharded(self.mesh)
        self.train_size = len(train_split)
        self.train_data = {"image": parallel.put(train_split.images, self.replicated),
                           "label": parallel.put(train_split.labels, self.replicated)}
        self.augment = augment_lib.from_config(config)
        # The last `clean_final_epochs` epochs see the digits as they are (a final low-rate
        # pass on clean data, after augmented ones).
        self.clean_from_epoch = config.num_epochs - config.augment.clean_final_epochs
        self.recipe = steps.Recipe(ema_decay=float(config.optim.ema_decay),
                                   label_smoothing=float(config.optim.label_smoothing))
        self.init_key, self.shuffle_key, self.step_key = jax.random.split(
            jax.random.key(config.seed), 3)
        self.model = models.model_from_config(config)
        self.optim_config = config.optim
        self._order, self._order_epoch = None, None
        self._in_flight: list = []

    def initial_state(self, total_steps: int) -> steps.TrainState:
        tx = optim.create_optimizer(self.optim_config, total_steps)
        return steps.create_train_state(self.model, tx, self.init_key, self.replicated,
                                        averaged=self.recipe.ema_decay > 0)

    def step(self, state: steps.TrainState, step: int):
        """Runs training step `step` (counting from 0); returns (state, device metrics). At
        most MAX_STEPS_IN_FLIGHT steps run ahead of the device."""
        epoch, index_in_epoch = divmod(step, self.steps_per_epoch)
        if self._order_epoch != epoch:
            self._order = steps.epoch_order(self.shuffle_key, epoch, self.train_size,
                                            self.replicated)
            self._order_epoch = epoch
        state, step_metrics = steps.train_step_on_device(
            state, self.train_data, self._order, index_in_epoch, self.step_key,
            batch_size=self.batch_size, recipe=self.recipe,
            augment=self.augment if epoch < self.clean_from_epoch else None,
            sharding=self.batch_sharding if self.mesh.devices.size > 1 else None)
        self._in_flight.append(step_metrics["loss"])
        if len(self._in_flight) > MAX_STEPS_IN_FLIGHT:
            self._in_flight.pop(0).block_until_ready()
        return state, step_metrics

    def eval_batches(self, split: data.Split, batch_size: int) -> list[dict]:
        """`split` as padded batches, placed on the device(s) once, so that validating after
        every epoch transfers nothing. A batch size above the split's size shrinks to it
        (rounded up to split across the devices): padding is never most of a batch."""
        devices = self.mesh.devices.size
        batch_size = min(batch_size, -(-len(split) // devices) * devices)
        return [{k: parallel.put(v, self.batch_sharding) for k, v in batch.items()}
                for batch in data.padded_batches({"image": split.images,
                                                  "label": split.labels}, batch_size)]


def evaluate(state: steps.TrainState, batches: list[dict]) -> dict:
    """Loss and accuracy over padded `batches` (Trainer.eval_batches), every example counted
    exactly once."""
    totals, in_flight = None, []
    for batch in batches:
        sums = steps.eval_step(state, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        in_flight.append(sums["count"])
        if len(in_flight) > MAX_STEPS_IN_FLIGHT:
            in_flight.pop(0).block_until_ready()
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count,
            "accuracy": int(totals["correct"]) / count, "count": count}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *,
                       stop_at_step: Optional[int] = None) -> dict:
    """Trains `config.num_epochs` epochs, validating after each; tests at the end.

    Writes config.json, metrics.jsonl and checkpoints/ into `workdir`, and ends with the
    report of the best checkpoint (evaluation/report.py); resumes from the latest checkpoint
    if there is one. Returns the final record of metrics.jsonl (the last step's
    `test_accuracy` and `test_loss` where the data has a labelled test split) and, under
    'report', the report. SIGTERM or SIGINT stops the run after the current step with a
    checkpoint (raising RunStopped); so does `stop_at_step` (returning {'stopped_at_step':
    step}), for tests and time-boxed sessions.
    """
    logs.show_progress()
    runtime.enable_compilation_cache()  # unless the program decided already
    config_lib.validate(config)
    workdir = Workdir(workdir, writes=runtime.is_primary())
    logs.tag_process(jax.process_index(), jax.process_count())
    with workdir.lock():  # one training run per workdir
        checkpoints = Checkpoints(workdir, config.keep_checkpoints)
        writer = hooks.MetricWriter(workdir, resume_step=None)  # started once resumed
        try:
            result = _train_and_evaluate(config, workdir, checkpoints, writer, stop_at_step)
        except BaseException:
            checkpoints.close(quietly=True)  # the first error is the one to report
            raise
        finally:
            writer.close()
        checkpoints.close()  # waits for a save still being written
        return result


def _stop_if_signalled(when: str) -> None:
    """A stop signal that came before the first step (and was only noted: Python drops an
    exception raised inside a garbage-collection callback) stops the run now, before it
    writes anything more, rather than after compiling and training a step."""
    signum = runtime.noted_signal()
    if signum is not None:
        runtime.forget_noted_signals()
        raise RunStopped(f"stopped by {signal.Signals(signum).name} {when}, before the first "
                         f"step: nothing was trained; run the same command to start", signum)


def _train_and_evaluate(config, workdir: Workdir, checkpoints: Checkpoints,
                        writer: hooks.MetricWriter, stop_at_step: Optional[int]) -> dict:
    resuming = bool(checkpoints.steps())
    if resuming:
        config_lib.check_resumable(config, workdir)
    log.info("Config: model %s, %d epochs, batch %d, Adam %s at %g, seed %d",
             config.model.name, config.num_epochs, config.batch_size,
             config.optim.schedule, config.optim.learning_rate, config.seed)
    log.info("JAX devices: %s", jax.devices())

    dataset = data.load_dataset(config.data)
    _stop_if_signalled("while the data was loading")
    workdir.write_config(config)  # written once the run is known to start
    workdir.check_same_data(dataset.fingerprint, dataset.source, resuming)
    log.info("Examples: train %d, validation %d, test %d", len(dataset.train),
             len(dataset.validation or []), len(dataset.test or []))
    trainer = Trainer(config, dataset.train)
    total_steps = config.num_epochs * trainer.steps_per_epoch
    checkpoint_every = config.checkpoint_every_steps or trainer.steps_per_epoch
    val_batches = (None if dataset.validation is None else
                   trainer.eval_batches(dataset.validation, config.eval_batch_size))
    if trainer.augment is not None:
        log.info("Augmentation of training batches: %s", trainer.augment)

    state = trainer.initial_state(total_steps)
    log.info("Model %s: %d parameters", config.model.name,
             models.count_params({"params": state.params}))
    train_metrics, start_step = hooks.TrainMetrics(), 0
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, saved_metrics, start_step = restored
        train_metrics = hooks.TrainMetrics(saved_metrics)
        log.info("resumed from step %d (%s)", start_step, checkpoints.directory)
    if start_step >= total_steps:
        log.info("This run already finished at step %d: re-reporting, not retraining",
                 start_step)

    _stop_if_signalled("while the model was being set up")
    writer.start(start_step)
    schedule = optim.learning_rate_schedule(config.optim, total_steps)
    progress = hooks.Progress(total_steps, start_step)
    profiler = hooks.Profiler(workdir.profile_dir, start_step,
                              config.profile_steps if workdir.writes else 0, total_steps)
    start_time = time.monotonic()
    val = None  # the latest validation in this process
    with hooks.StopSignals() as stop:
        for step in range(start_step, total_steps):
            if step == start_step:
                log.info("Compiling the training step (the first step waits for it)")
            profiler.before_step(step)
            state, step_metrics = trainer.step(state, step)
            profiler.after_step(step, state)
            train_metrics.add(step_metrics)  # stays on the device until it is needed
            if step == start_step:
                jax.block_until_ready(state)
                log.info("First step done in %.1f s, compilation included (the compilation "
                         "cache shortens it next time)", time.monotonic() - start_time)
                progress.start_clock(step + 1)

            done = step + 1
            log_now = hooks.is_time(done, config.log_every_steps)
            end_of_epoch = done % trainer.steps_per_epoch == 0
            stop_signal = stop.agreed(done, total_steps)
            stopping = stop_signal is not None or done == stop_at_step
            save_now = hooks.is_time(done, checkpoint_every) or end_of_epoch or stopping
            if not (log_now or end_of_epoch or save_now):
                if progress.due():  # a slow run reports by time too (the log only)
                    rate, eta = progress.report(done)
                    log.info("step %d/%d: %.1f steps/s, ETA %s", done, total_steps, rate,
                             hooks.format_seconds(eta))
                continue
            train_metrics.pull(done)
            if log_now or end_of_epoch:
                rate, eta = progress.report(done)
            if log_now:
                record = writer.write_scalars(done, {**train_metrics.take("window"),
                                                     "steps_per_second": rate,
                                                     "learning_rate": float(schedule(step))})
                log.info("step %d/%d: loss %.4f, accuracy %.4f, %.1f steps/s, ETA %s", done,
                         total_steps, record["train_loss"], record["train_accuracy"], rate,
                         hooks.format_seconds(eta))
            val = None
            if end_of_epoch:
                epoch = done // trainer.steps_per_epoch
                scalars = {"epoch": epoch, **train_metrics.take("epoch")}
                if val_batches is not None:
                    val = evaluate(state, val_batches)
                    scalars.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                scalars["elapsed_seconds"] = time.monotonic() - start_time
                writer.write_scalars(done, scalars)
                shown = {k: v for k, v in scalars.items() if k.startswith(("train_", "val_"))}
                log.info("epoch %d/%d: %s, ETA %s", epoch, config.num_epochs,
                         ", ".join(f"{k} {v:.4f}" for k, v in shown.items()),
                         hooks.format_seconds(eta))
                progress.restart(done)  # the rate just reported included validation
            if save_now:
                checkpoints.save(done, state, train_metrics.state(),
                                 None if val is None else val["accuracy"])
            if stopping:
                profiler.stop(state)
                checkpoints.wait()
                if stop_signal is not None:
                    raise RunStopped(
                        f"stopped by {stop.describe(stop_signal)} at step "
                        f"{done}/{total_steps}; checkpoint saved in {checkpoints.directory}; "
                        f"run the same command to resume", stop_signal)
                log.info("Stopped at step %d as asked; checkpoint saved", done)
                return {"stopped_at_step": done}
    # A signal just after the last step's check: still honoured (several processes agreed at
    # the last step; a later signal ends the one process that gets it, after the report).
    if stop.received is not None and stop.processes == 1:
        checkpoints.wait()
        raise RunStopped(f"stopped by {signal.Signals(stop.received).name} after the last "
                         f"step; checkpoint saved in {checkpoints.directory}; run the same "
                         f"command to report", stop.received)

    final = {"final": True, "train_seconds": time.monotonic() - start_time}
    if val is None and val_batches is not None:  # a finished run, re-reported
        val = evaluate(state, val_batches)
    result = _test_and_report(config, workdir, dataset, trainer, state, checkpoints, writer,
                              final, val)
    line.ensure_trained(config, workdir, dataset)  # where config.line_reader.steps > 0
    return result


def _test_and_report(config, workdir: Workdir, dataset: data.Dataset, trainer: Trainer,
                     state: steps.TrainState, checkpoints: Checkpoints,
                     writer: hooks.MetricWriter, final: dict, val: Optional[dict]) -> dict:
    """The end of a run: the last step's validation (`val`) and test figures as the final
    record, then the report of the model that --mode=evaluate and --mode=predict use, the
    checkpoint with the best validation accuracy. That is usually the last step's model,
    whose test predictions are then reused rather than computed again."""
    total_steps = config.num_epochs * trainer.steps_per_epoch
    if val is not None:
        final.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    variables = jax.device_get(steps.model_variables(state))
    test_log_probabilities = None
    if dataset.test is not None:
        test_log_probabilities = inference.predict_log_probabilities(
            trainer.model, variables, dataset.test.images, config.eval_batch_size)
        test = metrics.loss_and_accuracy(test_log_probabilities, dataset.test.label_ids)
        final.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        log.info("Test: loss %.4f, accuracy %.4f over %d examples", test["loss"],
                 test["accuracy"], len(dataset.test))
    else:
        log.info("No labelled test split in %s", dataset.source)
    final = writer.write_scalars(total_steps, final)

    checkpoints.wait()
    best_step = checkpoints.best_step()
    probabilities_nk = None
    if (best_step == total_steps and inference.is_plain(config)
            and test_log_probabilities is not None):
        probabilities_nk = np.exp(test_log_probabilities)
    else:
        variables, best_step = checkpoints.restore_readable_variables(best_step)
    trained = inference.Trained(trainer.model, variables, config, best_step)
    report = report_lib.write_report(workdir, trained, dataset, config,
                                     probabilities_nk=probabilities_nk)
    return {**final, "report": report}
