"""Fixtures shared by the tests. Slow tests (real training runs, subprocesses, a browser,
the network) are marked `slow`: `python -m pytest -q -m "not slow"` is the quick tier."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import tiny
from flaxdigits import testing
from flaxdigits.data import idx

REPO = pathlib.Path(__file__).resolve().parent.parent
# The real MNIST files: ../shared/data/mnist beside the checkout, else flaxdigits' cache (a
# first training run fills it). Tests never download them; without either they skip.
MNIST_DIR = (testing.mnist_folder(REPO, fetch_if_missing=False)
             or REPO.parent / "shared" / "data" / "mnist")
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(),
                                 reason=f"no MNIST files: {MNIST_DIR} is absent and the "
                                        f"cache is empty (run a training once to fill it)")


def tiny_config(**overrides):
    """configs/tiny.py with dotted-name overrides, e.g. tiny_config(**{'data.dir': d})."""
    config = tiny.get_config()
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny_config


@pytest.fixture(scope="session")
def mnist_raw():
    """RawDigits of the real MNIST files (a skip where ../shared/data/mnist is absent)."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"no MNIST files: {MNIST_DIR} is absent and the cache is empty")
    return idx.load_folder(MNIST_DIR)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """400 training and 100 test synthetic digits as gzipped IDX files (read-only)."""
    return testing.write_idx_folder(tmp_path_factory.mktemp("synthetic"), 400, 100)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_raw):
    """A tiny CNN trained for 2 epochs on 6,000 real MNIST digits, shared by the tests of
    evaluation and serving: {'workdir', 'data_dir', 'final'}."""
    from flaxdigits.training import loop

    root = tmp_path_factory.mktemp("trained")
    data_dir = testing.write_idx_subset(mnist_raw, root / "mnist", 6000, 1000)
    config = tiny_config(**{"data.dir": str(data_dir), "num_epochs": 2,
                            "optim.learning_rate": 3e-3, "eval_batch_size": 256})
    final = loop.train_and_evaluate(config, root / "work")
    return {"workdir": root / "work", "data_dir": data_dir, "final": final}


def run_launch(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """launch.py with `args`, as a user types it, in a subprocess on the CPU."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(name="launch")
def launch_fixture():
    return run_launch


def last_line(result) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(name="last_line")
def last_line_fixture():
    return last_line


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KB filesystem (tmpfs), where root may mount one; skipped elsewhere."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs",
                              str(mountpoint)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)
