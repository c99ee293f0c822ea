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


def rings_and_bars(count: int):
    """Digits whose label shows in their ink: rings are 0s, upright bars are 1s."""
    rings, _ = ring_digits(count)
    images = rings.copy()
    labels = np.arange(count) % 2
    images[labels == 1] = 0
    images[labels == 1, 4:24, 12:16] = 255
    return images, labels


def test_the_readers_own_cuts_are_labelled_by_the_ink_they_hold():
    images, labels = rings_and_bars(40)
    x, targets = cut_pieces.read(images, labels, 200, seed=1)
    assert x.shape == (200, 28, 28, 1) and targets.shape == (200, 10)
    np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-6)
    uniform = np.isclose(targets.max(axis=1), 0.1)
    assert 0.1 < uniform.mean() < 0.9  # both kinds are made
    label = targets.argmax(axis=1)
    assert set(label[~uniform]) == {0, 1}
    centre = x[:, 12:16, 13:15, 0].mean(axis=(1, 2))
    # A cut labelled 0 is a whole ring (its centre empty), one labelled 1 a bar.
    assert centre[~uniform & (label == 0)].max() < 0.2
    assert centre[~uniform & (label == 1)].min() >= 0.4
    again, _ = cut_pieces.read(images, labels, 200, seed=1)
    np.testing.assert_array_equal(x, again)


def test_read_pieces_join_the_training_split_only():
    images, labels = rings_and_bars(200)
    raw = data.RawDigits(images, labels, images[:20], labels[:20])
    plain = data.make_splits(raw, validation_fraction=0.1, split_seed=0, source="rings")
    read = data.make_splits(raw, validation_fraction=0.1, split_seed=0, source="rings",
                            read_pieces=0.1)
    assert len(read.train) == len(plain.train) + 18
    np.testing.assert_array_equal(read.validation.images, plain.validation.images)
