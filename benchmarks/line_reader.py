"""A segmentation-free line reader (models.LineReader, CTC) trained and measured beside the
segmentation-by-recognition reading, on the same written numbers in the same run.

    python benchmarks/line_reader.py --steps=1500 [--workdir=runs/page] [--split=validation]

Trains models.LineReader for --steps on lines composed from training-split digits only
(data/written.py: glyph_pool, line_of_glyphs; 1-8 digits, spaced 30%, close 30%, touching
40%; pen and brush), with optax.ctc_loss and Adam (warmup, cosine decay), then reads the
numbers of benchmarks/reading.py (`number_cases`, validation digits seed 7 or test digits
seed 2026) by greedy CTC decoding of the strip of each image's ink
(reading.line_ink -> preprocess.line_strip), and prints the share read whole and right per
kind, length and stroke; with --workdir, the reading module's own figures on the same cases.
"""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import collections  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from flaxdigits import data, models, testing  # noqa: E402
from flaxdigits.data import written  # noqa: E402
from flaxdigits.serving import preprocess, reading  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
import reading as reading_benchmark  # noqa: E402

TRAIN_WIDTH = 256  # training strips are padded to this many columns (64 frames)
MAX_LENGTH = 8
GAP_SHARES = {"spaced": 0.3, "close": 0.3, "touching": 0.4}


def training_batch(glyphs, glyph_labels, rng, batch_size: int):
    """(strips (B, LINE_STRIP, TRAIN_WIDTH, 1), frame paddings (B, TRAIN_WIDTH / 4),
    labels (B, MAX_LENGTH) as 1 + digit, label paddings): 1 for padding, as optax wants."""
    strips = np.zeros((batch_size, preprocess.LINE_STRIP, TRAIN_WIDTH, 1), np.float32)
    frame_pad = np.ones((batch_size, TRAIN_WIDTH // 4), np.float32)
    labels = np.zeros((batch_size, MAX_LENGTH), np.int32)
    label_pad = np.ones((batch_size, MAX_LENGTH), np.float32)
    gaps, shares = list(GAP_SHARES), list(GAP_SHARES.values())
    for b in range(batch_size):
        while True:  # a line too wide for the strip is drawn again
            length = int(rng.integers(1, MAX_LENGTH + 1))
            ink, digits = written.line_of_glyphs(glyphs, glyph_labels, length,
                                                 gaps[rng.choice(len(gaps), p=shares)], rng)
            strip = preprocess.line_strip(ink)
            if strip.shape[1] <= TRAIN_WIDTH:
                break
        strips[b, :, :strip.shape[1], 0] = strip
        frame_pad[b, :strip.shape[1] // 4] = 0
        labels[b, :length] = digits + 1
        label_pad[b, :length] = 0
    return strips, frame_pad, labels, label_pad


def train(images, labels, steps: int, seed: int, batch_size=64, learning_rate=2e-3):
    import jax
    import optax

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    glyphs, glyph_labels = written.glyph_pool(images, labels, 20_000, rng)
    print(f"glyph pool of {len(glyphs)} in {time.perf_counter() - started:.1f} s", flush=True)
    batches = queue.Queue(maxsize=8)

    def produce(producer_seed):  # numpy and Pillow release the GIL for most of this
        producer_rng = np.random.default_rng(producer_seed)
        while True:
            batches.put(training_batch(glyphs, glyph_labels, producer_rng, batch_size))

    for producer_seed in (seed + 1, seed + 2):
        threading.Thread(target=produce, args=(producer_seed,), daemon=True).start()
    model = models.LineReader()
    variables = model.init(jax.random.key(seed), batches.get()[0])
    print(f"LineReader: {models.count_params(variables):,} parameters", flush=True)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(200, steps // 5),
                                                  steps, learning_rate * 0.02)
    optimizer = optax.adam(schedule)

    @jax.jit
    def step(params, batch_stats, opt_state, strips, frame_pad, labels_bl, label_pad):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, strips,
                                          train=True, mutable=["batch_stats"])
            loss = optax.ctc_loss(logits, frame_pad, labels_bl, label_pad).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    started = time.perf_counter()
    for index in range(1, steps + 1):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                    *batches.get())
        if index % 100 == 0 or index == steps:
            print(f"step {index}: CTC loss {float(loss):.3f}, "
                  f"{index / (time.perf_counter() - started):.2f} steps/s", flush=True)
    print(f"trained {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    return model, {"params": params, "batch_stats": batch_stats}


def line_reader(model, variables):
    """gray image -> the number, by greedy CTC decoding; strips padded to multiples of 32
    columns (one compilation per width bucket)."""
    import jax

    apply = jax.jit(lambda strips: model.apply(variables, strips).argmax(-1))

    def read(gray):
        strip = preprocess.line_strip(reading.line_ink(gray))
        width = strip.shape[1]
        padded = np.zeros((1, preprocess.LINE_STRIP, -(-width // 32) * 32, 1), np.float32)
        padded[0, :, :width, 0] = strip
        return reading.ctc_greedy(np.asarray(apply(padded))[0, :width // 4])

    return read


def keys(case) -> tuple:
    """The rows of the table a case counts in."""
    style = f"{case['stroke']} {'light on dark' if case['light_on_dark'] else 'dark on light'}"
    return case["kind"], (case["kind"], case["length"]), style, "all"


def tally(cases, read) -> collections.Counter:
    right = collections.Counter()
    for case in cases:
        try:
            got = read(case["image"])
        except preprocess.BadInput:
            got = ""
        for key in keys(case):
            right[key] += got == case["number"]
    return right


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="", help="a trained workdir: its reading "
                        "module's figures on the same numbers, beside")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--split", default="validation", choices=sorted(reading_benchmark.SEEDS))
    parser.add_argument("--per_case", type=int, default=10)
    parser.add_argument("--latency_runs", type=int, default=50)
    parser.add_argument("--save", default="", help="write the trained variables here "
                        "(flax.serialization msgpack)")
    args = parser.parse_args()

    folder = pathlib.Path(args.data_dir) if args.data_dir else testing.mnist_folder(REPO)
    raw, _ = data.load_folder(folder)
    train_rows, _ = data.stratified_split(raw.train_labels, 0.1, 0)
    model, variables = train(raw.train_images[train_rows], raw.train_labels[train_rows],
                             args.steps, args.seed)
    if args.save:
        from flax import serialization

        pathlib.Path(args.save).write_bytes(serialization.to_bytes(variables))
    images, labels = reading_benchmark.digits_of(args.split, args.data_dir)
    cases = testing.number_cases(images, labels, args.per_case,
                                 seed=reading_benchmark.SEEDS[args.split])
    counts = collections.Counter(key for case in cases for key in keys(case))
    read = line_reader(model, variables)
    started = time.perf_counter()
    results = {"line reader": tally(cases, read)}
    per_number = (time.perf_counter() - started) / len(cases)
    longest = max((c for c in cases if c["kind"] == "touching"), key=lambda c: c["length"])
    times = []
    for run in range(args.latency_runs + 1):  # the first compiles its width
        started = time.perf_counter()
        try:
            read(longest["image"])
        except preprocess.BadInput:  # (synthetic test digits may be only specks)
            pass
        if run:
            times.append(1000 * (time.perf_counter() - started))
    latency = (f"a {longest['length']}-digit touching image {longest['image'].shape}: p50 "
               f"{np.percentile(times, 50):.1f} ms, p99 {np.percentile(times, 99):.1f} ms "
               f"({args.latency_runs} runs, in process)")
    if args.workdir:
        segmenter = reading.Reader.from_workdir(args.workdir)
        results["segmentation"] = tally(cases, lambda g: segmenter.read(g).number)
    print(f"\n{len(cases)} numbers of {args.split} digits (seed "
          f"{reading_benchmark.SEEDS[args.split]}); line reader {1000 * per_number:.1f} ms "
          f"per number (compilations included)")
    names = list(results)
    print("| case | " + " | ".join(names) + " |\n|" + " --- |" * (len(names) + 1))
    for key in sorted(counts, key=str):
        label = key if isinstance(key, str) else f"{key[0]} {key[1]}"
        print(f"| {label} | " + " | ".join(f"{results[n][key] / counts[key]:.3f}"
                                            for n in names) + " |")
    print(f"line reader latency, {latency}")


if __name__ == "__main__":
    main()
