"""Entry point: flags -> config -> flaxdigits.

    python launch.py --config=configs/base.py --workdir=runs/base [--config.x=y ...]

Thin on purpose: the work is done by library functions that take a ConfigDict, so tests
and notebooks call them directly.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flaxdigits.errors import FlaxDigitsError, RunStopped

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/base.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for config.json, metrics.jsonl and outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def one_line(text: str) -> str:
    return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def parse_flags(argv):
    """absl's flag parsing, with a one-line error instead of a traceback for bad flags."""
    try:
        remaining = FLAGS(argv)
        FLAGS.config.keys()  # a config file that failed to load reports it on first use
        return remaining
    except flags.Error as e:  # bad value, missing required flag, unknown flag
        message = str(e)
    except (KeyError, AttributeError) as e:  # an override names a field the config lacks
        text = one_line(str(e)).strip("'\"")
        field = text.split("'")[0].split()[0]
        culprit = next((a for a in argv if a.startswith("--config.") and field in a), "")
        hint = text[text.find("Did you mean"):] if "Did you mean" in text else ""
        message = f"{culprit.split('=')[0]}: no such config field {hint}".strip()
    except Exception as e:  # the config file itself failed to load: report the first cause
        while e.__cause__ is not None or e.__context__ is not None:
            e = e.__cause__ or e.__context__
        message = f"--config: {type(e).__name__}: {one_line(str(e))}"
    sys.exit(f"flaxdigits: error: {message}")


def quiet_orbax(record) -> bool:
    """Orbax logs every save and close at INFO; keep its warnings and errors only, less the
    one about checkpoints saved between epochs, which have no validation metric by design."""
    if "/orbax/" not in record.pathname:
        return True
    return (record.levelno >= std_logging.WARNING
            and not str(record.msg).startswith("Requested `tracked_metric`"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(quiet_orbax)
    from flaxdigits import train  # after flag parsing: --help stays fast

    try:
        final = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except RunStopped as e:
        logging.flush()
        print(f"flaxdigits: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except FlaxDigitsError as e:
        logging.flush()
        sys.exit(f"flaxdigits: error: {e}")
    if "test_accuracy" in final:
        print(f"test_accuracy={final['test_accuracy']:.4f}")
    else:
        print(f"validation_accuracy={final['val_accuracy']:.4f} "
              f"(this data has no labelled test split)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
