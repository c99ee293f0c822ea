"""flaxdigits/training/loop.py: whole training runs, in the library as a script calls it."""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from flaxdigits import data, testing
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.evaluation import inference
from flaxdigits.training import loop
from flaxdigits.workdir import Workdir
from tests.conftest import MNIST_DIR, REPO, needs_mnist, tiny_config

TIMING = ("steps_per_second", "elapsed_seconds", "train_seconds")


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_a_run_writes_config_metrics_report_and_plots(tmp_path, synthetic_dir):
    config = tiny_config(**{"data.dir": str(synthetic_dir), "num_epochs": 2,
                            "log_every_steps": 4, "optim.learning_rate": 1e-2})
    final = loop.train_and_evaluate(config, tmp_path)
    workdir = Workdir(tmp_path)
    assert workdir.read_config()["batch_size"] == 32
    records = workdir.read_metrics()
    epochs = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["step"] for r in epochs] == [11, 22]  # 360 training examples // 32
    assert all("val_accuracy" in r and "train_loss" in r for r in epochs)
    assert [r["step"] for r in records if "epoch" not in r][:3] == [4, 8, 12]
    assert records[-1] == {k: v for k, v in final.items() if k != "report"}
    assert records[-1]["val_accuracy"] == epochs[-1]["val_accuracy"]  # the last step's model
    assert final["test_accuracy"] > 0.5  # the synthetic digits are easy

    report = json.loads(workdir.report_file.read_text())
    assert report == final["report"] and report["split"] == "test" and report["count"] == 100
    # The best checkpoint is the last one here: the report's figure is the final record's.
    assert report["step"] == 22 and report["accuracy"] == final["test_accuracy"]
    assert sorted(p.name for p in workdir.plots_dir.iterdir()) == [
        "confusion_matrix.png", "misclassified.png", "training_curves.png"]


def test_a_batch_larger_than_the_training_split(tmp_path, synthetic_dir):
    with pytest.raises(FlaxDigitsError, match="batch_size=512 is larger than the training "
                                              "split"):
        loop.train_and_evaluate(tiny_config(**{"data.dir": str(synthetic_dir),
                                               "batch_size": 512}), tmp_path)


def test_a_bad_config_fails_before_anything_is_written(tmp_path):
    with pytest.raises(FlaxDigitsError, match="config.augment.scale=1.5 must be"):
        loop.train_and_evaluate(tiny_config(**{"augment.scale": 1.5}), tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_two_runs_of_one_config_write_the_same_records(tmp_path, synthetic_dir):
    config = tiny_config(**{"data.dir": str(synthetic_dir), "num_epochs": 2,
                            "log_every_steps": 4, "model.name": "fast_cnn",
                            "augment.rotation_degrees": 10.0, "model.dropout_rate": 0.3})
    loop.train_and_evaluate(config, tmp_path / "a")
    loop.train_and_evaluate(config, tmp_path / "b")
    assert (without_timing(Workdir(tmp_path / "a").read_metrics())
            == without_timing(Workdir(tmp_path / "b").read_metrics()))


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_step(tmp_path, synthetic_dir):
    config = tiny_config(**{"data.dir": str(synthetic_dir), "optim.learning_rate": 1e30,
                            "log_every_steps": 1})
    with pytest.raises(FlaxDigitsError, match=r"training diverged: loss is (nan|inf) at step \d+"):
        loop.train_and_evaluate(config, tmp_path)


@pytest.mark.slow
@needs_mnist
def test_integration_real_mnist_reaches_98_percent(tmp_path):
    config = tiny_config(**{
        "data.dir": str(MNIST_DIR), "num_epochs": 1, "batch_size": 64,
        "eval_batch_size": 1000, "log_every_steps": 200, "model.conv_features": (16, 32),
        "model.dense_features": 64, "optim.learning_rate": 2e-3})
    final = loop.train_and_evaluate(config, tmp_path)
    assert final["test_accuracy"] >= 0.98, final
    assert inference.load(tmp_path).step == 843


SCRIPT = """
import sys
from configs import tiny
from flaxdigits.training import loop

config = tiny.get_config()
config.data.dir = sys.argv[1]
config.log_every_steps = 3
loop.train_and_evaluate(config, sys.argv[2])
"""


@pytest.mark.slow
def test_a_script_calling_the_library_sees_progress(tmp_path, synthetic_dir):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(synthetic_dir),
                             str(tmp_path / "work")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    progress = [l for l in result.stderr.splitlines() if "steps/s, ETA" in l]
    assert progress and "step 3/11: loss" in progress[0], result.stderr[-2000:]
    lines = result.stderr.splitlines()
    compiling = next(i for i, l in enumerate(lines) if "Compiling the training step" in l)
    first_step = next(i for i, l in enumerate(lines) if "First step done in" in l)
    assert compiling < first_step < lines.index(progress[0])
    assert re.search(r"First step done in \d+\.\d s, compilation included", lines[first_step])
    assert "Report (" in result.stderr and "weighted avg" in result.stderr


@pytest.mark.slow
def test_tensorboard_events_hold_what_metrics_jsonl_holds(tmp_path, synthetic_dir):
    """Every number of every record, under its name at its step, also after a resume."""
    config = tiny_config(**{"data.dir": str(synthetic_dir), "num_epochs": 2,
                            "log_every_steps": 4})
    workdir = Workdir(tmp_path / "work")
    loop.train_and_evaluate(config, workdir, stop_at_step=13)
    loop.train_and_evaluate(config, workdir)  # resumed from step 13
    expected = {}
    for record in workdir.read_metrics():
        for name, value in record.items():
            if name != "step" and not isinstance(value, bool):
                expected.setdefault(name, []).append((record["step"], pytest.approx(value)))
    found = testing.read_tensorboard_scalars(workdir.tensorboard_dir)
    assert found == expected
    assert {"train_loss", "learning_rate", "steps_per_second", "val_accuracy",
            "test_accuracy"} <= set(found)
    # log points every 4 steps, epoch ends at 11 and 22
    assert [step for step, _ in found["train_loss"]] == [4, 8, 11, 12, 16, 20, 22]


def test_an_evaluation_batch_larger_than_the_split_shrinks_to_it():
    images, labels = testing.synthetic_digits(40)
    split = data.Split(data.to_model_inputs(images), data.one_hot(labels))
    trainer = loop.Trainer(tiny_config(), split)
    batches = trainer.eval_batches(data.Split(split.images[:10], split.labels[:10]), 200_000)
    devices = trainer.mesh.devices.size
    assert [b["image"].shape[0] for b in batches] == [-(-10 // devices) * devices]


@pytest.mark.slow
def test_a_profile_of_the_asked_steps_is_written_for_perfetto(tmp_path, synthetic_dir):
    config = tiny_config(**{"data.dir": str(synthetic_dir), "profile_steps": 3})
    workdir = Workdir(tmp_path / "work")
    loop.train_and_evaluate(config, workdir)
    (trace,) = workdir.profile_dir.glob("plugins/profile/*/perfetto_trace.json.gz")
    assert trace.stat().st_size > 0
    assert list(trace.parent.glob("*.xplane.pb"))  # TensorBoard's profile tab reads these
    # No trace unless asked.
    loop.train_and_evaluate(tiny_config(**{"data.dir": str(synthetic_dir)}), tmp_path / "w2")
    assert not (tmp_path / "w2" / "profile").exists()


def test_clean_final_epochs_train_on_the_digits_as_they_are():
    """Epochs after num_epochs - clean_final_epochs skip the augmentation: with every epoch
    clean, an augmenting config trains exactly as one without augmentation."""
    images, labels = testing.synthetic_digits(256)
    split = data.Split(data.to_model_inputs(images), data.one_hot(labels))
    augmenting = {"augment.rotation_degrees": 10.0, "augment.translation_pixels": 2.0}
    results = []
    for overrides in ({}, {**augmenting, "augment.clean_final_epochs": 1}, augmenting):
        trainer = loop.Trainer(tiny_config(**overrides), split)
        state = trainer.initial_state(total_steps=4)
        for step in range(4):
            state, _ = trainer.step(state, step)
        results.append(jax.tree_util.tree_leaves(jax.device_get(state.params)))
    plain, clean, augmented = results
    for a, b in zip(plain, clean):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(plain, augmented))
