"""The original MNIST format: IDX files, gzipped or not, in one folder."""

import gzip
import pathlib
from typing import Optional

import numpy as np

from flaxdigits import IMAGE_SIDE
from flaxdigits.data import RawDigits, check_labels
from flaxdigits.errors import FlaxDigitsError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# Accepted spellings of each file, without and with ".gz". The dotted spelling is how some
# re-distributions (e.g. Kaggle's "MNIST dataset" upload) name the same files.
FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def find_file(folder: pathlib.Path, key: str) -> Optional[pathlib.Path]:
    for name in FILES[key]:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def read_bytes_maybe_gzipped(path: pathlib.Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise FlaxDigitsError(f"{path}: broken gzip data ({e})") from None
    return raw


def parse(raw: bytes, path, *, images: bool) -> np.ndarray:
    """Bytes of one IDX file -> uint8 array (N, 28, 28) for images or (N,) for labels."""
    kind = "images" if images else "labels"
    magic = IMAGES_MAGIC if images else LABELS_MAGIC
    header_size = 16 if images else 8
    if len(raw) == 0:
        raise FlaxDigitsError(f"{path}: empty file")
    if len(raw) < header_size:
        raise FlaxDigitsError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise FlaxDigitsError(
            f"{path}: magic number 0x{found:08x} is not that of IDX {kind} (0x{magic:08x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3 if images else 1)]
    if images and dims[1:] != [IMAGE_SIDE, IMAGE_SIDE]:
        raise FlaxDigitsError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise FlaxDigitsError(
            f"{path}: {'truncated' if len(raw) < expected else 'trailing bytes'}: "
            f"{len(raw)} bytes, the header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def to_bytes(array: np.ndarray) -> bytes:
    """uint8 images (N, 28, 28) or labels (N,) -> IDX file bytes, the inverse of `parse`."""
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def read_pair(images_path: pathlib.Path, labels_path: pathlib.Path):
    images = parse(read_bytes_maybe_gzipped(images_path), images_path, images=True)
    labels = parse(read_bytes_maybe_gzipped(labels_path), labels_path, images=False)
    if len(images) != len(labels):
        raise FlaxDigitsError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    check_labels(labels, str(labels_path))
    return images, labels.astype(np.int64)


def load_folder(folder: pathlib.Path) -> RawDigits:
    """The training pair and, where both of its files are there, the test pair."""
    paths = {key: find_file(folder, key) for key in FILES}
    for key in ("train_images", "train_labels"):
        if paths[key] is None:
            raise FlaxDigitsError(f"{folder}: missing {FILES[key][0]}[.gz]")
    train = read_pair(paths["train_images"], paths["train_labels"])
    if (paths["test_images"] is None) != (paths["test_labels"] is None):
        present = "test_images" if paths["test_images"] else "test_labels"
        missing = "test_labels" if paths["test_images"] else "test_images"
        raise FlaxDigitsError(
            f"{folder}: has {paths[present].name} but is missing {FILES[missing][0]}[.gz]")
    if paths["test_images"] is None:
        return RawDigits(*train)
    return RawDigits(*train, *read_pair(paths["test_images"], paths["test_labels"]))
