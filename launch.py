"""Entry point: flags -> config -> flaxdigits.

    python launch.py --config=configs/base.py --workdir=runs/base [--config.x=y ...]

Thin on purpose: the work is done by library functions that take a ConfigDict, so tests
and notebooks call them directly.
"""

import logging as std_logging
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flaxdigits.errors import FlaxDigitsError, RunStopped

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/base.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for config.json, metrics.jsonl and outputs.")
flags.DEFINE_enum(
    "mode", "train", ["train", "evaluate", "predict", "serve"],
    "train: train (or resume) and report. evaluate: report.json and plots/ of the workdir's "
    "best checkpoint on the config's data. predict: submission.csv for the Kaggle test.csv "
    "in --config.data.dir. serve: the drawing page and JSON API for the workdir's model.")
flags.DEFINE_integer("port", 8080, "--mode=serve: the port to listen on (0: any free one).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_string("host", "127.0.0.1", "--mode=serve: the address to listen on "
                    "(0.0.0.0 for every interface).")
flags.DEFINE_string("compilation_cache", "", "Folder of JAX's persistent compilation cache "
                    "(default: ~/.cache/flaxdigits/jax, or $FLAXDIGITS_CACHE/jax); 'off' turns "
                    "it off.")
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
        message = f"{culprit.split('=')[0]}: no such config field" + (f"; {hint}" if hint else "")
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
    # A failed save is also raised to flaxdigits, which says it in one line: no traceback.
    return (record.levelno >= std_logging.WARNING and not record.exc_info
            and not str(record.msg).startswith("Requested `tracked_metric`"))


class Terminated(Exception):
    """SIGTERM outside the training loop (which handles it itself, with a checkpoint)."""


def raise_terminated(signum, frame):
    raise Terminated()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # SIGTERM while loading, compiling or reporting stops as Ctrl-C does: with one line.
    # (SIGINT too, even where the shell that started us ignores it for background jobs.)
    signal.signal(signal.SIGTERM, raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.get_absl_handler().addFilter(quiet_orbax)
    # The library's loggers follow absl's --verbosity (see flaxdigits/logs.py).
    std_logging.getLogger("flaxdigits").setLevel(std_logging.getLogger().getEffectiveLevel())
    # JAX says at INFO which accelerator backends it could not start ('tpu' on every CPU):
    # the device line of the log says what it did find.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    try:
        from flaxdigits import config as config_lib
        from flaxdigits import runtime

        runtime.enable_compilation_cache(FLAGS.compilation_cache)  # before any compilation
        runtime.use_cpu_cores(*batch_sizes(FLAGS.config))  # before JAX starts
        config_lib.validate(FLAGS.config)  # every mode: a bad value fails here, in seconds
        if FLAGS.mode == "serve":
            from flaxdigits.serving import app as serving_app

            return serving_app.serve(FLAGS.workdir, host=FLAGS.host, port=FLAGS.port)
        print(run_mode(FLAGS.mode, FLAGS.config, FLAGS.workdir))
    except RunStopped as e:
        logging.flush()
        print(f"flaxdigits: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, Terminated) as e:
        signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        logging.flush()
        print(f"flaxdigits: stopped by {signum.name}; what the workdir held is kept (files "
              f"are replaced whole, checkpoints only when complete); run the same command to "
              f"go on", file=sys.stderr)
        sys.exit(128 + signum)
    except FlaxDigitsError as e:
        logging.flush()
        sys.exit(f"flaxdigits: error: {e}")
    except OSError as e:  # a full disk, a read-only or unreadable file: name it, no traceback
        logging.flush()
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"flaxdigits: error: {where}{e.strerror or one_line(str(e))}")


def batch_sizes(config) -> tuple[int, ...]:
    """The batch sizes a CPU device count must divide (those that are integers: a bad value
    is validate's to report)."""
    sizes = (config.get("batch_size"), config.get("eval_batch_size"))
    return tuple(s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and s > 0)


def run_mode(mode: str, config, workdir) -> str:
    """Runs `mode`; returns the one line the launcher prints last."""
    # Imported here, after flag parsing, so that --help and flag errors stay fast.
    from flaxdigits.evaluation import report as report_lib
    from flaxdigits.training import loop

    if mode == "predict":
        return f"submission={report_lib.predict_workdir(config, workdir)}"
    if mode == "train":
        report = loop.train_and_evaluate(config, workdir)["report"]
    else:
        report = report_lib.evaluate_workdir(config, workdir)
    if report["split"] == "test":
        return f"test_accuracy={report['accuracy']:.4f}"
    return f"validation_accuracy={report['accuracy']:.4f} (this data has no labelled test split)"


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
