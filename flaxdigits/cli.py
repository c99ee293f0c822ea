"""The command line: flags -> config -> flaxdigits. The same in all three spellings:

    python launch.py --config=configs/base.py --workdir=runs/base [--config.x=y ...]
    flaxdigits --config=base --workdir=runs/base                # installed with the package
    python -m flaxdigits --config=base --workdir=runs/base

Thin on purpose: the work is done by library functions that take a ConfigDict, so tests
and notebooks call them directly.
"""

import faulthandler
import functools
import logging as std_logging
import os
import signal
import subprocess
import sys
import threading

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from flaxdigits.errors import FlaxDigitsError, RunStopped

FLAGS = flags.FLAGS
CONFIG_HELP = ("A shipped config's name (tiny, fast, base, deep, accurate, page) or the path of "
               "a config file (configs/base.py); --config.FIELD=VALUE overrides a field.")
flags.DEFINE_string("workdir", None, "Folder for config.json, metrics.jsonl and outputs.")
flags.DEFINE_enum(
    "mode", "train", ["train", "evaluate", "predict", "read", "serve", "export"],
    "train: train (or resume) and report. evaluate: report.json and plots/ of the workdir's "
    "best checkpoint on the config's data. predict: submission.csv for the Kaggle test.csv "
    "in --config.data.dir. read: the number in each image named after the flags "
    "(launch.py --mode=read ... a.png b.jpg), one line per image. serve: the drawing page and "
    "JSON API for the workdir's model. export: W/export/ (ONNX, jax.export, model.json), each "
    "file checked against the library on the test split.")
flags.DEFINE_bool("json", False, "--mode=read: one JSON object per image (path, number, "
                  "digits with label, probability and box; or path and error).")
flags.DEFINE_integer("port", 8080, "--mode=serve: the port to listen on (0: any free one).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_string("host", "127.0.0.1", "--mode=serve: the address to listen on "
                    "(0.0.0.0 for every interface).")
flags.DEFINE_integer("workers", 0, "--mode=serve: how many processes serve (each its own "
                     "copy of the model, all on the one port); 0: one per CPU core, at most 4.",
                     lower_bound=0, upper_bound=64)
flags.DEFINE_string("compilation_cache", "", "Folder of JAX's persistent compilation cache "
                    "(default: ~/.cache/flaxdigits/jax, or $FLAXDIGITS_CACHE/jax); 'off' turns "
                    "it off.")
flags.DEFINE_string("coordinator", None, "Several processes (hosts): HOST:PORT where process 0 "
                    "listens; with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "Several processes: how many there are.",
                     lower_bound=1)
flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0 to "
                     "--num_processes-1.", lower_bound=0)
flags.DEFINE_bool("distributed", False, "Several processes, found by JAX: a TPU pod slice, "
                  "Slurm, Open MPI or Kubernetes.")
flags.DEFINE_integer("join_timeout", 120, "Several processes: seconds to wait for all of them "
                     "to join before giving up.", lower_bound=1)
flags.mark_flags_as_required(["workdir"])


def one_line(text: str) -> str:
    return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def run(argv=None):
    """The program: `launch.py`, `python -m flaxdigits` and the `flaxdigits` command."""
    argv = list(sys.argv if argv is None else argv)
    from flaxdigits import runtime

    try:
        runtime.import_jax()  # a bad JAX_* variable (JAX reads them as it is imported)
    except FlaxDigitsError as e:
        sys.exit(f"flaxdigits: error: {e}")
    value, argv = take_config_argument(argv)
    config = ml_collections.ConfigDict()  # --help without --config still works
    if value == "":
        sys.exit("flaxdigits: error: --config= is empty: name a shipped config (--config=base) "
                 "or a config file (--config=configs/base.py)")
    if value is not None:
        from flaxdigits import config as config_lib

        try:
            config = config_lib.load(value)
        except FlaxDigitsError as e:
            sys.exit(f"flaxdigits: error: --config={value}: " +
                     str(e).removeprefix(f"{value}: "))
    if "config" not in FLAGS:
        try:  # the --config.FIELD=VALUE overrides are parsed here, from argv
            config_flags.DEFINE_config_dict("config", config, CONFIG_HELP, lock_config=True,
                                            sys_argv=argv)
        except (KeyError, AttributeError) as e:  # an override names a field the config lacks
            sys.exit(f"flaxdigits: error: {no_such_field(e, argv)}")
        # --help lists the flags of the program's main module: these are its flags, whatever
        # the spelling (launch.py, the flaxdigits command, python -m flaxdigits).
        for flag in FLAGS.get_flags_for_module(__name__):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(functools.partial(main, config_name=config_name(value)), argv=argv, flags_parser=lambda args: parse_flags(args, value is not None))


def config_name(value) -> str:
    """A shipped config's name for --config=page or --config=configs/page.py; a file's stem
    otherwise ('' without --config): what model.json records."""
    return os.path.splitext(os.path.basename(value or ""))[0]


def take_config_argument(argv: list[str]) -> tuple[str | None, list[str]]:
    """The --config=NAME_OR_PATH argument, and argv without it: the config is loaded here
    (config.load: one line for any fault of the file) and handed to absl as a ConfigDict,
    whose --config.FIELD=VALUE overrides absl then applies."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        name, equals, value = arg.lstrip("-").partition("=")
        if name == "config" and arg.startswith("-"):
            if equals:
                return value, argv[:i] + argv[i + 1:]
            if i + 1 < len(argv):
                return argv[i + 1], argv[:i] + argv[i + 2:]
    return None, argv


def parse_flags(argv, has_config: bool = True):
    """absl's flag parsing, with a one-line error instead of a traceback for bad flags."""
    try:
        remaining = FLAGS(argv)
        if not has_config:
            from flaxdigits import config as config_lib

            raise flags.Error(f"--config is required: a shipped config's name "
                              f"({', '.join(config_lib.shipped_configs())}) or a config "
                              f"file's path, e.g. --config=configs/base.py")
        return remaining
    except flags.Error as e:  # bad value, missing required flag, unknown flag
        message = str(e)
    except (KeyError, AttributeError) as e:  # an override names a field the config lacks
        message = no_such_field(e, argv)
    sys.exit(f"flaxdigits: error: {message}")


def no_such_field(error: Exception, argv) -> str:
    """'--config.optim.learnin_rate: no such config field; Did you mean ...' from the
    KeyError or AttributeError of an override that names no field of the config."""
    text = one_line(str(error)).strip("'\"")
    field = text.split("'")[0].split()[0]
    culprit = next((a for a in argv if a.lstrip("-").startswith("config.") and field in a), "")
    hint = text[text.find("Did you mean"):] if "Did you mean" in text else ""
    return (f"--{culprit.lstrip('-').split('=')[0]}: no such config field" +
            (f"; {hint}" if hint else ""))


def quiet_orbax(record) -> bool:
    """Orbax logs every save and close at INFO; keep its warnings and errors only, less the
    one about checkpoints saved between epochs, which have no validation metric by design."""
    if "/orbax/" not in record.pathname:
        return True
    # A failed save is also raised to flaxdigits, which says it in one line: no traceback.
    return (record.levelno >= std_logging.WARNING and not record.exc_info
            and not str(record.msg).startswith("Requested `tracked_metric`"))


class Terminated(BaseException):
    """SIGTERM outside the training loop (which handles it itself, with a checkpoint).
    A BaseException, as KeyboardInterrupt is: code that catches Exception (logging's emit,
    which would print "--- Logging error ---" with a traceback and go on) lets it through."""


def raise_on_signal(signum, frame):
    """SIGTERM raises Terminated, SIGINT KeyboardInterrupt. Python drops an exception raised
    while it runs a garbage-collection or finalizer callback ("Exception ignored in ..."),
    so the signal is also noted: the training loop honours a noted signal with a
    checkpoint, and main() after the run."""
    from flaxdigits import runtime

    runtime.note_signal(signum)
    raise stop_exception(signum)


def stop_exception(signum) -> BaseException:
    """What a stop signal raises: Terminated for SIGTERM, KeyboardInterrupt for SIGINT."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def is_orbax_thread_noise(error: BaseException) -> bool:
    """After a checkpoint save fails (a full disk), the file writes still in flight finish
    in tensorstore's threads and call back into orbax's event loop, closed by then: each
    callback prints 'RuntimeError: Event loop is closed' with a traceback, and asyncio logs
    'Future exception was never retrieved'. The save's failure itself is reported in one
    line; these echoes of it go to the debug log."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def quiet_orbax_callbacks(kind, error, traceback, default_hook=sys.excepthook):
    """sys.excepthook (native threads print their callbacks' errors through it)."""
    if is_orbax_thread_noise(error):
        logging.debug("After a failed save: %r", error)
        return
    default_hook(kind, error, traceback)


def quiet_asyncio(record) -> bool:
    """asyncio's 'Future exception was never retrieved' for orbax's abandoned writes."""
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
        logging.debug("After a failed save: %s", record.getMessage()[:200])
        return False
    return True


def quiet_dropped_signals(unraisable, default_hook=sys.unraisablehook):
    """A signal's exception that Python dropped (raised inside a gc callback) is not a
    traceback for the user: the signal was noted and is honoured (raise_on_signal)."""
    if is_orbax_thread_noise(unraisable.exc_value):
        logging.debug("After a failed save: %r in %r", unraisable.exc_value, unraisable.object)
        return
    if isinstance(unraisable.exc_value, (Terminated, KeyboardInterrupt)):
        logging.debug("A signal arrived inside %r; honoured later", unraisable.object)
        return
    default_hook(unraisable)


def main(argv, config_name: str = ""):
    if len(argv) > 1 and FLAGS.mode != "read":
        sys.exit(f"flaxdigits: error: unexpected arguments: {' '.join(argv[1:])} (only "
                 f"--mode=read takes image paths)")
    if not FLAGS.workdir.strip():
        sys.exit("flaxdigits: error: --workdir is empty: name the folder for the run's files "
                 "(e.g. --workdir=runs/base)")
    if FLAGS.mode == "read" and len(argv) == 1:
        sys.exit("flaxdigits: error: --mode=read: name the images to read after the flags, "
                 "e.g. launch.py --config=... --workdir=W --mode=read number.png")
    # SIGTERM while loading, compiling or reporting stops as Ctrl-C does: with one line.
    # (SIGINT too, even where the shell that started us ignores it for background jobs.)
    signal.signal(signal.SIGTERM, raise_on_signal)
    signal.signal(signal.SIGINT, raise_on_signal)
    sys.unraisablehook = quiet_dropped_signals
    sys.excepthook = quiet_orbax_callbacks
    logging.get_absl_handler().addFilter(quiet_orbax)
    std_logging.getLogger("asyncio").addFilter(quiet_asyncio)
    # The library's loggers follow absl's --verbosity (see flaxdigits/logs.py).
    std_logging.getLogger("flaxdigits").setLevel(std_logging.getLogger().getEffectiveLevel())
    # JAX says at INFO which accelerator backends it could not start ('tpu' on every CPU):
    # the device line of the log says what it did find.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    several = FLAGS.distributed or any(
        flag is not None for flag in (FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id))
    if several and not os.environ.get(SUPERVISED):
        sys.exit(supervise())
    try:
        from flaxdigits import config as config_lib
        from flaxdigits import runtime

        runtime.enable_compilation_cache(FLAGS.compilation_cache)  # before any compilation
        if several:  # before JAX starts
            runtime.join_processes(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                   join_timeout_s=FLAGS.join_timeout)
            tell_parent_joined()
        if FLAGS.mode == "serve":
            from flaxdigits.serving import app as serving_app

            # One CPU device, as each other serving process has: a request's model calls
            # are batches of one image's candidates, never split across devices.
            serving_app.prepare_jax()  # before the backend starts
        else:
            runtime.use_cpu_cores(*batch_sizes(FLAGS.config),  # before JAX starts
                                  processes=FLAGS.num_processes or 1)
        runtime.start_backend()
        config_lib.validate(FLAGS.config)  # every mode: a bad value fails here, in seconds
        if FLAGS.mode == "serve":
            serving_app.serve(FLAGS.workdir, host=FLAGS.host, port=FLAGS.port,
                              workers=FLAGS.workers or serving_app.serving_processes())
        elif FLAGS.mode == "read":
            unread = read_images(argv[1:], FLAGS.workdir, as_json=FLAGS.json)
            if unread:
                stop(f"flaxdigits: error: {unread} of {len(argv) - 1} images could not be "
                     f"read", 1, several)
        else:
            print(run_mode(FLAGS.mode, FLAGS.config, FLAGS.workdir, config_name))
        dropped = runtime.noted_signal()  # a signal whose exception Python dropped
        if dropped is not None:
            raise stop_exception(dropped)
    except RunStopped as e:
        stop(f"flaxdigits: {e}", e.exit_code, several)
    except (KeyboardInterrupt, Terminated) as e:
        signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        stop(f"flaxdigits: stopped by {signum.name}; what the workdir held is kept (files "
             f"are replaced whole, checkpoints only when complete); run the same command to "
             f"go on", 128 + signum, several)
    except FlaxDigitsError as e:
        stop(f"flaxdigits: error: {e}", 1, several)
    except OSError as e:  # a full disk, a read-only or unreadable file: name it, no traceback
        where = f"{e.filename}: " if e.filename else ""
        stop(f"flaxdigits: error: {where}{e.strerror or one_line(str(e))}", 1, several)
    except Exception as e:  # noqa: BLE001
        if not several:
            raise  # a bug in flaxdigits: its traceback is for the developers
        # One of several processes: almost always because another one died or cannot be
        # reached (a collective or a checkpoint barrier failed). The traceback is logged at
        # --verbosity=1; the line says what happened.
        logging.debug("The error that stopped this process:", exc_info=True)
        stop(f"flaxdigits: error: {type(e).__name__} in work shared with the other processes: "
             f"another process of this run has probably stopped or cannot be reached "
             f"({one_line(str(e))[:200]})", 1, several)


# In the child that does a multi-process run's work: the file descriptor on which it tells
# its parent that it has joined the run.
SUPERVISED = "FLAXDIGITS_SUPERVISED"


def supervise() -> int:
    """One of several processes runs its work in a child process and waits for it.

    JAX ends a process of a multi-process run with a crash dump (SIGABRT) when another
    process dies or stops answering: this parent, which never starts JAX, then says so in
    one line and exits 1. Signals are passed on to the child, which stops as one process
    does; its exit code is returned."""
    joined_r, joined_w = os.pipe()
    child = subprocess.Popen([sys.executable, "-m", "flaxdigits", *sys.argv[1:]],
                             env={**os.environ, SUPERVISED: str(joined_w)},
                             pass_fds=(joined_w,), preexec_fn=end_with_parent)
    os.close(joined_w)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: child.send_signal(number))
    code = child.wait()
    joined = os.read(joined_r, 1) == b"j"
    if code >= 0:
        return code
    who = (f"process {FLAGS.process_id} of {FLAGS.num_processes}" if FLAGS.process_id is not None
           else "this process")
    ended = f"{who} ended by {signal.Signals(-code).name}"
    if not joined:
        where = f"the run at {FLAGS.coordinator}" if FLAGS.coordinator else "the cluster"
        why = (f"could not join {where} within {FLAGS.join_timeout} s: is process 0 running, "
               f"and reachable at that address? ({ended})")
    else:
        why = (ended +
               (": JAX ends a process so when another process of the run has died or stopped "
                "answering (its log says which); rerun all of them to resume from the last "
                "checkpoint" if -code == signal.SIGABRT else ""))
    print(f"flaxdigits: error: {why}", file=sys.stderr)
    return 1


def tell_parent_joined():
    """The supervised child has joined the run: from here its parent reads a crash as the
    loss of another process, not as a failure to join. The child's own crash dumps (Python's
    fault handler, tracebacks of orbax's threads cut off by the crash) would only bury that
    line: they go to the debug log."""
    fd = int(os.environ.get(SUPERVISED) or -1)
    if fd >= 0:
        os.write(fd, b"j")
        os.close(fd)
        faulthandler.disable()
        threading.excepthook = lambda args: logging.debug(
            "Thread %s ended by %r", args.thread, args.exc_value,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        # Errors in callbacks that native threads (tensorstore's) run for orbax.
        sys.unraisablehook = lambda args: logging.debug(
            "Unraisable %r in %r", args.exc_value, args.object)
        sys.excepthook = lambda *exc_info: logging.debug("Uncaught", exc_info=exc_info)


def end_with_parent():
    """In the child, before it starts: SIGTERM (a stop with a checkpoint) when the parent
    dies, however it dies, rather than running on alone (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop(message: str, exit_code: int, several: bool):
    """Ends the process with `message` on stderr and `exit_code`. One of several processes
    exits at once, without JAX's shutdown barrier, which would wait for the others (they
    may be waiting for this one) and end in a crash dump: the others see the lost
    connection and stop with their own line."""
    logging.flush()
    print(message, file=sys.stderr)
    if several:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)


def batch_sizes(config) -> tuple[int, ...]:
    """The batch sizes a CPU device count must divide (those that are integers: a bad value
    is validate's to report)."""
    sizes = (config.get("batch_size"), config.get("eval_batch_size"))
    return tuple(s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and s > 0)


MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024  # --mode=read refuses larger files unread


def read_images(paths, workdir, as_json: bool) -> int:
    """--mode=read: one line per image on stdout (path, number, each digit's probability;
    or, with --json, a JSON object); an image that cannot be read is one line naming it
    (on stderr; in the JSON stream with --json) and the others are still read. Returns how
    many could not be read."""
    import json

    from flaxdigits.serving import preprocess, reading

    reader = reading.Reader.from_workdir(workdir)
    unread = 0
    for path in paths:
        try:
            with open(path, "rb") as file:
                body = file.read(MAX_IMAGE_FILE_BYTES + 1)
            if len(body) > MAX_IMAGE_FILE_BYTES:
                raise preprocess.BadInput(413, f"larger than {MAX_IMAGE_FILE_BYTES:,} bytes")
            result = reader.read(preprocess.decode_image(body))
        except (OSError, preprocess.BadInput) as e:
            unread += 1
            why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(str(e))
            if as_json:
                print(json.dumps({"path": path, "error": why}), flush=True)
            else:
                print(f"flaxdigits: error: {path}: {why}", file=sys.stderr, flush=True)
            continue
        if as_json:
            print(json.dumps({"path": path, "number": result.number, "digits": [
                dict(label=d.label, probability=round(d.probability, 6), box=list(d.box))
                for d in result.digits]}), flush=True)
        else:
            sure = " ".join(f"{d.label}:{d.probability:.3f}" for d in result.digits)
            print(f"{path}: {result.number} ({sure})", flush=True)
    return unread


def run_mode(mode: str, config, workdir, config_name: str = "") -> str:
    """Runs `mode`; returns the one line the launcher prints last."""
    # Imported here, after flag parsing, so that --help and flag errors stay fast.
    from flaxdigits.evaluation import report as report_lib
    from flaxdigits.training import loop

    if mode == "predict":
        return f"submission={report_lib.predict_workdir(config, workdir)}"
    if mode == "export":
        from flaxdigits import export

        return f"export={export.export_workdir(config, workdir, config_name)}"
    if mode == "train":
        report = loop.train_and_evaluate(config, workdir)["report"]
    else:
        report = report_lib.evaluate_workdir(config, workdir)
    if report["split"] == "test":
        return f"test_accuracy={report['accuracy']:.4f}"
    return f"validation_accuracy={report['accuracy']:.4f} (this data has no labelled test split)"


