"""Numbers written the way people write them: lines of digits made from MNIST digits.

Each digit is redrawn at a size with the stroke of a thin pen or a round brush, and placed
after the last one spaced, close or touching, a little higher or lower and taller or shorter.
benchmarks/reading.py builds its test strings with `number_cases` (from MNIST test digits);
data/cut_pieces.py builds training examples with `number_image` (from training digits only).
"""

import numpy as np

GAPS = {  # gap between neighbours, in units of the digits' height
    "spaced": (0.25, 0.6),
    "close": (0.03, 0.12),
    "touching": None,  # each digit moved left until its ink meets its neighbour's
}
STROKES = {"pen": 0.045, "brush": 0.16}  # stroke width, in units of the digits' height


def restroke(digit_28x28: np.ndarray, height: int, stroke: str) -> np.ndarray:
    """An MNIST digit cropped to its ink and redrawn `height` pixels tall with the stroke
    width of a thin pen or a round brush: float32 ink in [0, 255], light on dark."""
    from scipy import ndimage

    mask = np.pad(scaled(digit_28x28, height) > 100, 2 + height // 4)
    depth = ndimage.distance_transform_edt(mask)
    have = 2 * np.percentile(depth[mask], 95) if mask.any() else 1.0
    want = max(2.0, STROKES[stroke] * height)
    steps = int(round((want - have) / 2))
    if steps > 0:  # a round brush: grow the strokes by a disc
        mask = depth_grow(mask, steps)
    elif steps < 0:  # a thin pen: wear them down, never below one pixel across
        eroded = mask
        for _ in range(-steps):
            thinner = ndimage.binary_erosion(eroded)
            # (Keep what would vanish: an erosion must not break the strokes apart.)
            if ndimage.label(thinner)[1] > ndimage.label(eroded)[1] or not thinner.any():
                break
            eroded = thinner
        mask = eroded
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Anti-aliased edges, as a canvas or a scanner makes them.
    return ndimage.gaussian_filter(mask.astype(np.float32) * 255, 0.7)


def depth_grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask) <= pixels


def number_image(digits_28x28, *, gap: str, stroke: str, light_on_dark: bool,
                 canvas: tuple, rng: np.random.Generator, owners: bool = False):
    """A number written on one line of a `canvas` (height, width): the MNIST digits
    `digits_28x28` redrawn with `stroke` ('pen' or 'brush'), `gap` ('spaced', 'close' or
    'touching') apart, each a little higher or lower and taller or shorter than the last.
    Returns (uint8 image, boxes (x0, y0, x1, y1) of the digits' ink), and with `owners`
    also an int array of the canvas's shape: 1 + the index of the digit whose ink each
    pixel is (0: no ink)."""
    canvas_h, canvas_w = canvas
    count = len(digits_28x28)
    height = int(min(0.6 * canvas_h, 0.85 * canvas_w / (0.85 * count + 0.3), 220))
    height = max(24, int(height * rng.uniform(0.75, 1.0)))
    sizes = rng.uniform(0.88, 1.08, size=count)
    spacing = (rng.uniform(*GAPS[gap], size=count - 1) if GAPS[gap] is not None
               else np.zeros(count - 1))
    while True:  # the whole number must fit the canvas's width
        glyphs = [restroke(d, max(16, int(height * s)), stroke)
                  for d, s in zip(digits_28x28, sizes)]
        gaps = [int(g * height) for g in spacing]
        total = sum(g.shape[1] for g in glyphs) + sum(gaps)
        if total <= 0.95 * canvas_w or height <= 24:
            break
        height = max(24, int(height * 0.9 * canvas_w / total))
    page = np.zeros((canvas_h, canvas_w), np.float32)
    line_h = max(g.shape[0] for g in glyphs)
    left = int(rng.uniform(0.05, 0.95) * max(1, canvas_w - total))
    base = int(rng.uniform(0.1, 0.9) * max(1, canvas_h - line_h - 8))
    owner = np.zeros(page.shape, np.int16)
    shifts = [int(rng.uniform(-0.06, 0.06) * height) for _ in glyphs]
    boxes = _write_line(page, glyphs, left, base, shifts,
                        gaps if GAPS[gap] is not None else None, owner)
    image = np.clip(page, 0, 255)
    if not light_on_dark:
        image = 255 - image
    if owners:
        return image.astype(np.uint8), boxes, owner
    return image.astype(np.uint8), boxes


def _write_line(page, glyphs, left: int, base: int, shifts, gaps, owner=None) -> list:
    """Pastes `glyphs` on `page` left to right, the first at column `left`, each centred on
    the line whose top is `base` and moved `shifts[i]` pixels down; `gaps[i]` pixels after
    the one before, or (`gaps` None) slid left until the inks meet. With `owner`, marks the
    pixels of each glyph's ink 1 + its index. Returns each glyph's box (x0, y0, x1, y1)."""
    line_h = max(g.shape[0] for g in glyphs)
    boxes = []
    for index, glyph in enumerate(glyphs):
        gh, gw = glyph.shape
        top = min(page.shape[0] - gh, max(0, base + (line_h - gh) // 2 + shifts[index]))
        if not boxes:
            x = left
        elif gaps is None:
            x = touching_left(page, glyph, top, boxes[-1])
        else:
            x = boxes[-1][2] + gaps[index - 1]
        x = max(0, min(x, page.shape[1] - gw))
        window = page[top:top + gh, x:x + gw]
        piece = glyph[:window.shape[0], :window.shape[1]]
        if owner is not None:
            owner[top:top + gh, x:x + gw][(piece > 128) & (piece >= window)] = index + 1
        np.maximum(window, piece, out=window)
        boxes.append((x, top, x + gw, top + gh))
    return boxes


def touching_left(page: np.ndarray, glyph: np.ndarray, top: int, previous) -> int:
    """The largest x at which `glyph`, pasted at (top, x), shares inked pixels with the ink
    already on `page` (the previous digit ends at previous[2])."""
    gh, gw = glyph.shape
    ink = glyph > 128
    x = previous[2]
    while x > previous[0]:
        window = page[top:top + gh, x:x + gw] > 128
        if (window & ink[:window.shape[0], :window.shape[1]]).any():
            return x
        x -= 1
    return x


NUMBER_KINDS = tuple(GAPS)


def number_cases(images, labels, count: int, seed: int, lengths=range(1, 7),
                 kinds=NUMBER_KINDS):
    """`count` written numbers per (kind, length), deterministic for a seed: dicts of
    kind, length, stroke, light_on_dark, number, image, boxes. Digits are drawn from
    `images`/`labels` (MNIST test digits in benchmarks/reading.py)."""
    rng = np.random.default_rng(seed)
    widths = (400, 560, 720, 860, 1000)
    heights = (160, 240, 320, 400)
    cases = []
    for kind in kinds:
        for length in lengths:
            for _ in range(count):
                picks = rng.integers(0, len(images), size=length)
                stroke = ("pen", "brush")[int(rng.integers(2))]
                light = bool(rng.integers(2))
                canvas = (int(rng.choice(heights)), int(rng.choice(widths)))
                image, boxes = number_image([images[i] for i in picks], gap=kind,
                                            stroke=stroke, light_on_dark=light,
                                            canvas=canvas, rng=rng)
                cases.append(dict(kind=kind, length=length, stroke=stroke,
                                  light_on_dark=light,
                                  number="".join(str(int(labels[i])) for i in picks),
                                  image=image, boxes=boxes))
    return cases


def glyph_pool(images, labels, count: int, rng: np.random.Generator):
    """`count` of `images` (MNIST digits) redrawn 30-56 px tall, for `line_of_glyphs` to
    compose lines from fast: a thin pen, a round brush and MNIST's own strokes simply scaled
    (as the page's pad and a photo of a thick pen give them) in turn: (glyphs, labels)."""
    picks = rng.choice(len(images), size=min(count, len(images)), replace=False)
    glyphs = []
    for k, i in enumerate(picks):
        height = int(rng.integers(30, 57))
        style = ("pen", "brush", "scaled")[k % 3]
        glyphs.append(scaled(images[i], height) if style == "scaled"
                      else restroke(images[i], height, style))
    return glyphs, np.asarray(labels)[picks]


def scaled(digit_28x28: np.ndarray, height: int) -> np.ndarray:
    """An MNIST digit cropped to its ink and resized (bilinear) to `height` pixels tall, its
    strokes as thick for its size as MNIST's: float32 ink in [0, 255], light on dark."""
    from PIL import Image

    ink = np.argwhere(digit_28x28 > 0)
    (r0, c0), (r1, c1) = ink.min(0), ink.max(0) + 1
    crop = Image.fromarray(np.asarray(digit_28x28, np.uint8)[r0:r1, c0:c1])
    width = max(1, round(crop.width * height / crop.height))
    return np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR), np.float32)


def line_of_glyphs(glyphs, glyph_labels, length: int, gap: str, rng: np.random.Generator):
    """A line of `length` glyphs from `glyph_pool`, `gap` ('spaced', 'close', 'touching')
    apart, each a little taller or shorter and higher or lower than the last, as
    `number_image` writes them: (float32 light-on-dark ink cropped loosely, the labels)."""
    from PIL import Image

    picks = rng.integers(0, len(glyphs), size=length)
    height = int(rng.integers(30, 51))
    resized = []
    for pick in picks:
        glyph = glyphs[pick]
        h = max(8, int(height * rng.uniform(0.88, 1.08)))
        w = max(1, round(glyph.shape[1] * h / glyph.shape[0]))
        resized.append(np.asarray(Image.fromarray(glyph, mode="F").resize(
            (w, h), Image.Resampling.BILINEAR)))
    page = np.zeros((max(g.shape[0] for g in resized) + int(0.3 * height) + 4,
                     sum(g.shape[1] for g in resized) + int(0.7 * height) * length + 4),
                    np.float32)
    shifts = [int(rng.uniform(-0.06, 0.06) * height) for _ in resized]
    gaps = (None if GAPS[gap] is None
            else [int(g * height) for g in rng.uniform(*GAPS[gap], size=length - 1)])
    _write_line(page, resized, 2, int(0.15 * height) + 2, shifts, gaps)
    return page, glyph_labels[picks]
