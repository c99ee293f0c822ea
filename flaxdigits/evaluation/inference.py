"""Inference: a trained workdir's model, and its predictions with test-time augmentation
and ensembles.

    trained = inference.load("runs/fast")              # the best checkpoint
    probabilities_nk = inference.predict_probabilities(trained.model, trained.variables,
                                                       images_nhwc)
"""

import functools
import logging
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from flaxdigits import IMAGE_SIDE, NUM_CLASSES, augment, data, models
from flaxdigits import config as config_lib
from flaxdigits.checkpoint import Checkpoints
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import Workdir

log = logging.getLogger(__name__)


class Trained(NamedTuple):
    """A trained model ready for inference: `model.apply(variables, images)`."""

    model: Any  # a flax linen module
    variables: dict  # {'params': ...} (and 'batch_stats' for BatchNorm models)
    config: ml_collections.ConfigDict  # the config the workdir was trained with
    step: int  # the training step of the checkpoint


def load(workdir, which: str = "best") -> Trained:
    """The model of a trained workdir. `which`: 'best' (highest validation accuracy; the
    latest if none was validated) or 'latest'; where that checkpoint cannot be read, the
    newest one that can (with a warning). The config is the one it was trained with."""
    workdir = Workdir(workdir)
    saved = workdir.read_config()
    if saved is None:
        raise FlaxDigitsError(
            f"{workdir}: no trained model here (no {workdir.config_file.name}); train one "
            f"first with --mode=train")
    config = config_lib.saved_config(workdir)
    model = models.model_from_config(config)
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        first = checkpoints.best_step() if which == "best" else checkpoints.latest_step()
        variables, step = checkpoints.restore_readable_variables(first)
    finally:
        checkpoints.close()
    expected = jax.eval_shape(model.init, jax.random.key(0),
                              np.zeros((1, IMAGE_SIDE, IMAGE_SIDE, 1), np.float32))
    if shapes(expected) != shapes(variables):
        raise FlaxDigitsError(
            f"{workdir.config_file}: its model ({config.model.name}) does not match the "
            f"parameters in {checkpoints.directory}/{step}")
    log.info("Loaded %s step %d (%s)", checkpoints.directory, step, which)
    return Trained(model, variables, config, step)


def shapes(variables) -> dict:
    """{path: shape} of every array: what must agree between a model and a checkpoint."""
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf
            in jax.tree_util.tree_flatten_with_path(variables)[0]}


@functools.partial(jax.jit, static_argnums=(0, 3))
def _log_probabilities(model, variables, images_bhwc, view):
    if view != augment.TTA_VIEWS[0]:
        images_bhwc = jax.vmap(augment.transform, in_axes=(0, None, None, None, None))(
            images_bhwc, *view)
    return jax.nn.log_softmax(model.apply(variables, images_bhwc), axis=-1)


def predict_log_probabilities(model, variables, images_bhwc: np.ndarray,
                              batch_size: int = 1000, tta_views: int = 1) -> np.ndarray:
    """Log of the softmax probabilities (N, 10) for float32 images (N, 28, 28, 1) in [0, 1],
    averaged (as probabilities) over the first `tta_views` of augment.TTA_VIEWS (1: the
    images as they are). Fixed batches, the last one padded (data.padded_batches), so one
    compilation per view serves any N."""
    if not 1 <= tta_views <= len(augment.TTA_VIEWS):
        raise ValueError(f"tta_views={tta_views} must be between 1 and "
                         f"{len(augment.TTA_VIEWS)}")
    count = len(images_bhwc)
    batch_size = max(1, min(batch_size, count))
    views = []
    for view in augment.TTA_VIEWS[:tta_views]:
        out = np.empty((count, NUM_CLASSES), np.float32)
        for start, batch in zip(range(0, count, batch_size),
                                data.padded_batches({"image": images_bhwc}, batch_size)):
            real = int(batch["mask"].sum())
            out[start:start + real] = np.asarray(
                _log_probabilities(model, variables, batch["image"], view))[:real]
        views.append(out)
    if tta_views == 1:
        return views[0]  # exact: no round trip through probabilities
    mean = np.mean([np.exp(v.astype(np.float64)) for v in views], axis=0)
    return np.log(mean).astype(np.float32)


def predict_probabilities(model, variables, images_bhwc: np.ndarray,
                          batch_size: int = 1000, tta_views: int = 1) -> np.ndarray:
    """Softmax probabilities (N, 10); see predict_log_probabilities."""
    return np.exp(predict_log_probabilities(model, variables, images_bhwc, batch_size,
                                            tta_views))


def ensemble_probabilities(members, images_bhwc: np.ndarray, batch_size: int = 1000,
                           tta_views: int = 1) -> np.ndarray:
    """The mean of the members' (Trained) probabilities, each with TTA."""
    total = sum(predict_probabilities(m.model, m.variables, images_bhwc, batch_size, tta_views)
                .astype(np.float64) for m in members)
    return (total / len(members)).astype(np.float32)


def is_plain(config) -> bool:
    """Whether `config.inference` asks for the model alone: no TTA, no ensemble."""
    return config.inference.tta_views == 1 and not config.inference.ensemble_workdirs


def predict_as_configured(trained: Trained, images_bhwc: np.ndarray, config) -> np.ndarray:
    """Probabilities of `trained`, averaged with the best checkpoint of every workdir in
    `config.inference.ensemble_workdirs`, each with `config.inference.tta_views` views."""
    members = [trained] + [load(w, which="best") for w in config.inference.ensemble_workdirs]
    return ensemble_probabilities(members, images_bhwc, config.eval_batch_size,
                                  config.inference.tta_views)
