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

Several processes (hosts): `join_processes` makes this process one of a multi-process run
(jax.distributed) before JAX starts; the devices of every process then form one mesh, and
only the primary process (index 0) writes the workdir's files.

Noted signals: a program's own SIGTERM/SIGINT handler (launch.py's) records each signal here
as well as raising, because Python drops an exception raised while it runs a finalizer or a
garbage-collection callback; the training loop (training/hooks.StopSignals) and the server's
loop (serving/app.run_until_stopped) stop on a noted signal too.
"""

import logging
import os
import pathlib
import re
from typing import Optional

from flaxdigits.errors import FlaxDigitsError

log = logging.getLogger(__name__)

OFF = "off"
_chosen: dict = {}  # the first choice made in this process: later calls keep it


# Environment: JAX CPU devices per core this process may use (default 1). Several devices on
# one core help a process pinned to that core with single-threaded XLA (flaxdigits.ensemble):
# each device's share of the batch is smaller and stays in the core's cache (DeepCNN, batch
# 128, one core: 5.1 steps/s with 1 device, 7.6 with 4).
DEVICES_PER_CORE = "FLAXDIGITS_DEVICES_PER_CORE"


def use_cpu_cores(*batch_sizes: int, processes: int = 1) -> int:
    """Asks JAX for one CPU device per core this process may use (or $DEVICES_PER_CORE per
    core), as many as divide every batch size (a batch is split evenly across the devices of
    all `processes`); returns the count asked for, or 0 where the environment decides or JAX
    has already started (then nothing changes)."""
    import jax

    if os.environ.get("JAX_NUM_CPU_DEVICES") or "device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = cpu_device_count((cores or 1) * devices_per_core(), batch_sizes, processes)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already runs: its devices are fixed for this process
        return 0
    return count


def devices_per_core() -> int:
    """$DEVICES_PER_CORE, checked (1 where unset)."""
    text = os.environ.get(DEVICES_PER_CORE, "1")
    if not text.strip().isdigit() or not 1 <= int(text) <= 64:
        raise FlaxDigitsError(f"${DEVICES_PER_CORE}={text!r}: want a whole number from 1 to 64")
    return int(text)


def cpu_device_count(cores: int, batch_sizes, processes: int = 1) -> int:
    """The most devices per process, at most one per core, such that every batch size splits
    evenly across the devices of all `processes` (1 where none does: validate says why)."""
    fitting = [d for d in range(1, cores + 1)
               if all(size % (d * processes) == 0 for size in batch_sizes)]
    return max(fitting, default=1)


# -- several processes

# Seconds a process waits for all the others to join, and without a heartbeat from one of
# them before the run is given up (JAX's defaults, 300 s and 100 s, leave a user staring at
# a silent terminal for minutes).
JOIN_TIMEOUT_S = 120
HEARTBEAT_TIMEOUT_S = 30
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def join_processes(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                   process_id: Optional[int] = None, *, join_timeout_s: int = JOIN_TIMEOUT_S,
                   heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
    """Makes this process one of a multi-process JAX run (jax.distributed), before JAX
    starts (JAX itself starts later, on first use: use_cpu_cores may still follow).

    Explicit: `coordinator` ('HOST:PORT', where process 0 listens), `num_processes` and
    `process_id`, all three. Automatic (all None): JAX finds them on a TPU pod slice, under
    Slurm, Open MPI or Kubernetes. A coordinator on a loopback address listens on that
    address only (tests, one machine); elsewhere on every interface, as JAX does.
    Raises FlaxDigitsError, in one line, when the run cannot be joined in time.
    """
    import jax

    explicit = (coordinator, num_processes, process_id)
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise FlaxDigitsError("--coordinator, --num_processes and --process_id go together "
                              "(or --distributed alone, where JAX detects the cluster)")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FlaxDigitsError(f"--coordinator={coordinator}: expected HOST:PORT, e.g. "
                                  f"10.0.0.1:1234")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise FlaxDigitsError(f"--process_id={process_id} must be from 0 to "
                                  f"--num_processes-1={num_processes - 1}")
    bind = coordinator if coordinator and host in LOOPBACK_HOSTS else None
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes,
            process_id=process_id, coordinator_bind_address=bind,
            initialization_timeout=join_timeout_s,
            heartbeat_timeout_seconds=heartbeat_timeout_s)
    except Exception as e:  # noqa: BLE001 (jax raises RuntimeError, ValueError, XlaRuntimeError)
        text = " ".join(str(e).split())[:300]
        if coordinator is None:
            raise FlaxDigitsError(
                f"--distributed: JAX found no cluster to join (a TPU pod slice, Slurm, Open MPI "
                f"or Kubernetes): {text}; name the run with --coordinator, --num_processes "
                f"and --process_id") from None
        raise FlaxDigitsError(f"could not join the run at {coordinator} as process "
                              f"{process_id} of {num_processes} within {join_timeout_s} s: "
                              f"{text}") from None


def import_jax():
    """`import jax`, with a bad JAX environment variable (JAX_NUM_CPU_DEVICES=abc,
    JAX_ENABLE_X64=maybe, ...), which JAX reads as it is imported, said in one line naming
    the variable rather than as a ValueError from inside JAX."""
    try:
        import jax
    except (ValueError, RuntimeError) as e:
        raise FlaxDigitsError(environment_fault(e)) from None
    return jax


def start_backend() -> None:
    """Starts JAX's backend (the devices) now, so that one named by $JAX_PLATFORMS that
    cannot start is one line naming the variable, not a RuntimeError deep in a run."""
    jax = import_jax()
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as e:  # AssertionError: no plugin of that platform
        if not os.environ.get("JAX_PLATFORMS"):
            raise
        text = " ".join(str(e).split()) or "JAX could not start a backend of it here"
        raise FlaxDigitsError(f"$JAX_PLATFORMS={os.environ['JAX_PLATFORMS']!r}: "
                              f"{text[:300]}") from None


def environment_fault(error: Exception) -> str:
    """'$NAME='value': JAX's complaint' for the environment variable that `error` (raised by
    JAX while reading its settings) is about; the error itself re-raised where it names none."""
    text = " ".join(str(error).split())
    match = (re.search(r"for JAX flag (\w+)", text) or
             re.search(r"for environment '(\w+)'", text))
    if match is None:
        raise error
    name = match.group(1).upper()
    return f"${name}={os.environ.get(name, '')!r}: {text[:300]}"


def is_primary() -> bool:
    """Whether this process writes the workdir's files: the only one, or index 0 of a
    multi-process run. (Asks JAX, which starts it: call it where JAX is needed anyway.)"""
    import jax

    return jax.process_index() == 0


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


_noted: list = []  # stop signals a program's own handler saw (launch.py's), oldest first


def note_signal(signum: int) -> None:
    """Records that a stop signal arrived (see the module docstring)."""
    _noted.append(signum)


def noted_signal() -> Optional[int]:
    """The first stop signal noted and not yet honoured, or None."""
    return _noted[0] if _noted else None


def forget_noted_signals() -> None:
    """The noted signals were honoured (a run stopped for them)."""
    _noted.clear()
