"""The training state and the jitted steps: pure functions of (state, batch, key).

Randomness comes from the step number: the step's key is `fold_in(key, state.step)`, split
once into one key per consumer (dropout, augmentation), so a resumed run draws exactly the
keys an uninterrupted one would and no key needs checkpointing.
"""

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from flaxdigits import IMAGE_SIDE
from flaxdigits import augment as augment_lib

Batch = dict[str, Any]


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, optimizer state) plus BatchNorm's running
    statistics (an empty dict for models without BatchNorm) and, where config.optim.ema_decay
    asks for it, an exponential moving average of the parameters (else None)."""

    batch_stats: Any = None
    ema_params: Any = None


def model_variables(state: TrainState) -> dict:
    """The variables `model.apply` takes for evaluation and inference: the averaged
    parameters where the state keeps an average, else the parameters; and batch_stats where
    the model has them."""
    params = state.params if state.ema_params is None else state.ema_params
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def create_train_state(model, tx: optax.GradientTransformation, key: jax.Array,
                       sharding=None, averaged: bool = False) -> TrainState:
    """A fresh TrainState; with `sharding`, built directly in that placement (replicated
    on every device of the mesh). `averaged`: it keeps a moving average of the parameters
    (starting from them)."""
    def build(key):
        dummy_bhwc = jnp.zeros((1, IMAGE_SIDE, IMAGE_SIDE, 1), jnp.float32)
        variables = model.init(key, dummy_bhwc)
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}),
                                 ema_params=variables["params"] if averaged else None)

    return jax.jit(build, out_shardings=sharding)(key)


def cross_entropy(logits_bk: jax.Array, labels_bk: jax.Array) -> jax.Array:
    """Categorical cross-entropy per example, on one-hot (or soft) labels."""
    return optax.softmax_cross_entropy(logits_bk.astype(jnp.float32), labels_bk)


class Recipe(NamedTuple):
    """How a step learns beyond the optimizer (config.optim; hashable: a static argument
    of the jitted steps). `ema_decay`: the parameters' moving average keeps this much of
    itself each step (0: no average); warmed up as min(decay, (1 + t) / (10 + t)) so that
    early steps do not drag the average towards the initial weights. `label_smoothing`:
    the training targets' share spread evenly over all classes."""

    ema_decay: float = 0.0
    label_smoothing: float = 0.0


def _train_step(state: TrainState, batch: Batch, key: jax.Array,
                augment: Optional[augment_lib.Strength] = None, recipe: Recipe = Recipe()):
    dropout_key, augment_key = jax.random.split(jax.random.fold_in(key, state.step))
    targets_bk = batch["label"]
    if recipe.label_smoothing:
        targets_bk = optax.smooth_labels(targets_bk, recipe.label_smoothing)
    images_bhwc = batch["image"]
    if augment is not None:
        images_bhwc = augment_lib.augment_batch(augment_key, images_bhwc, augment)

    def loss_fn(params):
        variables = {**model_variables(state), "params": params}
        logits_bk, updates = state.apply_fn(variables, images_bhwc, train=True,
                                            rngs={"dropout": dropout_key},
                                            mutable=["batch_stats"])
        return cross_entropy(logits_bk, targets_bk).mean(), (logits_bk, updates)

    (loss, (logits_bk, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get("batch_stats", state.batch_stats))
    if state.ema_params is not None:
        t = state.step.astype(jnp.float32)  # steps done, this one included
        decay = jnp.minimum(recipe.ema_decay, (1.0 + t) / (10.0 + t))
        state = state.replace(ema_params=jax.tree_util.tree_map(
            lambda average, new: decay * average + (1.0 - decay) * new, state.ema_params,
            state.params))
    # Over the digits: a non-digit's target (uniform, data/cut_pieces.py) has no argmax.
    is_digit = batch["label"].max(-1) > 0.5
    right = (logits_bk.argmax(-1) == batch["label"].argmax(-1)) & is_digit
    accuracy = right.sum() / jnp.maximum(is_digit.sum(), 1)
    return state, {"loss": loss, "accuracy": accuracy}


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("augment", "recipe"))
def train_step(state: TrainState, batch: Batch, key: jax.Array, augment=None,
               recipe: Recipe = Recipe()):
    """One Adam step on batch {'image': (B, 28, 28, 1), 'label': one-hot (B, 10)}.

    `augment` (an augment.Strength) transforms each image first. BatchNorm statistics (if
    any) are updated from the batch. Returns the new state and {'loss', 'accuracy'} of the
    batch, computed before the update. `recipe`: label smoothing and the parameters' average.
    """
    return _train_step(state, batch, key, augment, recipe)


@functools.partial(jax.jit, donate_argnums=0,
                   static_argnames=("batch_size", "sharding", "augment", "recipe"))
def train_step_on_device(state: TrainState, train_data: Batch, order: jax.Array,
                         index_in_epoch: jax.Array, key: jax.Array, *,
                         batch_size: int, sharding=None, augment=None,
                         recipe: Recipe = Recipe()):
    """`train_step` on batch `index_in_epoch` of the epoch order `order`, gathered on the
    device from the device-resident `train_data`: no host work and no transfer per step.
    `sharding` splits the batch across the devices of the mesh."""
    rows = jax.lax.dynamic_slice_in_dim(order, index_in_epoch * batch_size, batch_size)
    batch = {name: array[rows] for name, array in train_data.items()}
    if sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, sharding)
    return _train_step(state, batch, key, augment, recipe)


@jax.jit
def eval_step(state: TrainState, batch: Batch):
    """Sums over one padded batch; `batch['mask']` is True for real examples."""
    logits_bk = state.apply_fn(model_variables(state), batch["image"])
    mask = batch["mask"]
    correct = (logits_bk.argmax(-1) == batch["label"].argmax(-1)) & mask
    return {
        "loss_sum": jnp.sum(jnp.where(mask, cross_entropy(logits_bk, batch["label"]), 0.0)),
        "correct": jnp.sum(correct, dtype=jnp.int32),
        "count": jnp.sum(mask, dtype=jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("size", "sharding"))
def _epoch_order(key, epoch, *, size, sharding):
    order = jax.random.permutation(jax.random.fold_in(key, epoch), size)
    return order if sharding is None else jax.lax.with_sharding_constraint(order, sharding)


def epoch_order(key: jax.Array, epoch: int, size: int, sharding=None) -> jax.Array:
    """The order of the training examples in `epoch` (a device array): a function of the
    key and epoch only, so a resumed run shuffles exactly as an uninterrupted one."""
    return _epoch_order(key, epoch, size=size, sharding=sharding)
