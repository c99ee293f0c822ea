"""The segmentation-free line reader's pieces: the strip it reads, the lines it trains on,
the model's shapes and the CTC decoding (benchmarks/line_reader.py trains and measures it)."""

import jax
import numpy as np
import optax
import pytest

from flaxdigits import models
from flaxdigits.data import written
from flaxdigits.serving import preprocess, reading


def test_line_strip_scales_the_ink_to_the_strip_and_pads_to_a_multiple_of_4():
    ink = np.zeros((300, 900), np.float32)
    ink[100:220, 50:170] = 200.0  # 120 px high, 120 wide
    ink[130:190, 400:700] = 90.0  # lower, wide, fainter
    strip = preprocess.line_strip(ink)
    assert strip.shape[0] == preprocess.LINE_STRIP and strip.shape[1] % 4 == 0
    inked = strip > 0.2
    rows, cols = np.flatnonzero(inked.any(1)), np.flatnonzero(inked.any(0))
    assert rows[-1] - rows[0] + 1 == preprocess.LINE_INK
    assert cols[0] == preprocess.LINE_MARGIN
    # 650 columns of ink at 24/120 -> 130 columns, plus the margins.
    assert 130 + 2 * preprocess.LINE_MARGIN <= strip.shape[1] < 130 + 2 * preprocess.LINE_MARGIN + 4
    assert strip.max() == 1.0 and 0.4 < strip[inked].min() < 0.5


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    assert reading.ctc_greedy([0, 3, 3, 0, 3, 1, 1, 0]) == "220"
    assert reading.ctc_greedy([0, 0, 0]) == ""
    assert reading.ctc_greedy([1, 0, 1]) == "00"  # a blank parts a real double digit


def test_line_of_glyphs_writes_the_digits_it_says_left_to_right():
    rng = np.random.default_rng(0)
    images = np.zeros((3, 28, 28), np.uint8)
    images[:, 4:24, 12:16] = 255  # upright bars
    glyphs, labels = written.glyph_pool(images, np.array([4, 7, 1]), 3, rng)
    from scipy import ndimage

    for gap, parts in (("spaced", 5), ("touching", 1)):  # bars apart, or all meeting
        ink, digits = written.line_of_glyphs(glyphs, labels, 5, gap, rng)
        assert digits.shape == (5,) and set(digits.tolist()) <= {1, 4, 7}
        assert ndimage.label(ink > 100, structure=np.ones((3, 3)))[1] == parts


def test_line_reader_gives_a_frame_per_4_columns_and_trains_with_ctc():
    model = models.LineReader(conv_features=(4, 4, 8, 8), sequence_features=16)
    strips = np.random.default_rng(0).uniform(size=(2, preprocess.LINE_STRIP, 64, 1))
    variables = model.init(jax.random.key(0), strips)
    logits = model.apply(variables, strips)
    assert logits.shape == (2, 16, 11) and logits.dtype == np.float32
    labels = np.array([[3, 5, 0], [1, 0, 0]], np.int32)
    label_pad = np.array([[0, 0, 1], [0, 1, 1]], np.float32)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, strips, train=True,
                             mutable=["batch_stats"])
        return optax.ctc_loss(out, np.zeros((2, 16)), labels, label_pad).mean()

    optimizer = optax.adam(3e-2)
    params, state = variables["params"], optimizer.init(variables["params"])
    first = float(loss(params))
    for _ in range(30):
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.5 * first


@pytest.mark.slow
def test_the_line_reader_benchmark_trains_and_prints_its_table(tmp_path):
    import pathlib
    import subprocess
    import sys

    from flaxdigits import testing

    repo = pathlib.Path(__file__).resolve().parent.parent
    folder = testing.write_idx_folder(tmp_path / "mnist", train_count=300, test_count=50)
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "line_reader.py"),
                           "--steps=3", "--per_case=1", "--latency_runs=3",
                           f"--save={tmp_path / 'line.msgpack'}", f"--data_dir={folder}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-800:]
    assert "trained 3 steps" in done.stdout and "line reader latency, a 6-digit" in done.stdout
    assert "18 numbers of validation digits" in done.stdout
    assert (tmp_path / "line.msgpack").stat().st_size > 100_000
    rows = [line for line in done.stdout.splitlines() if line.startswith("| touching 6 |")]
    assert len(rows) == 1 and 0.0 <= float(rows[0].split("|")[2]) <= 1.0
