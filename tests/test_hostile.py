"""The failure classes of the hostile sweep (tracker issue 25), each as a table of the exact
one line it must end with. Quick cases call the library; the slow ones run the program as a
user types it."""

import gzip
import json
import logging

import numpy as np
import pytest

from flaxdigits import config as config_lib
from flaxdigits import testing
from flaxdigits.data import idx, kaggle, load_folder, make_splits
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.serving import preprocess
from flaxdigits.workdir import Workdir
from tests.conftest import REPO, tiny_config

# -- 3. files holding no images; 6. a plain IDX file larger than its header says


def idx_bytes(count: int, *, images: bool = True) -> bytes:
    array = (np.zeros((count, 28, 28), np.uint8) if images else np.zeros(count, np.uint8))
    return idx.to_bytes(array)


DATA_FILES = [
    ("0 training images", "train-images-idx3-ubyte", idx_bytes(0),
     "train-images-idx3-ubyte: holds no images (its header says 0)"),
    ("0 labels, gzipped", "train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(0, images=False)),
     "train-labels-idx1-ubyte.gz: holds no labels (its header says 0)"),
    ("0 test images", "t10k-images-idx3-ubyte", idx_bytes(0),
     "t10k-images-idx3-ubyte: holds no images (its header says 0)"),
    ("1 KB more than the header says", "train-images-idx3-ubyte", idx_bytes(5) + bytes(1024),
     "train-images-idx3-ubyte: trailing bytes: 4960 bytes, the header promises 3936"),
    ("truncated", "train-images-idx3-ubyte", idx_bytes(5)[:-10],
     "train-images-idx3-ubyte: truncated: 3926 bytes, the header promises 3936"),
]


@pytest.mark.parametrize("case,name,content,message", DATA_FILES, ids=[c[0] for c in DATA_FILES])
def test_idx_files_with_nothing_or_too_much_in_them_are_refused(tmp_path, case, name, content,
                                                                message):
    folder = testing.write_idx_folder(tmp_path / "digits", 50, 20, gz=False)
    for stale in folder.glob(name.split(".")[0] + "*"):
        stale.unlink()
    (folder / name).write_bytes(content)
    with pytest.raises(FlaxDigitsError) as caught:
        load_folder(folder)
    assert str(caught.value) == f"{folder / name}: {message.split(': ', 1)[1]}"


def test_a_huge_plain_idx_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A 3 GB file promising 5 images is refused by its size alone: nothing is read."""
    path = tmp_path / "train-images-idx3-ubyte"
    with path.open("wb") as f:
        f.write(idx_bytes(5)[:16])
        f.truncate(3 * 1024**3)  # sparse: no disk used
    monkeypatch.setattr(type(path), "read_bytes", lambda self: pytest.fail("read whole"))
    with pytest.raises(FlaxDigitsError, match=r"trailing bytes: 3221225472 bytes, the header "
                                              r"promises 3936$"):
        idx.read_bytes_maybe_gzipped(path, images=True)


def test_kaggle_csvs_with_no_rows_are_refused(tmp_path):
    folder = testing.write_kaggle_folder(tmp_path / "kaggle", 30, 5)
    (folder / "test.csv").write_text(",".join(kaggle.PIXEL_COLUMNS) + "\n")
    with pytest.raises(FlaxDigitsError, match=r"test.csv: header only, no rows$"):
        kaggle.read_test_csv(folder)
    (folder / "train.csv").write_text("label," + ",".join(kaggle.PIXEL_COLUMNS) + "\n")
    with pytest.raises(FlaxDigitsError, match=r"train.csv: header only, no rows$"):
        load_folder(folder)


def test_splits_that_would_hold_nothing_are_refused_before_training(tmp_path):
    folder = testing.write_kaggle_folder(tmp_path / "kaggle", 30, 5)
    raw, source = load_folder(folder)
    for fraction in (0.0, 0.001):
        with pytest.raises(FlaxDigitsError, match=rf"has no labelled test split, and config."
                                                  rf"data.validation_fraction={fraction} holds "
                                                  rf"out no validation split of its 30 "):
            make_splits(raw, validation_fraction=fraction, split_seed=0, source=source)


def test_the_kaggle_data_without_a_validation_split_is_refused_at_the_door(tmp_path):
    folder = testing.write_kaggle_folder(tmp_path / "kaggle", 30, 5)
    config = tiny_config(**{"data.dir": str(folder), "data.validation_fraction": 0.0})
    with pytest.raises(FlaxDigitsError, match=r"config.data.validation_fraction=0: .*train.csv "
                                              r"has no labelled test split"):
        config_lib.validate(config, device_count=1)


# -- 4. JSON pixels that are not numbers

@pytest.mark.parametrize("rows", [[["0"] * 28] * 28, [[0] * 27 + ["255"]] + [[0] * 28] * 27,
                                  [[True] * 28] * 28, [[None] * 28] * 28])
def test_json_pixels_must_be_json_numbers(rows):
    with pytest.raises(preprocess.BadInput) as caught:
        preprocess.pixels_from_json(json.dumps({"pixels": rows}).encode())
    assert caught.value.status == 422
    assert str(caught.value) == ('"pixels" must hold JSON numbers only (not strings, '
                                 'true/false or null)')


# -- 8. metrics.jsonl lines that parse but are not records

METRICS_LINES = [
    (b"42", "line 2 is int, not an object"),
    (b'"text"', "line 2 is str, not an object"),
    (b'{"step": "abc", "train_loss": 1.0}', "line 2 has step 'abc', not a whole number"),
    (b'{"train_loss": 1.0}', "line 2 has step None, not a whole number"),
    (b'{"step": -5}', "line 2 has step -5, not a whole number"),
    (b'{"step": true}', "line 2 has step True, not a whole number"),
    (b'{"step": 3, "train_loss": "x"}', "line 2 has train_loss='x'"),
    (b'{"step": 3, "epoch": 1.5}', "line 2 has epoch=1.5"),
    (b'{"step": 3, "final": 1}', "line 2 has final=1"),
    (b'{"step": 3, "val_accuracy": [1]}', "line 2 has val_accuracy=[1]"),
    (b'{"step": 3, "val_loss": NaN}', "line 2 has val_loss=nan"),
    (b'{"step": 3, "x": \xff\xfe}', "line 2 is not UTF-8"),
    (b"{{{", "line 2 is not JSON"),
    (b"[" * 100_000, "line 2 is not JSON"),
]


@pytest.mark.parametrize("line,warning", METRICS_LINES, ids=[w for _, w in METRICS_LINES])
def test_a_bad_metrics_line_is_dropped_with_a_warning_naming_it(tmp_path, caplog, line, warning):
    workdir = Workdir(tmp_path)
    workdir.metrics_file.write_bytes(b'{"step": 1}\n' + line + b'\n{"step": 5, "epoch": 1}\n')
    with caplog.at_level(logging.WARNING):
        assert workdir.read_metrics() == [{"step": 1}, {"step": 5, "epoch": 1}]
    assert f"{workdir.metrics_file}: {warning}; dropped" in caplog.text


def test_no_nan_is_ever_written_to_metrics(tmp_path):
    workdir = Workdir(tmp_path)
    workdir.append_metrics({"step": 1, "val_loss": float("nan"), "val_accuracy": float("inf")})
    assert workdir.metrics_file.read_text() == (
        '{"step": 1, "val_loss": null, "val_accuracy": null}\n')
    assert workdir.read_metrics() == [{"step": 1, "val_loss": None, "val_accuracy": None}]


# -- 9. a saved config.json checked as a new config is

def saved(**changes) -> dict:
    tree = tiny_config().to_dict()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for name in parents:
            node = node[name]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return json.loads(json.dumps(tree))


DELETE = object()
SAVED_CONFIGS = [
    (saved(dtype="nonsense"), "config.dtype='nonsense' must be one of 'float32', 'bfloat16'"),
    (saved(dtype="int8"), "config.dtype='int8' must be one of 'float32', 'bfloat16'"),
    (saved(data=DELETE), "config.data is missing: start from configs/base.py"),
    (saved(data=[1, 2]), "config.data is missing: start from configs/base.py"),
    (saved(**{"data.validation_fraction": "lots"}),
     "config.data.validation_fraction='lots' must be a number in [0, 1)"),
    (saved(**{"model.conv_features": [4, -8]}), "config.model.conv_features=[4, -8] must be "),
    (saved(num_epochs=10**23), "config.num_epochs=100000000000000000000000 must be an integer"),
]


@pytest.mark.parametrize("tree,message", SAVED_CONFIGS, ids=[m[:40] for _, m in SAVED_CONFIGS])
def test_a_saved_config_goes_through_the_same_validation(tmp_path, tree, message):
    workdir = Workdir(tmp_path)
    workdir.config_file.write_text(json.dumps(tree))
    with pytest.raises(FlaxDigitsError) as caught:
        config_lib.saved_config(workdir)
    assert str(caught.value).startswith(f"{workdir.config_file}: {message}"), caught.value


def test_a_saved_config_from_before_newer_fields_still_loads(tmp_path):
    workdir = Workdir(tmp_path)
    workdir.config_file.write_text(json.dumps(saved(**{"data.read_pieces": DELETE,
                                                       "optim.ema_decay": DELETE})))
    config = config_lib.saved_config(workdir)
    assert config.data.read_pieces == 0.0 and config.optim.ema_decay == 0.0


# -- 11. files and folders of a workdir in each other's places

@pytest.mark.parametrize("name,kind", [("checkpoints", "file"), ("tensorboard", "file"),
                                       ("plots", "file"), ("metrics.jsonl", "folder"),
                                       ("config.json", "folder")])
def test_a_workdir_with_a_file_where_a_folder_belongs_is_refused_at_start(tmp_path, name, kind):
    target = tmp_path / name
    target.mkdir() if kind == "folder" else target.write_text("x")
    with pytest.raises(FlaxDigitsError) as caught:
        Workdir(tmp_path).create()
    other = "folder" if kind == "file" else "file"
    assert str(caught.value) == (f"{target}: is a {kind} where the workdir keeps a {other}; "
                                 f"move it away or use another --workdir")


# -- the program as a user types it: 1, 2, 7, 11, 12 and the door's bounds
# (flaxdigits.testing.HOSTILE_PROGRAM_CASES; benchmarks/hostile.py replays them and more)

@pytest.mark.slow
@pytest.mark.parametrize("case", testing.HOSTILE_PROGRAM_CASES, ids=lambda c: c.name)
def test_the_program_ends_with_one_line(tmp_path, case):
    outcome, line, result = testing.run_hostile_case(case, tmp_path, REPO / "launch.py")
    assert outcome == "clear", (outcome, result.stderr[-3000:])
    assert case.line in line, line
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


# -- a stop signal before the first step: nothing trained, nothing written

def test_a_signal_noted_before_the_first_step_stops_at_once(tmp_path, synthetic_dir):
    import signal

    from flaxdigits import runtime
    from flaxdigits.errors import RunStopped
    from flaxdigits.training import loop

    runtime.note_signal(signal.SIGTERM)  # as a signal whose exception Python dropped
    try:
        with pytest.raises(RunStopped, match=r"^stopped by SIGTERM while the data was loading, "
                                             r"before the first step: nothing was trained"):
            loop.train_and_evaluate(tiny_config(**{"data.dir": str(synthetic_dir)}),
                                    tmp_path / "w")
    finally:
        runtime.forget_noted_signals()
    workdir = Workdir(tmp_path / "w")
    assert not workdir.config_file.exists() and not workdir.has_checkpoints()
    assert not workdir.metrics_file.exists()
