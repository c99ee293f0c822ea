"""Data parallelism: the same run on 1 and on 8 (simulated) devices agrees."""

import json

import jax
import numpy as np
import pytest

from flaxdigits import parallel, testing
from flaxdigits.evaluation import inference
from tests.conftest import run_launch


def run_on_devices(count, data_dir, workdir):
    """launch.py in a subprocess that sees `count` CPU devices (XLA reads the flag at start)."""
    result = run_launch(
        "--config=configs/tiny.py", f"--workdir={workdir}", f"--config.data.dir={data_dir}",
        "--config.num_epochs=2", "--config.optim.learning_rate=3e-3",
        "--config.log_every_steps=5",
        env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_eight_devices_train_like_one(tmp_path):
    data_dir = testing.write_idx_folder(tmp_path / "data", 600, 200)
    one = run_on_devices(1, data_dir, tmp_path / "one")
    eight = run_on_devices(8, data_dir, tmp_path / "eight")
    assert "CpuDevice(id=7)" in eight.stderr and "CpuDevice(id=1)" not in one.stderr

    report_one = json.loads((tmp_path / "one" / "report.json").read_text())
    report_eight = json.loads((tmp_path / "eight" / "report.json").read_text())
    assert report_one["accuracy"] == pytest.approx(report_eight["accuracy"], abs=0.01)
    # Same data order and keys; only the summation order of the gradient all-reduce differs.
    params_one = inference.load(tmp_path / "one", which="latest").variables["params"]
    params_eight = inference.load(tmp_path / "eight", which="latest").variables["params"]
    for a, b in zip(*(jax_leaves(p) for p in (params_one, params_eight))):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)
    losses = [[json.loads(line).get("train_loss") for line in
               (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("one", "eight")]
    np.testing.assert_allclose(*[[x for x in l if x is not None] for l in losses], rtol=1e-4)


def jax_leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_mesh_spans_every_device_and_shards_the_batch():
    mesh = parallel.data_mesh()
    assert mesh.devices.size == len(jax.devices())
    batch = parallel.put(np.arange(4 * mesh.devices.size, dtype=np.float32),
                         parallel.batch_sharded(mesh))
    np.testing.assert_array_equal(np.asarray(batch), np.arange(4 * mesh.devices.size))
    assert batch.sharding == parallel.batch_sharded(mesh)
    whole = parallel.put(np.ones((3, 2)), parallel.replicated(mesh))
    assert whole.sharding.is_fully_replicated
