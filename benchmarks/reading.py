"""Reading whole numbers: whole-number accuracy by kind and length, beside a naive reader.

    python benchmarks/reading.py --workdir=runs/page [--per_case=20] [--split=test]

Builds numbers of 1-6 digits from MNIST *test* digits (or, with --split=validation, from the
validation digits that configs hold out of training: the place to choose the reading's
settings), with flaxdigits.testing.number_cases (its own seed; deterministic): spaced, close
and touching; a thin pen and a round brush; dark on light and light on dark; canvases 400-1000
px wide. Prints, per kind and length, the share of numbers read whole and right (a digit
wrong, missing or extra makes the number wrong) by flaxdigits' reading and, in the same run,
by a naive reader (connected components only, each read as one digit: no joining, no
splitting), then the latency of reading a 6-digit image. Where the workdir has a line reader
(config.line_reader.steps), also each half alone: segmentation by recognition, and the line
reader's greedy CTC reading.
"""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import collections  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from flaxdigits import data, testing  # noqa: E402
from flaxdigits.serving import preprocess, reading  # noqa: E402

SEEDS = {"test": 2026, "validation": 7}  # the generator's seed per source of digits


def naive_read(gray: np.ndarray, classify) -> str:
    """Connected components, left to right, each prepared and read as one digit."""
    from scipy import ndimage

    ink = preprocess.ink_on_dark(gray)
    mask = ink > preprocess.INK_LEVEL * ink.max()
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    boxes = [b for b in ndimage.find_objects(labels)]
    order, images = [], []
    for index, box in enumerate(boxes):
        own = np.where(labels[box] == index + 1, ink[box], 0.0)
        if np.count_nonzero(own) < preprocess.MIN_INK_PIXELS:
            continue
        order.append(box[1].start)
        images.append(preprocess.mnist_box(own))
    if not images:
        return ""
    probabilities = classify(np.stack(images))
    return "".join(str(int(probabilities[i].argmax())) for i in np.argsort(order))


def drawn_digits(images, labels, count: int, seed: int) -> list:
    """`count` of the digits, one per 280x280 image, dark on light, in turn: redrawn as
    benchmarks/serve.py sends them to the API (MNIST's strokes scaled 100-250 px tall,
    anywhere on the canvas, blurred), and written with a round brush and with a thin pen
    (flaxdigits.data.written) as benchmarks/serve.py's brush and pen digits are."""
    rng = np.random.default_rng(seed)
    cases = []
    for k, i in enumerate(rng.choice(len(images), size=min(count, len(images)), replace=False)):
        style = ("drawn", "brush", "pen")[k % 3]
        image = (testing.redraw_anywhere(images[i], rng) if style == "drawn"
                 else testing.stroked(images[i], style, rng))
        cases.append(dict(kind=style, length=1, number=str(int(labels[i])),
                          image=np.asarray(image, np.float32)))
    return cases


def digits_of(split: str, data_dir: str):
    folder = pathlib.Path(data_dir) if data_dir else testing.mnist_folder(REPO)
    raw, _ = data.load_folder(folder)
    if split == "test":
        return raw.test_images, raw.test_labels
    _, held_out = data.stratified_split(raw.train_labels, 0.1, 0)  # configs' default split
    return raw.train_images[held_out], raw.train_labels[held_out]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained workdir")
    parser.add_argument("--data_dir", default="", help="MNIST IDX files; default: "
                        "../shared/data/mnist, else flaxdigits' cache")
    parser.add_argument("--split", default="test", choices=sorted(SEEDS))
    parser.add_argument("--per_case", type=int, default=20, help="numbers per kind and length")
    parser.add_argument("--latency_runs", type=int, default=50)
    parser.add_argument("--show_errors", type=int, default=0)
    parser.add_argument("--drawn", type=int, default=300, help="with --tune: also this many "
                        "single digits, a third each drawn as on the page's pad, with a brush "
                        "and with a pen (kinds 'drawn', 'brush', 'pen')")
    parser.add_argument("--tune", action="store_true", help="search reading.Costs on these "
                        "numbers (use --split=validation) and print the best")
    args = parser.parse_args()

    images, labels = digits_of(args.split, args.data_dir)
    cases = testing.number_cases(images, labels, args.per_case, seed=SEEDS[args.split])
    reader = reading.Reader.from_workdir(args.workdir)
    if args.tune:
        return tune(cases + drawn_digits(images, labels, args.drawn, SEEDS[args.split]), reader)
    right = collections.defaultdict(lambda: [0, 0, 0])  # (kind, length) -> ours, naive, n
    halves = collections.defaultdict(collections.Counter)  # kind -> reader -> right
    errors = []
    for case in cases:
        try:
            ours = reader.read(case["image"]).number  # as the API, the page and the CLI read
            if reader.line is not None:
                found = reading.candidates(case["image"], reader.classify)
                frames = reading.line_frames(found, reader.line)
                halves[case["kind"]]["segmentation"] += (
                    reading.choose(found, reading.Costs()).number == case["number"])
                halves[case["kind"]]["line reader"] += frames is not None and (
                    reading.ctc_greedy(frames.log_probs.argmax(-1)) == case["number"])
        except preprocess.BadInput as e:
            ours = f"({e})"
        naive = naive_read(case["image"], reader.classify)
        tally = right[case["kind"], case["length"]]
        tally[0] += ours == case["number"]
        tally[1] += naive == case["number"]
        tally[2] += 1
        if ours != case["number"]:
            errors.append((case, ours))

    print(f"{args.workdir}: {len(cases)} numbers from MNIST {args.split} digits "
          f"(seed {SEEDS[args.split]})")
    lengths = sorted({length for _, length in right})
    print(f"| kind | {' | '.join(f'{n} digits' for n in lengths)} | all (naive) |")
    print("| --- |" + " --- |" * (len(lengths) + 1))
    for kind in testing.NUMBER_KINDS:
        cells, total = [], [0, 0, 0]
        for n in lengths:
            ours, naive, count = right[kind, n]
            cells.append(f"{ours / count:.2f} ({naive / count:.2f})")
            total = [t + v for t, v in zip(total, (ours, naive, count))]
        print(f"| {kind} | {' | '.join(cells)} | **{total[0] / total[2]:.3f}** "
              f"({total[1] / total[2]:.3f}) |")
    if halves:
        print("each half alone, all lengths: " + "; ".join(
            f"{kind} segmentation {halves[kind]['segmentation'] / n:.3f}, line reader "
            f"{halves[kind]['line reader'] / n:.3f}" for kind in testing.NUMBER_KINDS
            for n in [sum(right[kind, k][2] for k in lengths)]))
    by_style = collections.defaultdict(lambda: [0, 0])
    for case in cases:
        key = (case["stroke"], "light on dark" if case["light_on_dark"] else "dark on light")
        by_style[key][1] += 1
    for case, _ in errors:
        key = (case["stroke"], "light on dark" if case["light_on_dark"] else "dark on light")
        by_style[key][0] += 1
    print("right by style: " + ", ".join(
        f"{s} {p}: {1 - wrong / n:.3f}" for (s, p), (wrong, n) in sorted(by_style.items())))
    for case, ours in errors[:args.show_errors]:
        print(f"  {case['kind']} {case['stroke']} {case['number']} read {ours}")

    six = [c for c in cases if c["length"] == 6 and c["kind"] == "touching"] or cases
    times = []
    for run in range(args.latency_runs):
        image = six[run % len(six)]["image"]
        start = time.perf_counter()
        try:
            reader.read(image)
        except preprocess.BadInput:
            pass
        times.append(time.perf_counter() - start)
    times = np.array(times) * 1000
    print(f"latency of reading a 6-digit touching image ({len(times)} runs, one client, in "
          f"process): p50 {np.percentile(times, 50):.1f} ms, p99 {np.percentile(times, 99):.1f} "
          f"ms, max {times.max():.1f} ms")


def reachable(found: reading.Candidates, number: str) -> bool:
    """Whether some partition of the candidates reads `number` (the cuts allow it)."""
    states = {(0, 0)}
    labels = found.probabilities.argmax(axis=1)
    frontier = [(0, 0)]
    while frontier:
        at, k = frontier.pop()
        if at == found.slices and k == len(number):
            return True
        if at == found.slices:
            continue
        nexts = [(at + 1, k)]  # a slice left out
        nexts += [(s.last, k + 1) for i, s in enumerate(found.segments)
                  if s.first == at and k < len(number) and str(labels[i]) == number[k]]
        for state in nexts:
            if state not in states:
                states.add(state)
                frontier.append(state)
    return False


def tune(cases, reader) -> None:
    """Every case's candidates once, then the costs of a grid over them: reading.Costs, or
    where the workdir has a line reader, reading.LineWeights (with the default Costs)."""
    found = []
    for case in cases:
        try:
            f = reading.candidates(case["image"], reader.classify)
            frames = None if reader.line is None else reading.line_frames(f, reader.line)
            found.append((case, f, frames))
        except preprocess.BadInput:
            found.append((case, None, None))
    possible = sum(f is not None and reachable(f, c["number"]) for c, f, _ in found)
    print(f"{len(cases)} numbers; the right number is among the candidates of {possible}")
    if reader.line is not None:
        return tune_line_weights(found, reader.classify)
    grid = dict(digit=(0.0, 0.3), cut=(0.25, 0.5, 1.0), join=(0.5, 1.0, 2.0),
                narrow_cut=(0.0, 1.0, 2.0), wide=(3.0, 8.0),
                wide_from=(1.0, 1.25), short=(3.0, 6.0))
    search(found, (reading.Costs,), (grid,), lambda f, frames, costs: reading.choose(f, costs))


def search(found, kinds: tuple, grids: tuple, read) -> None:
    """Prints the best settings over `grids` (one dict of values per dataclass in `kinds`)
    and the defaults' score: `read(candidates, frames, *settings)` -> a Reading."""
    import itertools

    results = []
    names = [name for grid in grids for name in grid]
    for values in itertools.product(*[v for grid in grids for v in grid.values()]):
        chosen = dict(zip(names, values))
        settings = tuple(kind(**{name: chosen[name] for name in grid})
                         for kind, grid in zip(kinds, grids))
        right = collections.Counter()
        for case, f, frames in found:
            if f is not None and read(f, frames, *settings).number == case["number"]:
                right[case["kind"]] += 1
        results.append((sum(right.values()), dict(right), settings))
    results.sort(key=lambda r: -r[0])
    for total, right, settings in results[:8]:
        print(total, right, *settings)
    default = next(r for r in results if r[2] == tuple(kind() for kind in kinds))
    print("default:", default[0], default[1])


def tune_line_weights(found, classify) -> None:
    """Costs and LineWeights together: the line reader changes which cuts pay."""
    costs = dict(digit=(0.0, 0.5, 1.0), cut=(0.25, 0.5), narrow_cut=(1.0, 2.0))
    weights = dict(line=(0.75, 1.0, 1.5), unsegmented=(1.0, 2.0), relabel=(0.25, 0.5, 1.0))
    search(found, (reading.Costs, reading.LineWeights), (costs, weights),
           lambda f, frames, c, w: reading.choose(f, c, frames, w, classify))


if __name__ == "__main__":
    main()
