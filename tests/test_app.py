"""flaxdigits/serving/app.py: the JSON API (Flask's test client), a real model behind it,
the page in Chromium, and launch.py --mode=serve."""

import collections
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from flaxdigits import testing
from flaxdigits.serving import app as app_lib
from flaxdigits.serving import reading
from tests.conftest import REPO

png = testing.encode


# ---------------------------------------------------------------------------------------
# The API, with a stand-in model (the test is about HTTP, not accuracy)


def mean_brightness_reader():
    """A fake model: digit = a function of the image, so tests can check the image
    reached it (the test is about HTTP, not accuracy)."""

    def classify(images_nhw):
        probabilities = np.full((len(images_nhw), 10), 0.01, np.float32)
        for row, image in zip(probabilities, images_nhw):
            row[int(image.sum()) % 10] = 0.91
        return probabilities

    return reading.Reader(classify)


BODY_LIMIT = 200_000


@pytest.fixture
def client():
    return app_lib.create_app(mean_brightness_reader(),
                              max_body_bytes=BODY_LIMIT).test_client()


def check_prediction(response):
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert set(result) == {"number", "digits", "label", "probabilities", "input"}
    assert 0 <= result["label"] <= 9 and len(result["probabilities"]) == 10
    assert result["probabilities"][result["label"]] == max(result["probabilities"])
    assert np.asarray(result["input"]).shape == (28, 28)
    assert result["number"] == "".join(str(d["label"]) for d in result["digits"])
    for digit in result["digits"]:
        x0, y0, x1, y1 = digit["box"]
        assert x0 < x1 and y0 < y1 and 0 <= digit["probability"] <= 1
    # The most confident digit is the one the legacy fields describe.
    assert max(d["probability"] for d in result["digits"]) == pytest.approx(
        result["probabilities"][result["label"]])
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
    assert client.get("/healthz").get_json() == {"status": "ok", "pid": os.getpid()}
    page_html = client.get("/").get_data(as_text=True)
    assert "<canvas id=\"pad\"" in page_html and 'src="served.js"' in page_html
    script = client.get("/served.js")
    assert script.mimetype == "text/javascript" and "/api/predict" in script.get_data(
        as_text=True)
    assert "startPad" in client.get("/pad.js").get_data(as_text=True)


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
    reader = reading.Reader.from_workdir(workdir)
    client = app_lib.create_app(reader).test_client()
    assert client.get("/healthz").get_json() == {
        "status": "ok", "model": "cnn", "pid": os.getpid(), "step": reader.trained.step}
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
def test_writing_a_number_on_the_page_in_chromium(workdir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, server = app_lib.start_in_thread(app_lib.create_app(reading.Reader.from_workdir(workdir)))

    def stroke(page, box, points):
        page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.up()

    def number_shown(page, previous):
        """The number once the page has read the pad as it is now (data-settled): a
        reading of a half-drawn stroke, answered while the pen moves, is not it."""
        page.wait_for_function(f"document.getElementById('number').dataset.number !== "
                               f"'{previous}'", timeout=10_000)
        page.wait_for_function("document.getElementById('number').dataset.settled === "
                               "'yes'", timeout=10_000)
        return page.locator("#number").inner_text()

    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox"])
            # bypass_csp: the page's policy forbids eval, which Playwright's waits use.
            page = browser.new_page(viewport={"width": 1400, "height": 700}, bypass_csp=True)
            page.goto(url + "/")
            box = page.locator("#pad").bounding_box()
            # "11": two vertical strokes, far apart, drawn with mouse events.
            stroke(page, box, [(300 - k, 50 + 9 * k) for k in range(21)])
            first = number_shown(page, "")
            stroke(page, box, [(520 - k, 50 + 9 * k) for k in range(21)])
            both = number_shown(page, first)
            labels = page.locator("#digits span").all_inner_texts()
            overlay = page.evaluate(
                "Array.from(document.getElementById('boxes').getContext('2d')"
                ".getImageData(0, 0, 840, 280).data).filter((v, i) => i % 4 == 3 && v > 0)"
                ".length")
            screenshot = tmp_path / "written_11.png"
            page.screenshot(path=str(screenshot))
            page.click("#undo")
            undone = number_shown(page, both)
            page.click("#clear")
            cleared = page.locator("#number").inner_text()
            # An uploaded scan of a number.
            scan = tmp_path / "scan.png"
            scan.write_bytes(testing.encode(testing.many_marks_page(2)))
            page.set_input_files("#upload", str(scan))
            uploaded = number_shown(page, "")
            bomb = tmp_path / "bomb.png"  # not decoded by the page; the server says why
            bomb.write_bytes(testing.png_bomb(10_000, 10_000))
            page.set_input_files("#upload", str(bomb))
            page.wait_for_function("document.getElementById('status').textContent.includes("
                                   "'image is 10000x10000 pixels')", timeout=10_000)
            bombed = page.locator("#number").inner_text()
            browser.close()
    finally:
        server.close()
    assert first == "1" and both == "11", (first, both, labels)
    assert len(labels) == 2 and all(text.startswith("1 ") for text in labels), labels
    assert overlay > 100  # the boxes around the digits are drawn
    assert undone == "1" and cleared == "?"
    assert uploaded == "11", uploaded  # two bars read as ones
    assert bombed == "?"
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
         "--mode=serve", f"--port={port}", "--workers=2"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = testing.wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
        assert health["status"] == "ok" and health["model"] == "cnn"
        pids = serving_pids(f"http://127.0.0.1:{port}", 2)
        assert process.pid in pids and len(pids) == 2  # both processes answer on the port
        # Kept-alive connections are shared out evenly (ConnectionShares), not as the kernel
        # happens to hand them over.
        time.sleep(0.5)  # serving_pids' connections closed
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(8)]
        by_process = collections.Counter()
        for connection in held:
            connection.request("GET", "/healthz")
            by_process[json.loads(connection.getresponse().read())["pid"]] += 1
        for connection in held:
            connection.close()
        assert sorted(by_process.values()) == [4, 4], by_process
        # The other process: its own process group (a Ctrl-C at the terminal reaches only
        # the first, which stops it), the same session (one scheduling group on Linux).
        (other,) = pids - {process.pid}
        assert os.getpgid(other) != os.getpgid(process.pid)
        assert os.getsid(other) == os.getsid(process.pid)
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
    assert not alive(pids - {process.pid})  # the other serving process stopped with it


def serving_pids(url: str, count: int, seconds: float = 120) -> set:
    """The pids /healthz answers with, asked until `count` differ (or `seconds` pass)."""
    import time
    import urllib.request

    pids, deadline = set(), time.monotonic() + seconds
    while len(pids) < count and time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
            pids.add(json.loads(response.read())["pid"])
        time.sleep(0.05)
    return pids


def alive(pids) -> set:
    import os

    living = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
            living.add(pid)
        except ProcessLookupError:
            pass
    return living


@pytest.mark.slow
def test_a_killed_server_leaves_no_serving_process_behind(workdir):
    import os
    import signal
    import time

    port = testing.free_port()
    process = subprocess.Popen(
        [sys.executable, "launch.py", "--config=configs/tiny.py", f"--workdir={workdir}",
         "--mode=serve", f"--port={port}", "--workers=2"], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    others = set()
    try:
        testing.wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
        others = serving_pids(f"http://127.0.0.1:{port}", 2) - {process.pid}
        assert len(others) == 1
        process.send_signal(signal.SIGKILL)  # no chance to stop the other
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while alive(others) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(others)
    finally:  # never leave a server behind
        process.kill()
        for pid in alive(others):
            os.kill(pid, signal.SIGKILL)


def test_a_noted_stop_signal_ends_the_server_loop(monkeypatch):
    """A signal whose exception Python dropped (inside a finalizer) is only noted: the
    server's loop must still end, within about a poll (a second), not serve on forever."""
    import threading
    import time

    from flaxdigits import runtime

    monkeypatch.setattr(runtime, "_noted", [])
    server = app_lib.create_server(app_lib.create_app(mean_brightness_reader()), 1,
                                   host="127.0.0.1", port=0)
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
def closed_count(connections) -> int:
    """How many of the client sockets the server has closed."""
    closed = 0
    for connection in connections:
        connection.settimeout(0.05)
        try:
            closed += connection.recv(1) == b""
        except TimeoutError:  # still open
            pass
        except OSError:  # reset: closed too
            closed += 1
    return closed


def healthz_seconds(url: str) -> float:
    import time
    import urllib.request

    start = time.monotonic()
    with urllib.request.urlopen(url + "/healthz", timeout=15) as response:
        assert response.status == 200
    return time.monotonic() - start


@pytest.mark.slow
def test_more_idle_connections_than_the_limit_do_not_lock_anyone_out(monkeypatch):
    """At the connection limit the oldest idle connections make room for new ones, instead
    of every newcomer waiting for CHANNEL_TIMEOUT."""
    import socket

    monkeypatch.setattr(app_lib, "CONNECTION_LIMIT", 100)
    url, server = app_lib.start_in_thread(app_lib.create_app(mean_brightness_reader()))
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(130)]
    try:
        assert healthz_seconds(url) < 3.0  # without the guard: CHANNEL_TIMEOUT (10 s) or more
        assert closed_count(idle[:30]) >= 20  # the oldest went first
    finally:
        for connection in idle:
            connection.close()
        server.close()


@pytest.mark.slow
def test_clients_trickling_their_headers_are_cut_off(monkeypatch):
    """A client sending a header byte every second is never idle; the header deadline
    closes it, and a flood of them at the limit does not lock anyone out."""
    import socket
    import time

    monkeypatch.setattr(app_lib, "CONNECTION_LIMIT", 60)
    monkeypatch.setattr(app_lib, "HEADER_TIMEOUT", 2)
    url, server = app_lib.start_in_thread(app_lib.create_app(mean_brightness_reader()))
    host, port = url.removeprefix("http://").split(":")
    slow = [socket.create_connection((host, int(port)), timeout=5) for _ in range(70)]
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
        deadline = time.monotonic() + 6
        for k in range(len(request)):  # one byte each per 0.5 s, for 6 s at most
            for connection in slow:
                try:
                    connection.send(request[k:k + 1])
                except OSError:  # closed by the server already
                    pass
            if k == 2:
                assert healthz_seconds(url) < 3.0
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert closed_count(slow) == len(slow)  # none of them got 6 s for its headers
        assert healthz_seconds(url) < 1.0
    finally:
        for connection in slow:
            connection.close()
        server.close()


@pytest.mark.slow  # (network: 200 sockets held for seconds)
def test_idle_connections_neither_lock_others_out_nor_linger():
    import socket
    import time
    import urllib.request

    url, server = app_lib.start_in_thread(app_lib.create_app(mean_brightness_reader()))
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(200)]
    try:
        start = time.monotonic()
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            assert response.status == 200
        assert time.monotonic() - start < 1.0
        # Idle connections are closed by the server within seconds.
        time.sleep(app_lib.CHANNEL_TIMEOUT + 2 * app_lib.CLEANUP_INTERVAL + 1)
        assert closed_count(idle) == len(idle)
    finally:
        for connection in idle:
            connection.close()
        server.close()


def test_a_serving_process_that_exits_is_reported_once(caplog):
    import subprocess as sp

    gone = sp.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    gone.wait()
    alive_one = sp.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with caplog.at_level("WARNING"):
            app_lib._report_exited([gone, alive_one])
            app_lib._report_exited([gone, alive_one])
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings == [f"A serving process (pid {gone.pid}) exited with code 3; 2 still "
                            f"serve"]
    finally:
        app_lib._stop_workers([alive_one])
    assert alive_one.poll() is not None  # stopped, not left behind


def test_connection_shares_go_to_the_process_holding_fewest(tmp_path):
    """Each serving process takes new connections only while it holds no more than any
    other that looked lately; one silent for SHARE_STALE (stopped, hung) is left out."""
    with open(tmp_path / "shares", "w+b") as file:
        first = app_lib.ConnectionShares.create(file.fileno(), 3)
        second = app_lib.ConnectionShares(file.fileno(), 1)
        assert first.may_accept(5, now=100.0)  # no other has looked yet
        assert second.may_accept(2, now=100.0)
        assert not first.may_accept(5, now=100.1) and first.declined
        assert second.may_accept(4, now=100.2)
        assert first.may_accept(4, now=100.3) and not first.declined  # a tie: both take
        assert not second.may_accept(5, now=100.4)
        # The first falls silent: the second takes every new connection again.
        assert second.may_accept(9, now=100.3 + app_lib.SHARE_STALE + 0.01)


def test_a_busy_process_leaves_new_connections_to_a_free_one_for_a_while(tmp_path):
    """A process with IN_SERVICE_LIMIT requests in service takes no new connection (they
    wait in the shared backlog for a free process), but not for longer than
    BUSY_DECLINE_LIMIT: kept-alive clients keeping every process busy lock no one out."""
    with open(tmp_path / "shares", "w+b") as file:
        shares = app_lib.ConnectionShares.create(file.fileno(), 2)
        busy = app_lib.IN_SERVICE_LIMIT
        assert shares.may_accept(3, in_service=busy - 1, now=100.0)
        assert not shares.may_accept(3, in_service=busy, now=100.001) and shares.declined
        limit = app_lib.BUSY_DECLINE_LIMIT
        assert not shares.may_accept(3, in_service=busy + 5, now=100.0 + limit * 0.9)
        assert shares.may_accept(3, in_service=busy, now=100.0 + limit * 1.1)
        assert shares.may_accept(3, in_service=busy, now=100.0 + limit * 1.15)  # none taken
        shares.took(now=100.0 + limit * 1.15)
        # One connection each BUSY_DECLINE_LIMIT, not all that wait: a process that took
        # every waiting connection once busy that long held them all again (16 under 16
        # clients), and a stopped process took them down with it.
        assert not shares.may_accept(3, in_service=busy + 1, now=100.0 + limit * 1.2)
        assert shares.may_accept(3, in_service=busy + 1, now=100.0 + limit * 2.2)
        assert shares.may_accept(3, in_service=busy - 1, now=100.0 + limit * 2.3)
        assert not shares.may_accept(3, in_service=busy, now=100.0 + limit * 2.4)


def test_requests_in_service_are_counted_from_waitress_channels(tmp_path):
    import socket
    import time
    import types

    server = app_lib.create_server(lambda environ, start: [], 1, host="127.0.0.1", port=0)
    try:
        with open(tmp_path / "shares", "w+b") as file:
            shares = app_lib.ConnectionShares.create(file.fileno(), 1)
            shares.attach(server)
            assert server.readable()
            idle = types.SimpleNamespace(requests=[])  # a kept-alive connection, idle
            serving = [types.SimpleNamespace(requests=["request"])
                       for _ in range(app_lib.IN_SERVICE_LIMIT)]
            server._map.update({-1: idle, **{-2 - k: c for k, c in enumerate(serving)}})
            assert app_lib.in_service(server._map) == app_lib.IN_SERVICE_LIMIT
            assert not server.readable() and shares.declined
            time.sleep(app_lib.BUSY_DECLINE_LIMIT * 1.5)
            assert server.readable()  # busy for too long: takes a new connection anyway
            with socket.create_connection(("127.0.0.1", server.effective_port)):
                server.handle_accept()  # what waitress's loop calls when it is readable
                taken = [c for c in server._map.values() if hasattr(c, "requests")
                         and c not in (idle, *serving)]
                assert len(taken) == 1
                assert not server.readable()  # and the next only BUSY_DECLINE_LIMIT later
                taken[0].close()
            serving[0].requests = []  # the worker thread finished one
            assert server.readable() and not shares.declined
            for key in (-1, *(-2 - k for k in range(len(serving)))):
                del server._map[key]
    finally:
        server.close()


def test_a_queue_of_requests_is_not_a_warning_per_request():
    import logging

    app_lib.server_settings(1)
    assert logging.getLogger("waitress.queue").getEffectiveLevel() > logging.WARNING


def test_a_process_holding_more_connections_stops_polling_its_listening_socket(tmp_path):
    import time

    server = app_lib.create_server(lambda environ, start: [], 1, host="127.0.0.1", port=0)
    try:
        with open(tmp_path / "shares", "w+b") as file:
            shares = app_lib.ConnectionShares.create(file.fileno(), 2)
            other = app_lib.ConnectionShares(file.fileno(), 1)
            shares.attach(server)
            held = len(server._map)  # what this process holds, as attach counts it
            other.may_accept(held - 1, now=time.monotonic())
            assert not server.readable() and shares.declined
            other.may_accept(held, now=time.monotonic())
            assert server.readable() and not shares.declined
    finally:
        server.close()


def test_without_a_shares_file_the_processes_still_serve(monkeypatch, caplog):
    import errno
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with caplog.at_level("WARNING"):
        assert app_lib._connection_shares(2) == (None, None)
    assert "not shared out evenly" in caplog.text and "No space left" in caplog.text
    assert app_lib._connection_shares(1) == (None, None)


def test_a_host_name_of_several_addresses_is_served_on_its_first(monkeypatch):
    """localhost is ::1 and 127.0.0.1 on many machines: waitress would listen on both, with a
    server object the serving loop and the other processes cannot share."""
    import socket

    real = socket.getaddrinfo

    def two(host, *args, **kwargs):
        if host == "localhost":
            return real("127.0.0.1", *args, **kwargs) + real("127.0.0.2", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two)
    assert app_lib._one_address("localhost", 8080) == "127.0.0.1"
    assert app_lib._one_address("127.0.0.1", 0) == "127.0.0.1"
    with pytest.raises(OSError):
        app_lib._one_address("no.such.host.invalid", 8080)


def test_the_server_loop_leaves_a_running_tasks_output_to_its_thread():
    """While a task's thread holds the channel's output (as inside waitress's write_soon,
    sending), the main loop must wait for it, not poll the writable socket again and again
    (waitress's own channel turned the loop ~17,000 times a second there)."""
    import threading

    turns, holding = [], threading.Event()

    def app(environ, start_response):
        channel = environ["waitress.client_disconnected"].__self__
        with channel.outbuf_lock:  # a task sending: output pending, the lock held
            channel.total_outbufs_len += 1
            holding.set()
            time.sleep(0.3)
            holding.clear()
            channel.total_outbufs_len -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    server = app_lib.create_server(app, 1, host="127.0.0.1", port=0)
    polled = server.readable  # called once per turn of the loop

    def counted():
        if holding.is_set():
            turns.append(1)
        return polled()

    server.readable = counted
    thread = threading.Thread(target=app_lib.run_until_stopped, args=(server, False),
                              daemon=True)
    thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"done")
        connection.close()
    finally:
        server.close()
    assert len(turns) < 20, f"{len(turns)} turns of the loop while the task held the output"


def test_the_loop_still_sends_what_a_task_cannot_and_closes_channels():
    Channel = app_lib._channel_class()
    channel = Channel.__new__(Channel)  # (no socket: only writable() is asked)
    channel.adj = type("Adj", (), {"outbuf_high_watermark": 100})()
    channel.requests, channel.total_outbufs_len = ["a running task"], 10
    channel.will_close = channel.close_when_flushed = False
    assert not channel.writable()  # the task's thread sends it
    channel.total_outbufs_len = 101  # the task waits for the loop to drain its output
    assert channel.writable()
    channel.total_outbufs_len, channel.close_when_flushed = 10, True
    assert channel.writable()
    channel.close_when_flushed, channel.requests = False, []  # the task ended: the rest
    assert channel.writable()
    channel.total_outbufs_len = 0
    assert not channel.writable()
