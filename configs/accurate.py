"""The most accurate single model: configs/deep.py's network, trained the way the honest
published MNIST recipes train (see the README's "Accuracy").

    python launch.py --config=configs/accurate.py --workdir=runs/accurate

DeepCNN as in deep.py; 22 epochs, of which the first 21 on digits turned by up to 15
degrees, resized by up to 15% and moved by up to 3 pixels, and the last on the digits as
they are (Matuzas77's final clean epoch); label smoothing 0.1; Adam one-cycle to 3e-3; a
moving average of the parameters (decay 0.999, as An et al. 2020) is what validation, the
checkpoints' inference and the report use. The best checkpoint is chosen by validation only.
"""

from configs import deep


def get_config():
    config = deep.get_config()
    config.num_epochs = 22
    config.augment.rotation_degrees = 15.0
    config.augment.scale = 0.15
    config.augment.translation_pixels = 3.0
    config.augment.clean_final_epochs = 1
    config.optim.ema_decay = 0.999
    config.optim.label_smoothing = 0.1
    return config
