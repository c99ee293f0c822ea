"""Least wall time to >= 99% MNIST test accuracy on a CPU: a small BatchNorm CNN, two epochs.

    python launch.py --config=configs/fast.py --workdir=runs/fast

FastCNN (models.py): a 5x5 stride-2 stem, so the first block works at 14x14, then one 3x3
block, both with BatchNorm, max-pooling as reshape + max, a 128-unit dense layer; Adam with a
one-cycle schedule peaking at 1e-2, batch 128.
Measured on the 2-core development CPU with --config.data.dir=../shared/data/mnist
(2026-11-27, `python benchmarks/speed.py --parts=3 --runs=5`, one JAX device per core, warm
compilation cache): MNIST test accuracy 0.9910 / 0.9919 / 0.9913 / 0.9914 / 0.9914 for seeds
0-4 (mean 0.9914); training 8.86-9.27 s (median 9.07 s), the whole process 12.67-13.26 s
(median 13.09 s; 17.23 s with an empty compilation cache).
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
