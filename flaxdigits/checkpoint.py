"""Checkpoints: the only module that speaks orbax.

`workdir/checkpoints/<step>/` holds the training state (params, optimizer state, step) and a
small JSON of the loop's host-side bookkeeping. The `keep` most recent checkpoints are kept,
and also the one with the best validation accuracy. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed while saving leaves the
previous checkpoint intact.
"""

import json
import logging
import shutil
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from flaxdigits import runtime
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import Workdir, write_atomically

log = logging.getLogger(__name__)


class _ExpectedOrbaxWarnings(logging.Filter):
    """Orbax warns, through absl's logger, that a checkpoint folder opened for reading is
    read-only: here that is the intent (evaluate, predict, serve), not a permissions error."""

    EXPECTED = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.EXPECTED)


logging.getLogger("absl").addFilter(_ExpectedOrbaxWarnings())


class Checkpoints:
    """Saves and restores the training state of one workdir (a Workdir or a path)."""

    def __init__(self, workdir, keep: int = 1, read_only: bool = False):
        self.directory = Workdir(workdir).checkpoint_dir
        # Orbax reads every step's metrics when it starts and fails on a damaged file: such a
        # file is moved aside (nothing is deleted), and its step counts as unvalidated. (By
        # the primary process only, of several: the others wait for it.)
        for path in self._damaged_metrics_files() if runtime.is_primary() else []:
            try:
                path.rename(path.with_name(path.name + ".unreadable"))
            except OSError as e:
                raise FlaxDigitsError(f"{path}: damaged validation metrics, and they cannot be "
                                      f"moved aside ({e.strerror}); move that file away") from None
            log.warning("%s: unreadable validation metrics, moved aside; that checkpoint "
                        "counts as unvalidated", path)
        _sync_processes("flaxdigits: checkpoint metrics checked")
        policies = [preservation_policy.LatestN(keep),
                    preservation_policy.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1,
                                              keep_checkpoints_without_metrics=False)]
        # best_fn as well: without it orbax does not write the metrics to disk, and a
        # restarted run would no longer know which checkpoint was the best. No tmp-folder
        # cleanup: orbax runs it in a thread that outlives a run stopping on bad input, and
        # half-written (tmp) checkpoints are never listed as steps anyway.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation_policy.AnyPreservationPolicy(policies),
            best_fn=lambda m: m["val_accuracy"], best_mode="max",
            read_only=read_only, create=not read_only)
        # Handlers named up front, so that a checkpoint's metadata can be read before
        # restoring it (see restore_variables).
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "loop": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def _damaged_metrics_files(self) -> list:
        """The metrics files of finished steps that are not {"val_accuracy": number}."""
        damaged = []
        if not self.directory.is_dir():
            return damaged
        for step_dir in self.directory.iterdir():
            path = step_dir / "metrics" / "metrics"
            if not (step_dir.name.isdigit() and path.is_file()):
                continue
            try:
                metrics = json.loads(path.read_text())
                ok = isinstance(metrics, dict) and isinstance(metrics.get("val_accuracy"),
                                                              (int, float))
            except (OSError, ValueError):
                ok = False
            if not ok:
                damaged.append(path)
        return damaged

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, loop: dict, val_accuracy: Optional[float] = None):
        """Starts saving `state` and the JSON-able `loop` dict; returns before the write ends
        (call `wait`). `val_accuracy` ranks it for keeping the best."""
        metrics = None if val_accuracy is None else {"val_accuracy": float(val_accuracy)}
        try:  # a failure of the previous (asynchronous) save surfaces here
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)),
                metrics=metrics)
        except Exception as e:  # noqa: BLE001 (a full disk, a read-only folder, ...)
            self._failed(e)

    def wait(self) -> None:
        """Waits for the save in progress; its failure (a full disk) is one line."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _failed(self, error: Exception):
        """A save failed: its half-written folder goes (orbax never lists it, but it holds
        space); the checkpoints before it are intact."""
        for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise FlaxDigitsError(
            f"{self.directory}: saving a checkpoint failed ({type(error).__name__}: "
            f"{one_line(error)[:200]}); the checkpoints before it are intact: free the space "
            f"(or fix the folder) and run the same command to resume") from None

    def best_step(self) -> Optional[int]:
        """The kept step with the highest validation accuracy (the later one on ties), else
        the latest step. A step whose metrics cannot be read ranks as unvalidated."""
        ranked = []
        for step in self.steps():
            try:
                metrics = self.manager.metrics(step)
            except Exception as e:  # a damaged metrics file: rank the step as unvalidated
                log.warning("Checkpoint %s/%d: metrics unreadable (%s)", self.directory, step,
                            one_line(e))
                continue
            value = metrics.get("val_accuracy") if isinstance(metrics, dict) else None
            if isinstance(value, (int, float)):
                ranked.append((value, step))
        return max(ranked)[1] if ranked else self.manager.latest_step()

    def restore_latest(self, abstract_state) -> Optional[tuple[Any, dict, int]]:
        """(state, loop, step) from the newest readable checkpoint, or None if there is none.

        An unreadable checkpoint (corrupt, half-copied) is skipped with a warning in favour of
        the one before it, and moved aside (to `<step>.unreadable`, nothing is deleted) so
        that training, reaching its step again, saves a good one in its place.
        """
        unreadable = []
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
            except Exception as e:  # orbax and tensorstore raise many kinds; all mean unreadable
                unreadable.append((step, f"{type(e).__name__}: {one_line(e)}"))
                log.warning("Checkpoint %s/%d is unreadable, trying an older one: %s",
                            self.directory, step, unreadable[-1][1])
                continue
            self._move_aside([bad for bad, _ in unreadable])
            return restored.state, restored.loop, step
        if unreadable:
            details = "; ".join(f"step {step}: {why}" for step, why in unreadable)
            raise FlaxDigitsError(
                f"{self.directory}: no readable checkpoint ({details}); move the folder away "
                f"to start afresh")
        return None

    def _move_aside(self, steps: list[int]) -> None:
        for step in steps if runtime.is_primary() else []:
            target = self.directory / f"{step}.unreadable"
            if target.exists():
                target = self.directory / f"{step}.unreadable.{time.time_ns()}"
            (self.directory / str(step)).rename(target)
            log.warning("Moved the unreadable checkpoint %s/%d to %s", self.directory, step,
                        target.name)
        if steps:
            _sync_processes("flaxdigits: unreadable checkpoints moved aside")
            self.manager.reload()

    def restore_readable_variables(self, first: Optional[int]) -> tuple[dict, int]:
        """(variables, step) of checkpoint `first` (e.g. best_step()), else of the newest one
        that can be read, with a warning for each that cannot: one damaged checkpoint never
        makes a workdir unusable while another is intact."""
        if first is None:
            raise FlaxDigitsError(f"{self.directory}: no checkpoint to load")
        errors = []
        for step in [first] + [s for s in reversed(self.steps()) if s != first]:
            try:
                return self.restore_variables(step), step
            except Exception as e:  # orbax and tensorstore raise many kinds; all mean unreadable
                errors.append(f"step {step}: {type(e).__name__}: {one_line(e)}")
                log.warning("Checkpoint %s/%d is unreadable, trying another: %s",
                            self.directory, step, errors[-1])
        raise FlaxDigitsError(f"{self.directory}: no readable checkpoint ({'; '.join(errors)})")

    def restore_variables(self, step: int) -> dict:
        """{'params': ..., and 'batch_stats': ... where the model has BatchNorm} saved at
        `step`, as host arrays, for inference (no optimizer needed)."""
        target = on_first_device(self.manager.item_metadata(step)["state"])
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
        # The parameters' moving average where training kept one: what evaluation used.
        variables = {"params": restored.state.get("ema_params") or restored.state["params"]}
        if restored.state.get("batch_stats"):
            variables["batch_stats"] = restored.state["batch_stats"]
        return jax.device_get(variables)

    def close(self, quietly: bool = False) -> None:
        """Waits for the save in progress, then lets go of the folder. `quietly`: on the
        way out of a failed run, whose own error is the one to report: a failure here is
        only logged."""
        try:
            try:
                self.wait()
            finally:
                self.manager.close()
        except Exception as e:  # noqa: BLE001
            if not quietly:
                raise
            log.warning("Closing the checkpoints of %s after an error: %s", self.directory,
                        one_line(e))


def on_first_device(abstract_tree):
    """Shapes and dtypes to restore onto this process's first device, whatever the saving
    run's devices were (a model trained on 8 TPU cores loads on a laptop)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
        abstract_tree)


def _sync_processes(name: str) -> None:
    """Waits for every process of a multi-process run to get here (nothing for one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------
# The line reader (training/line.py): trained after the classifier, kept apart from its
# checkpoints. W/line_reader/ holds its variables (orbax writes a temporary folder and
# renames it), W/line_reader.json its settings and figures, written last: without that
# file, or with another model's settings, there is no line reader (it is trained again).


def line_reader_paths(workdir) -> tuple:
    path = Workdir(workdir).path.absolute()
    return path / "line_reader", path / "line_reader.json"


def save_line_reader(workdir, variables: dict, info: dict) -> None:
    folder, info_file = line_reader_paths(workdir)
    try:
        info_file.unlink(missing_ok=True)  # the old figures go before the old variables
        _remove_partial_line_readers(folder)  # (left by a run killed while saving)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(folder, jax.device_get(variables), force=True)
        checkpointer.wait_until_finished()
        checkpointer.close()
        write_atomically(info_file, json.dumps(info, indent=1) + "\n")
    except Exception as e:  # noqa: BLE001 (a full disk, a read-only folder, ...)
        _remove_partial_line_readers(folder)
        raise FlaxDigitsError(
            f"{folder}: saving the line reader failed ({type(e).__name__}: "
            f"{one_line(e)[:200]}); the classifier's checkpoints are intact: free the space "
            f"(or fix the folder) and run the same command to train it again") from None


def _remove_partial_line_readers(folder) -> None:
    for partial in folder.parent.glob(folder.name + "*.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)


def read_line_reader_info(workdir) -> Optional[dict]:
    """The saved line reader's settings and figures, or None where there is none whole."""
    folder, info_file = line_reader_paths(workdir)
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and folder.is_dir() else None


def restore_line_reader(workdir, abstract_variables) -> dict:
    """The saved line reader's variables, shaped as `abstract_variables`, as host arrays.
    Raises FlaxDigitsError (one line) where they cannot be read."""
    folder, _ = line_reader_paths(workdir)
    try:
        checkpointer = ocp.StandardCheckpointer()
        variables = checkpointer.restore(folder, on_first_device(abstract_variables))
        checkpointer.close()
    except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many kinds)
        raise FlaxDigitsError(f"{folder}: the line reader cannot be read "
                              f"({type(e).__name__}: {one_line(e)[:200]})") from None
    return jax.device_get(variables)
