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
MAX_EXAMPLES = 10_000_000  # far beyond any digit set; a header promising more is refused

# Accepted spellings of each file, without and with ".gz". The dotted spelling is how some
# re-distributions (e.g. Kaggle's "MNIST dataset" upload) name the same files.
FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def find_file(folder: pathlib.Path, key: str) -> Optional[pathlib.Path]:
    """The one file of `key` in `folder`, in any accepted spelling; two spellings of the
    same file would leave it to chance which is read: refused."""
    found = [candidate for name in FILES[key]
             for candidate in (folder / name, folder / (name + ".gz")) if candidate.is_file()]
    if len(found) > 1:
        raise FlaxDigitsError(f"{folder}: holds {' and '.join(p.name for p in found)}, the "
                              f"same file twice; keep one")
    return found[0] if found else None


def read_bytes_maybe_gzipped(path: pathlib.Path, *, images: bool) -> bytes:
    """The file's bytes, decompressed if it is gzipped (whatever it is called). Its header is
    read and checked first, and no more is read than it promises (plus one byte, to notice
    trailing data): a small .gz that inflates to gigabytes, or a plain file larger than its
    header says, is refused before it is read, not read whole."""
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # gzip's magic
    header_size = 16 if images else 8
    try:
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            header = f.read(header_size)
            if (len(header) < header_size or int.from_bytes(header[:4], "big")
                    != (IMAGES_MAGIC if images else LABELS_MAGIC)):
                return header  # parse() names the truncated header or the wrong magic
            dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big")
                    for i in range(3 if images else 1)]
            promised = int(np.prod(dims, dtype=np.int64))
            if promised > MAX_EXAMPLES * (IMAGE_SIDE * IMAGE_SIDE if images else 1):
                raise FlaxDigitsError(f"{path}: its header promises {promised:,} bytes, more "
                                      f"than {MAX_EXAMPLES:,} digits")
            if not gzipped:
                size, expected = path.stat().st_size, header_size + promised
                if size != expected:
                    raise FlaxDigitsError(
                        f"{path}: {'truncated' if size < expected else 'trailing bytes'}: "
                        f"{size} bytes, the header promises {expected}")
            return header + f.read(promised + 1)
    except (OSError, EOFError) as e:
        if not gzipped:
            raise
        raise FlaxDigitsError(f"{path}: broken gzip data ({e})") from None


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
    if dims[0] == 0:
        raise FlaxDigitsError(f"{path}: holds no {kind} (its header says 0)")
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
    images = parse(read_bytes_maybe_gzipped(images_path, images=True), images_path, images=True)
    labels = parse(read_bytes_maybe_gzipped(labels_path, images=False), labels_path,
                   images=False)
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
