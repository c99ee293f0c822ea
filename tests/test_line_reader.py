"""The segmentation-free line reader: the strip it reads, the lines it trains on, the
model's shapes, CTC decoding and scoring, how the reader weighs it against segmentation,
and its training in a run (training/line.py)."""

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
    # 650 columns of ink at LINE_INK/120, plus the margins.
    columns = round(650 * preprocess.LINE_INK / 120) + 2 * preprocess.LINE_MARGIN
    assert columns <= strip.shape[1] < columns + 4
    assert strip.max() == 1.0 and 0.3 < strip[inked].min() < 0.5  # (the fainter: 90/200)


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


@pytest.mark.slow  # (a training run: 10 s)
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


def frames_spelling(number: str, frames: int = 40, sure: float = 0.99) -> np.ndarray:
    """(frames, 11) log-probabilities whose best path spells `number`: each digit on two
    frames of its own, blanks between and around."""
    labels = np.zeros(frames, np.int64)
    at = 3
    for digit in number:
        labels[at:at + 2] = int(digit) + 1
        at += 4
    probs = np.full((frames, 11), (1 - sure) / 10, np.float32)
    probs[np.arange(frames), labels] = sure
    return np.log(probs)


@pytest.mark.parametrize("number", ["7", "42", "113", "0000"])
def test_ctc_nll_is_optax_ctc_loss(number):
    rng = np.random.default_rng(len(number))
    log_probs = np.asarray(jax.nn.log_softmax(rng.normal(size=(20, 11)) * 2), np.float32)
    labels = np.asarray([[int(d) + 1 for d in number]], np.int32)
    expected = optax.ctc_loss(log_probs[None], np.zeros((1, 20)), labels,
                              np.zeros(labels.shape))
    assert reading.ctc_nll(log_probs, number) == pytest.approx(float(expected[0]), rel=1e-4)
    assert reading.ctc_nll(frames_spelling(number), number) < 1.0
    assert reading.ctc_nll(log_probs[:1], "1234") == np.inf  # too few frames to spell it


def line_says(number):
    return lambda strip: frames_spelling(number, frames=strip.shape[1] // reading.FRAME)


def two_bars():
    page = np.full((120, 400), 255, np.uint8)
    page[30:90, 100:108] = 0
    page[30:90, 250:258] = 0
    return page


def test_the_line_reader_overrules_a_doubtful_segmentation_with_the_same_boxes():
    def doubtful(images_nhw):  # reads 1s, barely sure of them, 7 a close second
        p = np.full((len(images_nhw), 10), 0.01, np.float32)
        p[:, 1], p[:, 7] = 0.5, 0.42
        return p

    segmented = reading.read(two_bars(), doubtful)
    result = reading.read(two_bars(), doubtful, line=line_says("77"))
    assert segmented.number == "11" and result.number == "77"
    assert [d.box for d in result.digits] == [d.box for d in segmented.digits]
    assert [d.label for d in result.digits] == [7, 7]
    assert result.digits[0].probability == pytest.approx(0.42)


def test_where_only_the_labels_differ_the_line_reader_weighs_relabel():
    def fairly_sure(images_nhw):  # reads 1s, 7 a distant second
        p = np.full((len(images_nhw), 10), 0.01, np.float32)
        p[:, 1], p[:, 7] = 0.8, 0.12
        return p

    def read(relabel):
        return reading.read(two_bars(), fairly_sure, line=line_says("77"),
                            weights=reading.LineWeights(relabel=relabel)).number

    # The same boxes either way: the classifier's word on the shapes counts for more.
    assert read(relabel=0.0) == "11"
    assert read(relabel=1.0) == "77"


def test_a_sure_segmentation_is_not_overruled_by_a_doubtful_line():
    result = reading.read(two_bars(), sure_of_anything(), line=lambda strip: np.log(
        np.full((strip.shape[1] // reading.FRAME, 11), 1 / 11, np.float32)) + frames_spelling(
        "7", strip.shape[1] // reading.FRAME, sure=0.3))
    assert result.number == "11"


def sure_of_anything(sure=0.991):
    def classify(images_nhw):
        p = np.full((len(images_nhw), 10), (1 - sure) / 9, np.float32)
        p[:, 1] = sure
        return p
    return classify


def test_digits_no_cut_can_part_come_from_the_line_readers_frames():
    page = np.full((120, 400), 255, np.uint8)
    page[30:90, 150:200] = 0  # one blob, too narrow to cut: segmentation reads one digit
    strip_width = preprocess.line_strip(255.0 - page).shape[1]
    frames = strip_width // reading.FRAME
    log_probs = frames_spelling("", frames)
    log_probs[1:3] = frames_spelling("3", 4)[3:5]  # a 3 on the blob's left ...
    log_probs[frames - 3:frames - 1] = frames_spelling("8", 4)[3:5]  # ... an 8 on its right
    def unsure(images_nhw):  # no digit likelier than another
        return np.full((len(images_nhw), 10), 0.1, np.float32)

    result = reading.read(page, unsure, line=lambda strip: log_probs,
                          weights=reading.LineWeights(unsegmented=0.0))
    assert result.number == "38"
    (a0, ay0, a1, ay1), (b0, _, b1, _) = [d.box for d in result.digits]
    assert a0 == 150 and b1 == 200 and a1 == b0 and 160 < a1 < 190 and (ay0, ay1) == (30, 90)
    # Each part's probability is the classifier's, of the ink between the frames.
    assert result.digits[0].label == 3 and result.digits[0].probability == pytest.approx(0.1)
    assert all(d.image.shape == (28, 28) and d.image.max() > 0 for d in result.digits)
    # A classifier sure the blob is one digit keeps it one against a doubtful line reader:
    # the parts cost what the classifier makes of them. (With LineWeights' line weight of
    # 3, chosen on validation, a line reader 0.2 sure of each frame still splits the blob.)
    doubtful = frames_spelling("", frames, sure=0.15)
    doubtful[1:3] = frames_spelling("3", 4, sure=0.15)[3:5]
    doubtful[frames - 3:frames - 1] = frames_spelling("8", 4, sure=0.15)[3:5]
    assert reading.ctc_greedy(doubtful.argmax(-1)) == "38"
    assert reading.read(page, sure_of_anything(0.85), line=lambda strip: doubtful,
                        weights=reading.LineWeights(unsegmented=0.0)).number == "1"


def test_a_line_too_wide_for_the_line_reader_is_read_by_segmentation():
    result = reading.read(two_bars(), sure_of_anything(), line=lambda strip: None)
    assert result.number == "11"


@pytest.mark.slow
def test_a_run_trains_its_line_reader_once_and_the_reader_uses_it(tmp_path, synthetic_dir,
                                                                   tiny_config, caplog):
    import shutil

    from flaxdigits import checkpoint
    from flaxdigits.training import loop

    config = tiny_config(**{"data.dir": str(synthetic_dir), "num_epochs": 1,
                            "line_reader.steps": 4, "line_reader.glyphs": 100,
                            "line_reader.batch_size": 8})
    loop.train_and_evaluate(config, tmp_path / "w")
    info = checkpoint.read_line_reader_info(tmp_path / "w")
    assert info["steps"] == 4 and info["settings"]["glyphs"] == 100
    reader = reading.Reader.from_workdir(tmp_path / "w")
    assert reader.line is not None
    assert reader.read(two_bars()).number.isdigit()

    stamp = (tmp_path / "w" / "line_reader.json").stat().st_mtime_ns
    loop.train_and_evaluate(config, tmp_path / "w")  # the same settings: nothing retrained
    assert (tmp_path / "w" / "line_reader.json").stat().st_mtime_ns == stamp
    config.line_reader.steps = 6  # other settings: the line reader alone is trained again
    loop.train_and_evaluate(config, tmp_path / "w")
    assert checkpoint.read_line_reader_info(tmp_path / "w")["steps"] == 6

    # A damaged line reader: a warning, and numbers are read by segmentation alone.
    for item in (tmp_path / "w" / "line_reader").rglob("*"):
        if item.is_file() and item.stat().st_size > 1000:
            item.write_bytes(b"\0" * 64)
    with caplog.at_level("WARNING"):
        reader = reading.Reader.from_workdir(tmp_path / "w")
    assert reader.line is None and "the line reader cannot be read" in caplog.text
    assert reader.read(two_bars()).number.isdigit()
    shutil.rmtree(tmp_path / "w" / "line_reader")
    assert reading.Reader.from_workdir(tmp_path / "w").line is None


def wide_blob(width=96):
    """One mark 80 px high, as wide as a digit may be (1.2 times its height) by default: it
    is cut into slices."""
    page = np.full((140, 400), 255, np.uint8)
    page[30:110, 150:150 + width] = 0
    return page


def counting(classify, calls):
    def counted(images_nhw):
        calls.append(len(images_nhw))
        return classify(images_nhw)
    return counted


def test_a_lone_mark_both_readers_are_sure_is_one_digit_its_cuts_untried():
    calls = []
    result = reading.read(wide_blob(), counting(sure_of_anything(), calls), line=line_says("1"))
    assert calls == [1]  # the mark read whole, once: no candidate cut from it
    (digit,) = result.digits
    assert result.number == "1" and digit.box == (150, 30, 246, 110)
    assert digit.probability == pytest.approx(0.991)
    # The same reading as trying every cut gives.
    assert reading.read(wide_blob(), sure_of_anything()).number == "1"
    # Wider than any digit (so no candidate holds it whole): still the one digit.
    calls.clear()
    result = reading.read(wide_blob(140), counting(sure_of_anything(), calls),
                          line=line_says("1"))
    assert calls == [1] and result.digits[0].box == (150, 30, 290, 110)


@pytest.mark.parametrize("line,sure", [("7", 0.991), ("11", 0.991), ("1", 0.4)],
                         ids=["line reads another digit", "line reads two",
                              "classifier unsure"])
def test_a_lone_mark_either_reader_doubts_has_every_cut_tried(line, sure):
    calls = []
    reading.read(wide_blob(), counting(sure_of_anything(sure), calls), line=line_says(line))
    assert calls[0] == 1 and len(calls) == 2 and calls[1] > 2  # then every candidate
    assert reading.LONE_SURE > 0.4


def test_the_lone_mark_rule_needs_one_mark_and_a_line_reader():
    calls = []
    reading.read(wide_blob(), counting(sure_of_anything(), calls))  # no line reader
    assert len(calls) == 1 and calls[0] > 2
    calls.clear()
    page = wide_blob()
    page[30:110, 300:308] = 0  # and a second mark beside it
    reading.read(page, counting(sure_of_anything(), calls), line=line_says("1"))
    assert len(calls) == 1 and calls[0] > 2


def test_a_line_of_several_slices_is_read_at_each_shift_and_stays_finite():
    import warnings

    strips = []

    def certain(strip):  # sure of a blank everywhere: every digit at log-probability -200
        strips.append(strip)
        log_probs = np.full((strip.shape[1] // reading.FRAME, 11), -200.0, np.float32)
        log_probs[:, 0] = 0.0
        return log_probs

    ink = 255.0 - two_bars()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "divide by zero in log"
        frames = reading._frames(ink, certain, slices=2)
    assert len(strips) == len(reading.LINE_SHIFTS)
    for strip, shift in zip(strips, reading.LINE_SHIFTS):
        np.testing.assert_array_equal(strip, np.roll(strips[0], shift, axis=1))
    assert np.isfinite(frames.log_probs).all() and reading.ctc_greedy(
        frames.log_probs.argmax(-1)) == ""
    strips.clear()
    reading._frames(ink, certain, slices=1)  # a lone uncut mark: read once
    assert len(strips) == 1
