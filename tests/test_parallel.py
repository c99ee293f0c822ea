"""Data parallelism: the same run on 1 and on 8 (simulated) devices agrees."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flaxdigits import checkpoint as checkpoint_lib
from flaxdigits import parallel
from flaxdigits.errors import FlaxDigitsError
from tests import helpers


def run_on_devices(count, data_dir, workdir):
    """launch.py in a subprocess that sees `count` CPU devices (XLA reads the flag at start)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
    result = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/tiny.py", f"--workdir={workdir}",
         f"--config.data.dir={data_dir}", "--config.num_epochs=2",
         "--config.optim.learning_rate=3e-3", "--config.log_every_steps=5"],
        cwd=helpers.REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_eight_devices_train_like_one(tmp_path):
    data_dir = helpers.write_idx_folder(tmp_path / "data", 600, 200)
    one = run_on_devices(1, data_dir, tmp_path / "one")
    eight = run_on_devices(8, data_dir, tmp_path / "eight")
    assert "CpuDevice(id=7)" in eight.stderr and "CpuDevice(id=1)" not in one.stderr

    report_one = json.loads((tmp_path / "one" / "report.json").read_text())
    report_eight = json.loads((tmp_path / "eight" / "report.json").read_text())
    assert report_one["accuracy"] == pytest.approx(report_eight["accuracy"], abs=0.01)
    # Same data order and keys; only the summation order of the gradient all-reduce differs.
    params_one = checkpoint_lib.load(tmp_path / "one", which="latest").variables["params"]
    params_eight = checkpoint_lib.load(tmp_path / "eight", which="latest").variables["params"]
    for a, b in zip(*(jax_leaves(p) for p in (params_one, params_eight))):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)
    losses = [[json.loads(line).get("train_loss") for line in
               (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("one", "eight")]
    np.testing.assert_allclose(*[[x for x in l if x is not None] for l in losses], rtol=1e-4)


def jax_leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_batch_must_split_evenly_across_devices():
    mesh = parallel.data_mesh()
    parallel.check_divisible(mesh.devices.size * 3, mesh, "batch_size")
    fake = parallel.data_mesh(np.array(mesh.devices.tolist() * 4))  # 4x the devices
    with pytest.raises(FlaxDigitsError, match=r"config.batch_size=6 must be a multiple of the "
                                               rf"{4 * mesh.devices.size} devices"):
        parallel.check_divisible(6, fake, "batch_size")
