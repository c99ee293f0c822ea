"""JAX's process-wide settings, made before JAX computes anything.

One JAX device per CPU core: XLA:CPU spreads one device's small convolutions poorly over
several cores, and a batch sharded over one device per core trains faster (2-core CPU,
benchmarks/speed.py: base CNN 1.5x, DeepCNN about 2x the images per second, configs/fast.py
about 10% less training time). launch.py does it for every run on a CPU; JAX's own
JAX_NUM_CPU_DEVICES (or XLA_FLAGS=--xla_force_host_platform_device_count) overrides it.

The persistent compilation cache: JAX stores every compiled program (the train step, the
evaluation step, the report's predictions) in a folder and reuses it in the next process
with the same program, so a second run of a config skips most of its compilation. On by
default, in $FLAXDIGITS_CACHE/jax or ~/.cache/flaxdigits/jax; `launch.py
--compilation_cache=off` turns it off, `--compilation_cache=DIR` moves it.
"""

import logging
import os
import pathlib
from typing import Optional

log = logging.getLogger(__name__)

OFF = "off"
_chosen: dict = {}  # the first choice made in this process: later calls keep it


def use_cpu_cores(*batch_sizes: int) -> int:
    """Asks JAX for one CPU device per core this process may use, as many as divide every
    batch size (a batch is split evenly across the devices); returns the count asked for,
    or 0 where the environment decides or JAX has already started (then nothing changes)."""
    import jax

    if os.environ.get("JAX_NUM_CPU_DEVICES") or "device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = cpu_device_count(cores or 1, batch_sizes)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already runs: its devices are fixed for this process
        return 0
    return count


def cpu_device_count(cores: int, batch_sizes) -> int:
    """The most devices, at most one per core, that split every batch size evenly."""
    return max(d for d in range(1, cores + 1) if all(size % d == 0 for size in batch_sizes))


def default_cache_dir() -> pathlib.Path:
    root = os.environ.get("FLAXDIGITS_CACHE") or "~/.cache/flaxdigits"
    return pathlib.Path(root).expanduser() / "jax"


def enable_compilation_cache(directory: Optional[str] = None) -> Optional[pathlib.Path]:
    """Turns JAX's persistent compilation cache on, in `directory` (default
    default_cache_dir()), or leaves it off for `directory == 'off'`. Returns the folder in
    use, or None. Takes effect only before JAX's first compilation in this process; the
    first call decides (launch.py's flag, then the library's default call is a no-op)."""
    import jax

    if "path" in _chosen:
        return _chosen["path"]
    _chosen["path"] = None
    if directory == OFF:
        return None
    if jax.config.jax_compilation_cache_dir:  # the program chose one already
        _chosen["path"] = pathlib.Path(jax.config.jax_compilation_cache_dir)
        return _chosen["path"]
    path = pathlib.Path(directory).expanduser() if directory else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a cache is an optimisation: never a reason to stop
        log.warning("No compilation cache: cannot create %s (%s)", path, e.strerror or e)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program, not only those that took JAX over a second to compile: on a CPU
    # most of ours take less, and together they are most of a short run's start-up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _chosen["path"] = path
    return path
