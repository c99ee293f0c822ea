"""flaxdigits/training/hooks.py: bookkeeping, tested with explicit values and timestamps."""

import signal

import numpy as np
import pytest

from flaxdigits import runtime
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.training import hooks
from flaxdigits.workdir import Workdir


def test_is_time_and_progress_with_explicit_timestamps():
    assert [s for s in range(1, 11) if hooks.is_time(s, 4)] == [4, 8]
    assert not hooks.is_time(5, 0)
    progress = hooks.Progress(total_steps=1000, first_step=0, now=100.0)
    rate, eta = progress.report(200, now=110.0)
    assert rate == pytest.approx(20.0) and eta == pytest.approx(40.0)
    rate, eta = progress.report(300, now=115.0)
    assert rate == pytest.approx(20.0) and eta == pytest.approx(35.0)
    progress.restart(300, now=200.0)  # validation took 85 s: not part of the next rate
    rate, eta = progress.report(400, now=210.0)
    assert rate == pytest.approx(10.0)
    # The ETA uses the whole run's average (400 steps in 110 s), validation included.
    assert eta == pytest.approx(600 / (400 / 110))
    assert not progress.due(now=239.0) and progress.due(now=240.0)  # every 30 s


def test_the_eta_does_not_count_compilation():
    progress = hooks.Progress(total_steps=101, first_step=0, now=0.0)
    progress.start_clock(1, now=50.0)  # the first step took 50 s: compilation
    _, eta = progress.report(51, now=55.0)  # then 10 steps/s
    assert eta == pytest.approx(5.0)
    assert hooks.format_seconds(3725) == "1:02:05"


def test_train_metrics_average_windows_and_epochs_and_survive_a_checkpoint():
    metrics = hooks.TrainMetrics()
    for loss in (1.0, 2.0, 3.0):
        metrics.add({"loss": np.float32(loss), "accuracy": np.float32(0.5)})
    metrics.pull(done=3)
    assert metrics.take("window") == {"train_loss": 2.0, "train_accuracy": 0.5}
    metrics.add({"loss": np.float32(5.0), "accuracy": np.float32(1.0)})
    metrics.pull(done=4)
    resumed = hooks.TrainMetrics(metrics.state())  # what a checkpoint carries
    assert resumed.take("window") == {"train_loss": 5.0, "train_accuracy": 1.0}
    assert resumed.take("epoch") == {"train_loss": 2.75, "train_accuracy": 0.625}


def test_a_non_finite_loss_names_its_step():
    metrics = hooks.TrainMetrics()
    metrics.add({"loss": np.float32(0.5), "accuracy": np.float32(1.0)})
    metrics.add({"loss": np.float32(np.nan), "accuracy": np.float32(0.0)})
    with pytest.raises(FlaxDigitsError, match="loss is nan at step 12"):
        metrics.pull(done=12)


def test_metric_writer_keeps_records_up_to_the_resumed_step(tmp_path):
    workdir = Workdir(tmp_path)
    writer = hooks.MetricWriter(workdir)
    for step in (2, 4, 6):
        writer.write_scalars(step, {"train_loss": float(step)})
    writer.write_scalars(6, {"final": True})
    hooks.MetricWriter(workdir, resume_step=4)
    assert workdir.read_metrics() == [{"step": 2, "train_loss": 2.0},
                                      {"step": 4, "train_loss": 4.0}]
    hooks.MetricWriter(workdir, resume_step=0)  # a fresh run starts a fresh file
    assert workdir.read_metrics() == []


def test_one_process_stops_at_once_and_names_the_signal():
    stop = hooks.StopSignals()
    assert stop.processes == 1 and stop.agreed(3, 10) is None
    stop._handle(signal.SIGTERM, None)
    assert stop.agreed(3, 10) == signal.SIGTERM  # not only every SYNC_EVERY_STEPS steps
    assert stop.describe(signal.SIGTERM) == "SIGTERM"
    assert stop.describe(signal.SIGINT) == "SIGINT (sent to another process)"


def test_a_signal_noted_before_the_loop_stops_it_at_once_and_only_once():
    """launch.py notes the signals its handler sees: Python drops the exception a handler
    raises inside a garbage-collection callback, and the loop must still stop."""
    runtime.note_signal(signal.SIGTERM)
    with hooks.StopSignals() as stop:
        assert stop.agreed(1, 10) == signal.SIGTERM
    assert runtime.noted_signal() is None  # honoured: the next run starts clean
    with hooks.StopSignals() as stop:
        assert stop.agreed(1, 10) is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_inside_a_log_write_is_not_swallowed_by_logging(signum, capsys):
    """logging's emit catches Exception and prints '--- Logging error ---' with a traceback;
    a stop signal landing inside a log write (CI saw it) must pass through instead."""
    import logging

    from flaxdigits import cli as launch

    class SignalledStream:
        def write(self, text):
            raise launch.stop_exception(signum)

        def flush(self):
            pass

    logger = logging.getLogger("flaxdigits.test_signal_in_log_write")
    logger.propagate = False
    handler = logging.StreamHandler(SignalledStream())
    logger.addHandler(handler)
    try:
        with pytest.raises((launch.Terminated, KeyboardInterrupt)):
            logger.warning("a line")
    finally:
        logger.removeHandler(handler)
    assert "Logging error" not in capsys.readouterr().err
