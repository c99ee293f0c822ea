"""flaxdigits/workdir.py: the files of a workdir, written whole and read back."""

import json
import os

import pytest

from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import Workdir
from tests.conftest import tiny_config


def test_config_round_trip_and_atomic_writes(tmp_path):
    workdir = Workdir(tmp_path / "run")
    assert workdir.read_config() is None
    workdir.write_config(tiny_config())
    assert workdir.read_config()["model"]["conv_features"] == [4, 8]
    assert [p.name for p in workdir.path.iterdir()] == ["config.json"]  # no partial files
    workdir.config_file.write_text("{not json")
    with pytest.raises(FlaxDigitsError, match=r"config.json: not valid JSON"):
        workdir.read_config()


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    workdir = Workdir(tmp_path)
    workdir.append_metrics({"step": 1})
    workdir.append_metrics({"step": 2})
    with workdir.metrics_file.open("a") as f:
        f.write('{"step": 3, "train_lo')  # a run killed while writing
    assert workdir.read_metrics() == [{"step": 1}, {"step": 2}]
    assert "metrics.jsonl: line 3 is torn (a run stopped while writing it); dropped" in caplog.text


def test_submission_format(tmp_path):
    path = Workdir(tmp_path).write_submission([7, 2, 1, 0])
    assert path.read_text() == "ImageId,Label\n1,7\n2,2\n3,1\n4,0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_checkpoint_folders_are_recognised(tmp_path):
    workdir = Workdir(tmp_path)
    assert not workdir.has_checkpoints()
    (workdir.checkpoint_dir / "tmp.123.orbax-checkpoint-tmp").mkdir(parents=True)
    assert not workdir.has_checkpoints()  # a half-written save is not a checkpoint
    (workdir.checkpoint_dir / "40").mkdir()
    assert workdir.has_checkpoints()
    report = {"accuracy": 0.5}
    workdir.write_report(report)
    assert json.loads(workdir.report_file.read_text()) == report


def test_one_training_run_per_workdir_and_the_lock_names_its_holder(tmp_path):
    workdir = Workdir(tmp_path / "run")
    with workdir.lock():
        with pytest.raises(FlaxDigitsError, match=rf"{tmp_path / 'run'} is in use by another "
                                                  rf"training run \(pid {os.getpid()}\)"):
            with Workdir(tmp_path / "run").lock():
                pass
    with workdir.lock():  # released when the holder is done
        pass


def test_a_workdir_that_is_a_file_or_under_one(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlaxDigitsError, match="file: is a file, not a workdir folder"):
        Workdir(tmp_path / "file").create()
    with pytest.raises(FlaxDigitsError, match=r"file/run: cannot create the workdir \(Not a "
                                              r"directory\)"):
        Workdir(tmp_path / "file" / "run").create()


def test_resuming_on_other_data_is_refused(tmp_path):
    workdir = Workdir(tmp_path)
    mnist = {"examples": 60000, "sha256": "a" * 64}
    workdir.check_same_data(mnist, "MNIST IDX files in A", resuming=False)
    workdir.check_same_data(mnist, "MNIST IDX files in B", resuming=True)  # moved: fine
    with pytest.raises(FlaxDigitsError, match=r"trained on other data \(60000 training "
                                              r"examples, sha256 aaaaaaaaaaaa...\), but small "
                                              r"holds 3000"):
        workdir.check_same_data({"examples": 3000, "sha256": "b" * 64}, "small", resuming=True)
    workdir.check_same_data({"examples": 3000, "sha256": "b" * 64}, "small", resuming=False)


def test_a_workdir_that_does_not_write_reads_and_writes_nothing(tmp_path):
    """The processes of a multi-process run other than the primary one."""
    writer = Workdir(tmp_path / "w")
    writer.write_config(tiny_config())
    writer.append_metrics({"step": 1})
    reader = Workdir(Workdir(tmp_path / "w", writes=False))  # the choice is kept
    assert not reader.writes and reader.read_metrics() == [{"step": 1}]
    before = {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir()}
    with reader.lock():  # no lock taken: the primary holds it for all
        with writer.lock():
            pass
    (tmp_path / "w" / ".lock").unlink()
    reader.write_config(tiny_config(seed=5))
    reader.rewrite_metrics([])
    reader.append_metrics({"step": 2})
    reader.write_report({"accuracy": 1.0})
    reader.write_submission([1, 2])
    reader.check_same_data({"sha256": "x", "examples": 1}, "here", resuming=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir()} == before
