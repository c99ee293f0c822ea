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
    """Records in the workdir's metrics.jsonl, one JSON object per line.

    A resumed run first drops the records after its checkpoint (and any final record), so
    the file ends up as an uninterrupted run would have written it.
    """

    def __init__(self, workdir: Workdir, resume_step: int = 0):
        self.workdir = workdir
        kept = []
        if resume_step:  # a fresh run starts a fresh file
            kept = [r for r in workdir.read_metrics()
                    if r.get("step", 0) <= resume_step and not r.get("final")]
        workdir.rewrite_metrics(kept)

    def write_scalars(self, step: int, scalars: dict) -> dict:
        record = {"step": step, **scalars}
        self.workdir.append_metrics(record)
        return record


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Steps per second since the last report, and the time left at that rate."""

    def __init__(self, total_steps: int, first_step: int = 0, now: Optional[float] = None):
        self.total_steps = total_steps
        self.restart(first_step, now)

    def restart(self, step: int, now: Optional[float] = None) -> None:
        """Measures the next window from `step` (after time spent on something else, such as
        validation, that the rate should not include)."""
        self.last_step = step
        self.last_time = time.monotonic() if now is None else now

    def report(self, step: int, now: Optional[float] = None) -> tuple[float, float]:
        """(steps/s since the last report, ETA in seconds); `now` for tests."""
        now = time.monotonic() if now is None else now
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        return rate, (self.total_steps - step) / max(rate, 1e-9)


class StopSignals:
    """Within `with`, SIGTERM and SIGINT ask the loop to stop after the current step.

    Several processes stop together: each one's signal is shared with the others every
    SYNC_EVERY_STEPS steps (and at the last step), so they all stop after the same step,
    whichever of them got it, and save one checkpoint. One process stops at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    SYNC_EVERY_STEPS = 10  # a bounded wait (each sync holds every process up briefly)

    def __init__(self):
        self.received: Optional[int] = None
        self.previous = {}
        self.processes = jax.process_count()

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("%s received: stopping after this step, with a checkpoint",
                        signal.Signals(signum).name)
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
        if threading.current_thread() is threading.main_thread():  # signals need the main one
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
