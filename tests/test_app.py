"""flaxdigits/serving/app.py: the JSON API (Flask's test client), a real model behind it,
the page in Chromium, and launch.py --mode=serve."""

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flaxdigits import testing
from flaxdigits.serving import app as app_lib
from tests.conftest import REPO

png = testing.encode


# ---------------------------------------------------------------------------------------
# The API, with a stand-in model (the test is about HTTP, not accuracy)


class MeanBrightnessModel:
    """A fake predictor: digit = a function of the image, so tests can check the image
    reached it."""

    def __init__(self):
        self.seen = []

    def __call__(self, image):
        self.seen.append(image)
        probabilities = np.full(10, 0.01, np.float32)
        probabilities[int(image.sum()) % 10] = 0.91
        return probabilities


BODY_LIMIT = 200_000


@pytest.fixture
def client():
    return app_lib.create_app(MeanBrightnessModel(), max_body_bytes=BODY_LIMIT).test_client()


def check_prediction(response):
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert set(result) == {"label", "probabilities", "input"}
    assert 0 <= result["label"] <= 9 and len(result["probabilities"]) == 10
    assert result["probabilities"][result["label"]] == max(result["probabilities"])
    assert np.asarray(result["input"]).shape == (28, 28)
    return result


def test_api_reads_png_jpeg_and_json(client, mnist_raw):
    digit = mnist_raw.test_images[3]
    page = testing.redraw(digit)
    check_prediction(client.post("/api/predict", data=png(page), content_type="image/png"))
    check_prediction(client.post("/api/predict", data=png(page, "JPEG"),
                                 content_type="image/jpeg"))
    rgba = Image.fromarray(255 - page).convert("L")  # ink as alpha on a transparent canvas
    transparent = Image.new("RGBA", rgba.size, (0, 0, 0, 0))
    transparent.putalpha(rgba)
    from_alpha = check_prediction(client.post("/api/predict", data=png(transparent),
                                              content_type="image/png"))
    import io

    check_prediction(client.post("/api/predict", content_type="multipart/form-data",
                                 data={"image": (io.BytesIO(png(page)), "digit.png")}))
    from_json = check_prediction(client.post("/api/predict", json={"pixels": digit.tolist()}))
    assert np.corrcoef(np.ravel(from_json["input"]), digit.ravel())[0, 1] > 0.9
    assert np.corrcoef(np.ravel(from_alpha["input"]), digit.ravel())[0, 1] > 0.8
    assert client.get("/healthz").get_json() == {"status": "ok"}
    page_html = client.get("/").get_data(as_text=True)
    assert "<canvas id=\"pad\"" in page_html and "/api/predict" in page_html


BAD_BODIES = testing.bad_bodies(BODY_LIMIT)


@pytest.mark.parametrize("name,body,kind,status", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_get_a_4xx_with_a_json_error(client, name, body, kind, status):
    response = client.post("/api/predict", data=body, content_type=kind)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert isinstance(error, str) and error and "\n" not in error
    # ... and the server still serves.
    check_prediction(client.post("/api/predict", json={"pixels": [[0] * 28] * 10 + [
        [0] * 10 + [255] * 8 + [0] * 10] * 8 + [[0] * 28] * 10}))


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nope").status_code == 404
    response = client.get("/api/predict")
    assert response.status_code == 405 and "error" in response.get_json()


# ---------------------------------------------------------------------------------------
# A real model, a real server, a real browser


@pytest.fixture
def workdir(trained):
    return trained["workdir"]


@pytest.mark.slow
def test_predictor_reads_redrawn_digits(workdir, mnist_raw):
    predictor = app_lib.Predictor(workdir)
    client = app_lib.create_app(predictor).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok", "model": "cnn",
                                                 "step": predictor.trained.step}
    images, labels = mnist_raw.test_images, mnist_raw.test_labels
    correct = 0
    for index in range(30):
        page = testing.redraw(images[index], height=150 + 3 * index, top=20 + index,
                              left=100 - 2 * index)
        result = check_prediction(client.post("/api/predict", data=png(page),
                                              content_type="image/png"))
        correct += result["label"] == labels[index]
    assert correct >= 24, correct  # a tiny model, 2 epochs on 6,000 digits: ~90%


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_drawing_on_the_page_in_chromium(workdir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, server = app_lib.start_in_thread(app_lib.create_app(app_lib.Predictor(workdir)))
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 520})
            page.goto(url + "/")
            box = page.locator("#pad").bounding_box()
            # A "1": one vertical stroke, off-centre, drawn with mouse events.
            page.mouse.move(box["x"] + 190, box["y"] + 40)
            page.mouse.down()
            for step in range(1, 21):
                page.mouse.move(box["x"] + 190 - step, box["y"] + 40 + 10 * step)
            page.mouse.up()
            page.wait_for_function(
                "document.getElementById('prediction').dataset.label !== ''", timeout=10_000)
            label = page.locator("#prediction").inner_text()
            percent = page.locator("#bar1 .pct").inner_text()
            screenshot = tmp_path / "drawn_one.png"
            page.wait_for_timeout(300)  # let the bars finish their transition
            page.screenshot(path=str(screenshot))
            seen = page.evaluate("Array.from(document.getElementById('seen').getContext('2d')"
                                 ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 == 0)"
                                 ".reduce((a, b) => a + b, 0)")

            page.click("#clear")
            cleared = page.locator("#prediction").inner_text()
            browser.close()
    finally:
        server.close()
    assert label == "1", (label, percent)
    assert float(percent.rstrip("%")) > 50
    assert seen > 0  # the 28x28 image the model saw is shown
    assert cleared == "?"
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_launch_serves_a_workdir_and_refuses_a_missing_one(workdir, tmp_path, launch):
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'none'}", "--mode=serve")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"flaxdigits: error: {tmp_path / 'none'}: no trained model here")

    port = testing.free_port()
    process = subprocess.Popen(
        [sys.executable, "launch.py", "--config=configs/tiny.py", f"--workdir={workdir}",
         "--mode=serve", f"--port={port}"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = testing.wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
        assert health["status"] == "ok" and health["model"] == "cnn"
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # never leave a server behind
            process.kill()
            raise
    assert f"Serving on http://127.0.0.1:{port}/" in stderr and "Traceback" not in stderr
    assert process.returncode == 143  # SIGTERM: the documented exit, with one line
    assert stderr.strip().splitlines()[-1].startswith("flaxdigits: stopped by SIGTERM")


def test_a_noted_stop_signal_ends_the_server_loop(monkeypatch):
    """A signal whose exception Python dropped (inside a finalizer) is only noted: the
    server's loop must still end, within about a poll (a second), not serve on forever."""
    import threading
    import time

    import waitress.server

    from flaxdigits import runtime

    monkeypatch.setattr(runtime, "_noted", [])
    server = waitress.server.create_server(app_lib.create_app(MeanBrightnessModel()),
                                           host="127.0.0.1", port=0,
                                           **app_lib.server_settings(threads=1))
    threading.Timer(0.2, runtime.note_signal, args=(15,)).start()
    backstop = threading.Timer(20, server.close)  # the test ends even when the loop does not
    backstop.start()
    start = time.monotonic()
    try:
        app_lib.run_until_stopped(server)
    finally:
        backstop.cancel()
        server.close()
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_idle_connections_neither_lock_others_out_nor_linger():
    import socket
    import time
    import urllib.request

    url, server = app_lib.start_in_thread(app_lib.create_app(MeanBrightnessModel()))
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(200)]
    try:
        start = time.monotonic()
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            assert response.status == 200
        assert time.monotonic() - start < 1.0
        # Idle connections are closed by the server within seconds.
        time.sleep(app_lib.CHANNEL_TIMEOUT + 2 * app_lib.CLEANUP_INTERVAL + 1)
        closed = 0
        for connection in idle:
            connection.settimeout(0.05)
            try:
                closed += connection.recv(1) == b""
            except TimeoutError:  # still open
                pass
            except OSError:  # reset: closed too
                closed += 1
        assert closed == len(idle)
    finally:
        for connection in idle:
            connection.close()
        server.close()
