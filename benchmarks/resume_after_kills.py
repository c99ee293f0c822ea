"""Kill a real training run with SIGKILL at random moments, restart it each time, and
compare its end with an uninterrupted run of the same config.

    python benchmarks/resume_after_kills.py [--data_dir=../shared/data/mnist] [--kills=3]

Prints, side by side: final test accuracy and loss, and whether the final parameters and
metrics.jsonl (less timings) are identical. Runs configs/base.py for 2 epochs with a
checkpoint every 100 steps (about 4 minutes on 2 CPU cores).
"""

import argparse
import pathlib
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flaxdigits import testing  # noqa: E402

from flaxdigits.checkpoint import Checkpoints  # noqa: E402
from flaxdigits.evaluation import inference  # noqa: E402
from flaxdigits.workdir import Workdir  # noqa: E402

TIMING = ("steps_per_second", "elapsed_seconds", "train_seconds")


def command(workdir, data_dir):
    return [sys.executable, "launch.py", "--config=configs/base.py", f"--workdir={workdir}",
            f"--config.data.dir={data_dir}", "--config.num_epochs=2",
            "--config.checkpoint_every_steps=100"]


def finish(workdir, data_dir):
    result = subprocess.run(command(workdir, data_dir), cwd=REPO, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"run in {workdir} failed:\n{result.stderr[-3000:]}")
    return result


def final_record(workdir):
    return Workdir(workdir).read_metrics()[-1]


def metrics_without_timing(workdir):
    return [{k: v for k, v in record.items() if k not in TIMING}
            for record in Workdir(workdir).read_metrics()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="a folder of the MNIST IDX files; "
                        "default: ../shared/data/mnist, else flaxdigits' cache (fetched once)")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None, help="for the kill moments")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    args.data_dir = str(args.data_dir or testing.mnist_folder(REPO))
    rng = random.Random(args.seed)
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="resume_bench_"))
    straight, killed = root / "straight", root / "killed"

    start = time.monotonic()
    finish(straight, args.data_dir)
    straight_seconds = time.monotonic() - start
    print(f"uninterrupted run: {straight_seconds:.0f} s")

    for kill in range(1, args.kills + 1):
        # Anywhere from start-up (before any checkpoint) to most of an uninterrupted run.
        delay = rng.uniform(5.0, 0.8 * straight_seconds)
        process = subprocess.Popen(command(killed, args.data_dir), cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()  # SIGKILL: no handler, no last checkpoint
        process.wait()
        steps = Checkpoints(killed, keep=3, read_only=True)
        saved = steps.steps()
        steps.close()
        print(f"kill {kill}: SIGKILL after {delay:.1f} s; checkpoints on disk: {saved}")
    result = finish(killed, args.data_dir)
    resumed_lines = [l for l in result.stderr.splitlines() if "resumed from step" in l]
    print(f"final restart: {resumed_lines[-1].split('] ')[-1] if resumed_lines else 'fresh'}")

    a, b = final_record(straight), final_record(killed)
    params_a = inference.load(straight, which="latest").variables
    params_b = inference.load(killed, which="latest").variables
    import jax
    identical = all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(params_a),
                                                          jax.tree_util.tree_leaves(params_b)))
    print()
    print(f"{'':28} {'uninterrupted':>14} {'killed ' + str(args.kills) + 'x':>14}")
    print(f"{'test accuracy':28} {a['test_accuracy']:>14.4f} {b['test_accuracy']:>14.4f}")
    print(f"{'test loss':28} {a['test_loss']:>14.6f} {b['test_loss']:>14.6f}")
    print(f"final parameters bit-identical: {identical}")
    print(f"metrics.jsonl identical (less timings): "
          f"{metrics_without_timing(straight) == metrics_without_timing(killed)}")
    print(f"workdirs: {root}")


if __name__ == "__main__":
    main()
