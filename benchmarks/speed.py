"""Training speed, side by side, measured in one run on this machine.

    python benchmarks/speed.py --data_dir=../shared/data/mnist [--runs=3]

Prints:
  0. the baseline: the Flax linen MNIST example's recipe (its CNN with average pooling, SGD
     at 0.1 with momentum 0.9, batch 128, host-side batches, one jitted step per iteration),
     trained epoch by epoch until the MNIST test accuracy reaches 99.0%: its training time
     to 99% (evaluation not counted), as users of that example see it (one JAX device);
  1. this CPU's float32 matmul ceiling (a jitted 2048x2048 matmul), GFLOP/s;
  2. training throughput of the base CNN (configs/base.py, batch 128), img/s and as a fraction
     of that ceiling (FLOPs per step from XLA's cost analysis of the compiled step), for
       - the plain loop: host-gathered numpy batches, one jitted step per Python iteration,
         the seed's nn.max_pool CNN (what flaxdigits did before);
       - the same plain loop with flaxdigits' CNN (max-pooling as reshape + max);
       - flaxdigits' loop: the library's own training.loop.Trainer (data on the device,
         shuffled and gathered there, donated state, bounded asynchrony), as
         train_and_evaluate runs it;
       - lax.scan over 10 of flaxdigits' steps per dispatch;
  3. configs/fast.py through launch.py, `--runs` times: training seconds, whole-process
     seconds and test accuracy, with the median and minimum;
  4. flaxdigits' loop on 1 CPU device (JAX's default), one per core (launch.py's default
     since 2026-11-27) and two per core (JAX_NUM_CPU_DEVICES).
Parts 3 and 4 run in subprocesses (a device count is fixed when JAX starts).
"""

import argparse
import functools
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flaxdigits import testing  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from flaxdigits import data, models  # noqa: E402
from flaxdigits.data import idx  # noqa: E402
from flaxdigits.training import loop, optim, steps  # noqa: E402
from flaxdigits.workdir import Workdir  # noqa: E402

BATCH = 128


class SeedCNN(models.CNN):
    """The base CNN with flax's nn.max_pool, as the seed wrote it."""

    @nn.compact
    def __call__(self, images_bhwc, train=False):
        x = images_bhwc
        for features in self.conv_features:
            x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.dense_features)(x.reshape((x.shape[0], -1))))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class FlaxExampleCNN(nn.Module):
    """The CNN of flax's linen MNIST example (examples/mnist/train.py)."""

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


def reference_time_to_99(raw, max_epochs=10):
    """(training seconds until the test accuracy first reaches 99%, epochs) of the Flax
    example's recipe; (seconds, None) if it never does within `max_epochs`."""
    import optax
    from flax.training import train_state

    train_x, train_y = data.to_model_inputs(raw.train_images), data.one_hot(raw.train_labels)
    test_x, test_labels = data.to_model_inputs(raw.test_images), raw.test_labels
    model = FlaxExampleCNN()
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=model.init(jax.random.key(0), train_x[:1])["params"],
        tx=optax.sgd(0.1, momentum=0.9))

    @jax.jit
    def step(state, images, labels):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, images)
            return optax.softmax_cross_entropy(logits, labels).mean()
        return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

    predict = jax.jit(lambda params, images: state.apply_fn({"params": params}, images).argmax(-1))
    rng = np.random.default_rng(0)
    steps_per_epoch = len(train_x) // BATCH
    seconds = 0.0
    for epoch in range(1, max_epochs + 1):
        order = rng.permutation(len(train_x))[:steps_per_epoch * BATCH].reshape(-1, BATCH)
        start = time.perf_counter()
        for rows in order:
            state = step(state, train_x[rows], train_y[rows])
        jax.block_until_ready(state)
        seconds += time.perf_counter() - start
        accuracy = float(np.mean(np.concatenate([
            np.asarray(predict(state.params, test_x[i:i + 1000]))
            for i in range(0, len(test_x), 1000)]) == test_labels))
        print(f"   epoch {epoch}: test accuracy {accuracy:.4f} after {seconds:.1f} s of training",
              flush=True)
        if accuracy >= 0.99:
            return seconds, epoch
    return seconds, None


def matmul_ceiling(size=2048, repeats=20) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = f(a)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size ** 3 / best / 1e9


def base_state(model):
    tx = optim.create_optimizer(base.get_config().optim, total_steps=10_000)
    return steps.create_train_state(model, tx, jax.random.key(0))


def step_flops(jitted, *args, **kwargs) -> float:
    cost = jitted.lower(*args, **kwargs).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def time_steps(run_steps, n_steps: int) -> float:
    """Seconds per step over `n_steps` steps, after one untimed warm-up call."""
    run_steps(5)
    start = time.perf_counter()
    run_steps(n_steps)
    return (time.perf_counter() - start) / n_steps


def plain_loop(model, split, n_steps):
    """Numpy batches gathered on the host, one jitted step per Python iteration."""
    state = base_state(model)
    rng = np.random.default_rng(0)
    key = jax.random.key(1)
    flops = step_flops(steps.train_step, state, {"image": split.images[:BATCH],
                                                 "label": split.labels[:BATCH]}, key)

    def run(n):
        nonlocal state
        for _ in range(n):
            rows = rng.integers(0, len(split), BATCH)
            state, metrics = steps.train_step(
                state, {"image": split.images[rows], "label": split.labels[rows]}, key)
        jax.block_until_ready(state)

    return time_steps(run, n_steps), flops


def device_loop(model, split, n_steps, mesh=None):
    """flaxdigits' loop: the library's Trainer, stepped as train_and_evaluate steps it (the
    base config's CNN; `model` only sets the FLOP count, it must be that CNN)."""
    config = base.get_config()
    trainer = loop.Trainer(config, split, mesh)
    state = trainer.initial_state(total_steps=10_000)
    flops = step_flops(steps.train_step, base_state(model),
                       {"image": split.images[:BATCH], "label": split.labels[:BATCH]},
                       jax.random.key(1))
    step = 0

    def run(n):
        nonlocal state, step
        for _ in range(n):
            state, _ = trainer.step(state, step)
            step += 1
        jax.block_until_ready(state)

    return time_steps(run, n_steps), flops


def scan_loop(model, split, n_steps, per_dispatch=10):
    """lax.scan over `per_dispatch` of flaxdigits' device steps in one jitted call."""
    state = base_state(model)
    train_data = {"image": jnp.asarray(split.images), "label": jnp.asarray(split.labels)}
    order = steps.epoch_order(jax.random.key(2), 0, len(split))
    key = jax.random.key(1)
    per_epoch = len(split) // BATCH

    @functools.partial(jax.jit, donate_argnums=0)
    def many(state, first):
        def body(state, i):
            rows = jax.lax.dynamic_slice_in_dim(order, ((first + i) % per_epoch) * BATCH, BATCH)
            return steps._train_step(state, {k: v[rows] for k, v in train_data.items()}, key)
        return jax.lax.scan(body, state, jnp.arange(per_dispatch))

    # XLA's cost analysis counts a loop body once, so take the FLOPs of one plain step.
    flops = step_flops(steps.train_step, state, {k: v[:BATCH] for k, v in train_data.items()},
                       key)
    index = 0

    def run(n):
        nonlocal state, index
        for _ in range(max(1, n // per_dispatch)):
            state, _ = many(state, index)
            index += per_dispatch
        jax.block_until_ready(state)

    return time_steps(run, n_steps), flops


def throughput_table(split, n_steps, ceiling):
    rows = [
        ("plain loop, seed CNN (nn.max_pool)", plain_loop, SeedCNN(dropout_rate=0.5)),
        ("plain loop, flaxdigits CNN", plain_loop, models.CNN(dropout_rate=0.5)),
        ("flaxdigits loop (training.loop.Trainer)", device_loop, models.CNN(dropout_rate=0.5)),
        ("lax.scan, 10 steps per dispatch", scan_loop, models.CNN(dropout_rate=0.5)),
    ]
    print(f"\n2. Base CNN training throughput, batch {BATCH}, {n_steps} timed steps each")
    print(f"{'loop':<42} {'img/s':>8} {'GFLOP/s':>8} {'of ceiling':>10}")
    for name, run_loop, model in rows:
        seconds, flops = run_loop(model, split, n_steps)
        gflops = flops / seconds / 1e9
        print(f"{name:<42} {BATCH / seconds:8.0f} {gflops:8.1f} {gflops / ceiling:10.1%}",
              flush=True)


def fast_run(data_dir, seed, cache_dir):
    """(training s, whole-process s, test accuracy) of configs/fast.py through launch.py."""
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "launch.py", "--config=configs/fast.py", f"--workdir={workdir}",
             f"--config.data.dir={data_dir}", f"--config.seed={seed}",
             f"--compilation_cache={cache_dir}"], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        final = Workdir(workdir).read_metrics()[-1]
        accuracy = float(re.search(r"test_accuracy=([\d.]+)", out.stdout).group(1))
    return final["train_seconds"], wall, accuracy


def fast_config_runs(data_dir, runs):
    print(f"\n3. configs/fast.py through launch.py, seeds 0..{runs - 1}: once with an empty "
          f"compilation cache (cold), then each seed with it filled (warm)")
    print(f"{'seed':>4} {'cache':>5} {'train s':>8} {'process s':>10} {'test acc':>9}")
    results = []
    with tempfile.TemporaryDirectory() as cache:
        cold = fast_run(data_dir, 0, cache)
        print(f"{0:4d} {'cold':>5} {cold[0]:8.2f} {cold[1]:10.2f} {cold[2]:9.4f}", flush=True)
        for seed in range(runs):
            results.append(fast_run(data_dir, seed, cache))
            train, wall, accuracy = results[-1]
            print(f"{seed:4d} {'warm':>5} {train:8.2f} {wall:10.2f} {accuracy:9.4f}", flush=True)
    columns = list(zip(*results))
    print(f"median, warm {statistics.median(columns[0]):8.2f} {statistics.median(columns[1]):10.2f} "
          f"{statistics.median(columns[2]):9.4f}")
    print(f"mean accuracy {statistics.mean(columns[2]):.4f}, min {min(columns[2]):.4f}; "
          f"max train s {max(columns[0]):.2f}; max process s {max(columns[1]):.2f}")
    return statistics.median(columns[0]), statistics.median(columns[1]), cold[1]


def devices_child(n_steps):
    """Runs in a subprocess with N host devices: prints img/s of flaxdigits' loop."""
    images, labels = np.random.default_rng(0).random((6400, 28, 28, 1), np.float32), \
        np.eye(10, dtype=np.float32)[np.arange(6400) % 10]
    seconds, _ = device_loop(models.CNN(dropout_rate=0.5), data.Split(images, labels), n_steps)
    print(json.dumps({"devices": jax.device_count(), "img_per_s": BATCH / seconds}))


def devices_table(n_steps):
    cores = len(os.sched_getaffinity(0))
    print(f"\n4. flaxdigits loop on N CPU devices (JAX_NUM_CPU_DEVICES; base CNN, batch {BATCH} "
          f"split N ways; all on the same {cores} cores). launch.py now uses one per core "
          f"({cores}); before, JAX's default of 1.")
    print(f"{'devices':>7} {'img/s':>8} {'vs 1':>6}")
    first = None
    for count in sorted({1, cores, 2 * cores}):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(count))
        out = subprocess.run([sys.executable, __file__, f"--devices_child={n_steps}"], env=env,
                             cwd=REPO, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        first = first or result["img_per_s"]
        print(f"{result['devices']:7d} {result['img_per_s']:8.0f} {result['img_per_s'] / first:5.2f}x",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None, help="a folder of the MNIST IDX files; "
                        "default: ../shared/data/mnist, else flaxdigits' cache (fetched once)")
    parser.add_argument("--runs", type=int, default=5, help="seeds of configs/fast.py")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per loop")
    parser.add_argument("--parts", default="01234", help="which parts to run, e.g. 03")
    parser.add_argument("--devices_child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = str(args.data_dir or testing.mnist_folder(REPO))
    if args.devices_child:
        return devices_child(args.devices_child)

    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    reference = None
    if "0" in args.parts:
        print("\n0. Baseline: the Flax linen MNIST example's recipe, until 99.0% test accuracy")
        seconds, epochs = reference_time_to_99(idx.load_folder(pathlib.Path(args.data_dir)))
        reference = seconds if epochs else None
        reached = f"after {epochs} epochs" if epochs else "never (within 10 epochs)"
        print(f"   99.0% reached {reached}: {seconds:.1f} s of training", flush=True)
    ceiling = matmul_ceiling()
    print(f"\n1. float32 matmul ceiling (2048x2048, jitted): {ceiling:.1f} GFLOP/s")
    if "2" in args.parts:
        raw = idx.load_folder(pathlib.Path(args.data_dir))
        split = data.Split(data.to_model_inputs(raw.train_images), data.one_hot(raw.train_labels))
        throughput_table(split, args.steps, ceiling)
    if "3" in args.parts:
        train, wall, cold_wall = fast_config_runs(args.data_dir, args.runs)
        if reference:
            print(f"against the baseline's {reference:.1f} s to 99%: fast.py's median training "
                  f"1/{reference / train:.1f}, whole process 1/{reference / wall:.1f} warm, "
                  f"1/{reference / cold_wall:.1f} cold")
    if "4" in args.parts:
        devices_table(args.steps)


if __name__ == "__main__":
    main()
