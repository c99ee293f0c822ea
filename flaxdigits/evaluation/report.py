"""The report of a trained workdir, and the evaluate and predict modes.

    python launch.py --config=configs/base.py --workdir=W --mode=evaluate   # W/report.json, W/plots/
    python launch.py --config=configs/base.py --workdir=W --mode=predict    # W/submission.csv

The model is W's best checkpoint (by validation accuracy); the data is what the command-line
config names, so `--config.data.dir` may point at other MNIST-format data than W trained on.
"""

import logging
import pathlib
from typing import Optional

import numpy as np

from flaxdigits import NUM_CLASSES, config as config_lib, data, logs, runtime
from flaxdigits.data import kaggle
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.evaluation import inference, metrics, plots
from flaxdigits.workdir import Workdir

log = logging.getLogger(__name__)


def report_split(dataset: data.Dataset):
    """(name, split, note): the test split, or the validation split where the data has no
    labelled test split (Kaggle), with a note saying so."""
    if dataset.test is not None:
        return "test", dataset.test, None
    if dataset.validation is None:
        raise FlaxDigitsError(
            f"{dataset.source} has no labelled test split and config.data."
            f"validation_fraction=0 holds out no validation split: nothing to evaluate on")
    note = ("this data has no labelled test split (Kaggle's test.csv has no labels); the "
            "report is on the validation split, which also chose the checkpoint, so it is "
            "slightly optimistic")
    return "validation", dataset.validation, note


def check_same_validation_split(config, trained_config) -> None:
    """Evaluating on the validation split is only honest if it is the split held out in
    training, by the model and by every ensemble member: refuse a config that would hold out
    other examples, and members trained with other splits (`ensemble --own_splits`)."""
    for field in ("validation_fraction", "split_seed"):
        now, then = config.data[field], trained_config.data[field]
        if now != then:
            raise FlaxDigitsError(
                f"config.data.{field}={now!r}, but the model was trained with {then!r}: the "
                f"validation split would include training examples; use the trained value")
    for member in config.inference.ensemble_workdirs:
        saved = Workdir(member).read_config() or {}
        for field in ("validation_fraction", "split_seed"):
            then = saved.get("data", {}).get(field, config.data[field])
            if then != config.data[field]:
                raise FlaxDigitsError(
                    f"ensemble member {member} was trained with config.data.{field}={then!r}, "
                    f"not {config.data[field]!r}: it trained on examples of this validation "
                    f"split, so the ensemble cannot be scored on it")


def write_report(workdir, trained: inference.Trained, dataset: data.Dataset, config, *,
                 probabilities_nk: Optional[np.ndarray] = None) -> dict:
    """Evaluates `trained` on the test split (else validation) of `dataset`, with the TTA
    and ensemble that `config.inference` asks for; writes report.json and plots/*.png into
    the workdir, logs the table, returns the report. `probabilities_nk`: that split's
    predictions where the caller already has them (the end of a training run)."""
    workdir = Workdir(workdir)
    name, split, note = report_split(dataset)
    if probabilities_nk is None:
        probabilities_nk = inference.predict_as_configured(trained, split.images, config)
    true_ids = split.label_ids
    report = metrics.classification_report(true_ids, probabilities_nk.argmax(-1))
    report.update(split=name, step=int(trained.step), data=dataset.source,
                  tta_views=config.inference.tta_views,
                  ensemble_workdirs=list(config.inference.ensemble_workdirs))
    if note:
        report["note"] = note

    if not workdir.writes:  # another process of a multi-process run writes them
        return report
    workdir.plots_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plots.plot_training_curves(workdir.read_metrics(),
                                   workdir.plots_dir / "training_curves.png",
                                   f"Training curves ({workdir.path.name})"),
        plots.plot_confusion_matrix(report["confusion_matrix"],
                                    workdir.plots_dir / "confusion_matrix.png",
                                    f"Confusion matrix, {name} split: accuracy "
                                    f"{report['accuracy']:.4f} over {report['count']} digits"),
        plots.plot_misclassified(split.images, true_ids, probabilities_nk,
                                 workdir.plots_dir / "misclassified.png"),
    ]
    report["plots"] = [str(p.relative_to(workdir.path)) for p in written if p is not None]
    workdir.write_report(report)
    log.info("Report (%s):\n%s", workdir.report_file, metrics.format_report(report))
    if note:
        log.info("Note: %s", note)
    return report


def evaluate_workdir(config, workdir) -> dict:
    """--mode=evaluate: the report of `workdir`'s best checkpoint on the data `config` names."""
    logs.show_progress()
    config_lib.validate(config)
    trained = inference.load(workdir, which="best")
    dataset = data.load_dataset(config.data, training_pieces=False)  # held-out digits only
    if dataset.test is None:
        check_same_validation_split(config, trained.config)
    return write_report(Workdir(workdir, writes=runtime.is_primary()), trained, dataset,
                        config)


def predict_workdir(config, workdir) -> pathlib.Path:
    """--mode=predict: `workdir/submission.csv` for the Kaggle test.csv in config.data.dir."""
    logs.show_progress()
    config_lib.validate(config)
    if config.data.source != "files" or not config.data.dir:
        raise FlaxDigitsError(
            "--mode=predict reads a Kaggle test.csv: set --config.data.dir to the folder "
            "holding it")
    folder = pathlib.Path(config.data.dir).expanduser()
    images = kaggle.read_test_csv(folder)  # a bad file fails before the model loads
    trained = inference.load(workdir, which="best")
    predicted = inference.predict_as_configured(
        trained, data.to_model_inputs(images), config).argmax(-1)
    path = Workdir(workdir, writes=runtime.is_primary()).write_submission(predicted)
    log.info("Wrote %s: %d predictions for %s (step %d); predicted digit counts %s",
             path, len(images), folder / kaggle.TEST_FILE, trained.step,
             np.bincount(predicted, minlength=NUM_CLASSES).tolist())
    return path
