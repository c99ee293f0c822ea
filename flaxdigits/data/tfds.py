"""MNIST through tensorflow-datasets: `pip install -e '.[tfds]' in the flaxdigits checkout` (Colab has it)."""

import logging
import socket
from typing import Optional

import numpy as np

from flaxdigits import IMAGE_SIDE
from flaxdigits.data import RawDigits, check_labels
from flaxdigits.errors import FlaxDigitsError

log = logging.getLogger(__name__)

DOWNLOAD_HOST = "storage.googleapis.com"  # where tensorflow-datasets downloads MNIST from


def load(data_dir: Optional[str] = None) -> tuple[RawDigits, str]:
    """MNIST's train and test splits (downloads on first use, as tfds does)."""
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise FlaxDigitsError(
            f"config.data.source='tfds' needs tensorflow and tensorflow-datasets ({e}); "
            f"pip install -e '.[tfds]' in the flaxdigits checkout") from None
    # TensorFlow only reads files here: keep it off the GPUs that JAX needs.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow was initialised earlier; it then already holds them
        log.warning("TensorFlow was initialised before flaxdigits could hide GPUs from it")
    builder = tfds.builder("mnist", data_dir=data_dir)
    mocked = "mock" in tfds.core.DatasetBuilder.download_and_prepare.__qualname__  # tests
    if not builder.is_prepared() and not mocked:
        # Offline, tensorflow-datasets retries for minutes before it gives up: ask first.
        try:
            socket.create_connection((DOWNLOAD_HOST, 443), timeout=15).close()
        except OSError as e:
            raise FlaxDigitsError(
                f"tensorflow-datasets has no prepared mnist in {builder.data_dir} and cannot "
                f"download it ({DOWNLOAD_HOST}: {e.strerror or e}); set config.data.dir to a "
                f"folder of MNIST files, or use data.source='files'") from None
        log.info("tensorflow-datasets: downloading mnist into %s", builder.data_dir)
    try:
        splits = tfds.load("mnist", split=["train", "test"], as_supervised=True,
                           data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 (tfds and TensorFlow raise many kinds)
        text = " ".join(str(e).split())[:200]
        raise FlaxDigitsError(f"tensorflow-datasets could not load mnist ({type(e).__name__}: "
                              f"{text})") from None
    arrays = []
    for dataset, split in zip(splits, ("train", "test")):
        # Read in large batches rather than `batch_size=-1`: one code path for the real and
        # the mocked dataset (whose unknown length breaks the whole-split read).
        batches = list(tfds.as_numpy(dataset.batch(10_000)))
        images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
        labels = np.concatenate([b[1] for b in batches]).astype(np.int64)
        check_labels(labels, f"tfds mnist/{split}")
        arrays += [images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels]
    return RawDigits(*arrays), "tensorflow-datasets mnist"
