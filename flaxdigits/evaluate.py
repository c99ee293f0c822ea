"""Evaluation: predictions, classification metrics, the report, plots and Kaggle submissions.

    python launch.py --config=configs/base.py --workdir=W --mode=evaluate   # W/report.json, W/plots/
    python launch.py --config=configs/base.py --workdir=W --mode=predict    # W/submission.csv

The model is W's best checkpoint (by validation accuracy); the data is what the command-line
config names, so `--config.data.dir` may point at other MNIST-format data than W trained on.
"""

import functools
import json
import logging
import pathlib
from typing import Optional

import jax
import ml_collections
import numpy as np

from flaxdigits import augment
from flaxdigits import checkpoint as checkpoint_lib
from flaxdigits import data as data_lib
from flaxdigits import models
from flaxdigits.errors import FlaxDigitsError

REPORT_FILE = "report.json"
PLOTS_DIR = "plots"
SUBMISSION_FILE = "submission.csv"

# ---------------------------------------------------------------------------------------
# Predictions: one model, test-time augmentation, ensembles

# Test-time views, (degrees, scale, shift rows, shift cols); the first is the digit as it
# is. `inference.tta_views = n` averages the first n.
TTA_VIEWS = (
    (0.0, 1.0, 0.0, 0.0),
    (0.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, 0.0), (0.0, 1.0, 0.0, 1.0), (0.0, 1.0, 0.0, -1.0),
    (6.0, 1.0, 0.0, 0.0), (-6.0, 1.0, 0.0, 0.0), (0.0, 1.08, 0.0, 0.0), (0.0, 0.92, 0.0, 0.0),
)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _probabilities(model, variables, images_bhwc, view):
    if view != TTA_VIEWS[0]:
        images_bhwc = jax.vmap(augment.transform, in_axes=(0, None, None, None, None))(
            images_bhwc, *view)
    return models.probabilities(model, variables, images_bhwc)


def predict_probabilities(model, variables, images_bhwc: np.ndarray,
                          batch_size: int = 1000, tta_views: int = 1) -> np.ndarray:
    """Softmax probabilities (N, 10) for float32 images (N, 28, 28, 1) in [0, 1], averaged
    over the first `tta_views` of TTA_VIEWS (1: the images as they are).

    Fixed batches (the last one padded), so one compilation per view serves any N.
    """
    if not 1 <= tta_views <= len(TTA_VIEWS):
        raise FlaxDigitsError(
            f"config.inference.tta_views={tta_views} must be between 1 and {len(TTA_VIEWS)}")
    count = len(images_bhwc)
    batch_size = max(1, min(batch_size, count))
    total = np.zeros((count, data_lib.NUM_CLASSES), np.float64)
    for view in TTA_VIEWS[:tta_views]:
        for start in range(0, count, batch_size):
            chunk = images_bhwc[start:start + batch_size]
            pad = batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            probs = np.asarray(_probabilities(model, variables, chunk, view))
            total[start:start + batch_size - pad] += probs[:batch_size - pad]
    return (total / tta_views).astype(np.float32)


def ensemble_probabilities(members, images_bhwc: np.ndarray, batch_size: int = 1000,
                           tta_views: int = 1) -> np.ndarray:
    """The mean of the members' (checkpoint.Trained) probabilities, each with TTA."""
    total = sum(predict_probabilities(m.model, m.variables, images_bhwc, batch_size, tta_views)
                .astype(np.float64) for m in members)
    return (total / len(members)).astype(np.float32)


def inference_settings(config) -> tuple[int, tuple]:
    """(tta_views, ensemble_workdirs) from `config.inference`; none for older configs."""
    inference = config.get("inference") or {}
    return int(inference.get("tta_views", 1)), tuple(inference.get("ensemble_workdirs", ()) or ())


def predict_as_configured(trained: checkpoint_lib.Trained, images_bhwc: np.ndarray,
                          config) -> np.ndarray:
    """Probabilities of `trained`, averaged with the best checkpoint of every workdir in
    `config.inference.ensemble_workdirs`, each with `config.inference.tta_views` views."""
    tta_views, workdirs = inference_settings(config)
    members = [trained] + [checkpoint_lib.load(w, which="best") for w in workdirs]
    return ensemble_probabilities(members, images_bhwc, config.eval_batch_size, tta_views)


# ---------------------------------------------------------------------------------------
# Metrics


def confusion_matrix(true_ids: np.ndarray, predicted_ids: np.ndarray,
                     num_classes: int = data_lib.NUM_CLASSES) -> np.ndarray:
    """(num_classes, num_classes) counts: rows are the true digit, columns the prediction."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(true_ids), np.asarray(predicted_ids)), 1)
    return matrix


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where the denominator is 0 (as scikit-learn's
    zero_division=0): a class never predicted has precision 0, not NaN."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator != 0)


def classification_report(true_ids: np.ndarray, predicted_ids: np.ndarray,
                          num_classes: int = data_lib.NUM_CLASSES) -> dict:
    """Accuracy, confusion matrix, per-class precision/recall/F1/support and their macro
    and support-weighted averages, as plain JSON-able Python values."""
    matrix = confusion_matrix(true_ids, predicted_ids, num_classes)
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    precision = safe_divide(true_positives, matrix.sum(axis=0))
    recall = safe_divide(true_positives, support)
    f1 = safe_divide(2 * precision * recall, precision + recall)
    total = int(matrix.sum())
    per_class = {
        str(k): {"precision": float(precision[k]), "recall": float(recall[k]),
                 "f1": float(f1[k]), "support": int(support[k])}
        for k in range(num_classes)}

    def average(weights):
        weights = np.asarray(weights, np.float64)
        weights = weights / weights.sum() if weights.sum() else weights
        return {"precision": float(precision @ weights), "recall": float(recall @ weights),
                "f1": float(f1 @ weights), "support": total}

    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "count": total,
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "macro_avg": average(np.ones(num_classes)),
        "weighted_avg": average(support),
    }


def format_report(report: dict) -> str:
    """The report as a table for the log."""
    lines = [f"{'digit':>12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    rows = list(report["per_class"].items()) + [("macro avg", report["macro_avg"]),
                                                ("weighted avg", report["weighted_avg"])]
    for name, row in rows:
        if name == "macro avg":
            lines.append("")
        lines.append(f"{name:>12} {row['precision']:9.4f} {row['recall']:7.4f} "
                     f"{row['f1']:7.4f} {row['support']:8d}")
    lines.append(f"{'accuracy':>12} {report['accuracy']:9.4f} over {report['count']} digits "
                 f"({report['split']} split, step {report['step']})")
    lines.append("confusion matrix (rows: true digit, columns: predicted):")
    lines.append("      " + "".join(f"{k:>6}" for k in range(len(report["confusion_matrix"]))))
    for k, row in enumerate(report["confusion_matrix"]):
        lines.append(f"{k:>6}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot, no display, no global state)


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_training_curves(metrics_path: pathlib.Path, out_path: pathlib.Path) -> Optional[pathlib.Path]:
    """Loss and accuracy by epoch, training vs validation, from metrics.jsonl; None if the
    file holds no epoch yet."""
    if not metrics_path.is_file():
        return None
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    epochs = [r for r in records if "epoch" in r]
    if not epochs:
        return None
    x = [r["epoch"] for r in epochs]
    figure = new_figure(10, 4)
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        for split, style in (("train", "o-"), ("val", "s-")):
            values = [r.get(f"{split}_{metric}") for r in epochs]
            if all(v is not None for v in values):
                axes.plot(x, values, style, label={"train": "training", "val": "validation"}[split])
        axes.set_title(metric)
        axes.set_xlabel("epoch")
        axes.set_xticks(x if len(x) <= 20 else x[::max(1, len(x) // 10)])
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"Training curves ({metrics_path.parent.name})")
    figure.savefig(out_path)
    return out_path


def plot_confusion_matrix(matrix, out_path: pathlib.Path, title: str) -> pathlib.Path:
    """An annotated heatmap. Errors (off the diagonal) get their own colour scale, so a
    handful of mistakes stand out instead of vanishing beside ~1,000 correct digits."""
    from matplotlib.patches import Rectangle

    matrix = np.asarray(matrix)
    size = len(matrix)
    errors = np.where(np.eye(size, dtype=bool), 0, matrix)
    figure = new_figure(7.5, 6.5)
    axes = figure.subplots()
    image = axes.imshow(errors, cmap="Reds", vmin=0, vmax=max(1, errors.max()))
    figure.colorbar(image, ax=axes, label="misclassified digits")
    for k in range(size):  # the diagonal in a neutral colour: correct digits
        axes.add_patch(Rectangle((k - 0.5, k - 0.5), 1, 1, color="#cfe8cf"))
    for true in range(size):
        for predicted in range(size):
            value = matrix[true, predicted]
            if value == 0 and true != predicted:
                continue
            strong = true != predicted and value > errors.max() / 2
            axes.text(predicted, true, str(value), ha="center", va="center", fontsize=9,
                      color="white" if strong else "black",
                      fontweight="bold" if true == predicted else "normal")
    axes.set_xticks(range(size))
    axes.set_yticks(range(size))
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_title(title)
    figure.savefig(out_path)
    return out_path


def plot_misclassified(images_bhwc: np.ndarray, true_ids: np.ndarray,
                       probabilities_bk: np.ndarray, out_path: pathlib.Path,
                       count: int = 24) -> pathlib.Path:
    """The `count` misclassified digits the model was most sure of, with the true label,
    the prediction and its probability."""
    predicted = probabilities_bk.argmax(-1)
    confidence = probabilities_bk.max(-1)
    wrong = np.flatnonzero(predicted != true_ids)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    columns = 6
    rows = max(1, -(-len(worst) // columns))
    figure = new_figure(columns * 1.6, rows * 1.9 + 0.6)
    figure.suptitle(f"Most confidently misclassified: {len(worst)} of {len(wrong)} errors "
                    f"in {len(true_ids)} digits")
    grid = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axes in grid:
        axes.axis("off")
    if not len(worst):
        grid[0].text(0, 0.5, "no misclassified digits", fontsize=12)
    for axes, index in zip(grid, worst):
        axes.imshow(images_bhwc[index, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
        axes.set_title(f"true {true_ids[index]}, predicted {predicted[index]}\n"
                       f"p={confidence[index]:.3f} (#{index})", fontsize=8)
    figure.savefig(out_path)
    return out_path


# ---------------------------------------------------------------------------------------
# Reports of a workdir


def report_split(dataset: data_lib.Dataset):
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
    training: refuse a config that would hold out other examples."""
    for field in ("validation_fraction", "split_seed"):
        now, then = config.data[field], trained_config.data[field]
        if now != then:
            raise FlaxDigitsError(
                f"config.data.{field}={now!r}, but the model was trained with {then!r}: the "
                f"validation split would include training examples; use the trained value")


def write_report(workdir, trained: checkpoint_lib.Trained, dataset: data_lib.Dataset,
                 config) -> dict:
    """Evaluates `trained` on the test split (else validation) of `dataset`, with the TTA
    and ensemble that `config.inference` asks for; writes `workdir/report.json` and
    `workdir/plots/*.png`, logs the table, returns the report."""
    workdir = pathlib.Path(workdir)
    name, split, note = report_split(dataset)
    tta_views, ensemble = inference_settings(config)
    probabilities_bk = predict_as_configured(trained, split.images, config)
    true_ids = split.label_ids
    report = classification_report(true_ids, probabilities_bk.argmax(-1))
    report.update(split=name, step=int(trained.step), data=dataset.source,
                  tta_views=tta_views, ensemble_workdirs=list(ensemble))
    if note:
        report["note"] = note

    plots = workdir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    written = [
        plot_training_curves(workdir / "metrics.jsonl", plots / "training_curves.png"),
        plot_confusion_matrix(report["confusion_matrix"], plots / "confusion_matrix.png",
                              f"Confusion matrix, {name} split: accuracy "
                              f"{report['accuracy']:.4f} over {report['count']} digits"),
        plot_misclassified(split.images, true_ids, probabilities_bk,
                           plots / "misclassified.png"),
    ]
    report["plots"] = [str(p.relative_to(workdir)) for p in written if p is not None]
    (workdir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    logging.info("Report (%s):\n%s", workdir / REPORT_FILE, format_report(report))
    if note:
        logging.info("Note: %s", note)
    return report


def evaluate_workdir(config: ml_collections.ConfigDict, workdir) -> dict:
    """--mode=evaluate: the report of `workdir`'s best checkpoint on the data `config` names."""
    trained = checkpoint_lib.load(workdir, which="best")
    dataset = data_lib.load_dataset(config.data)
    if dataset.test is None:
        check_same_validation_split(config, trained.config)
    return write_report(workdir, trained, dataset, config)


def predict_workdir(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
    """--mode=predict: `workdir/submission.csv` for the Kaggle test.csv in config.data.dir."""
    if config.data.source != "files" or not config.data.dir:
        raise FlaxDigitsError(
            "--mode=predict reads a Kaggle test.csv: set --config.data.dir to the folder "
            "holding it")
    test_csv = pathlib.Path(config.data.dir).expanduser() / "test.csv"
    if not test_csv.is_file():
        raise FlaxDigitsError(f"{test_csv}: no such file (--mode=predict needs Kaggle's test.csv)")
    trained = checkpoint_lib.load(workdir, which="best")
    images, _ = data_lib.read_kaggle_csv(test_csv, labelled=False)
    probabilities_bk = predict_as_configured(trained, data_lib.to_model_inputs(images), config)
    path = write_submission(pathlib.Path(workdir) / SUBMISSION_FILE, probabilities_bk.argmax(-1))
    logging.info("Wrote %s: %d predictions for %s (step %d); predicted digit counts %s",
                 path, len(images), test_csv, trained.step,
                 np.bincount(probabilities_bk.argmax(-1), minlength=10).tolist())
    return path


def write_submission(path: pathlib.Path, labels: np.ndarray) -> pathlib.Path:
    """Kaggle's format: a header `ImageId,Label`, then one row per test image, ImageId
    counting from 1 in the order of test.csv. Written to a temporary name, then renamed, so
    an interrupted run never leaves half a file."""
    lines = ["ImageId,Label"] + [f"{i},{int(label)}" for i, label in enumerate(labels, start=1)]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)
    return path
