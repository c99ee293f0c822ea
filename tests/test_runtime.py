"""flaxdigits/runtime.py: JAX's process settings (behaviour only: speed is benchmarks')."""

import pytest

from flaxdigits import runtime
from flaxdigits.errors import FlaxDigitsError


def test_one_device_per_core_as_far_as_the_batches_split_evenly():
    assert runtime.cpu_device_count(2, (128, 1000)) == 2
    assert runtime.cpu_device_count(8, (128, 1000)) == 8
    assert runtime.cpu_device_count(3, (128, 1000)) == 2  # 3 divides neither
    assert runtime.cpu_device_count(16, (32, 64)) == 16
    assert runtime.cpu_device_count(4, (30, 64)) == 2
    assert runtime.cpu_device_count(1, (128,)) == 1


def test_the_environment_decides_where_it_says(monkeypatch):
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "1")
    assert runtime.use_cpu_cores(128) == 0


def test_too_late_changes_nothing():
    import jax

    jax.devices()  # JAX has started in this process
    assert runtime.use_cpu_cores(128) == 0


def test_devices_per_core_from_the_environment(monkeypatch):
    assert runtime.devices_per_core() == 1
    monkeypatch.setenv(runtime.DEVICES_PER_CORE, "4")
    assert runtime.devices_per_core() == 4
    for bad in ("0", "two", "-1", "65"):
        monkeypatch.setenv(runtime.DEVICES_PER_CORE, bad)
        with pytest.raises(FlaxDigitsError, match=f"FLAXDIGITS_DEVICES_PER_CORE='{bad}': want"):
            runtime.devices_per_core()


@pytest.mark.slow
@pytest.mark.parametrize("env,expected", [({}, None), ({"JAX_NUM_CPU_DEVICES": "1"}, 1),
                                          ({runtime.DEVICES_PER_CORE: "2"}, "twice")])
def test_launch_uses_every_core_unless_told(tmp_path, launch, synthetic_dir, env, expected):
    import os

    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path}",
                    f"--config.data.dir={synthetic_dir}", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    cores = len(os.sched_getaffinity(0))
    per_core = 2 if expected == "twice" else 1
    count = runtime.cpu_device_count(cores * per_core, (32, 64)) if expected in (None, "twice") \
        else expected
    devices = [line for line in result.stderr.splitlines() if "JAX devices" in line][0]
    assert devices.count("CpuDevice") == count


def test_devices_per_process_split_the_batches_across_every_process():
    # 2 processes of 2 cores: 2 devices each when 4 divides the batches, else 1.
    assert runtime.cpu_device_count(2, (128, 1000), processes=2) == 2
    assert runtime.cpu_device_count(2, (6, 10), processes=2) == 1
    assert runtime.cpu_device_count(4, (96,), processes=3) == 4


@pytest.mark.parametrize("args, expected", [
    (("127.0.0.1:1234", None, None), "go together"),
    ((None, 2, 0), "go together"),
    (("nohost", 2, 0), "expected HOST:PORT"),
    (("127.0.0.1:99999", 2, 0), "expected HOST:PORT"),
    (("127.0.0.1:1234", 2, 2), "must be from 0 to"),
])
def test_bad_multi_process_settings_are_refused_before_jax_is_asked(args, expected):
    with pytest.raises(FlaxDigitsError, match=expected):
        runtime.join_processes(*args)
