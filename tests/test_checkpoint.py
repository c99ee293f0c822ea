import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from flaxdigits import models, testing
from flaxdigits.checkpoint import Checkpoints
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.evaluation import inference
from flaxdigits.training import loop, optim, steps
from flaxdigits.workdir import Workdir
from tests.conftest import REPO, tiny_config

TIMING = ("steps_per_second", "elapsed_seconds", "train_seconds")


def run_config(data_dir, **overrides):
    settings = {"data.dir": str(data_dir), "num_epochs": 2, "log_every_steps": 4,
                "checkpoint_every_steps": 3, "optim.learning_rate": 1e-2}
    settings.update(overrides)
    return tiny_config(**settings)


@pytest.fixture
def data_dir(synthetic_dir):
    return synthetic_dir


def metrics_without_timing(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in Workdir(workdir).read_metrics()]


def final_params(workdir):
    """params, and batch_stats for BatchNorm models."""
    return inference.load(workdir, which="latest").variables


def assert_identical(params_a, params_b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(params_a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(params_b)
    assert tree_a == tree_b
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b)  # bit-identical, not merely close


BATCHNORM_AND_AUGMENTATION = {
    "model.name": "fast_cnn", "augment.rotation_degrees": 10.0, "augment.scale": 0.1,
    "augment.translation_pixels": 2.0, "augment.elastic_alpha": 20.0,
    "optim.schedule": "one_cycle"}


# The accuracy recipe: a parameters' average in the state, smoothed targets, a clean last
# epoch (the second of two: the run is stopped in each).
AVERAGE_SMOOTHING_CLEAN_EPOCH = {
    **BATCHNORM_AND_AUGMENTATION, "optim.ema_decay": 0.9, "optim.label_smoothing": 0.1,
    "augment.clean_final_epochs": 1}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, BATCHNORM_AND_AUGMENTATION,
                                       AVERAGE_SMOOTHING_CLEAN_EPOCH],
                         ids=["cnn", "batchnorm+augmentation", "average+smoothing+clean"])
def test_interrupted_twice_ends_exactly_like_uninterrupted(tmp_path, data_dir, overrides):
    config = run_config(data_dir, **overrides)
    reference = loop.train_and_evaluate(config, tmp_path / "straight")

    work = tmp_path / "interrupted"
    assert loop.train_and_evaluate(config, work, stop_at_step=5) == {"stopped_at_step": 5}
    assert loop.train_and_evaluate(config, work, stop_at_step=14) == {"stopped_at_step": 14}
    resumed = loop.train_and_evaluate(config, work)

    assert resumed["test_accuracy"] == reference["test_accuracy"]
    assert resumed["test_loss"] == reference["test_loss"]
    assert_identical(final_params(work), final_params(tmp_path / "straight"))
    assert metrics_without_timing(work) == metrics_without_timing(tmp_path / "straight")


@pytest.mark.slow
def test_finished_run_rereports_without_training(tmp_path, data_dir, caplog):
    config = run_config(data_dir)
    first = loop.train_and_evaluate(config, tmp_path)
    caplog.set_level("INFO")
    second = loop.train_and_evaluate(config, tmp_path)
    assert "already finished at step 22" in caplog.text
    assert second["test_accuracy"] == first["test_accuracy"]
    assert second["report"] == first["report"]
    assert metrics_without_timing(tmp_path)[-1] == {k: v for k, v in first.items()
                                                    if k not in TIMING and k != "report"}
    assert sum(1 for r in metrics_without_timing(tmp_path) if r.get("final")) == 1


@pytest.mark.slow
def test_mismatched_config_names_the_fields(tmp_path, data_dir):
    loop.train_and_evaluate(run_config(data_dir), tmp_path, stop_at_step=3)
    wider = run_config(data_dir, **{"model.dense_features": 32, "optim.learning_rate": 1e-3})
    with pytest.raises(FlaxDigitsError) as error:
        loop.train_and_evaluate(wider, tmp_path)
    message = str(error.value)
    assert "model.dense_features (saved 16, now 32)" in message
    assert "optim.learning_rate (saved 0.01, now 0.001)" in message
    assert "\n" not in message
    # Bookkeeping fields may change on resume.
    loop.train_and_evaluate(run_config(data_dir, log_every_steps=7), tmp_path)


def corrupt(step_dir):
    for path in step_dir.rglob("*"):
        if path.is_file() and "state" in path.parts:
            path.write_bytes(b"garbage")


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_never_bricks_the_workdir(tmp_path, data_dir, caplog):
    config = run_config(data_dir)
    loop.train_and_evaluate(config, tmp_path, stop_at_step=7)
    assert Checkpoints(tmp_path, keep=3).steps() == [3, 6, 7]
    corrupt(tmp_path / "checkpoints" / "7")
    caplog.set_level("INFO")

    # Readers fall back to the newest readable checkpoint, with a warning.
    assert inference.load(tmp_path, which="latest").step == 6
    assert "Checkpoint" in caplog.text and "unreadable" in caplog.text

    # Training resumes from it, moves the bad one aside, and saves step 7 anew.
    final = loop.train_and_evaluate(config, tmp_path)
    assert "resumed from step 6" in caplog.text
    assert (tmp_path / "checkpoints" / "7.unreadable").is_dir()
    assert final["report"]["step"] == inference.load(tmp_path).step
    assert_identical(final_params(tmp_path), final_params(self_reference(tmp_path, config)))


@pytest.mark.slow
def test_damaged_validation_metrics_are_moved_aside(tmp_path, data_dir, caplog):
    config = run_config(data_dir, checkpoint_every_steps=0)
    loop.train_and_evaluate(config, tmp_path)
    (tmp_path / "checkpoints" / "22" / "metrics" / "metrics").write_text("garbage{")
    assert inference.load(tmp_path).step == 11  # the other validated checkpoint
    assert "unreadable validation metrics, moved aside" in caplog.text
    assert (tmp_path / "checkpoints" / "22" / "metrics" / "metrics.unreadable").is_file()


@pytest.mark.slow
def test_resuming_on_other_data_is_refused(tmp_path, data_dir):
    loop.train_and_evaluate(run_config(data_dir), tmp_path / "work", stop_at_step=5)
    smaller = testing.write_idx_folder(tmp_path / "smaller", 300, 100)
    with pytest.raises(FlaxDigitsError, match="holds checkpoints trained on other data"):
        loop.train_and_evaluate(run_config(smaller), tmp_path / "work")
    moved = tmp_path / "moved"
    data_dir_copy = testing.write_idx_folder(moved, 400, 100)  # the same digits elsewhere
    final = loop.train_and_evaluate(run_config(data_dir_copy), tmp_path / "work")
    assert final["step"] == 22


def self_reference(tmp_path, config):
    straight = tmp_path.parent / (tmp_path.name + "-straight")
    loop.train_and_evaluate(config, straight)
    return straight


@pytest.mark.slow
def test_no_readable_checkpoint_is_a_clear_error(tmp_path, data_dir):
    config = run_config(data_dir, keep_checkpoints=1)
    loop.train_and_evaluate(config, tmp_path, stop_at_step=4)
    for step_dir in (tmp_path / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            corrupt(step_dir)
    with pytest.raises(FlaxDigitsError, match="no readable checkpoint .*step 4"):
        loop.train_and_evaluate(config, tmp_path)


def test_keeps_latest_n_and_the_best(tmp_path, data_dir):
    config = run_config(data_dir)
    state = steps.create_train_state(models.model_from_config(config),
                                     optim.create_optimizer(config.optim, 10),
                                     jax.random.key(0))
    checkpoints = Checkpoints(tmp_path, keep=2)
    for step, val_accuracy in [(1, 0.5), (2, 0.9), (3, None), (4, 0.7), (5, None), (6, None)]:
        checkpoints.save(step, state, {"step": step}, val_accuracy)
    checkpoints.wait()
    assert checkpoints.steps() == [2, 5, 6]
    assert checkpoints.best_step() == 2
    checkpoints.close()


@pytest.mark.slow
def test_load_for_inference(tmp_path, data_dir):
    config = run_config(data_dir, num_epochs=3, checkpoint_every_steps=0)
    loop.train_and_evaluate(config, tmp_path)
    model, variables, saved_config, step = inference.load(tmp_path)
    assert saved_config.model.dense_features == 16 and saved_config.num_epochs == 3
    epochs = [r for r in metrics_without_timing(tmp_path) if "epoch" in r]
    best = max(epochs, key=lambda r: (r["val_accuracy"], r["step"]))
    images, _ = testing.synthetic_digits(10, seed=5)
    logits = model.apply(variables, images[..., None] / np.float32(255))
    assert logits.shape == (10, 10)
    steps = Checkpoints(tmp_path, keep=3, read_only=True)
    assert steps.best_step() == best["step"] == step
    steps.close()
    with pytest.raises(FlaxDigitsError, match="no config.json"):
        inference.load(tmp_path / "nowhere")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_with_checkpoint_and_rerun_completes(tmp_path, data_dir, signum):
    args = [sys.executable, "launch.py", "--config=configs/tiny.py", f"--workdir={tmp_path}",
            f"--config.data.dir={data_dir}", "--config.num_epochs=25",
            "--config.log_every_steps=20", "--config.checkpoint_every_steps=1000"]
    process = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:  # wait until training is under way
        seen.append(line)
        if "steps/s" in line:
            break
    process.send_signal(signum)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 128 + signum, "".join(seen) + rest
    name = signal.Signals(signum).name
    assert f"flaxdigits: stopped by {name} at step" in rest and "Traceback" not in rest
    stopped = int(rest.split(f"stopped by {name} at step ")[1].split("/")[0])
    assert Checkpoints(tmp_path, keep=3).steps()[-1] == stopped

    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from step {stopped}" in result.stderr
    assert result.stdout.strip().startswith("test_accuracy=")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes_after(tmp_path, data_dir, small_disk):
    config = run_config(data_dir, num_epochs=6, checkpoint_every_steps=5)
    with pytest.raises(FlaxDigitsError, match=r"saving a checkpoint failed \(.*\); the "
                                              r"checkpoints before it are intact"):
        loop.train_and_evaluate(config, small_disk / "work")
    saved = Checkpoints(small_disk / "work").steps()
    assert saved and not list((small_disk / "work" / "checkpoints").glob("*tmp*"))
    subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
    loop.train_and_evaluate(config, small_disk / "work")
    assert_identical(final_params(small_disk / "work"),
                     final_params(self_reference(tmp_path / "reference", config)))


@pytest.mark.slow
def test_a_full_disk_leaves_nothing_on_stderr_but_the_line(data_dir, small_disk):
    """The writes orbax still had in flight when the save failed end in its threads: their
    'Event loop is closed' tracebacks and asyncio's complaints are not for the user."""
    for attempt in range(2):  # the moment the disk fills differs from run to run
        result = subprocess.run(
            [sys.executable, "launch.py", "--config=configs/tiny.py",
             f"--workdir={small_disk / f'work{attempt}'}", f"--config.data.dir={data_dir}",
             "--config.num_epochs=6", "--config.checkpoint_every_steps=5"],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        shown = [line for line in result.stderr.splitlines()
                 if not line.startswith(("I1", "W1"))]  # absl's info and warning lines
        assert result.returncode == 1, result.stderr[-2000:]
        assert len(shown) == 1 and shown[0].startswith(
            f"flaxdigits: error: {small_disk / f'work{attempt}' / 'checkpoints'}: saving a "
            f"checkpoint failed"), result.stderr[-3000:]
        subprocess.run(["rm", "-rf", str(small_disk / f"work{attempt}")], check=True)


def test_inference_loads_the_parameters_average_where_training_kept_one(tmp_path):
    config = tiny_config(**{"optim.ema_decay": 0.99})
    state = steps.create_train_state(models.model_from_config(config),
                                     optim.create_optimizer(config.optim, 10),
                                     jax.random.key(0), averaged=True)
    state = state.replace(ema_params=jax.tree_util.tree_map(lambda p: p * 0 + 0.5,
                                                            state.params))
    checkpoints = Checkpoints(tmp_path / "work")
    checkpoints.save(1, state, {})
    checkpoints.close()
    variables = Checkpoints(tmp_path / "work", read_only=True).restore_variables(1)
    for leaf in jax.tree_util.tree_leaves(variables["params"]):
        np.testing.assert_array_equal(leaf, 0.5)
