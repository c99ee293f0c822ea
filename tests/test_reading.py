"""flaxdigits/serving/reading.py: the number in an image, digit by digit."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flaxdigits import testing
from flaxdigits.serving import preprocess, reading

FIXTURES = pathlib.Path(__file__).with_name("fixtures") / "numbers"


def sure_of_anything(images_nhw):
    """A stand-in model, sure of digit 1 for whatever it sees: the tests of the geometry."""
    probabilities = np.full((len(images_nhw), 10), 0.001, np.float32)
    probabilities[:, 1] = 0.991
    return probabilities


def drawn(strokes, size=(200, 600), width=9):
    """Dark pen strokes (lists of points) on white paper."""
    image = Image.new("L", (size[1], size[0]), 255)
    draw = ImageDraw.Draw(image)
    for points in strokes:
        draw.line(points, fill=0, width=width, joint="curve")
    return np.asarray(image, np.float32)


BROKEN_FIVE = [[(60, 40), (120, 40)],  # the detached top ...
               [(62, 55), (60, 95), (100, 92), (118, 120), (110, 150), (60, 160)]]  # ... body
TWO_STROKE_FOUR = [[(90, 40), (55, 115), (130, 115)], [(112, 70), (112, 165)]]


def test_apart_marks_are_read_left_to_right_with_their_boxes():
    page = testing.many_marks_page(4)  # four bars, 20 px apart
    result = reading.read(page, sure_of_anything)
    assert result.number == "1111"
    lefts = [d.box[0] for d in result.digits]
    assert lefts == sorted(lefts) and len(lefts) == 4
    for k, (x0, y0, x1, y1) in enumerate(d.box for d in result.digits):
        assert (x0, y0, x1, y1) == (20 + 20 * k, 30, 26 + 20 * k, 90)
    assert all(d.image.shape == (28, 28) for d in result.digits)


@pytest.mark.parametrize("strokes", [BROKEN_FIVE, TWO_STROKE_FOUR], ids=["5", "4"])
def test_the_pieces_of_one_digit_are_joined(strokes):
    result = reading.read(drawn(strokes), sure_of_anything)
    assert len(result.digits) == 1
    x0, y0, x1, y1 = result.digits[0].box
    xs, ys = zip(*[p for s in strokes for p in s])
    assert x0 <= min(xs) and x1 >= max(xs) and y0 <= min(ys) and y1 >= max(ys)


def test_boxes_are_in_the_pixels_of_a_large_image():
    page = np.full((1000, 3000), 255, np.uint8)  # shrunk to 1200 wide to be read
    page[300:700, 1000:1060] = 0
    (digit,) = reading.read(page, sure_of_anything).digits
    assert digit.box == pytest.approx((1000, 300, 1060, 700), abs=3)


def test_one_batched_classification_per_image():
    calls = []

    def counting(images):
        calls.append(len(images))
        return sure_of_anything(images)

    reading.read(drawn(BROKEN_FIVE + [[(300, 40), (300, 160)]]), counting)
    assert len(calls) == 1 and calls[0] >= 2


@pytest.mark.parametrize("page,message", [
    (np.full((200, 600), 255), "no digit found: the image is blank"),
    (testing.specks_page(), "no digits found"),
    (testing.ruled_line_page(), "no digits found: only specks or lines"),
    (testing.many_marks_page(60), "separate marks"),
], ids=["blank", "specks", "ruled line", "too many marks"])
def test_what_holds_no_number_is_a_clear_422(page, message):
    with pytest.raises(preprocess.BadInput, match=message) as error:
        reading.read(np.asarray(page, np.float32), sure_of_anything)
    assert error.value.status == 422 and "\n" not in str(error.value)


def test_a_ruled_line_under_a_number_is_not_a_digit():
    page = testing.many_marks_page(3)
    page[100:103, 10:-10] = 0  # a line under the three bars
    assert reading.read(page, sure_of_anything).number == "111"


def test_a_scribble_gets_an_answer_not_a_hang():
    rng = np.random.default_rng(0)
    points = [tuple(p) for p in rng.integers(20, 580, size=(60, 2)) * [1, 0.3] + [0, 20]]
    result = reading.read(drawn([points], width=5), sure_of_anything)
    assert 1 <= len(result.digits) <= reading.MAX_DIGITS


# ---------------------------------------------------------------------------------------
# Fixed strings of MNIST test digits, read by a real model


def test_the_generator_still_makes_the_fixture_strings(mnist_raw):
    """The committed fixtures are what testing.number_cases makes (it is deterministic)."""
    expected = json.loads((FIXTURES / "numbers.json").read_text())
    cases = fixture_cases(mnist_raw)
    assert [c["number"] for c in cases] == [e["number"] for e in expected]
    for case, entry in zip(cases, expected):
        stored = np.asarray(Image.open(FIXTURES / entry["file"]))
        np.testing.assert_array_equal(stored, case["image"])


def fixture_cases(mnist_raw):
    """One number of each kind and length 3-4, from benchmarks/reading.py's generator."""
    cases = []
    for kind in testing.NUMBER_KINDS:
        cases += testing.number_cases(mnist_raw.test_images, mnist_raw.test_labels, 1,
                                      seed=11, lengths=(3, 4), kinds=(kind,))
    return cases


@pytest.fixture(scope="session")
def fast_reader(tmp_path_factory, mnist_raw):
    """configs/fast.py trained on all of MNIST (about 20 s) with the page model's cut pieces
    (data.cut_pieces, as configs/page.py): a model good enough that its readings of clear
    strings are exact."""
    from configs import fast
    from flaxdigits.training import loop
    from tests.conftest import MNIST_DIR

    config = fast.get_config()
    config.data.dir = str(MNIST_DIR)
    config.data.cut_pieces = 0.15
    workdir = tmp_path_factory.mktemp("fast")
    loop.train_and_evaluate(config, workdir)
    return reading.Reader.from_workdir(workdir)


def mnist_number(mnist_raw, indices, *, gap, light_on_dark=False, stroke="brush", seed=0):
    return testing.number_image([mnist_raw.test_images[i] for i in indices], gap=gap,
                                stroke=stroke, light_on_dark=light_on_dark,
                                canvas=(240, 720), rng=np.random.default_rng(seed))


@pytest.mark.slow
@pytest.mark.parametrize("indices,gap,light", [
    ((0, 1, 2, 3), "spaced", False),
    ((4, 5, 6), "close", False),
    ((3, 7), "spaced", True),  # light on dark, and a leading zero: "0" then "9"
    ((10, 2, 3), "spaced", False),  # "0" first: leading zeros are kept
], ids=["apart", "close", "light on dark", "leading zero"])
def test_fixed_strings_are_read_exactly(fast_reader, mnist_raw, indices, gap, light):
    image, boxes = mnist_number(mnist_raw, indices, gap=gap, light_on_dark=light)
    expected = "".join(str(int(mnist_raw.test_labels[i])) for i in indices)
    result = fast_reader.read(image)
    assert result.number == expected
    for digit, (x0, y0, x1, y1) in zip(result.digits, boxes):
        centre = ((digit.box[0] + digit.box[2]) / 2, (digit.box[1] + digit.box[3]) / 2)
        assert x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1


@pytest.mark.slow
def test_touching_pairs_are_cut(fast_reader, mnist_raw):
    """Touching strings are the hard kind (benchmarks/reading.py measures them): of these
    fixed pairs, most must be cut right."""
    right = 0
    pairs = [(i, i + 1) for i in range(0, 40, 2)]
    for seed, pair in enumerate(pairs):
        image, _ = mnist_number(mnist_raw, pair, gap="touching", seed=seed)
        expected = "".join(str(int(mnist_raw.test_labels[i])) for i in pair)
        right += fast_reader.read(image).number == expected
    assert right >= len(pairs) // 2, right


@pytest.mark.slow
def test_the_committed_fixtures_are_read(fast_reader):
    expected = json.loads((FIXTURES / "numbers.json").read_text())
    read = [fast_reader.read(np.asarray(Image.open(FIXTURES / e["file"]), np.float32)).number
            for e in expected]
    right = sum(r == e["number"] for r, e in zip(read, expected))
    spaced = [r == e["number"] for r, e in zip(read, expected) if e["kind"] == "spaced"]
    assert all(spaced), (read, expected)
    assert right >= len(expected) // 2, (read, expected)


@pytest.mark.slow
def test_launch_reads_images_one_line_each_and_names_the_bad_ones(trained, tmp_path, launch):
    good = tmp_path / "eleven.png"
    good.write_bytes(testing.encode(testing.many_marks_page(2)))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    blank = tmp_path / "blank.png"
    blank.write_bytes(testing.encode(np.full((100, 300), 255)))
    missing = tmp_path / "missing.png"
    args = ["--config=configs/tiny.py", f"--workdir={trained['workdir']}", "--mode=read"]
    result = launch(*args, str(good), str(empty), str(text), str(blank), str(missing))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{good}: 11 (1:{result.stdout.split('(1:')[1][:5]} 1:"
        f"{result.stdout.split(' 1:')[1][:5]})"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("flaxdigits:")]
    assert errors == [
        f"flaxdigits: error: {empty}: empty body: send a PNG or JPEG image",
        f"flaxdigits: error: {text}: not a readable PNG or JPEG image (UnidentifiedImageError)",
        f"flaxdigits: error: {blank}: no digit found: the image is blank",
        f"flaxdigits: error: {missing}: No such file or directory",
        "flaxdigits: error: 4 of 5 images could not be read"]
    assert "Traceback" not in result.stderr

    as_json = launch(*args, "--json", str(good), str(missing))
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert lines[0]["path"] == str(good) and lines[0]["number"] == "11"
    assert [set(d) for d in lines[0]["digits"]] == [{"label", "probability", "box"}] * 2
    assert lines[1] == {"path": str(missing), "error": "No such file or directory"}
    assert as_json.returncode == 1

    no_paths = launch(*args)
    assert no_paths.returncode != 0 and "name the images to read" in no_paths.stderr


@pytest.mark.slow
def test_the_numbers_benchmark_starts():
    """benchmarks/reading.py runs (a script there named like a standard module, as
    `numbers.py` once was, shadows it for every script in the folder: numpy imports it)."""
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "reading.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "--per_case" in done.stdout


def test_touching_digits_written_flat_with_a_broad_brush_are_not_a_ruled_line():
    """Five touching brush digits make one component wider than three times its height,
    as flat as a thick line by its box: its loops tell it apart."""
    strokes = [[(40 + 90 * k, 60), (110 + 90 * k, 60), (110 + 90 * k, 110), (40 + 90 * k, 110),
                (40 + 90 * k, 60)] for k in range(5)]  # five 0s, boxes, joined by a bar
    strokes.append([(40, 85), (470, 85)])
    result = reading.read(drawn(strokes, size=(170, 520), width=18), sure_of_anything)
    assert len(result.number) >= 1
