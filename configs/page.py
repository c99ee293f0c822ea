"""The web page's model: configs/deep.py's network and augmentation, trained to be read in
numbers, and a line reader beside it (flaxdigits/serving/reading.py weighs the two).

    python launch.py --config=configs/page.py --workdir=runs/page

The classifier: label smoothing 0.1 and data.read_pieces 0.25 (25% extra training
examples: the reader's own candidate cuts of numbers written with the training digits, pen
or brush, spaced, close or touching; a cut that holds one digit's ink keeps its label, one
that holds no single digit gets the uniform target; flaxdigits/data/cut_pieces.py) keep the
model's confidence on a bad cut below that of a real digit, which is what segmentation by
recognition needs. 6 epochs (deep.py: 20) leave the line reader time within 15 minutes.
The line reader (models.LineReader, flaxdigits/training/line.py): 2,600 steps of 64 lines of
1-8 training digits (pen, brush, and MNIST's own strokes scaled), CTC.
Measured on the 2-core CPU with --config.data.dir=../shared/data/mnist (2026-12-03, seed
0): MNIST test accuracy 0.9945; the line reader 2,600 steps in 450 s; the whole process
11 min 20 s. On validation strings (`python benchmarks/reading.py --split=validation --tune
--per_case=30 --drawn=600`): 485 of 540 numbers right (spaced 168, close 169, touching 148
of 180 each) and 596 of 600 single digits drawn as on the pad. Again on 2026-12-06, exactly
as the README says (no --config.data.dir: MNIST fetched into the cache first, a cold
compilation cache): test accuracy 0.9943, the line reader 484 s, the whole process 12 min
35 s; again later that day in a fresh clone, 12 min 29 s (the line reader 489 s). Numbers read on the test strings: docs/reading.md. With the reading of 2026-12-06's
last session (the line reader's shifted reads, reading.LINE_SHIFTS, and LineWeights chosen
with them), that model: 2,492 of 2,580 validation numbers and digits (1,080 numbers, seed 7,
and 1,500 single digits; 2,481 before), test numbers 0.973 / 0.973 / 0.880.
"""

from configs import deep


def get_config():
    config = deep.get_config()
    config.optim.label_smoothing = 0.1
    config.num_epochs = 6  # (deep.py: 20) leaves the line reader time within 15 minutes here
    config.data.read_pieces = 0.25
    config.line_reader.steps = 2600
    return config
