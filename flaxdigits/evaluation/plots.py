"""The report's plots, drawn with matplotlib's object API: no pyplot, no display, no global
state, so they work in servers, tests and notebooks alike."""

import io
import pathlib
from typing import Optional

import numpy as np

from flaxdigits.workdir import write_atomically


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(figure, out_path: pathlib.Path) -> pathlib.Path:
    """The figure as a PNG, replacing `out_path` whole (never half a file)."""
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_atomically(out_path, png.getvalue())
    return out_path


def plot_training_curves(records: list[dict], out_path: pathlib.Path,
                         title: str) -> Optional[pathlib.Path]:
    """Loss and accuracy by epoch, training vs validation, from metrics records (as
    Workdir.read_metrics gives them); None if they hold no epoch yet."""
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
    figure.suptitle(title)
    return save(figure, out_path)


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
    return save(figure, out_path)


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
    return save(figure, out_path)
