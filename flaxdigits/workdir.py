"""The files of a workdir, and how to read them back. No other module names them.

    W/config.json       the config the run was trained with (written before training)
    W/data.json         counts and a hash of the training data (resuming needs the same data)
    W/.lock             held by the training run using the workdir (its pid inside)
    W/metrics.jsonl     one JSON record per log step, epoch end and the end of the run
    W/tensorboard/      the same numbers as TensorBoard event files
    W/checkpoints/      orbax checkpoints (flaxdigits/checkpoint.py)
    W/report.json       the evaluation report of the best checkpoint
    W/plots/*.png       training curves, confusion matrix, misclassified digits
    W/profile/          a jax.profiler trace, where config.profile_steps asks for one
    W/submission.csv    Kaggle predictions (--mode=predict)
    W/export/           ONNX and jax.export files, verified (--mode=export; flaxdigits/export.py)
"""

import contextlib
import fcntl
import json
import logging
import math
import os
import pathlib
from typing import Optional

from flaxdigits.errors import FlaxDigitsError

log = logging.getLogger(__name__)


class Workdir:
    """A workdir folder; its files are properties, so every path is spelled here once.

    `writes=False` (the processes other than the primary one of a multi-process run): the
    same reads, and every write is skipped, so one process writes each file."""

    def __init__(self, path, writes: Optional[bool] = None):
        self.path = pathlib.Path(path).expanduser()
        # A Workdir made from a Workdir keeps its choice.
        self.writes = writes if writes is not None else getattr(path, "writes", True)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # a Workdir goes wherever a path does
        return str(self.path)

    config_file = property(lambda self: self.path / "config.json")
    data_file = property(lambda self: self.path / "data.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    checkpoint_dir = property(lambda self: self.path.absolute() / "checkpoints")
    report_file = property(lambda self: self.path / "report.json")
    plots_dir = property(lambda self: self.path / "plots")
    profile_dir = property(lambda self: self.path / "profile")
    submission_file = property(lambda self: self.path / "submission.csv")
    export_dir = property(lambda self: self.path / "export")

    # -- config.json

    def read_config(self) -> Optional[dict]:
        """The saved config as a dict, or None where there is none."""
        if not self.config_file.is_file():
            return None
        try:
            config = json.loads(self.config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FlaxDigitsError(f"{self.config_file}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise FlaxDigitsError(f"{self.config_file}: not a JSON object")
        return config

    def write_config(self, config) -> None:
        if self.writes:
            self.create()
        self._write(self.config_file, config.to_json_best_effort(indent=2) + "\n")

    @contextlib.contextmanager
    def lock(self):
        """Exclusive use of the workdir for one training run, as long as the `with` lasts.

        An advisory `flock` on W/.lock, which holds the holder's pid: the kernel releases it
        when the holder exits in any way, so a killed run never leaves a stale lock. A second
        training on a busy workdir fails at once, naming the holder. Readers (evaluate,
        predict, serve) take no lock: they read finished checkpoints only. The processes of a
        multi-process run that do not write take none either: the primary holds it for all.
        """
        if not self.writes:
            yield self
            return
        self.create()
        path = self.path / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FlaxDigitsError(f"{path}: cannot create the workdir lock ({e.strerror})") \
                from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                raise FlaxDigitsError(
                    f"{self.path} is in use by another training run (pid {holder}); wait for "
                    f"it to end, or use another --workdir") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield self
        finally:
            os.close(fd)  # releases the lock

    def create(self) -> None:
        """The folder, made if needed; a path that is a file or cannot be written is one line."""
        if self.path.exists() and not self.path.is_dir():
            raise FlaxDigitsError(f"{self.path}: is a file, not a workdir folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlaxDigitsError(f"{self.path}: cannot create the workdir ({e.strerror})") \
                from None
        if not os.access(self.path, os.W_OK):
            raise FlaxDigitsError(f"{self.path}: the workdir is not writable")
        for folder in (self.checkpoint_dir, self.tensorboard_dir, self.plots_dir):
            if folder.exists() and not folder.is_dir():
                raise FlaxDigitsError(f"{folder}: is a file where the workdir keeps a folder; "
                                      f"move it away or use another --workdir")
        for file in (self.config_file, self.data_file, self.metrics_file, self.report_file,
                     self.submission_file):
            if file.is_dir():
                raise FlaxDigitsError(f"{file}: is a folder where the workdir keeps a file; "
                                      f"move it away or use another --workdir")

    def has_checkpoints(self) -> bool:
        """Whether checkpoints/ holds a finished step (orbax names each by its number)."""
        return self.checkpoint_dir.is_dir() and any(
            p.name.isdigit() for p in self.checkpoint_dir.iterdir() if p.is_dir())

    # -- data.json: what the checkpoints were trained on

    def check_same_data(self, fingerprint: dict, source: str, resuming: bool) -> None:
        """Records the training data's fingerprint (data.fingerprint) on a fresh run; refuses
        to resume on other data (the same data moved elsewhere is fine)."""
        saved = None
        if resuming and self.data_file.is_file():
            try:
                saved = json.loads(self.data_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s: unreadable; it is written anew", self.data_file)
        if isinstance(saved, dict) and saved.get("sha256") != fingerprint["sha256"]:
            raise FlaxDigitsError(
                f"{self.path} holds checkpoints trained on other data ({saved.get('examples')} "
                f"training examples, sha256 {str(saved.get('sha256'))[:12]}...), but "
                f"{source} holds {fingerprint['examples']} (sha256 "
                f"{fingerprint['sha256'][:12]}...); resume on the same data or use a new "
                f"--workdir")
        self._write(self.data_file, json.dumps(fingerprint, indent=2) + "\n")

    # -- metrics.jsonl

    def read_metrics(self) -> list[dict]:
        """Every well-formed record of metrics.jsonl, in order ([] where there is no file).
        A line that is not one (torn by a kill while it was written, not JSON, not UTF-8, not
        an object with a whole-number step and numeric figures) is dropped with a warning
        naming the file and the line: a damaged log never stops a resume or a report."""
        if not self.metrics_file.is_file():
            return []
        try:
            lines = self.metrics_file.read_bytes().splitlines()
        except OSError as e:
            raise FlaxDigitsError(f"{self.metrics_file}: cannot be read ({e.strerror})") \
                from None
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                fault = metrics_record_fault(record)
            except UnicodeDecodeError:
                fault = "is not UTF-8"
            except (json.JSONDecodeError, RecursionError):
                fault = "is torn (a run stopped while writing it)" if number == len(lines) \
                    else "is not JSON"
            if fault:
                log.warning("%s: line %d %s; dropped", self.metrics_file, number, fault)
                continue
            records.append(record)
        return records

    def rewrite_metrics(self, records: list[dict]) -> None:
        self._write(self.metrics_file, "".join(metrics_line(r) for r in records))

    def append_metrics(self, record: dict) -> None:
        """Appended and flushed at once, so a crash loses nothing already written."""
        if not self.writes:
            return
        with self.metrics_file.open("a") as f:
            f.write(metrics_line(record))

    # -- outputs

    def write_report(self, report: dict) -> None:
        self._write(self.report_file, json.dumps(report, indent=2) + "\n")

    def write_submission(self, labels) -> pathlib.Path:
        """Kaggle's format: a header `ImageId,Label`, then one row per test image, ImageId
        counting from 1 in the order of test.csv."""
        lines = ["ImageId,Label"] + [f"{i},{int(label)}" for i, label in enumerate(labels, 1)]
        self._write(self.submission_file, "\n".join(lines) + "\n")
        return self.submission_file

    def _write(self, path: pathlib.Path, content: str) -> None:
        """Every whole-file write of the workdir: skipped where this process does not write."""
        if self.writes:
            write_atomically(path, content)


def metrics_record_fault(record) -> Optional[str]:
    """What is wrong with one parsed line of metrics.jsonl, or None: an object with a
    whole-number `step`, a whole-number `epoch` and a true/false `final` where present, and
    numbers (or null) for every other figure."""
    if not isinstance(record, dict):
        return f"is {type(record).__name__}, not an object"
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"has step {step!r}, not a whole number"
    for key, value in record.items():
        if key == "step":
            continue
        if key == "epoch":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif key == "final":
            ok = isinstance(value, bool)
        else:
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and math.isfinite(value))
        if not ok:
            return f"has {key}={value!r}"
    return None


def metrics_line(record: dict) -> str:
    """One line of metrics.jsonl. A figure that is not finite (an evaluation of nothing, a
    diverged loss) is written as null: NaN is not JSON, and no reader should meet it."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def write_atomically(path: pathlib.Path, content) -> None:
    """`content` (str or bytes) into `path`; readers never see half a file: it is written
    beside it, then renamed over it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if isinstance(content, bytes):
            partial.write_bytes(content)
        else:
            partial.write_text(content)
        os.replace(partial, path)
    except OSError as e:  # a read-only folder, a full disk: name the file meant
        raise FlaxDigitsError(f"{path}: cannot write it ({e.strerror or e})") from None
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
