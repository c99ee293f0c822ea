"""The preprocessing that made MNIST, for digits drawn or photographed anywhere: request
bodies (PNG, JPEG or JSON pixels) -> grayscale arrays -> 28x28 MNIST-style digits."""

import io
import json

import numpy as np

from flaxdigits import IMAGE_SIDE

MAX_IMAGE_PIXELS = 4096 * 4096  # a decoded image larger than this is refused (413)
FIT_BOX = 20  # MNIST scaled each digit to fit a 20x20 box ...
MNIST_CENTRE = 14.0  # ... and put its centre of mass at pixel (14, 14)
WORK_BOX = 3 * FIT_BOX  # digits are measured (and thin ones thickened) at this size first
# Stroke width / the digit's longer side: MNIST's median is 0.2 (5% of its digits are
# under 0.14); thinner than THIN_STROKE (a fine pen on a big page) is thickened to
# THICKENED_STROKE before the digit is shrunk to 20x20.
THIN_STROKE = 0.12
THICKENED_STROKE = 0.16
MIN_INK_PIXELS = 8  # fewer inked pixels than this is a speck, not a digit
MIN_IMAGE_SIDE = 8  # an image narrower or lower than this cannot hold a digit
INK_LEVEL = 0.2  # a pixel brighter than this share of the brightest is ink


class BadInput(Exception):
    """A request the API refuses: `status` (4xx) and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------
# Bodies -> grayscale arrays


def decode_image(body: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> float32 grayscale (H, W) in 0..255, upright (EXIF orientation
    applied, as phone photos need). Transparent pixels count as white paper (a canvas
    exported with no background); 16-bit images keep their contrast.

    Whatever goes wrong while decoding is the body's fault: a 4xx, never a 500."""
    from PIL import Image, ImageOps

    if not body:
        raise BadInput(400, "empty body: send a PNG or JPEG image")
    try:
        image = Image.open(io.BytesIO(body))  # reads the header only
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise BadInput(413, f"image has more than {MAX_IMAGE_PIXELS:,} pixels") from None
    except Exception as e:  # noqa: BLE001 (any failure to parse the header is the body's)
        raise BadInput(400, f"not a readable PNG or JPEG image ({type(e).__name__})") from None
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise BadInput(422, f"no digit found: a {width}x{height} image is too small to hold "
                            f"one (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise BadInput(413, f"image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} "
                            f"pixels are accepted")
    if image.format not in ("PNG", "JPEG"):
        raise BadInput(415, f"image format {str(image.format)[:20]} is not PNG or JPEG")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float gray
            values = np.asarray(image, dtype=np.float32)
            top = 65535.0 if image.mode.startswith("I") and values.max() > 255 else 255.0
            return np.clip(values * (255.0 / top), 0, 255)
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(paper, rgba)
        gray = image.convert("L")
    except Exception as e:  # noqa: BLE001 (truncated data, bad chunks, bombs, odd modes)
        raise BadInput(400, f"image could not be decoded ({type(e).__name__}: "
                            f"{str(e)[:120]})") from None
    return np.asarray(gray, dtype=np.float32)


def _only_numbers(value, depth: int = 0) -> bool:
    """Whether every leaf of nested lists `value` (at most 3 deep) is an int or a float."""
    if isinstance(value, list):
        return depth < 3 and all(_only_numbers(v, depth + 1) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def pixels_from_json(body: bytes) -> np.ndarray:
    """{"pixels": 28x28 numbers in 0..255} -> float32 (28, 28)."""
    if not body:
        raise BadInput(400, 'empty body: send {"pixels": [[...28 numbers], ... 28 rows]}')
    try:
        payload = json.loads(body)
    # ValueError: also integers of more than 4,300 digits; RecursionError: deep nesting.
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadInput(400, f"body is not valid JSON ({type(e).__name__}: "
                            f"{str(e)[:120]})") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise BadInput(422, 'JSON body must be an object with a "pixels" field')
    if not _only_numbers(payload["pixels"]):
        # numpy would turn "12" into 12.0 and True into 1.0: JSON numbers only.
        raise BadInput(422, '"pixels" must hold JSON numbers only (not strings, true/false or '
                            'null)')
    try:
        pixels = np.asarray(payload["pixels"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise BadInput(422, '"pixels" must be 28 rows of 28 numbers') from None
    if pixels.shape != (IMAGE_SIDE, IMAGE_SIDE):
        raise BadInput(422, f'"pixels" must be 28 rows of 28 numbers, not shape '
                            f'{"x".join(map(str, pixels.shape[:4])) or "scalar"}')
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise BadInput(422, '"pixels" values must be numbers in 0..255')
    return pixels.astype(np.float32)


# ---------------------------------------------------------------------------------------
# The preprocessing that made MNIST


def digit_like_mnist(gray: np.ndarray) -> np.ndarray:
    """Any grayscale digit (H, W) in 0..255 -> float32 (28, 28) in [0, 1], as MNIST's were
    made: `ink_on_dark`, then `mnist_box`. Raises BadInput (422) for an image with no ink."""
    return mnist_box(ink_on_dark(gray))


def ink_on_dark(gray: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) in 0..255 -> float32 ink (H, W) >= 0, light on dark: dark-on-light
    images are inverted (judged by the border), and the paper's own level is subtracted.
    Raises BadInput (422) for an image with no ink or only a speck of it."""
    x = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    # np.median's own arithmetic (the mean of the middle two, as float32), from one
    # partial sort for both polarities (np.median twice was a fifth of this function).
    half = len(border) // 2  # (the border's length is even)
    low, high = np.partition(border, (half - 1, half))[half - 1:half + 1]
    if (low + high) / 2 > 127:  # paper is light: dark ink on it
        x = np.subtract(np.float32(255.0), x)
        low, high = 255 - low, 255 - high
    else:
        x = x.copy()
    # (In place, one new array in all: this runs on the whole page.)
    x -= (low + high) / 2  # the paper's own level is not ink
    np.maximum(x, np.float32(0.0), out=x)
    top = x.max()
    if top < 32:
        raise BadInput(422, "no digit found: the image is blank")
    if np.count_nonzero(x > INK_LEVEL * top) < MIN_INK_PIXELS:
        raise BadInput(422, f"no digit found: fewer than {MIN_INK_PIXELS} pixels of ink")
    return x


def mnist_box(ink: np.ndarray) -> np.ndarray:
    """Light-on-dark ink (H, W) -> float32 (28, 28) in [0, 1], as MNIST's digits were made:
    cropped to the ink's bounding box; scaled to fit a 20x20 box keeping the aspect ratio
    (with anti-aliasing); placed in 28x28 with its centre of mass at the centre."""
    x = np.asarray(ink, dtype=np.float32)
    inked = x > INK_LEVEL * x.max()
    ink_rows = np.flatnonzero(inked.any(axis=1))
    ink_cols = np.flatnonzero(inked.any(axis=0))
    x = x[ink_rows[0]:ink_rows[-1] + 1, ink_cols[0]:ink_cols[-1] + 1]
    # First at three times MNIST's size, where the strokes' width is measured and, for a
    # thin pen, brought up to MNIST's (its strokes are about a fifth of a digit's height:
    # a model trained on them reads hairlines poorly).
    x = _fit(x, WORK_BOX)
    inked = x > INK_LEVEL * x.max()
    from scipy import ndimage

    width = (np.inf if _surely_as_wide(inked, THIN_STROKE * WORK_BOX)
             else 2 * _percentile_95(ndimage.distance_transform_edt(inked)[inked]))
    if width < THIN_STROKE * WORK_BOX:
        radius = (THICKENED_STROKE * WORK_BOX - width) / 2
        reach = int(np.ceil(radius))
        offsets = np.arange(-reach, reach + 1)
        disc = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2
        x = ndimage.grey_dilation(np.pad(x, reach), footprint=disc)
    fitted = np.clip(_fit(x, FIT_BOX), 0.0, None)

    rows, cols = np.indices(fitted.shape)
    mass = fitted.sum()
    centre_row, centre_col = (rows * fitted).sum() / mass, (cols * fitted).sum() / mass
    # MNIST put the centre of mass at pixel (14, 14) (measured: the mean over its training
    # digits is (13.99, 14.00)), not at the geometric centre 13.5.
    top = int(round(MNIST_CENTRE - centre_row))
    left = int(round(MNIST_CENTRE - centre_col))
    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    # Paste with clipping: a lopsided digit's centre of mass may push an edge outside.
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + fitted.shape[0], IMAGE_SIDE), min(left + fitted.shape[1], IMAGE_SIDE)
    out[r0:r1, c0:c1] = fitted[r0 - top:r1 - top, c0 - left:c1 - left]
    return out / out.max()


# A line of digits is read as a strip this many pixels high, its ink scaled to LINE_INK (MNIST's
# digits are 20 px high in their 28). (Measured 2026-12-03: 24/32 read 158 of 180 validation
# numbers after 1,600 steps; 20/24 costs about 0.56 of the compute per step.)
LINE_STRIP = 24
LINE_INK = 20  # ... its ink scaled to this height, centred
LINE_MARGIN = 4  # ... with this many dark columns either side
LINE_THIN_STROKE = 2.5  # strokes narrower than this (pixels, in the strip) are thickened


def ink_box(ink: np.ndarray) -> tuple:
    """(x0, y0, x1, y1), x1 and y1 exclusive, of the pixels of light-on-dark `ink` above
    INK_LEVEL of its brightest. Needs some ink."""
    inked = ink > INK_LEVEL * ink.max()
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def line_strip(ink: np.ndarray) -> np.ndarray:
    """Light-on-dark ink (H, W) of one line of digits -> float32 (LINE_STRIP, W') in
    [0, 1], what models.LineReader reads: cropped to the ink, scaled (keeping the aspect
    ratio; box-filtered when shrinking) so the ink is LINE_INK pixels high, padded by
    LINE_MARGIN columns and to a width that is a multiple of 4. Needs some ink."""
    from PIL import Image

    x = np.asarray(ink, dtype=np.float32)
    x0, y0, x1, y1 = ink_box(x)
    x = x[y0:y1, x0:x1]
    width = max(1, round(x.shape[1] * LINE_INK / x.shape[0]))
    resample = (Image.Resampling.BOX if x.shape[0] > LINE_INK
                else Image.Resampling.BILINEAR)
    small = np.clip(np.asarray(Image.fromarray(x, mode="F").resize((width, LINE_INK),
                                                                   resample)), 0.0, None)
    out = np.zeros((LINE_STRIP, -(-(width + 2 * LINE_MARGIN) // 4) * 4), np.float32)
    top = (LINE_STRIP - LINE_INK) // 2
    out[top:top + LINE_INK, LINE_MARGIN:LINE_MARGIN + width] = small
    out /= max(float(out.max()), 1e-6)
    # A thin pen's strokes come out a pixel wide or less, and faint: grown by a pixel each
    # side they look like the brush's, one kind of line for the model instead of two.
    from scipy import ndimage

    inked = out > INK_LEVEL
    if inked.any() and not _surely_as_wide(inked, LINE_THIN_STROKE) \
            and 2 * _percentile_95(ndimage.distance_transform_edt(inked)[inked]) \
            < LINE_THIN_STROKE:
        out = ndimage.grey_dilation(out, footprint=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                            bool))
    return out


def _surely_as_wide(inked: np.ndarray, width: float) -> bool:
    """Whether the strokes of `inked` are surely at least `width` wide as the thin-pen tests
    measure them (2 x the 95th percentile of ndimage.distance_transform_edt over the ink),
    by a bound that costs a third of that (most strokes are not thin): a pixel whose square
    of side 2r + 1 around it is all ink lies at least r + 1 from the background, so where
    the 5% (and one) most inside pixels are such, the percentile is at least r + 1.
    False means "maybe not": the distances are then measured."""
    reach = int(np.ceil(width / 2)) - 1  # r: 2 (r + 1) >= width
    side = 2 * reach + 1
    height, columns = inked.shape
    # Sums over every side x side square (outside the image counts as background), from
    # an integral image.
    total = np.zeros((height + side, columns + side), np.int32)
    total[reach + 1:reach + 1 + height, reach + 1:reach + 1 + columns] = inked
    total = total.cumsum(0).cumsum(1)
    squares = total[side:, side:] - total[:-side, side:] - total[side:, :-side] \
        + total[:-side, :-side]
    count = np.count_nonzero(inked)
    # _percentile_95 interpolates from its lower neighbour up: that one is at least r + 1
    # where at least count - floor(0.95 (count - 1)) pixels are.
    return np.count_nonzero(squares == side * side) >= count - int(np.floor(0.95 * (count - 1)))


def _percentile_95(values: np.ndarray) -> float:
    """np.percentile(values, 95) (linear interpolation), by a partial sort: the number
    reader prepares dozens of candidates per image, and np.percentile's full machinery was
    a tenth of the time of each."""
    at = 0.95 * (len(values) - 1)
    lo, hi = int(np.floor(at)), int(np.ceil(at))
    part = np.partition(values, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (at - lo))


def _fit(x: np.ndarray, box: int) -> np.ndarray:
    """`x` resized to fit a `box` x `box` square, keeping its aspect ratio. Pillow's
    resampling filters anti-alias when shrinking (the support widens with the factor), as
    MNIST's normalisation did."""
    from PIL import Image

    height, width = x.shape
    factor = box / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(np.asarray(x, np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR))
