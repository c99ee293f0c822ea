"""flaxdigits/data/cut_pieces.py: the reader's wrong cuts as training examples."""

import numpy as np

from flaxdigits import data
from flaxdigits.data import cut_pieces


def ring_digits(count: int, seed: int = 0):
    """uint8 (count, 28, 28) rings of varied width on a black ground, as MNIST's are."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((28, 28))
    images = np.zeros((count, 28, 28), np.uint8)
    for image in images:
        ry, rx = rng.uniform(7, 10), rng.uniform(4, 9)
        r = ((rows - 14) / ry) ** 2 + ((cols - 14) / rx) ** 2
        image[(r > 0.5) & (r < 1.0)] = 255
    return images, np.arange(count) % 10


def test_pieces_are_mnist_style_deterministic_and_mostly_non_digits():
    images, labels = ring_digits(40)
    x, targets = cut_pieces.make(images, labels, 300, seed=3)
    assert x.shape == (300, 28, 28, 1) and targets.shape == (300, 10)
    assert x.dtype == np.float32 and x.min() >= 0 and np.allclose(x.max(axis=(1, 2, 3)), 1)
    np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-6)
    uniform = np.isclose(targets.max(axis=1), 0.1)
    assert 0.6 < uniform.mean() < 0.8  # NON_DIGIT_SHARE
    assert set(np.unique(targets[~uniform])) == {0.0, 1.0}  # the rest one-hot
    again, _ = cut_pieces.make(images, labels, 300, seed=3)
    np.testing.assert_array_equal(x, again)
    other, _ = cut_pieces.make(images, labels, 300, seed=4)
    assert not np.array_equal(x, other)
    # A half ring, scaled to fit 20x20, is no whole ring: its centre is inked.
    assert x[uniform][:, 12:16, 12:16].mean() > x[~uniform][:, 12:16, 12:16].mean()


def test_pieces_join_the_training_split_only():
    images, labels = ring_digits(200)
    raw = data.RawDigits(images, labels, images[:20], labels[:20])
    plain = data.make_splits(raw, validation_fraction=0.1, split_seed=0, source="rings")
    cut = data.make_splits(raw, validation_fraction=0.1, split_seed=0, source="rings",
                           cut_pieces=0.25)
    assert len(cut.train) == len(plain.train) + 45
    np.testing.assert_array_equal(cut.train.images[:len(plain.train)], plain.train.images)
    np.testing.assert_array_equal(cut.validation.images, plain.validation.images)
    np.testing.assert_array_equal(cut.test.images, plain.test.images)
    assert cut.fingerprint == plain.fingerprint  # the data read is the same
