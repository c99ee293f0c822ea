"""Train the members of an ensemble: one after another, or several at once, one per core.

    python -m flaxdigits.ensemble --config=configs/accurate.py --workdir=runs/ensemble \
        --members=3 [--at_once=2] [--config.data.dir=DIR ...]

Member i is `launch.py --config.seed=<first_seed + i>` in `runs/ensemble/member_<i>`, the
other `--config.*` flags passed on as they are. `--at_once=1` (the default) trains them one
after another, each on every core (one JAX device per core, launch.py's default).
`--at_once=N` trains N at a time, each pinned to its own core with single-threaded XLA, so
that they never fight over a core, and with PINNED_DEVICES_PER_CORE JAX devices on that core
(smaller per-device batches stay in the core's cache). On the 2-core development CPU,
DeepCNN (configs/accurate.py, batch 128) ran at 7.6-8.0 steps/s in each of two pinned
processes against 13.6-14.5 steps/s in one process on both cores (4 members: 2,448 s side
by side, 2,991 s one after another); with one device per pinned process it was 5.0-5.3
each. Each member's log says its steps/s.
`--own_splits` gives member i `--config.data.split_seed=<its seed>`: each member holds out
its own validation examples (and chooses its checkpoint on them), so that the members see
different training data and, together, every example.
A member already trained is re-reported, one stopped half-way resumes. Ctrl-C or SIGTERM
stops the running members with a checkpoint. At the end it prints the `--mode=evaluate`
command that scores the ensemble (member 0 with the others as ensemble_workdirs).
"""

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import time

from flaxdigits import config as config_lib
from flaxdigits import runtime
from flaxdigits.errors import FlaxDigitsError

# One core, one thread: XLA's Eigen thread pool and its intra-op parallelism both off.
SINGLE_THREAD_XLA = ("--xla_cpu_multi_thread_eigen=false "
                     "intra_op_parallelism_threads=1")


def member_dirs(workdir: pathlib.Path, members: int) -> list[pathlib.Path]:
    return [workdir / f"member_{i}" for i in range(members)]


def member_command(config: str, workdir: pathlib.Path, seed: int, overrides,
                   own_split: bool = False) -> list[str]:
    split = [f"--config.data.split_seed={seed}"] if own_split else []
    return [sys.executable, "-m", "flaxdigits", f"--config={config}",
            f"--workdir={workdir}", f"--config.seed={seed}", *split, *overrides]


# JAX devices per core for a pinned member (runtime.DEVICES_PER_CORE; fewer where the batch
# sizes do not divide): 4 measured best of 1, 2 and 4 for DeepCNN at batch 128.
PINNED_DEVICES_PER_CORE = 4


def pinned_environment() -> dict:
    """Single-threaded XLA and PINNED_DEVICES_PER_CORE devices: for a process pinned to one
    core."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env[runtime.DEVICES_PER_CORE] = str(PINNED_DEVICES_PER_CORE)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()
    return env


def train_members(config: str, workdir, members: int, first_seed: int = 0,
                  overrides=(), at_once: int = 1,
                  own_splits: bool = False) -> list[tuple[pathlib.Path, int, float]]:
    """Trains `members` members, `at_once` at a time (more than 1: each pinned to one of the
    cores this process may use); returns (workdir, exit code, seconds) of each. `own_splits`:
    each member holds out the validation examples of its own split_seed (its seed)."""
    workdir = pathlib.Path(workdir)
    if at_once > 1:
        cores = sorted(os.sched_getaffinity(0))[:at_once]
    else:
        cores = [None]  # one member at a time, on every core
    waiting = list(enumerate(member_dirs(workdir, members)))
    running: dict = {}  # core -> (index, path, process, start)
    results: dict = {}
    try:
        while waiting or running:
            for core in cores:
                if core not in running and waiting:
                    index, path = waiting.pop(0)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    # Appended: a rerun that resumes keeps the log of the run it resumes.
                    log = open(path.parent / f"{path.name}.log", "a")
                    pinned = core is not None
                    where = f"pinned to core {core}" if pinned else "on every core"
                    log.write(f"member {index} (seed {first_seed + index}) {where}\n")
                    log.flush()
                    process = subprocess.Popen(
                        member_command(config, path, first_seed + index, overrides, own_splits),
                        env=pinned_environment() if pinned else None, stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=(lambda core=core: os.sched_setaffinity(0, {core}))
                        if pinned else None)
                    log.close()
                    running[core] = (index, path, process, time.monotonic())
                    print(f"member {index} (seed {first_seed + index}) {where}: {path}",
                          flush=True)
            time.sleep(0.5)
            for core, (index, path, process, start) in list(running.items()):
                if process.poll() is not None:
                    seconds = time.monotonic() - start
                    results[index] = (path, process.returncode, seconds)
                    print(f"member {index} ended with exit code {process.returncode} after "
                          f"{seconds:.0f} s (log: {path.parent / (path.name + '.log')})",
                          flush=True)
                    del running[core]
    finally:  # Ctrl-C or an error: the members stop too, each with a checkpoint
        for _, _, process, _ in running.values():
            process.send_signal(signal.SIGTERM)
        for _, _, process, _ in running.values():
            process.wait()
    return [results[i] for i in sorted(results)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="a shipped config's name or a config file, e.g. accurate or "
                             "configs/accurate.py")
    parser.add_argument("--workdir", required=True, help="members go to WORKDIR/member_<i>")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--at_once", type=int, default=1,
                        help="members trained at the same time, each pinned to one core")
    parser.add_argument("--own_splits", action="store_true",
                        help="member i holds out its own validation examples (split_seed = "
                             "its seed)")
    args, overrides = parser.parse_known_args(argv)
    bad = [flag for flag in overrides if not flag.startswith("--config.")]
    if bad or args.members < 1 or args.at_once < 1:
        parser.error(f"unexpected arguments: {' '.join(bad)}" if bad
                     else "--members and --at_once must be >= 1")
    try:
        config_lib.config_file(args.config)
    except FlaxDigitsError as e:
        parser.error(f"--config={e}")
    # SIGTERM as Ctrl-C: the running members are stopped (with a checkpoint) on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results = train_members(args.config, args.workdir, args.members, args.first_seed,
                                overrides, args.at_once, args.own_splits)
    except KeyboardInterrupt:
        print("flaxdigits: stopped; the members keep their checkpoints: run the same command "
              "to go on", file=sys.stderr)
        return 130
    failed = [str(path) for path, code, _ in results if code != 0]
    if failed:
        print(f"flaxdigits: error: members failed: {', '.join(failed)} (see their .log)",
              file=sys.stderr)
        return 1
    paths = [str(path) for path, _, _ in results]
    others = "".join(f"'{p}', " for p in paths[1:])
    print("Score the ensemble with:\n"
          f"  python launch.py --config={args.config} --workdir={paths[0]} --mode=evaluate "
          f"{' '.join(overrides)} --config.inference.ensemble_workdirs=\"({others})\" "
          f"--config.inference.tta_views=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
