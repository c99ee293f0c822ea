"""The web page's model: configs/deep.py's network and augmentation, trained to be read in
numbers (flaxdigits/serving/reading.py chooses among cuts by its confidence).

    python launch.py --config=configs/page.py --workdir=runs/page

Label smoothing 0.1 and data.read_pieces 0.25 (25% extra training examples: the reader's
own candidate cuts of numbers written with the training digits, pen or brush, spaced, close
or touching; a cut that holds one digit's ink keeps its label, one that holds no single
digit gets the uniform target; flaxdigits/data/cut_pieces.py) keep the model's confidence on
a bad cut below that of a real digit, which is what segmentation by recognition needs.
17 epochs (deep.py: 20) keep the whole process within 15 minutes here.
Chosen on validation strings (`python benchmarks/reading.py --split=validation --tune
--per_case=10`, 180 numbers, 2026-12-02, each model trained here today, default costs):
135 right with read_pieces 0.25 / 17 epochs (136 since lines are read at 96 px); 125 with cut_pieces 0.15 / 20 epochs (the page
model before); 138 with cut_pieces 0.05 + read_pieces 0.15 / 20 epochs, which took 14 min
37 s, too close to 15.
Measured on the 2-core CPU with --config.data.dir=../shared/data/mnist (2026-12-02, seed 0):
MNIST test accuracy 0.9952; the whole process 12 min 44 s. Numbers read: docs/reading.md.
"""

from configs import deep


def get_config():
    config = deep.get_config()
    config.optim.label_smoothing = 0.1
    config.num_epochs = 17  # (deep.py: 20) the whole process within 15 minutes here
    config.data.read_pieces = 0.25
    return config
