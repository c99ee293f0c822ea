"""A tiny run for tests and smoke checks: small network, one short epoch, seconds on a CPU.

    python launch.py --config=configs/tiny.py --workdir=/tmp/tiny --config.data.dir=DIR
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.num_epochs = 1
    config.batch_size = 32
    config.eval_batch_size = 64
    config.log_every_steps = 50
    config.model.conv_features = (4, 8)
    config.model.dense_features = 16
    config.model.dropout_rate = 0.0
    return config
