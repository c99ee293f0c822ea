"""Checkpoints: the only module that speaks orbax.

`workdir/checkpoints/<step>/` holds the training state (params, optimizer state, step) and a
small JSON of the loop's host-side bookkeeping. The `keep` most recent checkpoints are kept,
and also the one with the best validation accuracy. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed while saving leaves the
previous checkpoint intact.
"""

import logging
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import Workdir

log = logging.getLogger(__name__)


class Checkpoints:
    """Saves and restores the training state of one workdir (a Workdir or a path)."""

    def __init__(self, workdir, keep: int = 1, read_only: bool = False):
        self.directory = Workdir(workdir).checkpoint_dir
        policy = preservation_policy.AnyPreservationPolicy([
            preservation_policy.LatestN(keep),
            preservation_policy.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        # best_fn as well: without it orbax does not write the metrics to disk, and a
        # restarted run would no longer know which checkpoint was the best. No tmp-folder
        # cleanup: orbax runs it in a thread that outlives a run stopping on bad input, and
        # half-written (tmp) checkpoints are never listed as steps anyway.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=lambda m: m["val_accuracy"], best_mode="max",
            read_only=read_only, create=not read_only)
        # Handlers named up front, so that a checkpoint's metadata can be read before
        # restoring it (see restore_variables).
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "loop": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, loop: dict, val_accuracy: Optional[float] = None):
        """Starts saving `state` and the JSON-able `loop` dict; returns before the write ends
        (call `wait`). `val_accuracy` ranks it for keeping the best."""
        metrics = None if val_accuracy is None else {"val_accuracy": float(val_accuracy)}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)), metrics=metrics)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def best_step(self) -> Optional[int]:
        """The kept step with the highest validation accuracy (the later one on ties), else
        the latest step."""
        ranked = []
        for step in self.steps():
            metrics = self.manager.metrics(step)
            if metrics and "val_accuracy" in metrics:
                ranked.append((metrics["val_accuracy"], step))
        return max(ranked)[1] if ranked else self.manager.latest_step()

    def restore_latest(self, abstract_state) -> Optional[tuple[Any, dict, int]]:
        """(state, loop, step) from the newest readable checkpoint, or None if there is none.

        An unreadable checkpoint (corrupt, half-copied) is skipped with a warning in favour
        of the one before it.
        """
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
            except Exception as e:  # orbax and tensorstore raise many kinds; all mean unreadable
                errors.append(f"step {step}: {type(e).__name__}: {one_line(e)}")
                log.warning("Checkpoint %s/%d is unreadable, trying an older one: %s",
                                self.directory, step, errors[-1])
                continue
            return restored.state, restored.loop, step
        if errors:
            raise FlaxDigitsError(
                f"{self.directory}: no readable checkpoint ({'; '.join(errors)}); "
                f"move the folder away to start afresh")
        return None

    def restore_variables(self, step: int) -> dict:
        """{'params': ..., and 'batch_stats': ... where the model has BatchNorm} saved at
        `step`, as host arrays, for inference (no optimizer needed)."""
        # Restore onto this process's first device, whatever the saving run's devices were
        # (a model trained on 8 TPU cores loads on a laptop).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree_util.tree_map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
            self.manager.item_metadata(step)["state"])
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
        variables = {"params": restored.state["params"]}
        if restored.state.get("batch_stats"):
            variables["batch_stats"] = restored.state["batch_stats"]
        return jax.device_get(variables)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
