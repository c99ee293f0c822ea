"""notebooks/flaxdigits.ipynb, executed cell by cell as Jupyter runs it (from notebooks/),
with parameters that keep it small and offline: a failing cell fails this test."""

import re

import nbclient
import nbformat
import pytest

from flaxdigits import testing
from tests.conftest import MNIST_DIR, REPO

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "notebooks" / "flaxdigits.ipynb"


def outputs_text(cell) -> str:
    text = []
    for output in cell.get("outputs", []):
        text.append(output.get("text", ""))
        text.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "".join(text)


def images_in(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None)


def test_every_cell_of_the_notebook_runs(tmp_path):
    real = MNIST_DIR.is_dir()
    data_dir = MNIST_DIR if real else testing.write_idx_folder(tmp_path / "digits", 2000, 500)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = "\n".join([
        'REPO_URL = "unused: not on Colab"',
        'CONFIG = "fast"',
        f'OVERRIDES = {{"num_epochs": {1 if real else 3}}}',
        f"DATA_DIR = {str(data_dir)!r}",
        f"WORKDIR = {str(tmp_path / 'run')!r}",
        "SERVE_PORT = 0",
    ])
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its error, on a failure

    code = [c for c in notebook.cells if c.cell_type == "code"]
    text = [outputs_text(c) for c in code]
    everything = "\n".join(text)
    assert f"flaxdigits: {REPO / 'flaxdigits'}" in everything  # the installed package
    assert "devices:" in everything
    train = next(t for t in text if "test accuracy" in t)
    assert "Compiling the training step" in train and "steps/s, ETA" in train
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", train).group(1))
    assert accuracy > (0.97 if real else 0.3), train[-2000:]
    report_cell = next(c for c in code if "format_report" in c.source)
    assert images_in(report_cell) == 3  # training curves, confusion matrix, misclassified
    assert images_in(next(c for c in code if "plt.subplots" in c.source)) == 1
    assert re.search(r"predicted: \[(\d, ){4}\d\] true: \[", everything)
    served = next(t for t in text if "serving" in t)
    assert "'status': 'ok'" in served  # its /healthz answered
    assert "Open the drawing page" in served
    assert (tmp_path / "run" / "tensorboard").is_dir()
