"""Real-time digit recognition: a drawing page and a JSON API over a trained workdir.

    python launch.py --config=configs/base.py --workdir=W --mode=serve --port=8080

    GET  /              the page: draw with mouse or finger, or upload an image
    POST /api/predict   body: an image (Content-Type image/png or image/jpeg, or one file of
                        a multipart form), or JSON {"pixels": 28x28 numbers in 0..255};
                        answers {"label": d,
                        "probabilities": [10 floats], "input": the 28x28 image the model saw}
    GET  /healthz       {"status": "ok", ...}

Every image goes through the preprocessing that made MNIST (serving/preprocess.py), so a
digit drawn large, small or off-centre on a big canvas reaches the model as MNIST digits do.
Bad input gets a 4xx with {"error": "..."}; the server keeps serving.
"""

import gc
import logging
import pathlib
import threading
import time

import numpy as np

from flaxdigits import IMAGE_SIDE, logs, models
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.evaluation import inference
from flaxdigits.serving import preprocess

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # an upload larger than this is refused (413)
# waitress drops bodies above this outright (plain-text 413); between MAX_BODY_BYTES and it,
# the app answers the 413 itself, in JSON.
WAITRESS_BODY_LIMIT = 4 * MAX_BODY_BYTES
IMAGE_TYPES = ("image/png", "image/jpeg")
PAGE = pathlib.Path(__file__).with_name("web") / "index.html"


# ---------------------------------------------------------------------------------------
# The model


class Predictor:
    """A workdir's best checkpoint, loaded once, its prediction compiled and warmed up."""

    def __init__(self, workdir):
        import jax

        self.trained = inference.load(workdir, which="best")
        model, variables = self.trained.model, self.trained.variables
        self._probabilities = jax.jit(
            lambda images: models.probabilities(model, variables, images))
        self(np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32))  # compile now, not on a request

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
        if kind == "multipart/form-data":  # an HTML form or `curl -F image=@digit.png`
            files = list(request.files.values())
            if len(files) != 1:
                raise preprocess.BadInput(400, f"a form upload must hold one image file, not "
                                               f"{len(files)}")
            body = files[0].read(max_body_bytes + 1)
            kind = "image/png"  # decode_image tells PNG from JPEG by the content itself
        elif kind in IMAGE_TYPES + ("application/json",):
            body = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: 413, never read
        else:
            shown = repr(kind[:40]) if kind else "(none)"  # never echo much of a request
            raise preprocess.BadInput(415, f"Content-Type {shown} is not image/png, "
                                           f"image/jpeg, application/json or a form upload")
        gray = (preprocess.pixels_from_json(body) if kind == "application/json"
                else preprocess.decode_image(body))
        image = preprocess.digit_like_mnist(gray)
        probabilities = predictor(image)
        return jsonify(label=int(probabilities.argmax()),
                       probabilities=[round(float(p), 6) for p in probabilities],
                       input=np.round(image * 255).astype(int).tolist())

    @app.errorhandler(preprocess.BadInput)
    def bad_input(error):
        return jsonify(error=str(error)), error.status

    @app.after_request
    def no_sniffing(response):  # answers are what their Content-Type says, nothing else
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(HTTPException)
    def http_error(error):  # 404, 405, 413 ... as JSON, like every other answer
        return jsonify(error=f"{error.name}: {error.description}"), error.code

    return app


# waitress's connection settings: many idle connections must not lock everyone out
# (waitress's defaults, 100 connections kept for 120 s, let ~100 idle sockets deny service
# for two minutes).
CONNECTION_LIMIT = 1000  # open connections at most; beyond it new ones wait
CHANNEL_TIMEOUT = 10  # seconds an idle connection is kept
CLEANUP_INTERVAL = 2  # seconds between sweeps for idle connections


def server_settings(threads: int) -> dict:
    return dict(threads=threads, max_request_body_size=WAITRESS_BODY_LIMIT,
                connection_limit=CONNECTION_LIMIT, channel_timeout=CHANNEL_TIMEOUT,
                cleanup_interval=CLEANUP_INTERVAL, ident="flaxdigits")


def serve(workdir, host: str = "127.0.0.1", port: int = 8080, threads: int = 1):
    """Loads `workdir` once and serves the app with waitress until interrupted.

    One worker thread: a request is a few milliseconds of CPU work under Python's GIL, so
    more threads add lock contention, not throughput (benchmarks/serve.py measures it; the
    figures are in the README). waitress's main thread still reads and writes every
    connection asynchronously, so a slow client does not hold the worker.
    """
    import waitress

    logs.show_progress()
    start = time.monotonic()
    predictor = Predictor(workdir)
    log.info("Model %s (step %d) loaded and compiled in %.1f s",
             predictor.trained.config.model.name, predictor.trained.step,
             time.monotonic() - start)
    app = create_app(predictor)
    # Everything loaded so far (JAX, flax, the model) lives as long as the server: keep it
    # out of the garbage collector's full passes, which otherwise stall every request in
    # flight for ~100 ms now and then (measured by benchmarks/serve.py).
    gc.collect()
    gc.freeze()
    try:
        server = waitress.create_server(app, host=host, port=port, **server_settings(threads))
    except OSError as e:
        raise FlaxDigitsError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    log.info("Serving on http://%s:%s/ (Ctrl-C stops)", host, server.effective_port)
    try:
        run_until_stopped(server)
    finally:
        server.task_dispatcher.shutdown()
        server.close()
    log.info("Stopped")


def run_until_stopped(server) -> None:
    """waitress's main loop (what `server.run()` does), one poll of at most a second at a
    time, until a stop signal. A signal handler's exception ends it at once; but Python
    drops one raised while a finalizer runs (a socket closed by the garbage collector), and
    the handler notes the signal for that case (launch.py), which is checked between polls."""
    from flaxdigits import runtime

    while server._map and runtime.noted_signal() is None:
        server.asyncore.loop(timeout=server.adj.asyncore_loop_timeout, map=server._map,
                             use_poll=server.adj.asyncore_use_poll, count=1)


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, threads: int = 8):
    """Serves `app` with waitress in a daemon thread; returns (base URL, server). For tests
    and benchmarks: port 0 picks a free port; `server.close()` stops it."""
    import waitress.server

    server = waitress.server.create_server(app, host=host, port=port,
                                           **server_settings(threads))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return f"http://{host}:{server.effective_port}", server
