"""Real-time digit recognition: a drawing page and a JSON API over a trained workdir.

    python launch.py --config=configs/base.py --workdir=W --mode=serve --port=8080

    GET  /              the page: draw with mouse or finger, or upload an image
    POST /api/predict   body: an image (Content-Type image/png or image/jpeg), or JSON
                        {"pixels": 28x28 numbers in 0..255}; answers {"label": d,
                        "probabilities": [10 floats], "input": the 28x28 image the model saw}
    GET  /healthz       {"status": "ok", ...}

Every image goes through the preprocessing that made MNIST (see `preprocess`), so a digit
drawn large, small or off-centre on a big canvas reaches the model as MNIST digits do.
Bad input gets a 4xx with {"error": "..."}; the server keeps serving.
"""

import gc
import io
import json
import logging
import pathlib
import threading
import time

import numpy as np

from flaxdigits import checkpoint as checkpoint_lib
from flaxdigits import models
from flaxdigits.errors import FlaxDigitsError

MAX_BODY_BYTES = 4 * 1024 * 1024  # an upload larger than this is refused (413)
# waitress drops bodies above this outright (plain-text 413); between MAX_BODY_BYTES and it,
# the app answers the 413 itself, in JSON.
WAITRESS_BODY_LIMIT = 4 * MAX_BODY_BYTES
MAX_IMAGE_PIXELS = 4096 * 4096  # a decoded image larger than this is refused (413)
SIDE = 28  # MNIST images are 28x28 ...
FIT_BOX = 20  # ... with the digit scaled to fit a 20x20 box
MNIST_CENTRE = 14.0  # ... and its centre of mass at pixel (14, 14)
IMAGE_TYPES = ("image/png", "image/jpeg")
PAGE = pathlib.Path(__file__).with_name("web") / "index.html"


class BadInput(Exception):
    """A request the API refuses: `status` (4xx) and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------
# Bodies -> grayscale arrays


def decode_image(body: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> float32 grayscale (H, W) in 0..255. Transparent pixels count as
    white paper (a canvas exported with no background)."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadInput(400, "empty body: send a PNG or JPEG image")
    try:
        image = Image.open(io.BytesIO(body))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadInput(400, f"not a readable PNG or JPEG image ({type(e).__name__})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadInput(413, f"image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} "
                            f"pixels are accepted")
    if image.format not in ("PNG", "JPEG"):
        raise BadInput(415, f"image format {image.format} is not PNG or JPEG")
    try:
        image.load()
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(paper, rgba)
        gray = image.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadInput(400, f"image could not be decoded ({type(e).__name__}: {e})") from None
    return np.asarray(gray, dtype=np.float32)


def pixels_from_json(body: bytes) -> np.ndarray:
    """{"pixels": 28x28 numbers in 0..255} -> float32 (28, 28)."""
    if not body:
        raise BadInput(400, 'empty body: send {"pixels": [[...28 numbers], ... 28 rows]}')
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(400, f"body is not valid JSON ({e})") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise BadInput(422, 'JSON body must be an object with a "pixels" field')
    try:
        pixels = np.asarray(payload["pixels"], dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInput(422, '"pixels" must be 28 rows of 28 numbers') from None
    if pixels.shape != (SIDE, SIDE):
        raise BadInput(422, f'"pixels" must be 28 rows of 28 numbers, not shape '
                            f'{"x".join(map(str, pixels.shape)) or "scalar"}')
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise BadInput(422, '"pixels" values must be numbers in 0..255')
    return pixels.astype(np.float32)


# ---------------------------------------------------------------------------------------
# The preprocessing that made MNIST


def preprocess(gray: np.ndarray) -> np.ndarray:
    """Any grayscale digit (H, W) in 0..255 -> float32 (28, 28) in [0, 1], as MNIST's were
    made: light-on-dark (dark-on-light images are inverted, judged by the border); cropped
    to the ink's bounding box; scaled to fit a 20x20 box keeping the aspect ratio (with
    anti-aliasing); placed in 28x28 with its centre of mass at the centre.
    Raises BadInput (422) for an image with no ink."""
    from PIL import Image

    x = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    if np.median(border) > 127:  # paper is light: dark ink on it
        x = 255.0 - x
        border = 255.0 - border
    x = np.clip(x - np.median(border), 0.0, None)  # the paper's own level is not ink
    if x.max() < 32:
        raise BadInput(422, "no digit found: the image is blank")

    ink_rows = np.flatnonzero((x > 0.2 * x.max()).any(axis=1))
    ink_cols = np.flatnonzero((x > 0.2 * x.max()).any(axis=0))
    x = x[ink_rows[0]:ink_rows[-1] + 1, ink_cols[0]:ink_cols[-1] + 1]
    height, width = x.shape
    factor = FIT_BOX / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    # Pillow's resampling filters anti-alias when shrinking (the support widens with the
    # factor), as MNIST's normalisation did.
    fitted = np.asarray(Image.fromarray(x, mode="F").resize(size, Image.Resampling.BILINEAR))
    fitted = np.clip(fitted, 0.0, None)

    rows, cols = np.indices(fitted.shape)
    mass = fitted.sum()
    centre_row, centre_col = (rows * fitted).sum() / mass, (cols * fitted).sum() / mass
    # MNIST put the centre of mass at pixel (14, 14) (measured: the mean over its training
    # digits is (13.99, 14.00)), not at the geometric centre 13.5.
    top = int(round(MNIST_CENTRE - centre_row))
    left = int(round(MNIST_CENTRE - centre_col))
    out = np.zeros((SIDE, SIDE), np.float32)
    # Paste with clipping: a lopsided digit's centre of mass may push an edge outside.
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + fitted.shape[0], SIDE), min(left + fitted.shape[1], SIDE)
    out[r0:r1, c0:c1] = fitted[r0 - top:r1 - top, c0 - left:c1 - left]
    return out / out.max()


# ---------------------------------------------------------------------------------------
# The model


class Predictor:
    """A workdir's best checkpoint, loaded once, its prediction compiled and warmed up."""

    def __init__(self, workdir):
        import jax

        self.trained = checkpoint_lib.load(workdir, which="best")
        model, variables = self.trained.model, self.trained.variables
        self._probabilities = jax.jit(
            lambda images: models.probabilities(model, variables, images))
        self(np.zeros((SIDE, SIDE), np.float32))  # compile now, not on the first request

    def __call__(self, image_28x28: np.ndarray) -> np.ndarray:
        return np.asarray(self._probabilities(image_28x28[None, :, :, None]))[0]


# ---------------------------------------------------------------------------------------
# The web app


def create_app(predictor, max_body_bytes: int = MAX_BODY_BYTES):
    """The Flask app (any WSGI server can serve it); `predictor` maps a 28x28 image to 10
    probabilities."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    page = PAGE.read_text()

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/healthz")
    def healthz():
        trained = getattr(predictor, "trained", None)
        info = {"status": "ok"}
        if trained is not None:
            info.update(model=trained.config.model.name, step=trained.step)
        return jsonify(info)

    @app.post("/api/predict")
    def predict():
        kind = request.mimetype
        if kind not in IMAGE_TYPES + ("application/json",):
            raise BadInput(415, f"Content-Type {kind or '(none)'} is not image/png, "
                                f"image/jpeg or application/json")
        body = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: 413, never read
        gray = pixels_from_json(body) if kind == "application/json" else decode_image(body)
        image = preprocess(gray)
        probabilities = predictor(image)
        return jsonify(label=int(probabilities.argmax()),
                       probabilities=[round(float(p), 6) for p in probabilities],
                       input=np.round(image * 255).astype(int).tolist())

    @app.errorhandler(BadInput)
    def bad_input(error):
        return jsonify(error=str(error)), error.status

    @app.errorhandler(HTTPException)
    def http_error(error):  # 404, 405, 413 ... as JSON, like every other answer
        return jsonify(error=f"{error.name}: {error.description}"), error.code

    return app


def serve(workdir, host: str = "127.0.0.1", port: int = 8080, threads: int = 1):
    """Loads `workdir` once and serves the app with waitress until interrupted.

    One worker thread: a request is ~1.6 ms of CPU work under Python's GIL, so more threads
    add lock contention, not throughput. benchmarks/serve.py, 16 concurrent clients, 2-core
    CPU: 1 thread 643-711 requests/s, p99 29-33 ms; 2 threads ~510/s, p99 43-47 ms;
    4 threads ~400/s, p99 55 ms. waitress's main thread still reads and writes every
    connection asynchronously, so a slow client does not hold the worker.
    """
    import waitress

    start = time.monotonic()
    predictor = Predictor(workdir)
    logging.info("Model %s (step %d) loaded and compiled in %.1f s",
                 predictor.trained.config.model.name, predictor.trained.step,
                 time.monotonic() - start)
    app = create_app(predictor)
    # Everything loaded so far (JAX, flax, the model) lives as long as the server: keep it
    # out of the garbage collector's full passes, which otherwise stall every request in
    # flight for ~100 ms now and then (measured by benchmarks/serve.py).
    gc.collect()
    gc.freeze()
    try:
        server = waitress.create_server(app, host=host, port=port, threads=threads,
                                        max_request_body_size=WAITRESS_BODY_LIMIT,
                                        ident="flaxdigits")
    except OSError as e:
        raise FlaxDigitsError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    logging.info("Serving on http://%s:%d/ (Ctrl-C stops)", host, server.effective_port)
    try:
        server.run()
    except KeyboardInterrupt:
        logging.info("Stopped")
    finally:
        server.close()


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, threads: int = 8):
    """Serves `app` with waitress in a daemon thread; returns (base URL, server). For tests
    and benchmarks: port 0 picks a free port; `server.close()` stops it."""
    import waitress.server

    server = waitress.server.create_server(app, host=host, port=port, threads=threads,
                                           max_request_body_size=WAITRESS_BODY_LIMIT)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return f"http://{host}:{server.effective_port}", server
