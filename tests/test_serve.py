"""The web app: preprocessing, the JSON API (Flask test client) and the page in Chromium."""

import io
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter

from flaxdigits import serve, train
from tests import helpers


def png(array_or_image, kind="PNG") -> bytes:
    image = (array_or_image if isinstance(array_or_image, Image.Image)
             else Image.fromarray(np.asarray(array_or_image, np.uint8)))
    out = io.BytesIO()
    image.save(out, format=kind)
    return out.getvalue()


def redrawn(digit_28x28: np.ndarray, height=200, top=40, left=150, canvas=280) -> np.ndarray:
    """An MNIST digit the way a person draws it on a page: large, off-centre, dark ink on
    light paper, a little blurred."""
    ink = np.argwhere(digit_28x28 > 0)
    (r0, c0), (r1, c1) = ink.min(0), ink.max(0) + 1
    crop = Image.fromarray(digit_28x28[r0:r1, c0:c1])
    width = max(1, round(crop.width * height / crop.height))
    big = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))
    page = np.zeros((canvas, canvas), np.uint8)
    page[top:top + height, left:left + width] = big[:canvas - top, :canvas - left]
    page = Image.fromarray(255 - page).filter(ImageFilter.GaussianBlur(1.5))
    return np.asarray(page)


def mnist_digit(index=0):
    _, _, test_images, test_labels = helpers.mnist_arrays()
    return test_images[index], int(test_labels[index])


# ---------------------------------------------------------------------------------------
# Preprocessing


def test_an_off_centre_large_dark_on_light_digit_becomes_an_mnist_digit():
    digit, _ = mnist_digit(0)
    page = redrawn(digit, height=220, top=50, left=10)
    assert page.shape == (280, 280) and page[0, 0] > 200  # light paper
    out = serve.preprocess(page)

    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0) and out.min() == 0.0
    assert out[0].max() == 0 and out[:, 0].max() == 0  # light-on-dark: dark background
    ink = np.argwhere(out > 0.05)
    extent = ink.max(0) - ink.min(0) + 1
    assert max(extent) <= 21 and max(extent) >= 18  # fits the 20x20 box, largest side ~20
    rows, cols = np.indices(out.shape)
    centre = ((rows * out).sum() / out.sum(), (cols * out).sum() / out.sum())
    assert centre == pytest.approx((14, 14), abs=0.6)  # centred by centre of mass, as MNIST
    # And it looks like the original MNIST digit again.
    correlation = np.corrcoef(out.ravel(), digit.ravel())[0, 1]
    assert correlation > 0.85, correlation


def test_inversion_depends_on_the_paper_not_the_pen():
    digit, _ = mnist_digit(1)
    dark_on_light = redrawn(digit)
    light_on_dark = 255 - dark_on_light
    np.testing.assert_allclose(serve.preprocess(dark_on_light),
                               serve.preprocess(light_on_dark), atol=1e-5)


def test_an_mnist_digit_passes_through_nearly_unchanged():
    digit, _ = mnist_digit(2)
    out = serve.preprocess(digit.astype(np.float32))
    assert np.corrcoef(out.ravel(), digit.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("blank", [np.full((280, 280), 255), np.zeros((280, 280)),
                                   np.full((28, 28), 128)], ids=["white", "black", "grey"])
def test_an_empty_canvas_is_a_clear_422(blank):
    with pytest.raises(serve.BadInput, match="no digit found") as error:
        serve.preprocess(blank.astype(np.float32))
    assert error.value.status == 422


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


@pytest.fixture
def client():
    app = serve.create_app(MeanBrightnessModel(), max_body_bytes=200_000)
    return app.test_client()


def check_prediction(response):
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert set(result) == {"label", "probabilities", "input"}
    assert 0 <= result["label"] <= 9 and len(result["probabilities"]) == 10
    assert result["probabilities"][result["label"]] == max(result["probabilities"])
    assert np.asarray(result["input"]).shape == (28, 28)
    return result


def test_api_reads_png_jpeg_and_json(client):
    digit, _ = mnist_digit(3)
    page = redrawn(digit)
    check_prediction(client.post("/api/predict", data=png(page), content_type="image/png"))
    check_prediction(client.post("/api/predict", data=png(page, "JPEG"),
                                 content_type="image/jpeg"))
    rgba = Image.fromarray(255 - page).convert("L")  # ink as alpha on a transparent canvas
    transparent = Image.new("RGBA", rgba.size, (0, 0, 0, 0))
    transparent.putalpha(rgba)
    from_alpha = check_prediction(client.post("/api/predict", data=png(transparent),
                                              content_type="image/png"))
    from_json = check_prediction(client.post("/api/predict", json={"pixels": digit.tolist()}))
    assert np.corrcoef(np.ravel(from_json["input"]), digit.ravel())[0, 1] > 0.9
    assert np.corrcoef(np.ravel(from_alpha["input"]), digit.ravel())[0, 1] > 0.8
    assert client.get("/healthz").get_json() == {"status": "ok"}
    page_html = client.get("/").get_data(as_text=True)
    assert "<canvas id=\"pad\"" in page_html and "/api/predict" in page_html


def huge_png():
    return png(Image.new("L", (5000, 4000), 255))  # 20 M pixels, compresses to a few KB


BAD_BODIES = [
    ("not an image", b"hello, world", "image/png", 400),
    ("empty image body", b"", "image/png", 400),
    ("empty JSON body", b"", "application/json", 400),
    ("broken JSON", b'{"pixels": [[1, 2', "application/json", 400),
    ("JSON without pixels", b'{"image": 1}', "application/json", 422),
    ("wrong shape", json.dumps({"pixels": [[0] * 28] * 27}).encode(), "application/json", 422),
    ("ragged rows", json.dumps({"pixels": [[0] * 28] * 27 + [[0]]}).encode(),
     "application/json", 422),
    ("value out of range", json.dumps({"pixels": [[0] * 27 + [256]] * 28}).encode(),
     "application/json", 422),
    ("negative value", json.dumps({"pixels": [[-1] * 28] * 28}).encode(), "application/json",
     422),
    ("not numbers", json.dumps({"pixels": [["a"] * 28] * 28}).encode(), "application/json",
     422),
    ("blank canvas", None, "image/png", 422),
    ("huge image", None, "image/png", 413),
    ("body over the limit", b"\x89PNG" + b"0" * 300_000, "image/png", 413),
    ("GIF", None, "image/png", 415),
    ("wrong content type", b"pixels", "text/plain", 415),
]


@pytest.mark.parametrize("name,body,kind,status", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_get_a_4xx_with_a_json_error(client, name, body, kind, status):
    if name == "blank canvas":
        body = png(np.full((280, 280), 255))
    elif name == "huge image":
        body = huge_png()
    elif name == "GIF":
        body = png(Image.new("L", (28, 28), 0), "GIF")
    response = client.post("/api/predict", data=body, content_type=kind)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert isinstance(error, str) and error and "\n" not in error
    # ... and the server still serves.
    check_prediction(client.post("/api/predict", json={"pixels": mnist_digit(0)[0].tolist()}))


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nope").status_code == 404
    response = client.get("/api/predict")
    assert response.status_code == 405 and "error" in response.get_json()


# ---------------------------------------------------------------------------------------
# A real model, a real server, a real browser


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data_dir = helpers.write_mnist_subset(root / "mnist", 6000, 500)
    config = helpers.tiny_config(**{"data.dir": str(data_dir), "num_epochs": 2,
                                    "optim.learning_rate": 3e-3})
    train.train_and_evaluate(config, root / "work")
    return root / "work"


def test_predictor_reads_redrawn_digits(workdir):
    predictor = serve.Predictor(workdir)
    client = serve.create_app(predictor).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok", "model": "cnn",
                                                 "step": predictor.trained.step}
    _, _, images, labels = helpers.mnist_arrays()
    correct = 0
    for index in range(30):
        page = redrawn(images[index], height=150 + 3 * index, top=20 + index,
                       left=100 - 2 * index)
        result = check_prediction(client.post("/api/predict", data=png(page),
                                              content_type="image/png"))
        correct += result["label"] == labels[index]
    assert correct >= 24, correct  # a tiny model, 2 epochs on 6,000 digits: ~90%


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_drawing_on_the_page_in_chromium(workdir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, server = serve.start_in_thread(serve.create_app(serve.Predictor(workdir)))
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


def test_launch_serves_a_workdir_and_refuses_a_missing_one(workdir, tmp_path):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.test_launch import launch

    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'none'}", "--mode=serve")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"flaxdigits: error: {tmp_path / 'none'}: no trained model here")

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "launch.py", "--config=configs/tiny.py", f"--workdir={workdir}",
         "--mode=serve", f"--port={port}"], cwd=helpers.REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1][-2000:]
                time.sleep(0.25)
        assert health["status"] == "ok" and health["model"] == "cnn"
    finally:
        process.terminate()
        process.wait(timeout=30)
