"""Bookkeeping around the steps, one job per object: time in steps, training metrics from
the device, records on disk, progress in the log, stop signals."""

import logging
import math
import signal
import threading
import time
from typing import Optional

import jax
import numpy as np

from flaxdigits import runtime
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import Workdir

log = logging.getLogger(__name__)


def is_time(step: int, every: int) -> bool:
    """True at steps `every`, 2*`every`, ... (steps count from 1 once done); never if <= 0."""
    return every > 0 and step % every == 0


class TrainMetrics:
    """Per-step loss and accuracy: kept on the device until the loop asks for them, then
    averaged over the log window and over the epoch.

    The host side (`state()`) is checkpointed with the TrainState. It holds per-step values,
    not running sums, so a run resumed anywhere averages exactly the same numbers in the same
    order as an uninterrupted one.
    """

    NAMES = ("loss", "accuracy")

    def __init__(self, saved: Optional[dict] = None):
        empty = {"window": {n: [] for n in self.NAMES}, "epoch": {n: [] for n in self.NAMES}}
        self._host = saved or empty
        self._pending: list = []  # device metrics of steps not yet pulled to the host

    def add(self, device_metrics: dict) -> None:
        self._pending.append(device_metrics)

    def pull(self, done: int) -> None:
        """Brings the pending steps (the last one is step `done`) to the host; stops the run
        at a non-finite loss, naming its step."""
        pending = jax.device_get(self._pending)
        first = done - len(pending) + 1
        for offset, metrics in enumerate(pending):
            if not math.isfinite(float(metrics["loss"])):
                raise FlaxDigitsError(
                    f"training diverged: loss is {float(metrics['loss'])} at step "
                    f"{first + offset}; try a lower config.optim.learning_rate")
        for part in ("window", "epoch"):
            for name in self.NAMES:
                self._host[part][name] += [float(m[name]) for m in pending]
        self._pending = []

    def take(self, part: str) -> dict:
        """{'train_loss', 'train_accuracy'} averaged over the `part` ('window' or 'epoch')
        just ended, which starts afresh."""
        values = self._host[part]
        self._host[part] = {n: [] for n in self.NAMES}
        return {f"train_{n}": float(np.mean(values[n])) for n in self.NAMES}

    def state(self) -> dict:
        """What a checkpoint carries (after `pull`)."""
        return self._host


class MetricWriter:
    """Records in the workdir's metrics.jsonl, one JSON object per line, and the same
    numbers as TensorBoard scalars in W/tensorboard/ (`tensorboard --logdir runs`), each
    under its metrics.jsonl name at its step.

    A resumed run first drops the records after its checkpoint (and any final record), so
    the file ends up as an uninterrupted run would have written it. The event files are
    derived from metrics.jsonl: they are written afresh from the records kept, so the two
    always agree. Each record is flushed to both at once (a notebook's TensorBoard shows
    it, a crash loses nothing already logged).
    """

    def __init__(self, workdir: Workdir, resume_step: Optional[int] = 0):
        self.workdir = workdir
        self.events = None
        if resume_step is not None:
            self.start(resume_step)

    def start(self, resume_step: int) -> None:
        """Keeps the records up to `resume_step` (0: none), in both forms."""
        workdir, kept = self.workdir, []
        if resume_step:  # a fresh run starts a fresh file
            kept = [r for r in workdir.read_metrics()
                    if r.get("step", 0) <= resume_step and not r.get("final")]
        workdir.rewrite_metrics(kept)
        if workdir.writes:
            self.events = _fresh_event_writer(workdir.tensorboard_dir)
            for record in kept:
                self._add_events(record)
            self.events.flush()

    def write_scalars(self, step: int, scalars: dict) -> dict:
        record = {"step": step, **scalars}
        self.workdir.append_metrics(record)
        if self.events is not None:
            self._add_events(record)
            self.events.flush()
        return record

    def _add_events(self, record: dict) -> None:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value,
                                                                                   bool):
                self.events.add_scalar(name, value, global_step=record["step"])

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


def _fresh_event_writer(folder):
    """A TensorBoard event writer in `folder`, its old event files removed (they are
    rebuilt from metrics.jsonl). tensorboardX writes them without TensorFlow."""
    import tensorboardX

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    return tensorboardX.SummaryWriter(logdir=str(folder), flush_secs=5)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """What the log says of speed: steps per second over the last window, and the time
    left at the average rate of the whole run so far (from `start_clock`, after the first
    step, so that compilation does not count; validation and checkpoints do, as they will
    recur). A line is also due every `every_seconds`, so that a slow run still reports."""

    def __init__(self, total_steps: int, first_step: int = 0, every_seconds: float = 30.0,
                 now: Optional[float] = None):
        self.total_steps = total_steps
        self.every_seconds = every_seconds
        self.start_clock(first_step, now)

    def start_clock(self, step: int, now: Optional[float] = None) -> None:
        """Measures the run's average rate from `step` on."""
        self.run_step = step
        self.run_time = time.monotonic() if now is None else now
        self.restart(step, self.run_time)

    def restart(self, step: int, now: Optional[float] = None) -> None:
        """Measures the next window from `step` (after time spent on something else, such as
        validation, that the window's rate should not include)."""
        self.last_step = step
        self.last_time = time.monotonic() if now is None else now

    def due(self, now: Optional[float] = None) -> bool:
        """Whether `every_seconds` have passed since the last line."""
        now = time.monotonic() if now is None else now
        return now - self.last_time >= self.every_seconds

    def report(self, step: int, now: Optional[float] = None) -> tuple[float, float]:
        """(steps/s since the last report, ETA in seconds at the run's average rate); `now`
        for tests."""
        now = time.monotonic() if now is None else now
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        run_rate = (step - self.run_step) / max(now - self.run_time, 1e-9)
        self.last_step, self.last_time = step, now
        return rate, (self.total_steps - step) / max(run_rate, 1e-9)


class Profiler:
    """An opt-in jax.profiler trace of `num_steps` training steps into `folder` (a Perfetto
    trace, perfetto_trace.json.gz, and the .xplane.pb that TensorBoard's profile tab reads),
    starting AFTER_STEPS steps into the process so that compilation stays out of it."""

    AFTER_STEPS = 5

    def __init__(self, folder, first_step: int, num_steps: int, last_step: int):
        self.folder = folder
        self.start_at = min(first_step + self.AFTER_STEPS, last_step - 1)
        self.stop_at = min(self.start_at + num_steps, last_step)
        self.enabled = num_steps > 0 and self.start_at >= first_step
        self.tracing = False

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.start_at:
            self.folder.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.folder), create_perfetto_trace=True)
            self.tracing = True
            log.info("Profiling steps %d to %d into %s", step + 1, self.stop_at, self.folder)

    def after_step(self, step: int, state) -> None:
        if self.tracing and step + 1 == self.stop_at:
            self.stop(state)

    def stop(self, state=None) -> None:
        """Ends the trace (also when the run stops early); waits for the traced steps."""
        if self.tracing:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False
            traces = sorted(self.folder.glob("**/perfetto_trace.json.gz"))
            log.info("Profile written: %s (open it at https://ui.perfetto.dev)",
                     traces[-1] if traces else self.folder)


class StopSignals:
    """Within `with`, SIGTERM and SIGINT ask the loop to stop after the current step.

    Several processes stop together: each one's signal is shared with the others every
    SYNC_EVERY_STEPS steps (and at the last step), so they all stop after the same step,
    whichever of them got it, and save one checkpoint. One process stops at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    SYNC_EVERY_STEPS = 10  # a bounded wait (each sync holds every process up briefly)

    def __init__(self, stopping: str = "stopping after this step, with a checkpoint"):
        self.received: Optional[int] = None
        self.previous = {}
        self.processes = jax.process_count()
        self.stopping = stopping  # what the warning says happens next

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("%s received: %s", signal.Signals(signum).name, self.stopping)
        self.received = signum

    def agreed(self, step: int, last_step: int) -> Optional[int]:
        """The signal on which every process stops after `step`, or None to go on."""
        if self.processes == 1:
            return self.received
        if step % self.SYNC_EVERY_STEPS and step != last_step:
            return None
        from jax.experimental import multihost_utils

        received = multihost_utils.process_allgather(np.int32(self.received or 0))
        return int(np.max(received)) or None

    def describe(self, signum: int) -> str:
        """'SIGTERM', or where another process got it, 'SIGTERM (sent to another process)'."""
        name = signal.Signals(signum).name
        return name if self.received == signum else f"{name} (sent to another process)"

    def __enter__(self):
        noted = runtime.noted_signal()
        if noted is not None and self.received is None:  # it came before the loop
            self._handle(noted, None)
        if threading.current_thread() is threading.main_thread():  # signals need the main one
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        runtime.forget_noted_signals()  # honoured: a later run in this process starts clean
        for s, handler in self.previous.items():
            signal.signal(s, handler)
