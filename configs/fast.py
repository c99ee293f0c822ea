"""Least wall time to >= 99% MNIST test accuracy on a CPU: a small BatchNorm CNN, two epochs.

    python launch.py --config=configs/fast.py --workdir=runs/fast

FastCNN (models.py): a 5x5 stride-2 stem, so the first block works at 14x14, then one 3x3
block, both with BatchNorm, max-pooling as reshape + max, a 128-unit dense layer; Adam with a
one-cycle schedule peaking at 1e-2, batch 128.
Measured on the 2-core development CPU with --config.data.dir=../shared/data/mnist
(2026-11-24, `python benchmarks/speed.py --parts=3`, seeds 0/1/2): MNIST test accuracy
0.9911 / 0.9907 / 0.9913 after 11.09 / 11.09 / 11.10 s of training; the whole process
17.31 / 16.65 / 17.06 s.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.num_epochs = 2
    config.batch_size = 128
    config.log_every_steps = 200
    config.model.name = "fast_cnn"
    config.model.conv_features = (32, 64)  # the 5x5/2 stem, then the 3x3 block
    config.model.dense_features = 128
    config.model.dropout_rate = 0.0  # two epochs do not overfit; dropout would slow them
    config.optim.learning_rate = 1e-2
    config.optim.schedule = "one_cycle"
    config.optim.warmup_fraction = 0.25
    return config
