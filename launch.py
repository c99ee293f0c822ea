"""Entry point: flags -> config -> flaxdigits.

    python launch.py --config=configs/base.py --workdir=runs/base [--config.x=y ...]

Thin on purpose: the work is done by library functions that take a ConfigDict, so tests
and notebooks call them directly.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flaxdigits.errors import FlaxDigitsError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/base.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for config.json, metrics.jsonl and outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from flaxdigits import train  # after flag parsing: --help stays fast

    try:
        final = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except FlaxDigitsError as e:
        logging.flush()
        sys.exit(f"flaxdigits: error: {e}")
    if "test_accuracy" in final:
        print(f"test_accuracy={final['test_accuracy']:.4f}")
    else:
        print(f"validation_accuracy={final['val_accuracy']:.4f} "
              f"(this data has no labelled test split)")


if __name__ == "__main__":
    app.run(main)
