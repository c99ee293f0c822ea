"""The web page's model: configs/deep.py's network and augmentation, trained to be read in
numbers (flaxdigits/serving/reading.py chooses among cuts by its confidence).

    python launch.py --config=configs/page.py --workdir=runs/page

Label smoothing 0.1 keeps the model's confidence on a bad cut (half a 0, two digits at
once) from reaching that of a real digit, which is what segmentation by recognition needs.
"""

from configs import deep


def get_config():
    config = deep.get_config()
    config.optim.label_smoothing = 0.1
    return config
