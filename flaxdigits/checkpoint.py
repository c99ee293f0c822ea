"""Checkpoints: the only module that speaks orbax.

`workdir/checkpoints/<step>/` holds the training state (params, optimizer state, step) and a
small JSON of the loop's host-side bookkeeping. The `keep` most recent checkpoints are kept,
and also the one with the best validation accuracy. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed while saving leaves the
previous checkpoint intact.
"""

import json
import logging
import pathlib
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from flaxdigits import models
from flaxdigits.errors import FlaxDigitsError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"

# Fields that may change between a run and its resumption: they do not change what is
# trained. Any other difference makes resuming an error rather than a silent mixture.
RESUMABLE_CHANGES = frozenset({
    "log_every_steps", "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints",
    "data.dir", "data.cache_dir", "data.tfds_data_dir",
    "inference.tta_views", "inference.ensemble_workdirs",
})


class Checkpoints:
    """Saves and restores the training state of one workdir."""

    def __init__(self, workdir, keep: int, read_only: bool = False):
        if keep < 1:
            raise FlaxDigitsError(f"config.keep_checkpoints={keep} must be at least 1")
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
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
                logging.warning("Checkpoint %s/%d is unreadable, trying an older one: %s",
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


# ---------------------------------------------------------------------------------------
# The config a workdir was trained with


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def read_config(workdir) -> Optional[dict]:
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FlaxDigitsError(f"{path}: not valid JSON ({e})") from None


def check_resumable(workdir, config: ml_collections.ConfigDict) -> None:
    """Raises if `config` trains something other than what `workdir` holds checkpoints of."""
    saved = read_config(workdir)
    if saved is None:
        raise FlaxDigitsError(
            f"{pathlib.Path(workdir) / CONFIG_FILE}: missing, so the checkpoints in "
            f"{workdir} cannot be matched to a config; use a new --workdir")
    saved = flatten(saved)
    current = flatten(json.loads(config.to_json_best_effort()))
    differ = sorted(k for k in set(saved) | set(current)
                    if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)
    if differ:
        details = ", ".join(f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})"
                            for k in differ)
        raise FlaxDigitsError(
            f"{workdir} holds checkpoints of another config: {details}; resume with the saved "
            f"settings or use a new --workdir")


class Trained(NamedTuple):
    """A trained model ready for inference: `model.apply(variables, images)`."""

    model: Any  # a flax linen module
    variables: dict  # {'params': ...} (and 'batch_stats' for BatchNorm models)
    config: ml_collections.ConfigDict  # the config the workdir was trained with
    step: int  # the training step of the checkpoint


def load(workdir, which: str = "best") -> Trained:
    """The model of a trained workdir, for inference.

    `which`: 'best' (highest validation accuracy; the latest if none was validated) or
    'latest'. The config is the one the workdir was trained with.
    """
    workdir = pathlib.Path(workdir)
    saved = read_config(workdir)
    if saved is None:
        raise FlaxDigitsError(
            f"{workdir}: no trained model here (no {CONFIG_FILE}); train one first with "
            f"--mode=train")
    config = ml_collections.ConfigDict(saved)
    checkpoints = Checkpoints(workdir, keep=1, read_only=True)
    try:
        step = checkpoints.best_step() if which == "best" else checkpoints.manager.latest_step()
        if step is None:
            raise FlaxDigitsError(f"{checkpoints.directory}: no checkpoint to load")
        variables = checkpoints.restore_variables(step)
    finally:
        checkpoints.close()
    logging.info("Loaded %s step %d (%s)", checkpoints.directory, step, which)
    return Trained(model_from_config(config), variables, config, step)


def model_from_config(config: ml_collections.ConfigDict):
    """The linen module that `config.model` (and `config.dtype`) describe."""
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    dtype = jnp.dtype(config.get("dtype", "float32"))
    return models.create_model(config.model.name, dtype=dtype, **kwargs)
