"""Helpers shared by the tests, the benchmarks and the notebook: synthetic digits in every
on-disk format, digits redrawn the way people draw them, request bodies a server must
refuse, and loopback-server plumbing. Nothing here is used by training or serving."""

import contextlib
import dataclasses
import gzip
import io
import json
import pathlib
import socket
import subprocess
import time
import urllib.request
from typing import Callable, Optional

import numpy as np

from flaxdigits import IMAGE_SIDE, NUM_CLASSES
from flaxdigits.data import RawDigits, idx, kaggle

# ---------------------------------------------------------------------------------------
# Digits on disk


def synthetic_digits(count: int, seed: int = 0):
    """uint8 images (count, 28, 28) whose label is drawn as a bright bar: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % NUM_CLASSES
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    for image, label in zip(images, labels):
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
    return images, labels.astype(np.int64)


def write_idx_folder(folder: pathlib.Path, train_count=300, test_count=100, gz=True,
                     dotted=False) -> pathlib.Path:
    """Synthetic digits as MNIST IDX files; `dotted`: the 'train-images.idx3-ubyte' spelling."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train_count, 0), ("t10k", test_count, 1)):
        images, labels = synthetic_digits(count, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            if dotted:
                name = name.replace(f"-{kind}", f"-{kind.split('-')[0]}.{kind.split('-')[1]}")
            content = idx.to_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(content))
            else:
                (folder / name).write_bytes(content)
    return folder


def kaggle_train_frame(count=300, seed=0):
    """Synthetic digits as a Kaggle train.csv DataFrame (label, pixel0..pixel783)."""
    import pandas as pd

    images, labels = synthetic_digits(count, seed)
    frame = pd.DataFrame(images.reshape(count, -1), columns=kaggle.PIXEL_COLUMNS)
    frame.insert(0, "label", labels)
    return frame


def write_kaggle_folder(folder: pathlib.Path, train_count=300, test_count=50) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    kaggle_train_frame(train_count).to_csv(folder / kaggle.TRAIN_FILE, index=False)
    test = kaggle_train_frame(test_count, seed=1).drop(columns="label")
    test.to_csv(folder / kaggle.TEST_FILE, index=False)
    return folder


def write_idx_subset(raw: RawDigits, folder: pathlib.Path, train_count: int,
                     test_count: int) -> pathlib.Path:
    """The first examples of `raw` (e.g. real MNIST) as an IDX folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte", raw.train_images[:train_count]),
                        ("train-labels-idx1-ubyte", raw.train_labels[:train_count]),
                        ("t10k-images-idx3-ubyte", raw.test_images[:test_count]),
                        ("t10k-labels-idx1-ubyte", raw.test_labels[:test_count])):
        (folder / name).write_bytes(idx.to_bytes(array))
    return folder


def mnist_folder(repo: pathlib.Path, *, fetch_if_missing: bool = True) -> Optional[pathlib.Path]:
    """A folder of the real MNIST files: `../shared/data/mnist` beside the checkout where it
    exists (the project's machines), else flaxdigits' own cache (what the first training
    run fetched), fetched now if `fetch_if_missing`; None if there is none."""
    from flaxdigits.data import fetch

    shared = repo.parent / "shared" / "data" / "mnist"
    if shared.is_dir():
        return shared
    cached = fetch.default_cache_dir() / "mnist"
    if fetch.cache_is_complete(cached):
        return cached
    return fetch.fetch_mnist() if fetch_if_missing else None


# ---------------------------------------------------------------------------------------
# Digits as people draw them, and bodies a server must refuse


def redraw(digit_28x28: np.ndarray, *, height=200, top=40, left=150, canvas=280,
           blur=1.5) -> np.ndarray:
    """An MNIST digit the way a person draws it on a page: `height` pixels tall at (`top`,
    `left`) of a `canvas`-sized square, dark ink on light paper, blurred a little."""
    from PIL import Image, ImageFilter

    from flaxdigits.data import written

    big = written.scaled(digit_28x28, height).astype(np.uint8)
    page = np.zeros((canvas, canvas), np.uint8)
    page[top:top + height, left:left + big.shape[1]] = big[:canvas - top, :canvas - left]
    return np.asarray(Image.fromarray(255 - page).filter(ImageFilter.GaussianBlur(blur)))


def redraw_anywhere(digit_28x28: np.ndarray, rng: np.random.Generator,
                    canvas: int = 280) -> np.ndarray:
    """`redraw` as people draw on the page's pad: 100-250 px tall, anywhere on the canvas
    but whole on it (a digit the pad's edge cuts is another shape: a 0 cut down its right
    side is a C), blurred by 1-2.5 px."""
    from flaxdigits.data import written

    height = int(rng.integers(100, 251))
    width = written.scaled(digit_28x28, height).shape[1]
    top = int(rng.integers(0, canvas - height + 1))
    left = int(rng.integers(0, max(0, canvas - width) + 1))
    return redraw(digit_28x28, height=height, top=top, left=left, canvas=canvas,
                  blur=rng.uniform(1.0, 2.5))


def stroked(digit_28x28: np.ndarray, stroke: str, rng: np.random.Generator) -> np.ndarray:
    """An MNIST digit written alone with a round brush or a thin pen ('brush' or 'pen',
    flaxdigits.data.written), dark on a light 280x280 canvas."""
    from flaxdigits.data import written

    image, _ = written.number_image([digit_28x28], gap="spaced", stroke=stroke,
                                    light_on_dark=False, canvas=(280, 280), rng=rng)
    return image


def encode(array_or_image, kind: str = "PNG") -> bytes:
    """A uint8 array or a PIL image as PNG (or JPEG, GIF, ...) bytes."""
    from PIL import Image

    image = (array_or_image if isinstance(array_or_image, Image.Image)
             else Image.fromarray(np.asarray(array_or_image, np.uint8)))
    out = io.BytesIO()
    image.save(out, format=kind)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (no image data follows)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A valid, all-black 8-bit grayscale PNG of width x height pixels, a few hundred KB
    however large (a decompression bomb for whatever decodes it whole)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    packer, row = zlib.compressobj(9), bytes(width + 1)  # filter byte 0, then the pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def bad_bodies(body_limit: int) -> list[tuple[str, bytes, str, int]]:
    """(name, body, Content-Type, the 4xx status it must get) for every kind of request the
    API refuses; `body_limit` is the server's body limit in bytes."""
    from PIL import Image

    pixels = lambda rows: json.dumps({"pixels": rows}).encode()  # noqa: E731
    return [
        ("not an image", b"hello, world", "image/png", 400),
        ("empty image body", b"", "image/png", 400),
        ("truncated PNG", encode(np.random.default_rng(0).integers(0, 255, (280, 280)))[:120],
         "image/png", 400),
        ("empty JSON body", b"", "application/json", 400),
        ("broken JSON", b'{"pixels": [[1, 2', "application/json", 400),
        ("JSON without pixels", b'{"image": 1}', "application/json", 422),
        ("wrong shape", pixels([[0] * 28] * 27), "application/json", 422),
        ("ragged rows", pixels([[0] * 28] * 27 + [[0]]), "application/json", 422),
        ("value out of range", pixels([[0] * 27 + [256]] * 28), "application/json", 422),
        ("negative value", pixels([[-1] * 28] * 28), "application/json", 422),
        ("not numbers", pixels([["a"] * 28] * 28), "application/json", 422),
        ("numbers as strings", pixels([["0"] * 28] * 28), "application/json", 422),
        ("one number as a string", pixels([[0] * 27 + ["255"]] + [[0] * 28] * 27),
         "application/json", 422),
        ("true and false", pixels([[False] * 27 + [True]] * 28), "application/json", 422),
        ("null pixels", pixels([[None] * 28] * 28), "application/json", 422),
        ("NaN", pixels([[0] * 28] * 27 + [[0] * 27 + [1]]).replace(b"1]]", b"NaN]]"),
         "application/json", 422),
        ("blank canvas", encode(np.full((280, 280), 255)), "image/png", 422),
        ("huge image", encode(Image.new("L", (5000, 4000), 255)), "image/png", 413),
        ("decompression bomb header", png_header_only(40000, 40000), "image/png", 413),
        ("integer of 400 digits", pixels([[0] * 27 + [10 ** 400]] + [[0] * 28] * 27),
         "application/json", 422),
        ("integer of 5,000 digits", b'{"pixels": ' + b"9" * 5000 + b"}", "application/json",
         400),
        ("JSON nested 10,000 deep", b'{"pixels": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
         "application/json", 400),
        ("a speck of ink", encode(np.pad(np.full((2, 2), 255), 13)), "image/png", 422),
        ("only specks", encode(specks_page()), "image/png", 422),
        ("only a ruled line", encode(ruled_line_page()), "image/png", 422),
        ("more marks than a number has", encode(many_marks_page(60)), "image/png", 422),
        ("a 1x1 image", encode(np.zeros((1, 1))), "image/png", 422),
        ("a 10000x1 image", encode(np.tile([0, 255], (1, 5000))), "image/png", 422),
        ("body over the limit", b"\x89PNG" + b"0" * (body_limit + 1), "image/png", 413),
        ("GIF", encode(Image.new("L", (28, 28), 0), "GIF"), "image/png", 415),
        ("wrong content type", b"pixels", "text/plain", 415),
        ("a form without a file", b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1"
         b"\r\n--x--\r\n", "multipart/form-data; boundary=x", 400),
        ("a long odd content type", b"pixels", "text/" + "x" * 5000, 415),
    ]


def specks_page() -> np.ndarray:
    """White paper with a few dozen dark 2x2 specks, and nothing else."""
    page = np.full((300, 600), 255, np.uint8)
    rng = np.random.default_rng(3)
    for r, c in rng.integers(10, 280, size=(40, 2)):
        page[r:r + 2, 2 * c:2 * c + 2] = 0
    return page


def ruled_line_page() -> np.ndarray:
    """White paper with one ruled line across it."""
    page = np.full((300, 600), 255, np.uint8)
    page[200:203, 20:580] = 0
    return page


def many_marks_page(count: int) -> np.ndarray:
    """`count` short dark strokes on a line: more parts than a number has."""
    page = np.full((120, 20 * count + 40), 255, np.uint8)
    for k in range(count):
        page[30:90, 20 + 20 * k:26 + 20 * k] = 0
    return page


# ---------------------------------------------------------------------------------------
# Servers on loopback


@dataclasses.dataclass(frozen=True)
class HostileCase:
    """One hostile run of the program: `args(folder)` builds its arguments (and any files
    it needs) in an empty folder; `env` is added to the environment; `line` is part of the
    one line it must end with."""
    name: str
    args: Callable[[pathlib.Path], list]
    line: str
    env: Optional[dict] = None


def _write(path: pathlib.Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _checkpoints_is_a_file(folder: pathlib.Path) -> list:
    _write(folder / "w" / "checkpoints", "not a folder")
    return ["--config=tiny", f"--workdir={folder / 'w'}",
            f"--config.data.dir={write_idx_folder(folder / 'digits')}"]


def _zero_test_images(folder: pathlib.Path) -> list:
    digits = write_idx_folder(folder / "digits", gz=False)
    (digits / "t10k-images-idx3-ubyte").write_bytes(idx.to_bytes(np.zeros((0, 28, 28), np.uint8)))
    (digits / "t10k-labels-idx1-ubyte").write_bytes(idx.to_bytes(np.zeros(0, np.uint8)))
    return ["--config=tiny", "--workdir=w", f"--config.data.dir={digits}"]


def _bad_saved_config(folder: pathlib.Path) -> list:
    from flaxdigits import config as config_lib

    config = config_lib.load("tiny").to_dict()
    config["dtype"] = "int8"
    _write(folder / "w" / "config.json", json.dumps(config, default=list))
    (folder / "w" / "checkpoints" / "10").mkdir(parents=True)
    return ["--config=tiny", f"--workdir={folder / 'w'}", "--mode=evaluate"]


def _kaggle_without_validation(folder: pathlib.Path) -> list:
    return ["--config=tiny", "--workdir=w", "--config.data.validation_fraction=0",
            f"--config.data.dir={write_kaggle_folder(folder / 'kaggle')}"]


NEWLINE = chr(10)
HOSTILE_PROGRAM_CASES = [
    HostileCase("config missing", lambda d: ["--config=configs/nope.py", "--workdir=w"],
                "--config=configs/nope.py: no such config file; the shipped configs are "
                "accurate, base, deep, fast, page, tiny (a name, or a path to a .py file)"),
    HostileCase("config name unknown", lambda d: ["--config=bse", "--workdir=w"],
                "--config=bse: no such shipped config; the shipped configs are "),
    HostileCase("config syntax error", lambda d: [
        f"--config={_write(d / 'c' / 'bad.py', 'def get_config(:')}", "--workdir=w"],
        "bad.py: line 1: SyntaxError: "),
    HostileCase("get_config raises", lambda d: [
        f"--config={_write(d / 'c' / 'raises.py', 'def get_config():' + NEWLINE + '    1 / 0')}",
        "--workdir=w"], "raises.py: loading it failed: ZeroDivisionError: division by zero "
                        "(line 2)"),
    HostileCase("get_config returns a dict", lambda d: [
        f"--config={_write(d / 'c' / 'plain.py', 'def get_config():' + NEWLINE + '    return {}')}",
        "--workdir=w"], "plain.py: get_config() returned dict, not an ml_collections.ConfigDict"),
    HostileCase("empty workdir", lambda d: ["--config=tiny", "--workdir="],
                "--workdir is empty: name the folder for the run's files"),
    HostileCase("checkpoints is a file", _checkpoints_is_a_file,
                "checkpoints: is a file where the workdir keeps a folder; move it away"),
    HostileCase("0 test images", _zero_test_images,
                "t10k-images-idx3-ubyte: holds no images (its header says 0)"),
    HostileCase("saved config dtype int8", _bad_saved_config,
                "config.json: config.dtype='int8' must be one of 'float32', 'bfloat16'"),
    HostileCase("Kaggle with validation_fraction 0", _kaggle_without_validation,
                "config.data.validation_fraction=0: "),
    HostileCase("num_epochs 1e23", lambda d: ["--config=tiny", "--workdir=w",
                                              "--config.num_epochs=1" + "0" * 23],
                "config.num_epochs=100000000000000000000000 must be an integer from 1 to 10000"),
    HostileCase("JAX_NUM_CPU_DEVICES=abc", lambda d: ["--config=tiny", "--workdir=w"],
                "$JAX_NUM_CPU_DEVICES='abc': Invalid value \"abc\" for JAX flag",
                {"JAX_NUM_CPU_DEVICES": "abc"}),
    HostileCase("JAX_ENABLE_X64=maybe", lambda d: ["--config=tiny", "--workdir=w"],
                "$JAX_ENABLE_X64='maybe': invalid truth value 'maybe'",
                {"JAX_ENABLE_X64": "maybe"}),
    HostileCase("JAX_PLATFORMS=nonsense", lambda d: ["--config=tiny", "--workdir=w"],
                "$JAX_PLATFORMS='nonsense': Unable to initialize backend ",
                {"JAX_PLATFORMS": "nonsense"}),
    HostileCase("export of a workdir with no model", lambda d: [
        "--config=tiny", f"--workdir={d / 'untrained'}", "--mode=export"],
        "untrained: no trained model here (no config.json); train one first with --mode=train"),
    HostileCase("FLAXDIGITS_DEVICES_PER_CORE=x", lambda d: ["--config=tiny", "--workdir=w"],
                "$FLAXDIGITS_DEVICES_PER_CORE='x': want a whole number from 1 to 64",
                {"FLAXDIGITS_DEVICES_PER_CORE": "x"}),
]


def run_hostile_case(case: HostileCase, folder: pathlib.Path, program: pathlib.Path,
                     timeout: float = 120) -> tuple:
    """Runs `program` (launch.py) on `case` in `folder`; returns (outcome, the last line of
    stderr, the finished process). Outcomes: 'clear' (a non-zero exit and only one line,
    'flaxdigits: ...'), 'traceback', 'hang' (past `timeout`), 'silent wrong' (exit 0 where
    the case must be refused) and 'unclear' (anything else: several lines, no line)."""
    import os
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(case.env or {})}
    try:
        result = subprocess.run([sys.executable, str(program), *case.args(folder)], cwd=folder,
                                capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "hang", "", None
    shown = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(("I1", "W1"))]  # absl's info, warnings
    last = shown[-1] if shown else ""
    if "Traceback (most recent call last)" in result.stderr:
        return "traceback", last, result
    if result.returncode == 0:
        return "silent wrong", last, result
    if len(shown) == 1 and last.startswith("flaxdigits: "):
        return "clear", last, result
    return "unclear", last, result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: Optional[subprocess.Popen] = None,
                  seconds: float = 120) -> dict:
    """Polls `url` (e.g. .../healthz) until it answers; returns its JSON. Fails at once if
    `process` (the server) exits, and after `seconds` in any case."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


CHROMIUM = "/usr/bin/chromium"  # Debian's (.ci/run installs it)

# In the exported page (W/export/web/): a PNG's bytes (base64) -> its reading, decoded and
# read as an upload is: {number, boxes, probabilities, ms} or {error, status}.
READ_PNG_IN_PAGE = """async b64 => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const begun = performance.now();
  try {
    const { gray } = await window.flaxdigits.grayOfFile(new Blob([bytes], {type: "image/png"}));
    const r = await window.flaxdigits.readGray(gray);
    return {number: r.number, boxes: r.digits.map(d => d.box),
            probabilities: r.digits.map(d => d.probability), ms: performance.now() - begun};
  } catch (e) { return {error: e.message, status: e.status}; }
}"""


@contextlib.contextmanager
def static_page(folder: pathlib.Path):
    """`folder` served by a plain static server on 127.0.0.1 and opened in headless
    Chromium, every request outside that host cut off: yields (page, outside URLs asked
    for, seconds from navigation until the models were loaded)."""
    import functools
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    outside = []

    def only_our_host(route):
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-background-networking"])
            try:
                # bypass_csp: the page's own policy forbids eval, which Playwright's waits use.
                page = browser.new_page(viewport={"width": 1400, "height": 700},
                                        bypass_csp=True)
                page.route("**/*", only_our_host)
                begun = time.perf_counter()
                page.goto(url + "/")
                page.wait_for_function("window.flaxdigits && (window.flaxdigits.loadedMs "
                                       "!== undefined || window.flaxdigits.error)",
                                       timeout=60_000)
                loaded = time.perf_counter() - begun
                error = page.evaluate("window.flaxdigits.error")
                if error is not None:
                    raise RuntimeError(f"the page could not load its models: {error}")
                yield page, outside, loaded
            finally:
                browser.close()
    finally:
        server.shutdown()


def read_tensorboard_scalars(folder: pathlib.Path) -> dict:
    """{tag: [(step, value), ...]} from the TensorBoard event files in `folder`, in the
    order written (TFRecord framing: length, its CRC, an Event proto, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict = {}
    for path in sorted(pathlib.Path(folder).glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


# Numbers written on a line (kept here too: tests and benchmarks use them from testing).
from flaxdigits.data.written import (  # noqa: E402,F401
    GAPS, NUMBER_KINDS, STROKES, depth_grow, number_cases, number_image, restroke,
    touching_left)
