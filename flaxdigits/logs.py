"""Where the library's log lines go.

Every module logs to its own named logger under "flaxdigits" (`logging.getLogger(__name__)`);
the program decides how they are shown. launch.py leaves that to absl. A script or a
notebook that configured nothing still sees progress: the library's entry points
(train_and_evaluate, evaluate, predict, serve) call `show_progress()`, which changes nothing
where the program has already set the "flaxdigits" logger's level or handlers.

    import logging
    logging.getLogger("flaxdigits").setLevel(logging.WARNING)   # a quiet script
"""

import logging
import sys

LOGGER = logging.getLogger("flaxdigits")
FORMAT = "%(asctime)s %(levelname).1s %(message)s"


def show_progress(level: int = logging.INFO) -> None:
    """Makes flaxdigits' log lines at `level` and above visible, unless the program already
    decided about the "flaxdigits" logger (a level or a handler of its own).

    Records go to the root logger's handlers where it has some (absl, logging.basicConfig,
    pytest and orbax's imports install them), else to a stderr handler of our own."""
    if LOGGER.level != logging.NOTSET or LOGGER.handlers:
        return
    LOGGER.setLevel(level)
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        LOGGER.addHandler(handler)
        LOGGER.propagate = False  # a root handler added later must not print lines twice


def tag_process(index: int, count: int) -> None:
    """In a multi-process run, every flaxdigits log line starts with `[process i/N]`, so
    that logs gathered from several hosts say which one spoke. Nothing for one process."""
    if count <= 1 or getattr(logging.getLogRecordFactory(), "flaxdigits_tag", None):
        return
    tag = f"[process {index}/{count}] "
    make_record = logging.getLogRecordFactory()

    def tagged_record(*args, **kwargs):
        record = make_record(*args, **kwargs)
        if record.name.startswith(LOGGER.name):
            record.msg = tag + str(record.msg)
        return record

    tagged_record.flaxdigits_tag = tag
    logging.setLogRecordFactory(tagged_record)
