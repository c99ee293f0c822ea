"""Data: MNIST sources -> RawDigits (uint8) -> Dataset of Splits -> padded batches.

Sources (chosen by `config.data`), one module each:
  * idx.py    a folder of the original IDX files, gzipped or not (`data.dir`);
  * kaggle.py a folder of Kaggle "Digit Recognizer" CSVs (`data.dir` holding train.csv);
  * tfds.py   tensorflow-datasets `mnist` (`data.source = 'tfds'`, the path Colab users take);
  * fetch.py  nothing given: MNIST fetched once into a cache folder.

Every source ends in RawDigits: uint8 images (N, 28, 28) and int labels (N,), which
`make_splits` turns into float32 images (N, 28, 28, 1) in [0, 1] and one-hot float32 labels
(N, 10), with a stratified, seeded validation split held out of the training data.
Bad input raises FlaxDigitsError with a one-line message naming the file and the fault.
"""

import dataclasses
import hashlib
import logging
import pathlib
from typing import Iterator, NamedTuple, Optional

import numpy as np

from flaxdigits import NUM_CLASSES
from flaxdigits.errors import FlaxDigitsError

log = logging.getLogger(__name__)


class RawDigits(NamedTuple):
    """What every source reads: uint8 images (N, 28, 28) and int64 labels (N,); the test
    pair is None where the source has no labelled test set (Kaggle)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: Optional[np.ndarray] = None
    test_labels: Optional[np.ndarray] = None


@dataclasses.dataclass
class Split:
    """One split, ready for the model."""

    images: np.ndarray  # float32 (N, 28, 28, 1) in [0, 1]
    labels: np.ndarray  # float32 (N, 10) one-hot

    def __len__(self) -> int:
        return len(self.images)

    @property
    def label_ids(self) -> np.ndarray:
        """Integer labels (N,), from the one-hot rows."""
        return self.labels.argmax(axis=-1)


@dataclasses.dataclass
class Dataset:
    train: Split
    validation: Optional[Split]  # None when validation_fraction == 0
    test: Optional[Split]  # None where the source has no labelled test set (Kaggle)
    source: str  # what was read, for the log and the report
    # What the training data is, wherever it lies: {'examples': N, 'sha256': ...} of the
    # training images and labels as read (before the validation split).
    fingerprint: dict = dataclasses.field(default_factory=dict)
    # How many of `train`'s first examples are the training digits themselves (the rest
    # are pieces: data.cut_pieces, data.read_pieces); None = all of them.
    train_digits: Optional[int] = None


def fingerprint(raw: RawDigits) -> dict:
    """Counts and a hash of the training images and labels: the same data in another folder
    or format gives the same fingerprint; any other data another one."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(raw.train_images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(raw.train_labels, dtype=np.int64).tobytes())
    return {"examples": int(len(raw.train_labels)), "sha256": digest.hexdigest()}


def to_model_inputs(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]."""
    return (images_uint8.astype(np.float32) / 255.0)[..., None]


def one_hot(label_ids: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[label_ids]


def check_labels(labels: np.ndarray, where: str) -> None:
    """Every source's labels must be digits."""
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise FlaxDigitsError(
            f"{where}: label {labels[bad[0]]} at row {bad[0]} is outside 0..9 "
            f"({len(bad)} such rows)")


def stratified_split(label_ids: np.ndarray, fraction: float, seed: int):
    """Indices (keep, held_out): `fraction` of each class held out, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    held_out = []
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(label_ids == digit)
        count = int(round(fraction * len(members)))
        held_out.append(rng.permutation(members)[:count])
    held_out = np.sort(np.concatenate(held_out))
    keep = np.setdiff1d(np.arange(len(label_ids)), held_out)
    return keep, held_out


def make_splits(raw: RawDigits, *, validation_fraction: float, split_seed: int,
                source: str, cut_pieces: float = 0.0, read_pieces: float = 0.0) -> Dataset:
    """RawDigits -> Dataset with a validation split held out of the training data.
    `cut_pieces`: that share of extra training examples shaped like the number reader's
    cuts, `read_pieces`: that share of the reader's own cuts of numbers written with the
    training digits (both flaxdigits/data/cut_pieces.py, from the training digits only)."""
    train_labels = np.asarray(raw.train_labels, dtype=np.int64)
    keep, held_out = stratified_split(train_labels, validation_fraction, split_seed)

    def split(images, labels):
        return Split(to_model_inputs(images), one_hot(np.asarray(labels, dtype=np.int64)))

    if raw.test_images is None and not len(held_out):
        raise FlaxDigitsError(
            f"{source}: has no labelled test split, and config.data.validation_fraction="
            f"{validation_fraction} holds out no validation split of its {len(train_labels)} "
            f"training digits: nothing could be reported on (raise data.validation_fraction)")
    if validation_fraction > 0 and not len(held_out):
        log.warning("%s: config.data.validation_fraction=%g holds out no digit of its %d "
                    "training digits: no validation split (the latest checkpoint counts as "
                    "the best)", source, validation_fraction, len(train_labels))
    validation = (split(raw.train_images[held_out], train_labels[held_out])
                  if len(held_out) else None)
    test = None if raw.test_images is None else split(raw.test_images, raw.test_labels)
    train = split(raw.train_images[keep], train_labels[keep])

    from flaxdigits.data import cut_pieces as pieces

    for field, share, make, what in (
            ("cut_pieces", cut_pieces, pieces.make, "pieces of cut digits"),
            ("read_pieces", read_pieces, pieces.read, "of the reader's cuts of written numbers")):
        if share:
            count = int(round(share * len(keep)))
            images, targets = make(raw.train_images[keep], train_labels[keep], count,
                                   seed=split_seed)
            log.info("Training split: %d %s added (data.%s=%g)", count, what, field, share)
            train = Split(np.concatenate([train.images, images]),
                          np.concatenate([train.labels, targets]))
    return Dataset(train, validation, test, source, fingerprint(raw), train_digits=len(keep))


def load_dataset(data_config, training_pieces: bool = True) -> Dataset:
    """The Dataset that `config.data` names (see the module docstring). The config has been
    checked by flaxdigits.config.validate. With `training_pieces` False, the training split
    is the training digits alone, whatever data.cut_pieces and data.read_pieces say: for
    the modes that read only the held-out splits (the pieces take a minute to make)."""
    if data_config.source == "tfds":
        from flaxdigits.data import tfds

        raw, description = tfds.load(data_config.tfds_data_dir or None)
    else:
        from flaxdigits.data import fetch

        folder = data_config.dir or fetch.fetch_mnist(data_config.cache_dir or None)
        raw, description = load_folder(folder)
    log.info("Data: %s", description)
    missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(raw.train_labels).tolist()))
    if missing:
        log.warning("%s: the training data has no examples of digit(s) %s: the model cannot "
                    "learn them, and accuracy on such data says little", description,
                    ", ".join(map(str, missing)))
    pieces = {field: data_config.get(field, 0.0) if training_pieces else 0.0
              for field in ("cut_pieces", "read_pieces")}
    return make_splits(raw, validation_fraction=data_config.validation_fraction,
                       split_seed=data_config.split_seed, source=description, **pieces)


def load_folder(folder) -> tuple[RawDigits, str]:
    """(RawDigits, description) of a folder of IDX files or Kaggle CSVs, told apart by the
    file names."""
    from flaxdigits.data import idx, kaggle

    folder = pathlib.Path(folder).expanduser()
    if not folder.exists():
        raise FlaxDigitsError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise FlaxDigitsError(f"{folder}: not a folder")
    has_idx = idx.find_file(folder, "train_images") or idx.find_file(folder, "train_labels")
    has_csv = (folder / kaggle.TRAIN_FILE).is_file()
    if has_idx and has_csv:
        raise FlaxDigitsError(
            f"{folder}: holds both MNIST IDX files and a Kaggle train.csv; keep one format")
    if has_idx:
        return idx.load_folder(folder), f"MNIST IDX files in {folder}"
    if has_csv:
        return kaggle.load_folder(folder), f"Kaggle CSV {folder / kaggle.TRAIN_FILE}"
    raise FlaxDigitsError(
        f"{folder}: no MNIST IDX files (train-images-idx3-ubyte[.gz], ...) "
        f"and no Kaggle train.csv")


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict]:
    """`arrays` (same length N) in batches of exactly `batch_size` rows, the last one padded
    with zeros, each with a boolean 'mask' (True for real rows): every batch has one shape,
    so a jitted function compiles once and every example is counted exactly once. The one
    batching helper of training-time validation, testing and inference."""
    count = len(next(iter(arrays.values())))
    for start in range(0, count, batch_size):
        real = min(batch_size, count - start)
        batch = {}
        for name, array in arrays.items():
            chunk = array[start:start + real]
            if real < batch_size:
                padding = np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            batch[name] = chunk
        batch["mask"] = np.arange(batch_size) < real
        yield batch
