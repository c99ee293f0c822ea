"""Several processes, for real: jax.distributed over loopback with 2 CPU devices each,
launched the way a user launches them on two hosts (launch.py --coordinator ...)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from flaxdigits import runtime, testing
from flaxdigits.evaluation import inference

pytestmark = pytest.mark.slow

# A run long enough to be stopped in the middle: 40 epochs of 11 steps on 400 digits.
LONG = ("--config.num_epochs=40", "--config.log_every_steps=5")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return testing.write_idx_folder(tmp_path_factory.mktemp("digits"), 400, 100)


def start(workdir, data_dir, *extra, process_id=None, port=None, processes=2, devices=2):
    """launch.py with configs/tiny.py as one of `processes` processes (or alone, where
    `process_id` is None), each with `devices` CPU devices."""
    args = [sys.executable, "launch.py", "--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.data.dir={data_dir}", *extra]
    if process_id is not None:
        args += [f"--coordinator=127.0.0.1:{port}", f"--num_processes={processes}",
                 f"--process_id={process_id}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start_both(workdir, data_dir, *extra):
    port = testing.free_port()
    return [start(workdir, data_dir, *extra, process_id=i, port=port) for i in range(2)]


def finish(processes, timeout=240):
    """[(returncode, stdout, stderr)] once every process has ended."""
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        results.append((process.returncode, out, err))
    return results


def worker_of(process) -> int:
    """The pid of the child that does a launched process's work (launch.py supervises it)."""
    children = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
    (pid,) = children.split()
    return int(pid)


def params_of(workdir):
    variables = inference.load(workdir, which="latest").variables
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(variables)]


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def wait_for_records(workdir, count, processes, seconds=120):
    """Waits until metrics.jsonl holds `count` records: training is under way."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            pytest.fail(f"a process ended early: {finish(processes)}")
        if (workdir / "metrics.jsonl").is_file() and len(records(workdir)) >= count:
            return
        time.sleep(0.1)
    pytest.fail("training did not start in time")


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory, data_dir):
    """The long run by 2 processes x 2 devices, uninterrupted."""
    workdir = tmp_path_factory.mktemp("two_by_two")
    results = finish(start_both(workdir, data_dir, *LONG))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    return workdir, results


def test_two_processes_train_like_one_process_on_as_many_devices(tmp_path, data_dir,
                                                                 two_by_two):
    workdir, results = two_by_two
    ((code, out, err),) = finish([start(tmp_path / "one", data_dir, *LONG, devices=4)])
    assert code == 0, err[-3000:]
    # Both processes print the same result; each logs with its index; 4 devices in all.
    assert results[0][1].splitlines()[-1] == results[1][1].splitlines()[-1]
    assert "[process 0/2]" in results[0][2] and "[process 1/2]" in results[1][2]
    assert "CpuDevice(id=2049)" in results[0][2]  # process 1's second device, seen by 0

    for a, b in zip(params_of(workdir), params_of(tmp_path / "one")):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)
    mine, theirs = records(workdir), records(tmp_path / "one")
    # One set of files: one writer, so no record twice and nothing left half-written.
    assert [r["step"] for r in mine] == [r["step"] for r in theirs]
    for a, b in zip(mine, theirs):
        for key in ("train_loss", "val_accuracy", "test_accuracy"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-3), (a, b)
    assert not list(workdir.glob("**/*.partial")) and (workdir / "report.json").is_file()
    assert len(list((workdir / "plots").glob("*.png"))) == 3


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_resumes_exactly(
        tmp_path, data_dir, two_by_two):
    workdir = tmp_path / "stopped"
    processes = start_both(workdir, data_dir, *LONG)
    wait_for_records(workdir, 3, processes)
    processes[1].send_signal(signal.SIGTERM)
    results = finish(processes)
    stopped_at = set()
    for code, _, err in results:
        assert code == 128 + signal.SIGTERM, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("flaxdigits: stopped by SIGTERM") and "checkpoint saved" in last
        stopped_at.add(last.split(" at step ")[1].split("/")[0])
    assert len(stopped_at) == 1, stopped_at
    assert "(sent to another process)" in results[0][2]
    step = int(stopped_at.pop())
    assert 0 < step < 440 and step % 10 == 0  # the stop flag is shared every 10 steps

    resumed = finish(start_both(workdir, data_dir, *LONG))
    for code, _, err in resumed:
        assert code == 0, err[-3000:]
        assert f"resumed from step {step}" in err
    for a, b in zip(params_of(workdir), params_of(two_by_two[0])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    assert [r["step"] for r in records(workdir)] == [r["step"] for r in records(two_by_two[0])]


def test_a_killed_process_ends_the_other_with_one_line_in_bounded_time(tmp_path, data_dir):
    workdir = tmp_path / "killed"
    processes = start_both(workdir, data_dir, *LONG)
    wait_for_records(workdir, 3, processes)
    os.kill(worker_of(processes[1]), signal.SIGKILL)  # the process doing the work
    killed_at = time.monotonic()
    (code, _, err), _ = finish(processes, timeout=runtime.HEARTBEAT_TIMEOUT_S + 60)
    assert time.monotonic() - killed_at < runtime.HEARTBEAT_TIMEOUT_S + 30
    assert code != 0
    assert err.strip().splitlines()[-1].startswith("flaxdigits: error: "), err[-3000:]
    assert "Traceback" not in err


def test_a_coordinator_that_never_answers_is_one_line(tmp_path, data_dir, launch):
    """Process 1 of 2 alone: process 0 (the coordinator) never comes."""
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.dir={data_dir}", "--num_processes=2", "--process_id=1",
                    f"--coordinator=127.0.0.1:{testing.free_port()}", "--join_timeout=3")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("flaxdigits: error: could not join the run at 127.0.0.1:"), last
    assert "within 3 s" in last
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--coordinator=127.0.0.1:1234"], "go together"),
    (["--coordinator=nohost", "--num_processes=2", "--process_id=0"], "expected HOST:PORT"),
    (["--coordinator=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
     "must be from 0 to"),
])
def test_bad_multi_process_flags_are_one_line(tmp_path, launch, flags, expected):
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}", *flags)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("flaxdigits: error: ")
    assert expected in result.stderr and "Traceback" not in result.stderr
