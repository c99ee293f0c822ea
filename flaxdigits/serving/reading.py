"""Reading a number: a grayscale image holding digits written on one line -> its digits,
left to right, each with its probability, its box and the 28x28 image the model saw.

    reader = reading.Reader.from_workdir("runs/page")
    result = reader.read(gray)            # gray: (H, W) in 0..255, either polarity
    result.number                         # "2026" (leading zeros kept: "07" is two digits)
    [(d.label, d.probability, d.box) for d in result.digits]

How (segmentation by recognition; Casey & Lecolinet 1996):
  1. the ink (preprocess.ink_on_dark) is split into connected components (scipy.ndimage);
     specks and ruled lines are dropped;
  2. the pieces of one digit are joined: pieces one above the other (a 5's detached top, a
     4 or a 7 written in two strokes) and fragments much shorter than the line of digits
     next to their nearest neighbour;
  3. each part gets candidate cuts (the valleys of its column profile, and an even grid
     where a part is wide and has none), each following the gap between strokes near its
     column (the path through the least ink), which slice it into narrow pieces;
  4. every run of consecutive slices that could be one digit is prepared as MNIST's digits
     were (preprocess.mnist_box) and all of them are classified in one batched call;
  5. a dynamic programme picks the partition of the slices into digits whose cost is least:
     each digit costs -log(its probability), plus penalties for its cuts (and the strokes
     they go through) and for shapes no digit has (wider than tall, much shorter than its
     neighbours).
  6. where the workdir has a line reader (models.LineReader, config.line_reader), it reads
     the whole line of ink too, with no cuts to choose (CTC, greedy decoding; a line of
     several slices three times, shifted a column either way: LINE_SHIFTS); where its
     number differs from segmentation's, each number is scored by its partition's cost plus
     -log of the line reader's probability of it (LineWeights), and the cheaper one is the
     reading. The line reader's number keeps the boxes of the least-cost partition into its
     digits, or where no partition gives it (digits touching in a part too narrow to cut),
     the ink between the frames that spell each digit, classified (and costed) as a digit.
A single digit is a number of length 1: the same path reads it. One shortcut: a lone mark
wide enough to be cut, which the classifier reads whole as a digit it is sure of and the line
reader reads as that same digit, is that digit, its cuts untried (`_sure_lone_digit`).
"""

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import numpy as np

from flaxdigits import IMAGE_SIDE
from flaxdigits.serving import preprocess
from flaxdigits.serving.preprocess import BadInput

MAX_DIGITS = 32  # a number longer than this is refused (422), not read for seconds
WORK_SIDE = 1200  # an image whose longer side exceeds this is shrunk before reading
# And one whose line of digits is taller than this (MNIST's are 20 px): at 96, 136 of 180
# validation numbers read right (128: 133; none: 135); a 6-digit image p50 66 -> 57-61 ms.
LINE_HEIGHT = 96
# Thresholds, in units of the line's height H (the tallest part's height):
SPECK_SIDE = 0.2  # a part narrower and lower than this (and tiny in area) is a speck
FRAGMENT_HEIGHT = 0.5  # a part lower than this is a piece of a neighbouring digit ...
FRAGMENT_REACH = 0.35  # ... joined to its neighbour when the gap is within this
MAX_DIGIT_WIDTH = 1.3  # no digit is wider than this
FLAT_CROSSINGS = 0.15  # a flat mark is a line where fewer of its columns hold 2+ strokes
MIN_CUT_STEP = 0.12  # candidate cuts at least this far apart
# A part narrower than this is never cut (chosen on validation strings; cutting narrower
# parts where a cut crosses at most 1.5 strokes found more right cuts, but read no more
# numbers right and made reading a lone digit 3.5 times slower: 2026-12-02).
UNCUT_WIDTH = 1.05
MAX_SLICE_WIDTH = 0.3  # a part's slices are at most this wide (grid cuts where needed)
JOIN_GAP = 0.3  # separate parts are only read as one digit across gaps up to this


@dataclasses.dataclass(frozen=True)
class Costs:
    """What each choice costs in the partition of an image's slices into digits. Chosen on
    validation strings (`benchmarks/reading.py --split=validation --tune --per_case=10`,
    never the test digits); with configs/page.py's model (read pieces, 2026-12-02) these
    read 136 of 180 numbers right (lines read at LINE_HEIGHT), as the best of the grid."""

    digit: float = 0.0  # per digit
    cut: float = 0.25  # per cut through ink: a cut has to earn its keep
    join: float = 1.0  # per gap between separate parts read as one digit
    # Per cut through a part no wider than MAX_DIGIT_WIDTH lines: such a part is most
    # often one wide digit, and its halves can look like digits too.
    narrow_cut: float = 1.0
    # Per unit of width/height beyond wide_from (1% of MNIST's digits are wider than 1.43
    # times their height, 5% wider than 1.25).
    wide: float = 3.0
    wide_from: float = 1.0
    short: float = 3.0  # per unit of height/H below short_from
    short_from: float = 0.55
    skip: float = 6.0  # leaving a slice out of every digit

    def of(self, probability: float, segment, height: int) -> float:
        """What reading `segment` as one digit costs (lower is likelier); a cut is shared
        by the digits on either side of it."""
        return (-np.log(max(probability, 1e-9)) + self.digit + self.cut * segment.cuts / 2
                + self.narrow_cut * segment.narrow_cuts / 2
                + self.join * segment.joins
                + self.wide * max(0.0, segment.aspect - self.wide_from)
                + self.short * max(0.0, self.short_from - segment.rel_height / height))


Classify = Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) in [0, 1] -> (N, 10)


class Digit(NamedTuple):
    label: int
    probability: float
    box: tuple  # (x0, y0, x1, y1) in the image's own pixels; x1 and y1 exclusive
    image: np.ndarray  # (28, 28) float32 in [0, 1]: what the model saw
    probabilities: np.ndarray  # (10,)


class Reading(NamedTuple):
    number: str  # the digits, left to right
    digits: tuple  # of Digit, left to right

    @property
    def most_confident(self) -> Digit:
        return max(self.digits, key=lambda d: d.probability)


def read(gray: np.ndarray, classify: Classify, costs: "Costs" = None,
         line: Optional["LineModel"] = None, weights: "LineWeights" = None) -> Reading:
    """The number in `gray` (H, W), values in 0..255, dark-on-light or light-on-dark.
    `classify` maps a batch of MNIST-style digits to probabilities (it is called once,
    twice for a lone wide mark that is not `_sure_lone_digit`); `line`, where there is
    one, reads the whole line too (see `choose`).
    Raises BadInput (422) where no digit is found or there are more than MAX_DIGITS."""
    marks = _marks(gray)
    frames = None if line is None else _frames(marks.ink, line, len(marks.slices))
    sure, whole = _sure_lone_digit(marks, frames, classify)
    if sure is not None:
        return sure
    found = _classified(_candidates_of(marks, whole), classify)
    return choose(found, costs or Costs(), frames, weights or LineWeights(), classify)


class Candidates(NamedTuple):
    """Every way of reading an image's ink as digits, each way classified."""

    segments: list  # of Segment
    probabilities: np.ndarray  # (len(segments), 10)
    slices: int  # how many slices the segments cover
    height: int  # the line's height, in the (shrunk) image's pixels
    scale: float  # the (shrunk) image's size / the image's
    ink: np.ndarray  # the parts' ink on the (shrunk) image's canvas: what a line reader reads


def candidates(gray: np.ndarray, classify: Classify) -> Candidates:
    return _classified(unclassified_candidates(gray), classify)


def _classified(found: Candidates, classify: Classify) -> Candidates:
    probabilities = np.asarray(classify(np.stack([s.image for s in found.segments])),
                               np.float32)
    return found._replace(probabilities=probabilities)


def unclassified_candidates(gray: np.ndarray) -> Candidates:
    """The candidates of `gray` with `probabilities` None (data/cut_pieces.py trains on
    them)."""
    return _candidates_of(_marks(gray))


class Marks(NamedTuple):
    """An image's ink, made into parts and cut into slices (steps 1-3)."""

    parts: list  # of Part, left to right
    slices: list  # of Slice, left to right
    height: int  # the line's height, in the (shrunk) image's pixels
    scale: float  # the (shrunk) image's size / the image's
    ink: np.ndarray  # the parts' ink on the (shrunk) image's canvas: what a line reader reads


def _marks(gray: np.ndarray) -> Marks:
    ink = preprocess.ink_on_dark(gray)
    ink, scale = _shrunk(ink, WORK_SIDE / max(ink.shape))
    # Read at about LINE_HEIGHT (the cuts cost by the pixel): shrunk by the tallest mark
    # that could be a digit, before the parts are made (making them twice, at both sizes,
    # was a third of a lone digit's time).
    ink, more = _shrunk(ink, LINE_HEIGHT / _tallest_mark(ink))
    scale *= more
    parts = _parts(ink)
    height = max(p.y1 - p.y0 for p in parts)
    slices = [s for p in parts for s in _slices(p, height)]
    if len(slices) > 4 * MAX_DIGITS:
        raise BadInput(422, f"too many marks to be one number: at most {MAX_DIGITS} digits "
                            f"are read")
    return Marks(parts, slices, height, scale, _canvas(parts, ink.shape))


def _candidates_of(marks: Marks, whole: Optional["Segment"] = None) -> Candidates:
    """`whole`, where given, is the segment of every slice, made already."""
    segments = _segments(marks.slices, marks.height, whole)
    if not segments:
        raise BadInput(422, "no digits found: the marks are too faint or too small")
    return Candidates(segments, None, len(marks.slices), marks.height, marks.scale, marks.ink)


# A lone mark wide enough to be cut (UNCUT_WIDTH) is cut into 3-7 slices, and each run of
# them no wider than a digit is prepared and classified: 10-21 candidates, 10-16 ms, a twentieth
# of the single digits drawn as on the pad. Where the mark read whole is a digit the
# classifier is this sure of, and the line reader reads that same one digit, it is that digit,
# its cuts untried. Chosen on validation (`benchmarks/reading.py --split=validation`'s numbers,
# 30 per kind and length, and 4,500 single digits drawn, brushed and penned; configs/page.py's
# models, 2026-12-06): at 0.4-0.8 it changed no reading of a mark up to MAX_DIGIT_WIDTH wide
# (fired on 313-353 of them); of marks wider than that (wider than any candidate, read by the
# line reader's frames or misread as two digits) it read 9 more right and 1 still wrong at
# 0.5, 7 more right at 0.7. No touching pair fired: the line reader reads two digits there.
LONE_SURE = 0.5


def _sure_lone_digit(marks: Marks, frames: Optional["LineFrames"], classify: Classify):
    """(the reading of a lone cut mark as one digit, read whole, where both readers are sure
    of it (LONE_SURE), else None: every candidate is read; the mark's segment read whole,
    where it made one, which is one of those candidates)."""
    if frames is None or len(marks.parts) != 1 or len(marks.slices) < 2:
        return None, None
    whole = _segment(marks.slices, 0, len(marks.slices), marks.height)
    if whole is None:
        return None, None
    probabilities = np.asarray(classify(whole.image[None]), np.float32)
    label = int(probabilities[0].argmax())
    if probabilities[0, label] < LONE_SURE \
            or ctc_greedy(frames.log_probs.argmax(-1)) != str(label):
        return None, whole
    found = Candidates([whole], probabilities, len(marks.slices), marks.height, marks.scale,
                       marks.ink)
    return _reading(found, [0]), whole


def _canvas(parts: list, shape: tuple) -> np.ndarray:
    canvas = np.zeros(shape, np.float32)
    for part in parts:
        window = canvas[part.y0:part.y1, part.x0:part.x1]
        np.maximum(window, part.ink, out=window)
    return canvas


@dataclasses.dataclass(frozen=True)
class LineWeights:
    """How a line reader's reading is weighed against segmentation's, where they differ:
    each number costs its partition's cost (Costs; for the line reader's number, the
    least-cost partition into exactly its digits) plus `line` times -log of the line
    reader's probability of it (CTC). Where that partition is segmentation's own (the two
    differ only in what the digits are, not where), the weight is `relabel`: the classifier
    is the better judge of a digit's shape (on single digits drawn as on the pad the line
    reader turned a classifier's right 4, 0 or 2 into 6, 6 or 7). A number no partition of
    the slices gives (digits touching in a part too narrow to cut) costs `unsegmented` plus
    what the classifier makes of the parts its frames cut (choose's `classify`; without it,
    segmentation's cost). Chosen on validation strings and single digits (1,080 numbers,
    `testing.number_cases(..., 60, seed=7)`, and 1,500 digits drawn, brushed and penned;
    configs/page.py's models, 2026-12-06, with LINE_SHIFTS): 2,492 of 2,580 right, the best
    of a grid of line 1-3, unsegmented 1-3, relabel 0.25-0.5 (line 2-3 within 1 of it);
    the weights before (line 1.5, relabel 0.25) read 2,481 without the shifts, 2,483 with
    them. Relabel 0.5 against 0.25 on two fresh validation draws is a tie: 1,675 / 1,672
    (1,800 numbers, seed 8), 4,290 / 4,292 (1,440 numbers and 3,000 digits, seed 9).
    (2026-12-03, `benchmarks/reading.py --split=validation --tune --per_case=30
    --drawn=1500`, the shifts not yet tried: (1.5, 2, 0.25) the best of line 0.75-1.5.)"""

    line: float = 3.0
    unsegmented: float = 2.0
    relabel: float = 0.5


def choose(found: Candidates, costs: "Costs", frames: Optional["LineFrames"] = None,
           weights: "LineWeights" = None, classify: Optional[Classify] = None) -> Reading:
    """The least-cost reading among `found`; with a line reader's `frames`, segmentation's
    reading or the line reader's, whichever costs less (LineWeights). `classify` reads the
    digits the frames part where no cut does (without it they cost `unsegmented` alone)."""
    weights = weights or LineWeights()
    path, cost = _best_partition(found, costs)
    segmented = _reading(found, path)
    if frames is None:
        return segmented
    number = ctc_greedy(frames.log_probs.argmax(-1))
    if not number or number == segmented.number or len(number) > MAX_DIGITS:
        return segmented
    constrained = _best_partition(found, costs, number)
    line_weight = weights.line
    if constrained is not None:
        line_reading, line_cost = _reading(found, constrained[0], number), constrained[1]
        if constrained[0] == path:
            line_weight = weights.relabel
    elif classify is not None:  # the digits between the frames, as the classifier reads them
        line_reading = _frame_reading(found, frames, number, classify)
        line_cost = weights.unsegmented + costs.cut * (len(number) - 1) + sum(
            -np.log(max(d.probability, 1e-9)) + costs.digit for d in line_reading.digits)
    else:
        line_reading = _frame_reading(found, frames, number)
        line_cost = cost + weights.unsegmented
    if (cost + line_weight * ctc_nll(frames.log_probs, segmented.number)
            <= line_cost + line_weight * ctc_nll(frames.log_probs, number)):
        return segmented
    return line_reading


def _reading(found: Candidates, path: list, number: Optional[str] = None) -> Reading:
    """The digits of the segments `path`: each its most likely label, or `number`'s."""
    digits = []
    for k, index in enumerate(path):
        p = found.probabilities[index]
        label = int(p.argmax()) if number is None else int(number[k])
        digits.append(Digit(label, float(p[label]), _image_box(found, found.segments[index].box),
                            found.segments[index].image, p))
    return Reading("".join(str(d.label) for d in digits), tuple(digits))


def _image_box(found: Candidates, box) -> tuple:
    """A box in the (shrunk) image -> the same box in the image's own pixels."""
    x0, y0, x1, y1 = box
    return (int(x0 / found.scale), int(y0 / found.scale), int(np.ceil(x1 / found.scale)),
            int(np.ceil(y1 / found.scale)))


# ---------------------------------------------------------------------------------------
# 1-2. Parts: connected components, specks and lines dropped, pieces of a digit joined


@dataclasses.dataclass
class Part:
    """Ink of one or more components that belong together: `ink` is the crop at (y0, x0)."""

    x0: int
    y0: int
    x1: int
    y1: int
    ink: np.ndarray  # (y1 - y0, x1 - x0), zero outside this part's components

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _shrunk(ink: np.ndarray, factor: float):
    """`ink` resized by `factor` where that shrinks it: (ink, the factor applied)."""
    from PIL import Image

    if factor >= 1.0:
        return ink, 1.0
    size = (max(1, round(ink.shape[1] * factor)), max(1, round(ink.shape[0] * factor)))
    small = np.asarray(Image.fromarray(ink, mode="F").resize(size, Image.Resampling.BOX))
    return small, factor


def _digit_sized(area: int, width: int, height: int) -> bool:
    """Whether a connected mark is big enough to be a digit, whatever else is there."""
    return area >= preprocess.MIN_INK_PIXELS and max(width, height) >= preprocess.MIN_IMAGE_SIDE


def _components(mask: np.ndarray, labelled: bool = True):
    """The 8-connected components of `mask`: (labels, boxes, areas), as ndimage.label,
    find_objects and bincount give them, each made on the ink's own box only (most of a
    page is paper: the whole image's made up a sixth of a lone digit's reading). With
    `labelled` False, labels is None (no array of the page's size is made)."""
    from scipy import ndimage

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    labels = np.zeros(mask.shape, np.intp) if labelled else None  # (intp: bincount's own)
    if not len(rows):
        return labels, [], np.zeros(0, np.intp)
    y0, x0 = int(rows[0]), int(cols[0])
    window = (slice(y0, int(rows[-1]) + 1), slice(x0, int(cols[-1]) + 1))
    own = labels[window] if labelled else np.zeros(mask[window].shape, np.intp)
    count = ndimage.label(mask[window], structure=np.ones((3, 3), bool), output=own)
    if count == 1:  # one mark (most lone digits): its box is the ink's
        return labels, [window], np.array([np.count_nonzero(mask[window])])
    boxes = [(slice(r.start + y0, r.stop + y0), slice(c.start + x0, c.stop + x0))
             for r, c in ndimage.find_objects(own)]
    return labels, boxes, np.bincount(own.ravel(), minlength=count + 1)[1:]


def _tallest_mark(ink: np.ndarray) -> int:
    """The height of the tallest connected mark of `ink` big enough to be a digit (1 where
    there is none: _parts then says so)."""
    _, boxes, areas = _components(ink > preprocess.INK_LEVEL * ink.max(), labelled=False)
    heights = [rows.stop - rows.start for (rows, cols), area in zip(boxes, areas)
               if _digit_sized(area, cols.stop - cols.start, rows.stop - rows.start)]
    return max(heights, default=1)


def _dilated(mask: np.ndarray) -> np.ndarray:
    """ndimage.binary_dilation(mask): each pixel and its 4 neighbours (a tenth the time)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _parts(ink: np.ndarray) -> list:
    from scipy import ndimage

    labels, boxes, areas = _components(ink > preprocess.INK_LEVEL * ink.max())
    comps = [dict(label=i + 1, y0=b[0].start, y1=b[0].stop, x0=b[1].start, x1=b[1].stop,
                  area=int(areas[i])) for i, b in enumerate(boxes)]
    for c, box in zip(comps, boxes):
        c["w"], c["h"] = c["x1"] - c["x0"], c["y1"] - c["y0"]
        # A ruled line (or a dash): flat, no higher than a few strokes are thick. (The
        # thickness, twice the deepest point from the background, is measured in the
        # component's own box and only for flat ones: the whole image's distance transform
        # was most of a request's time.)
        # A line crosses each column once; touching digits written with a broad brush can be
        # as flat, but their loops and bars cross many columns two or more times.
        c["flat"] = False
        if c["w"] >= 3 * c["h"]:
            own = np.pad(labels[box] == c["label"], 1)
            thick = 2 * float(ndimage.distance_transform_edt(own).max())
            runs = np.count_nonzero(own[1:] & ~own[:-1], axis=0)
            crossed_again = np.count_nonzero(runs >= 2) / max(1, np.count_nonzero(runs))
            c["flat"] = c["h"] <= 3 * thick + 2 and crossed_again < FLAT_CROSSINGS
    # A mark smaller than MIN_IMAGE_SIDE both ways cannot be a digit, whatever else is there.
    solid = [c for c in comps if not c["flat"] and _digit_sized(c["area"], c["w"], c["h"])]
    if not solid:
        raise BadInput(422, "no digits found: only specks or lines of ink")
    height = max(c["h"] for c in solid)
    biggest = max(c["area"] for c in solid)

    def overlap(a, b):
        return min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])

    kept = []
    for c in comps:
        if c["flat"]:
            # A flat stroke over exactly one digit is part of it (a 5's or a 7's top);
            # alone, or under several digits, it is a ruled line or a dash.
            over = [d for d in solid if overlap(c, d) > 0.3 * min(c["w"], d["w"])]
            if len(over) == 1 and c["w"] <= MAX_DIGIT_WIDTH * height:
                kept.append(c)
        elif (max(c["w"], c["h"]) < SPECK_SIDE * height and c["area"] < 0.05 * biggest) \
                or not _digit_sized(c["area"], c["w"], c["h"]):
            continue  # a speck
        else:
            kept.append(c)
    if len(kept) > 4 * MAX_DIGITS:
        raise BadInput(422, f"too many separate marks ({len(kept)}) to be one number: at "
                            f"most {MAX_DIGITS} digits are read")

    # Join: union-find over components.
    group = list(range(len(kept)))

    def find(i):
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for i, a in enumerate(kept):
        for j in range(i + 1, len(kept)):
            b = kept[j]
            # One above the other: most of the narrower lies within the other's columns.
            if overlap(a, b) >= 0.6 * min(a["w"], b["w"]):
                group[find(i)] = find(j)
    for i, a in enumerate(kept):  # fragments much lower than the line join a neighbour
        members = [c for k, c in enumerate(kept) if find(k) == find(i)]
        top, bottom = min(c["y0"] for c in members), max(c["y1"] for c in members)
        if bottom - top >= FRAGMENT_HEIGHT * height:
            continue
        gaps = [(max(b["x0"] - a["x1"], a["x0"] - b["x1"], 0), j)
                for j, b in enumerate(kept) if find(j) != find(i)]
        if gaps:
            gap, j = min(gaps)
            if gap <= FRAGMENT_REACH * height:
                group[find(i)] = find(j)

    parts = []
    for root in sorted({find(i) for i in range(len(kept))}):
        members = [c for k, c in enumerate(kept) if find(k) == root]
        x0, y0 = min(c["x0"] for c in members), min(c["y0"] for c in members)
        x1, y1 = max(c["x1"] for c in members), max(c["y1"] for c in members)
        window = (slice(y0, y1), slice(x0, x1))
        own = (labels[window] == members[0]["label"] if len(members) == 1
               else np.isin(labels[window], [c["label"] for c in members]))
        # The faint anti-aliased rim around the strokes is ink too (MNIST kept it).
        own = _dilated(own) & (ink[window] > 0)
        parts.append(Part(x0, y0, x1, y1, np.where(own, ink[window], 0.0)))
    parts.sort(key=lambda p: (p.x0 + p.x1) / 2)
    if len(parts) > MAX_DIGITS:
        raise BadInput(422, f"{len(parts)} separate marks: a number of at most {MAX_DIGITS} "
                            f"digits is read")
    return parts


# ---------------------------------------------------------------------------------------
# 3. Slices: candidate cuts in each part


class Slice(NamedTuple):
    """The ink of `part` between two cuts: in row y, columns [left[y], right[y]) of the
    part's crop. A cut follows the gap between strokes (`_paths`), so digits whose boxes
    overlap (a 7's bar over the next digit) are parted whole; lo and hi bound its columns,
    and `ink` is the part's ink in columns [lo, hi), zero outside the cuts (made once: a
    slice is in up to a handful of segments)."""

    part: Part
    left: np.ndarray  # (part.height,) ints
    right: np.ndarray
    lo: int
    hi: int
    ink: np.ndarray  # (part.height, hi - lo)


def _slice(part: Part, left: np.ndarray, right: np.ndarray) -> Slice:
    lo, hi = int(left.min()), int(right.max())
    cols = np.arange(lo, hi)
    inside = (cols[None, :] >= left[:, None]) & (cols[None, :] < right[:, None])
    return Slice(part, left, right, lo, hi, np.where(inside, part.ink[:, lo:hi], 0.0))


def _slices(part: Part, height: int) -> list:
    paths = _paths(part, _cuts(part, height), height)
    edges = [np.zeros(part.height, np.int64)] + paths + [np.full(part.height, part.width,
                                                                 np.int64)]
    return [_slice(part, lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]


PATH_REACH = 0.2  # a cut may wander this many line heights either side of its column
PATH_TURN = 0.05  # what a cut's step sideways costs, against 1 per pixel of ink crossed


def _paths(part: Part, columns: list, height: int) -> list:
    """Each cut column -> the path from the part's top to its bottom, within PATH_REACH of
    the column, that crosses the least ink (one row at a time, a step of at most one column
    sideways: seam carving's dynamic programme, for every column at once). Paths are kept
    from crossing; one that leaves no ink between it and the last is dropped."""
    if not columns:
        return []
    reach = max(1, int(PATH_REACH * height))
    offsets = np.arange(-reach, reach + 1)
    at = np.clip(np.asarray(columns)[:, None] + offsets[None, :], 0, part.width - 1)  # (K, J)
    ink = (part.ink > 0).astype(np.float32)
    cost = ink[:, at] + PATH_TURN * 0.2 * np.abs(offsets)  # (H, K, J): stay near the column
    steps = np.zeros(cost.shape, np.int8)
    padded = np.full((len(columns), len(offsets) + 2), 1e9)
    padded[:, 1:-1] = cost[0]
    total = padded[:, 1:-1]  # (a view: the least cost of a path to each (cut, offset))
    options = np.empty((3,) + total.shape)  # from j-1, j, j+1
    for y in range(1, part.height):
        np.add(padded[:, :-2], PATH_TURN, out=options[0])
        options[1] = total
        np.add(padded[:, 2:], PATH_TURN, out=options[2])
        steps[y] = options.argmin(axis=0) - 1
        np.add(cost[y], options.min(axis=0), out=total)
    j = total.argmin(axis=1)
    path = np.zeros((part.height, len(columns)), np.int64)
    for y in range(part.height - 1, -1, -1):
        path[y] = at[np.arange(len(columns)), j]
        j = j + steps[y, np.arange(len(columns)), j]
    paths = np.maximum.accumulate(path.T, axis=0)  # (K, H), left to right, not crossing
    kept, previous = [], np.zeros(part.height, np.int64)
    cols = np.arange(part.width)
    for p in paths:
        between = (cols[None, :] >= previous[:, None]) & (cols[None, :] < p[:, None])
        if np.count_nonzero(between & (part.ink > 0)) >= preprocess.MIN_INK_PIXELS:
            kept.append(p)
            previous = p
    last = np.full(part.height, part.width)
    while kept:  # the slice after the last path needs ink too
        between = (cols[None, :] >= kept[-1][:, None]) & (cols[None, :] < last[:, None])
        if np.count_nonzero(between & (part.ink > 0)) >= preprocess.MIN_INK_PIXELS:
            break
        kept.pop()
    return kept


def _cuts(part: Part, height: int) -> list:
    """Columns (within the part) where it may be cut into two digits: the valleys of its
    column profile, then an even grid wherever the slices would still be wide."""
    if part.width < UNCUT_WIDTH * height:  # one digit, however sure the model is of halves
        return []
    profile = (part.ink > 0).sum(axis=0).astype(np.float32)
    profile = np.convolve(profile, np.ones(3) / 3, mode="same")
    step = max(2, int(MIN_CUT_STEP * height))
    margin = max(2, int(0.15 * height))
    # A valley: no higher than any column within `step` of it, and well below the peak.
    nearby = np.lib.stride_tricks.sliding_window_view(
        np.pad(profile, step, constant_values=np.inf), 2 * step + 1).min(axis=1)
    valleys = (profile <= nearby + 1e-6) & (profile < 0.6 * profile.max())
    candidates = []
    for c in np.flatnonzero(valleys[margin:part.width - margin]).tolist():
        if not candidates or c + margin - candidates[-1] >= step:
            candidates.append(c + margin)
    edges = [0] + candidates + [part.width]
    cuts = []
    widest = max(2, int(MAX_SLICE_WIDTH * height))
    for lo, hi in zip(edges[:-1], edges[1:]):
        extra = int(np.ceil((hi - lo) / widest)) - 1
        cuts += [lo + round((k + 1) * (hi - lo) / (extra + 1)) for k in range(extra)]
        cuts.append(hi)
    return sorted(set(c for c in cuts if 0 < c < part.width))


# ---------------------------------------------------------------------------------------
# 4. Segments: runs of slices that could be one digit, prepared as MNIST's


class Segment(NamedTuple):
    first: int  # slices [first, last) of the image
    last: int
    box: tuple  # (x0, y0, x1, y1) of its ink, in the (shrunk) image
    image: np.ndarray  # (28, 28)
    aspect: float  # width / height of its ink
    rel_height: float  # height of its ink / the line's height
    cuts: int  # its ends that are cuts through a part (0, 1 or 2)
    narrow_cuts: int  # those of them through a part no wider than MAX_DIGIT_WIDTH lines
    joins: int  # gaps between separate parts within it


def _segments(slices: list, height: int, whole: Optional["Segment"] = None) -> list:
    segments = []
    for first in range(len(slices)):
        for last in range(first + 1, len(slices) + 1):
            run = slices[first:last]
            x0 = min(s.part.x0 + s.lo for s in run)
            x1 = max(s.part.x0 + s.hi for s in run)
            if last - first > 1 and x1 - x0 > MAX_DIGIT_WIDTH * height:
                break
            if any(b.part is not a.part and b.part.x0 - a.part.x1 > JOIN_GAP * height
                   for a, b in zip(run[:-1], run[1:])):
                break
            segment = (whole if whole is not None and (first, last) == (0, len(slices))
                       else _segment(run, first, last, height))
            if segment is not None:
                segments.append(segment)
    return segments


def _segment(run: list, first: int, last: int, height: int) -> Optional[Segment]:
    from scipy import ndimage

    y0 = min(s.part.y0 for s in run)
    y1 = max(s.part.y1 for s in run)
    # (Parts may overlap in columns: the run's extent is over all of its slices.)
    x0 = min(s.part.x0 + s.lo for s in run)
    x1 = max(s.part.x0 + s.hi for s in run)
    canvas = np.zeros((y1 - y0, x1 - x0), np.float32)
    for s in run:
        top, left = s.part.y0 - y0, s.part.x0 + s.lo - x0
        window = canvas[top:top + s.ink.shape[0], left:left + s.ink.shape[1]]
        np.maximum(window, s.ink, out=window)
    cut_left = bool(run[0].left.max() > 0)
    cut_right = bool(run[-1].right.min() < run[-1].part.width)
    if cut_left or cut_right:
        # A cut through ink leaves the neighbour's stroke ends in the crop: small pieces
        # that touch the cut are the neighbour's, not this digit's.
        labels, count = ndimage.label(canvas > 0, structure=np.ones((3, 3), bool))
        if count > 1:
            areas = np.bincount(labels.ravel(), minlength=count + 1)
            edge = set()
            for cut, s, boundary in ((cut_left, run[0], run[0].left),
                                     (cut_right, run[-1], run[-1].right - 1)):
                if cut:
                    rows = np.arange(s.part.height) + s.part.y0 - y0
                    cols = np.clip(boundary + s.part.x0 - x0, 0, canvas.shape[1] - 1)
                    edge |= set(np.unique(labels[rows, cols]))
            drop = [k for k in edge - {0} if areas[k] < 0.15 * areas[1:].sum()]
            if drop:
                canvas[np.isin(labels, drop)] = 0.0
    inked = canvas > 0
    if np.count_nonzero(inked) < preprocess.MIN_INK_PIXELS:
        return None
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1,
           y0 + int(rows[-1]) + 1)
    ink_height, ink_width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    image = preprocess.mnist_box(canvas)
    narrow_cuts = (int(cut_left and run[0].part.width <= MAX_DIGIT_WIDTH * height)
                   + int(cut_right and run[-1].part.width <= MAX_DIGIT_WIDTH * height))
    return Segment(first, last, box, image, ink_width / ink_height, ink_height,
                   int(cut_left) + int(cut_right), narrow_cuts,
                   sum(b.part is not a.part for a, b in zip(run[:-1], run[1:])))


# ---------------------------------------------------------------------------------------
# 5. The partition of the slices into digits that costs least


def _best_partition(found: Candidates, costs: Costs, number: Optional[str] = None):
    """(indices into `found.segments` of the least-cost partition of its slices, its cost).
    With `number`: the least-cost partition into exactly its digits, each segment read as
    its digit, or None where there is none."""
    count = found.slices
    states = 1 if number is None else len(number) + 1  # digits read so far, when constrained
    best = np.full((count + 1, states), np.inf)
    best[0, 0] = 0.0
    back = np.full((count + 1, states), -1)
    by_first: dict = {}
    for index, s in enumerate(found.segments):
        by_first.setdefault(s.first, []).append(index)
    for first in range(count):
        for k in range(states):
            if not np.isfinite(best[first, k]):
                continue
            # A slice may be left out (a stray mark), at a price: never the cheap way out.
            if best[first, k] + costs.skip < best[first + 1, k]:
                best[first + 1, k], back[first + 1, k] = best[first, k] + costs.skip, -1
            if number is not None and k == len(number):
                continue
            after = 0 if number is None else k + 1
            for index in by_first.get(first, []):
                s = found.segments[index]
                p = found.probabilities[index]
                probability = float(p.max() if number is None else p[int(number[k])])
                cost = best[first, k] + costs.of(probability, s, found.height)
                if cost < best[s.last, after]:
                    best[s.last, after], back[s.last, after] = cost, index
    k = states - 1
    total = float(best[count, k])
    if not np.isfinite(total):
        return None
    path, at = [], count
    while at > 0:
        index = int(back[at, k])
        if index < 0:  # a slice left out
            at -= 1
            continue
        path.append(index)
        at = found.segments[index].first
        k = 0 if number is None else k - 1
    if not path:
        if number is not None:
            return None
        raise BadInput(422, "no digits found: the marks are too faint or too small")
    return path[::-1], total


# ---------------------------------------------------------------------------------------
# The line reader (models.LineReader, trained with CTC by training/line.py): it reads the
# whole line of ink at once, so digits that touch need no cut; `choose` weighs its number
# against segmentation's.

LineModel = Callable[[np.ndarray], np.ndarray]  # strip (LINE_STRIP, W) -> (W/4, 11) log-probs
FRAME = 4  # strip columns per frame of the line reader


class LineFrames(NamedTuple):
    log_probs: np.ndarray  # (frames, 11): class 0 the CTC blank, 1 + d digit d
    x0: float  # the strip's column LINE_MARGIN is this column of the (shrunk) image ...
    factor: float  # ... and it has this many strip columns per image column


def line_frames(found: Candidates, line: LineModel) -> Optional[LineFrames]:
    """The line reader's frames of `found`'s ink; None where the line is wider than the
    line reader reads (segmentation alone reads it)."""
    return _frames(found.ink, line, found.slices)


# A line of more than one slice (a number, or a lone mark wide enough to be cut) is read by
# the line reader three times, its strip shifted a column left and right (a frame is FRAME
# columns, so each shift shows it the digits at another phase of its frames), and the
# frames' probabilities averaged. Chosen on validation (360 numbers per kind, 1,500 single
# digits; configs/page.py's models, 2026-12-06), with LineWeights: touching numbers 305 ->
# 315 of 360 right, spaced and close the same, single digits 1,487 -> 1,488 of 1,500; the
# weights alone, without the shifts, reached 308. (Shifts up and down too, and a blur: 313.)
# A lone uncut mark (most single digits) is read once: shifts there cost a tenth of its time.
LINE_SHIFTS = (0, -1, 1)
LOWEST_LOG_PROB = -80.0  # (the page model's lowest, over 150 test numbers: -33)


def _frames(ink: np.ndarray, line: LineModel, slices: int) -> Optional[LineFrames]:
    x0, y0, _, y1 = preprocess.ink_box(ink)
    strip = preprocess.line_strip(ink)
    log_probs = line(strip)
    if log_probs is None:
        return None
    if slices > 1:  # (the strip's margins are blank: a shift moves no ink around the ends)
        reads = [log_probs] + [line(np.roll(strip, shift, axis=1)) for shift in LINE_SHIFTS[1:]]
        # (Each at least LOWEST_LOG_PROB: below about -104 exp() is 0 in float32, and the log
        # of an average of zeros would be -inf.)
        probabilities = [np.exp(np.maximum(np.asarray(r, np.float32), LOWEST_LOG_PROB))
                         for r in reads]
        log_probs = np.log(np.mean(probabilities, axis=0))
    return LineFrames(np.asarray(log_probs, np.float32), float(x0), preprocess.LINE_INK / (y1 - y0))


def ctc_greedy(frame_labels) -> str:
    """A CTC best path (each frame's most likely class, 0 the blank, 1 + d digit d) ->
    the number: repeats merged, blanks dropped ("0 3 3 0 3" -> "22")."""
    digits, previous = [], 0
    for label in np.asarray(frame_labels).tolist():
        if label != previous and label != 0:
            digits.append(str(label - 1))
        previous = label
    return "".join(digits)


def ctc_nll(log_probs: np.ndarray, number: str) -> float:
    """-log of the probability that the frames' `log_probs` (T, 11) spell `number`, summed
    over every path of blanks and repeats (the CTC forward algorithm)."""
    extended = [0]
    for digit in number:
        extended += [int(digit) + 1, 0]
    extended = np.asarray(extended)
    # A path may skip the blank between two different digits, never between two the same.
    skip = np.zeros(len(extended), bool)
    skip[2:] = (extended[2:] != 0) & (extended[2:] != extended[:-2])
    alpha = np.full(len(extended), -np.inf)
    alpha[0] = log_probs[0, 0]
    if len(extended) > 1:
        alpha[1] = log_probs[0, extended[1]]
    for t in range(1, len(log_probs)):
        stay_or_step = np.logaddexp(alpha, np.concatenate([[-np.inf], alpha[:-1]]))
        jump = np.where(skip, np.concatenate([[-np.inf, -np.inf], alpha[:-2]]), -np.inf)
        alpha = np.logaddexp(stay_or_step, jump) + log_probs[t, extended]
    end = np.logaddexp(alpha[-1], alpha[-2]) if len(extended) > 1 else alpha[-1]
    return float(-end) if np.isfinite(end) else np.inf


def _frame_reading(found: Candidates, frames: LineFrames, number: str,
                   classify: Optional[Classify] = None) -> Reading:
    """`number` read by the line reader where no partition of the slices gives it: each
    digit's ink lies between the midpoints of the gaps between the frames that spell it;
    its probabilities are the classifier's of that ink (`classify`, one call), or without
    one, the line reader's at its most certain frame."""
    labels = frames.log_probs.argmax(-1)
    runs, previous = [], 0  # [first frame, last frame] of each digit
    for t, label in enumerate(labels.tolist()):
        if label != 0 and label != previous:
            runs.append([t, t])
        elif label != 0:
            runs[-1][1] = t
        previous = label

    def column(strip_column: float) -> int:  # strip column -> (shrunk) image column
        return int(round(frames.x0 + (strip_column - preprocess.LINE_MARGIN) / frames.factor))

    width = found.ink.shape[1]
    edges = [0] + [column(FRAME * (a[1] + 1 + b[0]) / 2) for a, b in zip(runs[:-1], runs[1:])]
    edges = np.clip(edges + [width], 0, width)
    digits = []
    for k, (first, last) in enumerate(runs):
        label = int(number[k])
        lo, hi = int(edges[k]), int(max(edges[k + 1], edges[k] + 1))
        crop = found.ink[:, lo:hi]
        rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
        if len(rows):
            box = (lo + int(cols[0]), int(rows[0]), lo + int(cols[-1]) + 1, int(rows[-1]) + 1)
            image = preprocess.mnist_box(crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        else:
            box = (lo, 0, hi, found.ink.shape[0])
            image = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
        digits.append((label, _image_box(found, box), image, first, last))
    if classify is not None:
        probabilities = np.asarray(classify(np.stack([d[2] for d in digits])), np.float32)
    else:  # the line reader's, at the digit's most certain frame
        probabilities = []
        for label, _, _, first, last in digits:
            peak = first + int(frames.log_probs[first:last + 1, label + 1].argmax())
            p = np.exp(frames.log_probs[peak, 1:])
            probabilities.append((p / p.sum()).astype(np.float32))
    return Reading(number, tuple(Digit(label, float(p[label]), box, image, p)
                                 for (label, box, image, _, _), p in zip(digits, probabilities)))


# ---------------------------------------------------------------------------------------
# The model behind it


# Batch sizes compiled; a batch is padded to the next one. Padding costs what it computes:
# a lone wide mark not read whole has 10-21 candidates, a 6-digit touching number 50-90, and
# 17 candidates classified as 24 took 2.6 ms, as 32 3.6 ms (80 against 96: 8.5 and 9.9 ms).
# (24, 40, 80 and 160 give each digit the very probabilities that the next bucket up did;
# 12 differs from 16 in the eighth decimal place.)
BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)


class Reader:
    """A trained model, compiled once for every batch size in BUCKETS, that reads numbers.

    `Reader.from_workdir(W)` loads a workdir's best checkpoint, and its line reader where it
    has one (W/line_reader/, compiled for every width in LINE_BUCKETS); `Reader(classify)`
    wraps any function of (N, 28, 28) MNIST-style digits to (N, 10) probabilities."""

    def __init__(self, classify: Classify, trained=None, line: Optional[LineModel] = None):
        self.classify = classify
        self.trained = trained  # inference.Trained, where it came from a workdir
        self.line = line

    @classmethod
    def from_workdir(cls, workdir, which: str = "best") -> "Reader":
        import jax

        from flaxdigits import models
        from flaxdigits.evaluation import inference

        trained = inference.load(workdir, which=which)
        model, variables = trained.model, trained.variables
        compiled = jax.jit(lambda images: models.probabilities(model, variables, images))

        def classify(images_nhw: np.ndarray) -> np.ndarray:
            out = []
            for start in range(0, len(images_nhw), BUCKETS[-1]):
                chunk = images_nhw[start:start + BUCKETS[-1]]
                size = next(b for b in BUCKETS if b >= len(chunk))
                batch = np.zeros((size, IMAGE_SIDE, IMAGE_SIDE, 1), np.float32)
                batch[:len(chunk), :, :, 0] = chunk
                out.append(np.asarray(compiled(batch))[:len(chunk)])
            return np.concatenate(out)

        for size in BUCKETS:  # compile now, not on a request
            classify(np.zeros((size, IMAGE_SIDE, IMAGE_SIDE), np.float32))
        return cls(classify, trained, _load_line_model(workdir))

    def read(self, gray: np.ndarray) -> Reading:
        return read(gray, self.classify, line=self.line)


# Strip widths compiled for the line reader; a strip is padded to the next one, and one
# wider than the last is read by segmentation alone (a 6-digit number is about 170 wide, a
# lone digit 20-48: its strip read at 32 costs 0.15 ms, at 64 0.38 ms; with 32 and 48 added,
# no reading of 540 validation numbers and 3,000 single digits changed, 2026-12-06).
LINE_BUCKETS = (32, 48, 64, 128, 192, 256, 384, 512, 768, 1024)


def _load_line_model(workdir) -> Optional[LineModel]:
    """The workdir's line reader, compiled; None where it has none, or one that cannot be
    read (with a warning: segmentation alone still reads numbers)."""
    import logging

    import jax

    from flaxdigits import checkpoint, models
    from flaxdigits.errors import FlaxDigitsError

    if checkpoint.read_line_reader_info(workdir) is None:
        return None
    model = models.LineReader()
    blank = np.zeros((1, preprocess.LINE_STRIP, LINE_BUCKETS[0], 1), np.float32)
    try:
        variables = checkpoint.restore_line_reader(
            workdir, jax.eval_shape(model.init, jax.random.key(0), blank))
    except FlaxDigitsError as e:
        logging.getLogger(__name__).warning("%s; numbers are read by segmentation alone", e)
        return None
    compiled = jax.jit(lambda strips: jax.nn.log_softmax(model.apply(variables, strips)))

    def line(strip: np.ndarray) -> Optional[np.ndarray]:
        width = strip.shape[1]
        if width > LINE_BUCKETS[-1]:
            return None
        padded = np.zeros((1, preprocess.LINE_STRIP, next(b for b in LINE_BUCKETS
                                                          if b >= width), 1), np.float32)
        padded[0, :, :width, 0] = strip
        return np.asarray(compiled(padded))[0, :width // FRAME]

    for width in LINE_BUCKETS:  # compile now, not on a request
        line(np.zeros((preprocess.LINE_STRIP, width), np.float32))
    return line


@functools.lru_cache(maxsize=4)
def _cached_reader(workdir: str) -> Reader:
    return Reader.from_workdir(workdir)


def read_image(gray: np.ndarray, workdir) -> Reading:
    """One call from a notebook or a script: the number in `gray`, read by the best
    checkpoint of `workdir` (loaded and compiled once per process)."""
    return _cached_reader(str(workdir)).read(gray)
