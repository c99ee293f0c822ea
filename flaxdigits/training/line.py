"""Training the line reader (models.LineReader), after the classifier, in the same run.

    config.line_reader.steps > 0  ->  W/line_reader/ and W/line_reader.json

Lines of 1-8 digits are composed from the training split's digits only (data/written.py:
glyph_pool redraws `line_reader.glyphs` of them with a thin pen, a round brush or MNIST's
own strokes scaled, line_of_glyphs writes them spaced 30%, close 30% or touching 40% of the
time), cut to a strip (serving/preprocess.line_strip) and padded to SHORT_WIDTH or
TRAIN_WIDTH columns (training_batch); two threads make
batches while the jitted step runs (numpy, scipy and Pillow release the GIL for most of
it). Loss: CTC (optax.ctc_loss); Adam, warmup then cosine decay.

A finished line reader whose settings match the config is kept (a rerun of the same
command trains nothing); a stopped one is trained again from its start: it takes minutes,
and has no checkpoints of its own.
"""

import logging
import queue
import threading
import time

import jax
import numpy as np
import optax

from flaxdigits import checkpoint, data, models
from flaxdigits.data import written
from flaxdigits.errors import RunStopped
from flaxdigits.serving import preprocess
from flaxdigits.training import hooks

log = logging.getLogger(__name__)

TRAIN_WIDTH = 216  # training strips are padded to this many columns (54 frames) ...
SHORT_WIDTH = 120  # ... or, for lines of at most half MAX_LENGTH digits, to this many
MAX_LENGTH = 8  # digits per training line
GAP_SHARES = {"spaced": 0.3, "close": 0.3, "touching": 0.4}
LOG_EVERY_STEPS = 100


def settings(config) -> dict:
    """What makes one line reader another: a saved one with other settings is retrained."""
    return {**config.line_reader.to_dict(), "seed": config.seed,
            "split_seed": config.data.split_seed}


def ensure_trained(config, workdir, dataset: data.Dataset) -> None:
    """Trains the line reader of `config` into `workdir` unless it is there already."""
    if not config.line_reader.steps:
        return
    if jax.process_count() > 1:  # (one host's job: a few minutes on one CPU)
        log.warning("The line reader is not trained in a run of several processes: train "
                    "it with one process (the same command resumes and trains only it)")
        return
    saved = checkpoint.read_line_reader_info(workdir)
    if saved is not None and saved.get("settings") == settings(config):
        log.info("Line reader: already trained (%s)", checkpoint.line_reader_paths(workdir)[0])
        return
    digits = dataset.train_digits or len(dataset.train)
    images = np.rint(dataset.train.images[:digits, :, :, 0] * 255).astype(np.uint8)
    labels = dataset.train.label_ids[:digits]
    variables, figures = train(config.line_reader, images, labels, config.seed)
    checkpoint.save_line_reader(workdir, variables, {"settings": settings(config), **figures})
    log.info("Line reader saved in %s", checkpoint.line_reader_paths(workdir)[0])


def training_batch(glyphs, glyph_labels, rng: np.random.Generator, batch_size: int):
    """(strips (B, LINE_STRIP, width, 1), frame paddings (B, width / 4), labels
    (B, MAX_LENGTH) as 1 + digit, label paddings): 1 for padding, as optax wants. Half of
    the batches hold lines of 1-4 digits in SHORT_WIDTH columns, half lines of 5-8 in
    TRAIN_WIDTH: the lengths are as uniform as one kind of batch of 1-8 would make them, for
    about 0.78 of its compute."""
    short = rng.random() < 0.5
    width = SHORT_WIDTH if short else TRAIN_WIDTH
    lengths = (1, MAX_LENGTH // 2) if short else (MAX_LENGTH // 2 + 1, MAX_LENGTH)
    strips = np.zeros((batch_size, preprocess.LINE_STRIP, width, 1), np.float32)
    frame_pad = np.ones((batch_size, width // 4), np.float32)
    labels = np.zeros((batch_size, MAX_LENGTH), np.int32)
    label_pad = np.ones((batch_size, MAX_LENGTH), np.float32)
    gaps, shares = list(GAP_SHARES), list(GAP_SHARES.values())
    for b in range(batch_size):
        while True:  # a line too wide for the strip is drawn again
            length = int(rng.integers(lengths[0], lengths[1] + 1))
            ink, digits = written.line_of_glyphs(glyphs, glyph_labels, length,
                                                 gaps[rng.choice(len(gaps), p=shares)], rng)
            strip = preprocess.line_strip(ink)
            if strip.shape[1] <= width:
                break
        strips[b, :, :strip.shape[1], 0] = strip
        frame_pad[b, :strip.shape[1] // 4] = 0
        labels[b, :length] = digits + 1
        label_pad[b, :length] = 0
    return strips, frame_pad, labels, label_pad


def train(line_config, images: np.ndarray, labels: np.ndarray, seed: int):
    """models.LineReader trained for `line_config.steps` on lines of `images` (uint8
    (N, 28, 28) training digits) -> (its variables, {'steps', 'final_loss', 'seconds'})."""
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    glyphs, glyph_labels = written.glyph_pool(images, labels, line_config.glyphs, rng)
    log.info("Line reader: %d training digits redrawn in %.1f s", len(glyphs),
             time.monotonic() - started)
    batches = queue.Queue(maxsize=8)
    done = threading.Event()

    def produce(producer_seed):
        producer_rng = np.random.default_rng(producer_seed)
        while not done.is_set():
            batch = training_batch(glyphs, glyph_labels, producer_rng, line_config.batch_size)
            while not done.is_set():
                try:
                    batches.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue

    producers = [threading.Thread(target=produce, args=(seed + k,), daemon=True)
                 for k in (1, 2)]
    for producer in producers:
        producer.start()
    try:
        return _train(line_config, batches, seed)
    finally:
        done.set()
        for producer in producers:
            producer.join(timeout=5)


def _train(line_config, batches: queue.Queue, seed: int):
    steps = line_config.steps
    model = models.LineReader()
    variables = model.init(jax.random.key(seed), batches.get()[0])
    log.info("Line reader: %d parameters, %d steps of %d lines", models.count_params(variables),
             steps, line_config.batch_size)
    rate = line_config.learning_rate
    schedule = optax.warmup_cosine_decay_schedule(0.0, rate, max(1, min(200, steps // 5)),
                                                  steps, rate * 0.02)
    optimizer = optax.adam(schedule)

    @jax.jit
    def step(params, batch_stats, opt_state, strips, frame_pad, labels, label_pad):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, strips,
                                          train=True, mutable=["batch_stats"])
            loss = optax.ctc_loss(logits, frame_pad, labels, label_pad).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    started = time.monotonic()
    loss = None
    with hooks.StopSignals("stopping after this step (the line reader keeps no checkpoint: "
                           "the next run trains it again)") as stop:
        for index in range(1, steps + 1):
            params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                        *batches.get())
            if stop.received is not None:
                raise RunStopped(
                    f"stopped by {stop.describe(stop.received)} while training the line reader "
                    f"(step {index}/{steps}); the classifier is saved: run the same command to "
                    f"train the line reader again", stop.received)
            if index % LOG_EVERY_STEPS == 0 or index == steps:
                elapsed = time.monotonic() - started
                log.info("line reader step %d/%d: CTC loss %.3f, %.2f steps/s, ETA %s", index,
                         steps, float(loss), index / elapsed,
                         hooks.format_seconds((steps - index) * elapsed / index))
    seconds = time.monotonic() - started
    log.info("Line reader: %d steps in %.0f s, final CTC loss %.3f", steps, seconds,
             float(loss))
    return ({"params": params, "batch_stats": batch_stats},
            {"steps": steps, "final_loss": float(loss), "seconds": round(seconds, 1)})
