"""Small data and configs for tests: synthetic digits in every on-disk format."""

import gzip
import pathlib

import numpy as np

from configs import tiny
from flaxdigits import data as data_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


def tiny_config(**overrides):
    """configs/tiny.py with dotted-name overrides, e.g. tiny_config(**{'data.dir': d})."""
    config = tiny.get_config()
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def synthetic_digits(count: int, seed: int = 0):
    """uint8 images (count, 28, 28) whose label is drawn as a bright bar: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
    return images, labels.astype(np.int64)


def write_idx_folder(folder: pathlib.Path, train_count=300, test_count=100, gz=True,
                     dotted=False):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train_count, 0), ("t10k", test_count, 1)):
        images, labels = synthetic_digits(count, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            if dotted:
                name = name.replace(f"-{kind}", f"-{kind.split('-')[0]}.{kind.split('-')[1]}")
            content = data_lib.idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(content))
            else:
                (folder / name).write_bytes(content)
    return folder


def kaggle_train_frame(count=300, seed=0):
    import pandas as pd

    images, labels = synthetic_digits(count, seed)
    frame = pd.DataFrame(images.reshape(count, -1), columns=data_lib.PIXEL_COLUMNS)
    frame.insert(0, "label", labels)
    return frame


def write_kaggle_folder(folder: pathlib.Path, train_count=300, test_count=50):
    folder.mkdir(parents=True, exist_ok=True)
    kaggle_train_frame(train_count).to_csv(folder / "train.csv", index=False)
    test = kaggle_train_frame(test_count, seed=1).drop(columns="label")
    test.to_csv(folder / "test.csv", index=False)
    return folder


def mnist_arrays():
    """(train_images, train_labels, test_images, test_labels) of the real MNIST files, or a
    skipped test where ../shared/data/mnist is absent."""
    import pytest

    if not MNIST_DIR.is_dir():
        pytest.skip(f"{MNIST_DIR} is absent")
    return data_lib.load_idx_folder(MNIST_DIR)


def write_mnist_subset(folder: pathlib.Path, train_count: int, test_count: int):
    """The first examples of real MNIST as an IDX folder: real digits, small enough to train
    a tiny model in seconds."""
    train_images, train_labels, test_images, test_labels = mnist_arrays()
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte", train_images[:train_count]),
                        ("train-labels-idx1-ubyte", train_labels[:train_count]),
                        ("t10k-images-idx3-ubyte", test_images[:test_count]),
                        ("t10k-labels-idx1-ubyte", test_labels[:test_count])):
        (folder / name).write_bytes(data_lib.idx_bytes(array))
    return folder
