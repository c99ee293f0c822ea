"""flaxdigits/serving/preprocess.py: any drawn digit becomes an MNIST-style digit."""

import numpy as np
import pytest

from flaxdigits import testing
from flaxdigits.serving import preprocess


@pytest.fixture
def mnist_digit(mnist_raw):
    return lambda index: (mnist_raw.test_images[index], int(mnist_raw.test_labels[index]))


def test_an_off_centre_large_dark_on_light_digit_becomes_an_mnist_digit(mnist_digit):
    digit, _ = mnist_digit(0)
    page = testing.redraw(digit, height=220, top=50, left=10)
    assert page.shape == (280, 280) and page[0, 0] > 200  # light paper
    out = preprocess.digit_like_mnist(page)

    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0) and out.min() == 0.0
    assert out[0].max() == 0 and out[:, 0].max() == 0  # light-on-dark: dark background
    ink = np.argwhere(out > 0.05)
    extent = ink.max(0) - ink.min(0) + 1
    assert max(extent) <= 21 and max(extent) >= 18  # fits the 20x20 box, largest side ~20
    rows, cols = np.indices(out.shape)
    centre = ((rows * out).sum() / out.sum(), (cols * out).sum() / out.sum())
    assert centre == pytest.approx((14, 14), abs=0.6)  # centred by centre of mass, as MNIST
    # And it looks like the original MNIST digit again.
    correlation = np.corrcoef(out.ravel(), digit.ravel())[0, 1]
    assert correlation > 0.85, correlation


def test_inversion_depends_on_the_paper_not_the_pen(mnist_digit):
    dark_on_light = testing.redraw(mnist_digit(1)[0])
    light_on_dark = 255 - dark_on_light
    np.testing.assert_allclose(preprocess.digit_like_mnist(dark_on_light),
                               preprocess.digit_like_mnist(light_on_dark), atol=1e-5)


def test_an_mnist_digit_passes_through_nearly_unchanged(mnist_digit):
    digit, _ = mnist_digit(2)
    out = preprocess.digit_like_mnist(digit.astype(np.float32))
    assert np.corrcoef(out.ravel(), digit.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("blank", [np.full((280, 280), 255), np.zeros((280, 280)),
                                   np.full((28, 28), 128)], ids=["white", "black", "grey"])
def test_an_empty_canvas_is_a_clear_422(blank):
    with pytest.raises(preprocess.BadInput, match="no digit found") as error:
        preprocess.digit_like_mnist(blank.astype(np.float32))
    assert error.value.status == 422


def test_a_16_bit_png_keeps_its_contrast(mnist_digit):
    from PIL import Image

    page = testing.redraw(mnist_digit(4)[0]).astype(np.uint16) * 257  # 0..65535
    wide = Image.fromarray(page)
    assert wide.mode == "I;16"
    gray = preprocess.decode_image(testing.encode(wide))
    np.testing.assert_allclose(gray, page / 257, atol=1.0)
    assert preprocess.digit_like_mnist(gray).max() == pytest.approx(1.0)  # not "blank"


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation():
    from PIL import Image

    photo = Image.new("L", (280, 140), 255)  # stored landscape ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... to be shown turned 90 degrees: portrait
    import io

    out = io.BytesIO()
    photo.save(out, format="JPEG", exif=exif)
    assert preprocess.decode_image(out.getvalue()).shape == (280, 140)


@pytest.mark.parametrize("width", [preprocess.THIN_STROKE * preprocess.WORK_BOX,
                                   preprocess.LINE_THIN_STROKE])
def test_strokes_are_called_surely_wide_only_where_the_distances_say_so(width):
    """_surely_as_wide stands in for measuring the strokes (2 x the 95th percentile of the
    distance transform): it may say "maybe not" of wide strokes, never "surely" of thin ones."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    said_sure = 0
    for _ in range(400):
        shape = tuple(rng.integers(6, 70, 2))
        blobs = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 6))
        inked = blobs > np.quantile(blobs, rng.uniform(0.2, 0.95))
        if not inked.any():
            continue
        measured = 2 * preprocess._percentile_95(ndimage.distance_transform_edt(inked)[inked])
        if preprocess._surely_as_wide(inked, width):
            said_sure += 1
            assert measured >= width
    assert said_sure > 40  # it does stand in, often
    thick = np.zeros((60, 40), bool)
    thick[5:55, 8:32] = True
    assert preprocess._surely_as_wide(thick, width)
    assert not preprocess._surely_as_wide(np.eye(30, dtype=bool), width)
