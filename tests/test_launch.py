"""End-to-end runs of launch.py as a user types it, in a subprocess (all slow)."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from flaxdigits import testing
from flaxdigits.workdir import Workdir
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_idx_folder_with_override(tmp_path, launch, last_line):
    testing.write_idx_folder(tmp_path / "data", 300, 100)
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'work'}",
                    f"--config.data.dir={tmp_path / 'data'}", "--config.optim.learning_rate=3e-3",
                    "--config.log_every_steps=4")
    assert re.fullmatch(r"test_accuracy=[01]\.\d{4}", last_line(result))
    config = json.loads((tmp_path / "work" / "config.json").read_text())
    assert config["optim"]["learning_rate"] == 3e-3
    assert (tmp_path / "work" / "metrics.jsonl").read_text().count("\n") >= 2
    assert "steps/s, ETA" in result.stderr and "parameters" in result.stderr


def test_kaggle_folder(tmp_path, launch, last_line):
    testing.write_kaggle_folder(tmp_path / "data", 300, 20)
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'work'}",
                    f"--config.data.dir={tmp_path / 'data'}")
    assert re.fullmatch(r"validation_accuracy=[01]\.\d{4} \(this data has no labelled test "
                        r"split\)", last_line(result))


def test_tfds_under_mock_data(tmp_path, last_line):
    pytest.importorskip("tensorflow_datasets")
    # launch.py inside tfds' mock (the same process), as a user's command would run.
    code = ("import runpy, sys\n"
            "import tensorflow_datasets as tfds\n"
            f"sys.argv = ['launch.py', '--config=configs/tiny.py', '--workdir={tmp_path}',"
            f" '--config.data.source=tfds']\n"
            "with tfds.testing.mock_data(num_examples=200):\n"
            "    runpy.run_path('launch.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert re.fullmatch(r"test_accuracy=[01]\.\d{4}", last_line(result))
    assert "tensorflow-datasets mnist" in result.stderr


def test_typo_in_override_fails_clearly(tmp_path, launch):
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path}",
                    "--config.optim.learnin_rate=1e-3")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ('flaxdigits: error: --config.optim.learnin_rate: no such '
                                     'config field; Did you mean "learning_rate" instead of '
                                     '"learnin_rate"?')
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("case", ["missing folder", "corrupt file"])
def test_bad_data_is_one_line_and_non_zero_exit(tmp_path, case, launch):
    folder = tmp_path / "data"
    if case == "corrupt file":
        testing.write_idx_folder(folder, 50, 10)
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x03 too short")
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'work'}",
                    f"--config.data.dir={folder}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [l for l in result.stderr.splitlines() if l.startswith("flaxdigits: error:")]
    assert len(error_lines) == 1 and str(folder) in error_lines[0], result.stderr[-2000:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_training_starts_is_one_line_and_the_documented_exit(tmp_path, signum):
    data_dir = testing.write_idx_folder(tmp_path / "data", 300, 100)
    process = subprocess.Popen(
        [sys.executable, "launch.py", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
         f"--config.data.dir={data_dir}"], cwd=REPO, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    for line in process.stderr:  # the run is loading its data: not yet in the loop
        if "Config: model" in line:
            break
    process.send_signal(signum)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 128 + signum, rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].startswith(
        f"flaxdigits: stopped by {signal.Signals(signum).name}")
    # Stopped before the first step: nothing trained, nothing written but the empty folders.
    assert not (tmp_path / "w" / "config.json").exists()
    assert not Workdir(tmp_path / "w").has_checkpoints()
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_a_port_out_of_range_is_refused(tmp_path, launch):
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=serve",
                    "--port=70000")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "flaxdigits: error: flag --port=70000: 70000 is not an integer in the range [0, 65535]"]


def test_unreadable_files_and_folders_are_one_line(tmp_path):
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to drop the permission-check override")
    data_dir = testing.write_idx_folder(tmp_path / "data", 300, 100)
    (data_dir / "train-images-idx3-ubyte.gz").chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    as_a_user = ["setpriv", "--inh-caps=-all", "--bounding-set",
                 "-dac_override,-dac_read_search", sys.executable, "launch.py",
                 "--config=configs/tiny.py"]
    for args, expected in (
            ([f"--workdir={tmp_path / 'w'}", f"--config.data.dir={data_dir}"],
             f"{data_dir / 'train-images-idx3-ubyte.gz'}: Permission denied"),
            ([f"--workdir={locked / 'w'}", f"--config.data.dir={data_dir}"],
             f"{locked / 'w'}: cannot create the workdir (Permission denied)")):
        result = subprocess.run(as_a_user + args, cwd=REPO, capture_output=True, text=True,
                                timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == f"flaxdigits: error: {expected}"


def test_the_compilation_cache_is_on_by_default_and_can_be_turned_off(tmp_path, launch,
                                                                       last_line):
    data_dir = testing.write_idx_folder(tmp_path / "data", 300, 100)
    env = {"FLAXDIGITS_CACHE": str(tmp_path / "cache")}
    first = last_line(launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'a'}",
                             f"--config.data.dir={data_dir}", env=env))
    cached = sorted(p.name for p in (tmp_path / "cache" / "jax").iterdir())
    assert cached, "the default run filled the cache"
    second = last_line(launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'b'}",
                              f"--config.data.dir={data_dir}", env=env))
    assert second == first  # the same figures from the cached programs

    env = {"FLAXDIGITS_CACHE": str(tmp_path / "other")}
    last_line(launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'c'}",
                     f"--config.data.dir={data_dir}", "--compilation_cache=off", env=env))
    assert not (tmp_path / "other" / "jax").exists()
