"""Training examples shaped like what the number reader cuts out of a line of digits.

flaxdigits/serving/reading.py reads a number by trying cuts and letting the model's
confidence choose among them (segmentation by recognition). A model trained on lone digits
only is confident on things no digit looks like: half of a 0, two digits squeezed into one
box, the right half of one digit with the left half of the next. And a right cut leaves a
sliver of the neighbour at the crop's edge, which lone digits never have. So
`config.data.cut_pieces` adds, to the training split only, that share of extra examples
built from its own digits and prepared as the reader prepares a cut (preprocess.mnist_box):

  * non-digits, with the uniform target (the model learns to be unsure of them, as in
    outlier exposure, Hendrycks et al. 2019): a piece of a digit cut at 30-70% of its width;
    two neighbouring digits as one; the right part of one digit with the left part of the
    next;
  * digits with a sliver of a neighbour (5-25% of its width) at the edge, with their label.

The model keeps its ten classes and everything else that reads it; only its confidence on
the reader's wrong cuts changes. Deterministic for a seed.
"""

import numpy as np

from flaxdigits import NUM_CLASSES

INK = 128  # a uint8 pixel above this is ink, where digits are made to touch
NON_DIGIT_SHARE = 0.7  # of the pieces; the rest are digits with a neighbour's sliver


def _ink_crop(image: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(image.max(axis=1) > 0)
    cols = np.flatnonzero(image.max(axis=0) > 0)
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _pair(a: np.ndarray, b: np.ndarray, rng: np.random.Generator):
    """Two ink crops on one line, touching or up to 3 px apart: (canvas, x of b's left)."""
    shift = int(rng.integers(-2, 3))  # b a little higher or lower
    height = max(a.shape[0], b.shape[0] + abs(shift)) + 2
    top_a, top_b = 1, 1 + max(0, shift)
    gap = int(rng.integers(-1, 4))  # -1: slide b left until the inks meet
    canvas = np.zeros((height, a.shape[1] + b.shape[1] + 4), np.float32)
    canvas[top_a:top_a + a.shape[0], :a.shape[1]] = a
    x = a.shape[1] + max(gap, 0)
    if gap < 0:
        ink_b = b > INK
        while x > 1:
            window = canvas[top_b:top_b + b.shape[0], x - 1:x - 1 + b.shape[1]] > INK
            if (window & ink_b).any():
                break
            x -= 1
    window = canvas[top_b:top_b + b.shape[0], x:x + b.shape[1]]
    np.maximum(window, b, out=window)
    return canvas, x


def make(images_uint8: np.ndarray, label_ids: np.ndarray, count: int, seed: int):
    """`count` pieces from `images_uint8` (N, 28, 28) with labels (N,): float32 images
    (count, 28, 28, 1) in [0, 1] and targets (count, 10) (one-hot, or uniform for the
    non-digits)."""
    from flaxdigits.serving import preprocess

    rng = np.random.default_rng(seed)
    out_images = np.zeros((count, 28, 28, 1), np.float32)
    out_targets = np.zeros((count, NUM_CLASSES), np.float32)
    made = 0
    while made < count:
        i, j = rng.integers(0, len(images_uint8), size=2)
        a = _ink_crop(images_uint8[i]).astype(np.float32)
        b = _ink_crop(images_uint8[j]).astype(np.float32)
        target = np.full(NUM_CLASSES, 1.0 / NUM_CLASSES, np.float32)
        if rng.random() < NON_DIGIT_SHARE:
            kind = rng.integers(3)
            if kind == 0:  # a piece of one digit (a 1 cut lengthwise is still a 1)
                if label_ids[i] == 1 or a.shape[1] < 8:
                    continue
                cut = int(round(rng.uniform(0.3, 0.7) * a.shape[1]))
                piece = a[:, :cut] if rng.random() < 0.5 else a[:, cut:]
            else:
                canvas, x = _pair(a, b, rng)
                if kind == 1:  # two digits as one
                    piece = canvas
                else:  # the right part of one with the left part of the next
                    lo = int(round(rng.uniform(0.35, 0.75) * a.shape[1]))
                    hi = x + int(round(rng.uniform(0.25, 0.65) * b.shape[1]))
                    piece = canvas[:, lo:hi]
        else:  # a digit with a sliver of its neighbour at the edge
            canvas, x = _pair(a, b, rng)
            if rng.random() < 0.5:
                piece = canvas[:, :x + max(1, int(round(rng.uniform(0.05, 0.25) * b.shape[1])))]
                label = label_ids[i]
            else:
                piece = canvas[:, max(0, int(round((1 - rng.uniform(0.05, 0.25)) * a.shape[1]))
                                  ):]
                label = label_ids[j]
            target = np.eye(NUM_CLASSES, dtype=np.float32)[label]
        if np.count_nonzero(piece > preprocess.INK_LEVEL * 255) < preprocess.MIN_INK_PIXELS:
            continue
        out_images[made, :, :, 0] = preprocess.mnist_box(piece)
        out_targets[made] = target
        made += 1
    return out_images, out_targets


# What the reader itself cuts out of numbers written with the training digits.
READ_GAPS = ("touching", "close", "spaced")
READ_GAP_SHARES = (0.5, 0.3, 0.2)  # touching digits are where the reader needs help most
DIGIT_SHARE = 0.85  # a cut holding this much of a digit's ink, and that much of its own,
# is that digit; one holding under NOT_WHOLE of every digit's ink, or whose ink is under
# NOT_PURE of any one digit's, is none of them (two digits as one are none)
NOT_WHOLE, NOT_PURE = 0.6, 0.8
DIGITS_PER_DIGIT = 2  # at most this many cuts kept as each digit of a number ...
NON_DIGITS_PER_DIGIT = 2  # ... and this many non-digits per digit


def read(images_uint8: np.ndarray, label_ids: np.ndarray, count: int, seed: int):
    """`count` examples of the reader's own candidates (reading.unclassified_candidates)
    on numbers of 2-5 digits written with `images_uint8` (data/written.py: pen or brush,
    spaced, close or touching). Within a candidate's box, a digit's share of the ink is
    measured both ways (of the digit's ink, of the box's): both >= DIGIT_SHARE, the
    candidate is that digit (with its label); under NOT_WHOLE or NOT_PURE for every digit,
    it is none (the uniform target); in between it is not used. Returns
    (count, 28, 28, 1) float32 and (count, 10)."""
    from flaxdigits.data import written
    from flaxdigits.serving import preprocess, reading

    rng = np.random.default_rng(seed)
    out_images = np.zeros((count, 28, 28, 1), np.float32)
    out_targets = np.zeros((count, NUM_CLASSES), np.float32)
    uniform = np.full(NUM_CLASSES, 1.0 / NUM_CLASSES, np.float32)
    made = 0
    while made < count:
        picks = rng.integers(0, len(images_uint8), size=int(rng.integers(2, 6)))
        gap = READ_GAPS[rng.choice(len(READ_GAPS), p=READ_GAP_SHARES)]
        canvas = (int(rng.choice((120, 160, 200))), int(rng.choice((400, 560, 720))))
        image, _, owner = written.number_image(
            [images_uint8[i] for i in picks], gap=gap, stroke=("pen", "brush")[rng.integers(2)],
            light_on_dark=True, canvas=canvas, rng=rng, owners=True)
        try:
            found = reading.unclassified_candidates(image)
        except preprocess.BadInput:
            continue
        totals = np.bincount(owner.ravel(), minlength=len(picks) + 1)[1:]
        digits = {k: [] for k in range(len(picks))}
        non_digits = []
        for segment in found.segments:
            x0, y0, x1, y1 = (int(round(v / found.scale)) for v in segment.box)
            inside = np.bincount(owner[y0:y1, x0:x1].ravel(), minlength=len(picks) + 1)[1:]
            of_digit = inside / np.maximum(totals, 1)
            of_box = inside / max(inside.sum(), 1)
            best = int(np.argmax(of_digit * of_box))
            if of_digit[best] >= DIGIT_SHARE and of_box[best] >= DIGIT_SHARE:
                digits[best].append(segment.image)
            elif ((of_digit < NOT_WHOLE) | (of_box < NOT_PURE)).all():
                non_digits.append(segment.image)
        chosen = []
        for k, images in digits.items():
            target = np.eye(NUM_CLASSES, dtype=np.float32)[label_ids[picks[k]]]
            chosen += [(images[i], target)
                       for i in rng.permutation(len(images))[:DIGITS_PER_DIGIT]]
        chosen += [(non_digits[i], uniform) for i
                   in rng.permutation(len(non_digits))[:NON_DIGITS_PER_DIGIT * len(picks)]]
        for image_28, target in chosen:
            if made == count:
                break
            out_images[made, :, :, 0] = image_28
            out_targets[made] = target
            made += 1
    return out_images, out_targets
