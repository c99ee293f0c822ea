"""Real-time digit recognition: a drawing page and a JSON API over a trained workdir.

    python launch.py --config=configs/base.py --workdir=W --mode=serve --port=8080

    GET  /              the page: write a number with mouse or finger, or upload an image
    POST /api/predict   body: an image (Content-Type image/png or image/jpeg, or one file of
                        a multipart form), or JSON {"pixels": 28x28 numbers in 0..255};
                        answers {"number": "54", "digits": [{"label": 5, "probability":
                        0.99, "box": [x0, y0, x1, y1]}, ...], and for the most confident
                        digit "label", "probabilities" (10) and "input" (its 28x28 image)}
    GET  /healthz       {"status": "ok", "pid": ..., "model": ..., "step": ...}

Every image is read by serving/reading.py: split into digits, each prepared as MNIST's were
(serving/preprocess.py), so digits drawn large, small or off-centre reach the model as MNIST
digits do.
Bad input gets a 4xx with {"error": "..."}; the server keeps serving.
"""

import functools
import gc
import logging
import mmap
import os
import pathlib
import struct
import tempfile
import threading
import time
from typing import Optional

import numpy as np

from flaxdigits import logs
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.serving import preprocess, reading

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # an upload larger than this is refused (413)
# waitress drops bodies above this outright (plain-text 413); between MAX_BODY_BYTES and it,
# the app answers the 413 itself, in JSON.
WAITRESS_BODY_LIMIT = 4 * MAX_BODY_BYTES
IMAGE_TYPES = ("image/png", "image/jpeg")
PAGE = pathlib.Path(__file__).with_name("web") / "index.html"
SCRIPTS = ("pad.js", "served.js")  # the page's own scripts, beside it


# ---------------------------------------------------------------------------------------
# The web app


def create_app(reader: reading.Reader, max_body_bytes: int = MAX_BODY_BYTES):
    """The Flask app (any WSGI server can serve it); `reader` reads the numbers."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    page = PAGE.read_text()
    scripts = {name: PAGE.with_name(name).read_text() for name in SCRIPTS}

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/<any(" + ", ".join(f'"{n}"' for n in SCRIPTS) + "):name>")
    def script(name):
        return Response(scripts[name], mimetype="text/javascript")

    @app.get("/healthz")
    def healthz():
        trained = reader.trained
        info = {"status": "ok", "pid": os.getpid()}  # which of the serving processes
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
        return jsonify(answer(reader.read(gray)))

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


def answer(result: reading.Reading) -> dict:
    """The JSON answer for a reading: the number, each digit left to right, and (as before
    numbers were read) the most confident digit's label, probabilities and input."""
    top = result.most_confident
    return dict(
        number=result.number,
        digits=[dict(label=d.label, probability=round(d.probability, 6), box=list(d.box))
                for d in result.digits],
        label=top.label,
        probabilities=[round(float(p), 6) for p in top.probabilities],
        input=np.round(top.image * 255).astype(int).tolist())


# waitress's connection settings: many idle connections must not lock everyone out
# (waitress's defaults, 100 connections kept for 120 s, let ~100 idle sockets deny service
# for two minutes).
CONNECTION_LIMIT = 1000  # open connections at most; beyond it new ones wait
CHANNEL_TIMEOUT = 10  # seconds an idle connection is kept
CLEANUP_INTERVAL = 2  # seconds between sweeps for idle connections
# Beyond waitress: a request's headers must arrive within HEADER_TIMEOUT seconds of its first
# byte (a client trickling a byte every few seconds is never idle, so CHANNEL_TIMEOUT alone
# never closes it), and when the open connections reach CONNECTION_LIMIT - SPARE_CONNECTIONS
# the oldest idle ones are closed, so that a flood of idle or trickling sockets cannot lock
# everyone else out until they time out (guard_connections).
HEADER_TIMEOUT = 5
SPARE_CONNECTIONS = 50
GUARD_INTERVAL = 0.25  # seconds between the guard's sweeps (and the longest poll)


def server_settings(threads: int) -> dict:
    """waitress.create_server's keyword arguments. (Also quiets waitress's "Task queue depth
    is N" warning: with one worker thread and several clients a queue is the normal state,
    and it was a log line per request.)"""
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return dict(threads=threads, max_request_body_size=WAITRESS_BODY_LIMIT,
                connection_limit=CONNECTION_LIMIT, channel_timeout=CHANNEL_TIMEOUT,
                cleanup_interval=CLEANUP_INTERVAL, ident="flaxdigits",
                # poll(), not select(): select() cannot watch file descriptors past 1023,
                # which CONNECTION_LIMIT connections and the process's own files reach.
                asyncore_use_poll=True)


def create_server(app, threads: int, **where):
    """waitress.create_server(app, **where) with server_settings(threads), serving each
    connection as a Channel."""
    import waitress

    server = waitress.create_server(app, **where, **server_settings(threads))
    server.channel_class = _channel_class()
    return server


@functools.lru_cache(maxsize=None)
def _channel_class():
    """waitress's HTTPChannel, less a busy loop. While a request's task runs, the task's
    thread sends what it writes (waitress's send_bytes is 1), holding the channel's output
    lock; but from its first byte written until the task ends, waitress's main loop polled
    the socket as writable, found the lock held, and polled again: 17 us a turn, for up to
    Python's 5 ms GIL switch interval, as the spinning loop kept the task's thread from the
    GIL. Under 16 clients opening a connection per request, that was a quarter of a core in
    each serving process (strace: 43 polls per request). Here the loop leaves a channel's
    output to its running task, unless the task is waiting for the loop to drain more than
    outbuf_high_watermark bytes, or the channel is closing; when the task ends waitress wakes
    the loop (pull_trigger), which sends whatever is left."""
    from waitress.channel import HTTPChannel

    class Channel(HTTPChannel):
        def writable(self):
            if (self.requests and not (self.will_close or self.close_when_flushed)
                    and self.total_outbufs_len <= self.adj.outbuf_high_watermark):
                return False
            return super().writable()

    return Channel


def serving_processes() -> int:
    """What --workers=0 means: one serving process per CPU core this process may use, at
    most 4 (each holds its own copy of the model and JAX, a few hundred MB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def prepare_jax() -> None:
    """Before JAX's backend starts: each model call runs inline in the request's thread.
    (JAX's default hands a CPU computation to a thread of its own and waits for it: under 16
    concurrent clients that cost about a fifth of the throughput, benchmarks/serve.py.)"""
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def serve(workdir, host: str = "127.0.0.1", port: int = 8080, threads: int = 1,
          workers: int = 1):
    """Loads `workdir` once and serves the app with waitress until interrupted.

    `workers` processes serve, all accepting on the one listening socket: this one, which
    serves from the moment it has loaded, and workers - 1 started with the socket (each
    loads the model itself and joins when ready; one that dies leaves the rest serving).
    A new connection goes to a process holding no more connections than the others
    (ConnectionShares). In each, one worker thread: a request is a few milliseconds of CPU
    work under Python's GIL, so more threads add lock contention, not throughput, and more
    processes are what uses more cores (benchmarks/serve.py measures both; the figures are
    in docs/web.md).
    waitress's main thread reads and writes every connection asynchronously, so a slow
    client does not hold the worker.
    """
    logs.show_progress()
    start = time.monotonic()
    reader = reading.Reader.from_workdir(workdir)
    log.info("Model %s (step %d) loaded and compiled in %.1f s",
             reader.trained.config.model.name, reader.trained.step,
             time.monotonic() - start)
    app = create_app(reader)
    try:
        host = _one_address(host, port)
        server = create_server(app, threads, host=host, port=port)
    except OSError as e:
        raise FlaxDigitsError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    shares, shares_file = _connection_shares(workers)
    if shares is not None:
        shares.attach(server)
    others = [_start_worker(workdir, server.socket, threads, shares_file, slot)
              for slot in range(1, workers)]
    # Everything loaded so far (JAX, flax, the model) lives as long as the server: keep it
    # out of the garbage collector's full passes, which otherwise stall every request in
    # flight for ~100 ms now and then (measured by benchmarks/serve.py).
    gc.collect()
    gc.freeze()
    log.info("Serving on http://%s:%s/ (%s; Ctrl-C stops)", host, server.effective_port,
             "1 process" if workers == 1 else f"{workers} processes: the others join as "
             f"each loads")
    try:
        run_until_stopped(server, watch=lambda: _report_exited(others), shares=shares)
    finally:
        server.task_dispatcher.shutdown()
        server.close()
        _stop_workers(others)
        if shares_file is not None:
            shares_file.close()
    log.info("Stopped")


def _one_address(host: str, port: int) -> str:
    """The first address of `host` (a name such as localhost is often both ::1 and
    127.0.0.1, and waitress would listen on each, with a server object of another kind: one
    socket is what the serving processes share). Raises OSError where it has none."""
    import socket

    addresses = list(dict.fromkeys(
        info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))
    if len(addresses) > 1:
        log.info("%s is %s: listening on %s", host, " and ".join(addresses), addresses[0])
    return addresses[0]


def _connection_shares(workers: int):
    """(ConnectionShares of slot 0, its file) for `workers` serving processes; (None, None)
    for one, or where the file cannot be made (the processes then share the port as the
    kernel hands connections over)."""
    if workers <= 1:
        return None, None
    shares_file = None
    try:
        shares_file = tempfile.TemporaryFile()  # unlinked: gone with the last process
        return ConnectionShares.create(shares_file.fileno(), workers), shares_file
    except (OSError, ValueError) as e:  # no room in the temporary folder, say
        log.warning("Connections are not shared out evenly between the serving processes: "
                    "%s", e)
        if shares_file is not None:
            shares_file.close()
        return None, None


def _start_worker(workdir, listening, threads: int, shares_file, slot: int):
    """Another serving process on the `listening` socket (`python -m
    flaxdigits.serving.app`), in its own process group: a Ctrl-C at the terminal reaches
    this process, which stops it. It counts its connections in `slot` of `shares_file`.
    (It stays in this session: where Linux groups the scheduling by session (autogroup), a
    process in a session of its own got its own share of the CPU, and this one, sharing the
    terminal's session with whatever else runs there, served a third fewer requests.)"""
    import subprocess
    import sys

    # Python 3.10 has no process_group argument.
    group = (dict(process_group=0) if sys.version_info >= (3, 11)
             else dict(preexec_fn=os.setpgrp))

    fd = listening.fileno()
    shares_fd = -1 if shares_file is None else shares_file.fileno()  # -1: no balancing
    return subprocess.Popen(
        [sys.executable, "-m", "flaxdigits.serving.app", str(pathlib.Path(workdir).resolve()),
         str(fd), str(threads), str(os.getpid()), str(shares_fd), str(slot)],
        pass_fds=(fd,) if shares_file is None else (fd, shares_fd),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **group)


def _report_exited(workers: list) -> None:
    for worker in workers:
        if worker.poll() is not None and not getattr(worker, "reported", False):
            worker.reported = True
            alive = 1 + sum(w.poll() is None for w in workers)
            log.warning("A serving process (pid %d) exited with code %s; %d still serve%s",
                        worker.pid, worker.returncode, alive, "s" if alive == 1 else "")


def _stop_workers(workers: list) -> None:
    import subprocess

    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a worker that ignores SIGTERM is killed
            worker.kill()
            worker.wait()


def _worker_main(workdir: str, fd: str, threads: str, parent: str, shares_fd: str,
                 slot: str) -> None:
    """A serving process that `serve` started: serves on the inherited socket `fd` until
    SIGTERM, or until its parent is gone, counting its connections in `slot` of the
    inherited file `shares_fd` (ConnectionShares)."""
    import signal
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it, with SIGTERM
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from flaxdigits import runtime

    runtime.import_jax()
    prepare_jax()
    reader = reading.Reader.from_workdir(workdir)
    app = create_app(reader)
    listening = socket.socket(fileno=int(fd))
    server = create_server(app, int(threads), sockets=[listening])
    shares = None if int(shares_fd) < 0 else ConnectionShares(int(shares_fd), int(slot))
    if shares is not None:
        shares.attach(server)
    gc.collect()
    gc.freeze()

    def parent_gone():
        if os.getppid() != int(parent):  # killed (-9): serve no longer, unsupervised
            os._exit(0)

    run_until_stopped(server, stop_on_signal=False, watch=parent_gone, shares=shares)


# Serving processes share one listening socket, and a kept-alive connection stays with the
# process that accepted it. Left to the kernel, 16 clients' connections fell 12 to 4 between
# two processes, and the 12 waited three times as long as the 4 (benchmarks/serve.py). So each
# process writes how many connections it holds into a small file they all map, and takes new
# ones only while it holds no more than any other (ConnectionShares).
# A connection once taken waits behind that process's requests. A process busy with a slow
# request (a wide mark whose every cut is read: 10-15 ms of CPU against 2.5) kept taking its
# share of new connections, and each waited behind it. So a process also takes new ones only
# while fewer than IN_SERVICE_LIMIT of its connections have a request in service or queued:
# the rest wait in the listening socket's backlog for whichever process is free first, one
# queue for all (16 clients, a new connection per request: p99 44-54 -> 38-41 ms, and a few
# more requests a second; benchmarks/serve.py, docs/web.md). A process busy for
# BUSY_DECLINE_LIMIT (kept-alive clients keeping every process busy, say) takes a new
# connection, and the next only as long after it took that one (ConnectionShares.took): a new
# client waits about that long at most, not until the others go quiet. (Taking every waiting
# one instead, a process once busy that long held them all, up to 16, and was never free
# again: the p99 went back to 47-60 ms in a third of the runs, and a stopped process took 7-9
# connections down with it, against 1-2. Counting the limit from its last look instead of
# its last taken connection, it spent the allowance with no one waiting.)
SHARE_STALE = 1.0  # seconds: a process silent this long (stopped, hung) is left out
DECLINED_POLL = 0.02  # seconds: how soon a process that declined looks again
IN_SERVICE_LIMIT = 1
BUSY_DECLINE_LIMIT = 0.02  # seconds


class ConnectionShares:
    """Slot k of a file that every serving process maps: (connections, time.monotonic() of
    its last look) of process k. Its `readable` wraps the waitress server's: the listening
    socket is polled only while this process holds no more connections than any other that
    looked within SHARE_STALE (ties take turns by whoever polls first), and only while fewer
    than IN_SERVICE_LIMIT of its connections have requests in service, or none taken for
    BUSY_DECLINE_LIMIT."""

    SLOT = struct.Struct("qd")

    def __init__(self, fd: int, slot: int):
        self.shared = mmap.mmap(fd, 0)
        self.slot = slot
        self.declined = False
        self.free_at = time.monotonic()  # when it was last free, or last took one

    @classmethod
    def create(cls, fd: int, slots: int) -> "ConnectionShares":
        os.ftruncate(fd, cls.SLOT.size * slots)  # zeros: no process has looked yet
        return cls(fd, 0)

    def attach(self, server) -> None:
        accepts, take = server.readable, server.handle_accept
        server.readable = lambda: accepts() and self.may_accept(
            len(server._map), in_service(server._map))

        def handle_accept():
            take()
            self.took()

        server.handle_accept = handle_accept

    def took(self, now: Optional[float] = None) -> None:
        """A connection was taken: busy, the next waits BUSY_DECLINE_LIMIT from now."""
        self.free_at = time.monotonic() if now is None else now

    def may_accept(self, connections: int, in_service: int = 0,
                   now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        self.SLOT.pack_into(self.shared, self.slot * self.SLOT.size, connections, now)
        fewest = None
        for k in range(len(self.shared) // self.SLOT.size):
            if k != self.slot:
                held, seen = self.SLOT.unpack_from(self.shared, k * self.SLOT.size)
                if now - seen < SHARE_STALE and (fewest is None or held < fewest):
                    fewest = held
        if in_service < IN_SERVICE_LIMIT:
            self.free_at = now
        busy = in_service >= IN_SERVICE_LIMIT and now - self.free_at < BUSY_DECLINE_LIMIT
        self.declined = busy or (fewest is not None and connections > fewest)
        return not self.declined


def in_service(socket_map: dict) -> int:
    """How many of the connections in a waitress server's `socket_map` have requests being
    served or waiting for the worker thread (the thread clears them before it wakes the main
    loop with the answer, so a process that declined while busy looks again at once)."""
    return sum(1 for channel in socket_map.values() if getattr(channel, "requests", None))


def run_until_stopped(server, stop_on_signal: bool = True, watch=None,
                      shares: Optional[ConnectionShares] = None) -> None:
    """waitress's main loop (what `server.run()` does), one poll of at most GUARD_INTERVAL at
    a time, with guard_connections between polls, until a stop signal. A signal handler's
    exception ends it at once; but Python drops one raised while a finalizer runs (a socket
    closed by the garbage collector), and the handler notes the signal for that case
    (launch.py), which is checked between polls. `watch`, where given, is called with each
    guard. With `shares`, a process that declined new connections polls again within
    DECLINED_POLL (another's count may have caught up with its own)."""
    from flaxdigits import runtime

    next_guard = 0.0
    while server._map and not (stop_on_signal and runtime.noted_signal() is not None):
        timeout = DECLINED_POLL if shares is not None and shares.declined else GUARD_INTERVAL
        try:
            server.asyncore.loop(timeout=timeout, map=server._map,
                                 use_poll=server.adj.asyncore_use_poll, count=1)
        except OSError:
            if server.accepting:
                raise
            return  # closed from another thread (start_in_thread's server.close()) mid-poll
        now = time.monotonic()
        if now >= next_guard:
            guard_connections(server._map, server.adj.connection_limit, now)
            if watch is not None:
                watch()
            next_guard = now + GUARD_INTERVAL


def guard_connections(socket_map: dict, connection_limit: int, now: float) -> int:
    """Closes the connections that would lock others out: those whose request headers
    have taken more than HEADER_TIMEOUT seconds since the guard first saw them arriving,
    and, when the open connections reach CONNECTION_LIMIT - SPARE_CONNECTIONS, the oldest
    idle ones (nothing being served or sent) until 2 x SPARE_CONNECTIONS are free. Returns
    how many it closed (each closes at the next poll)."""
    from waitress.channel import HTTPChannel

    channels = [c for c in socket_map.values() if isinstance(c, HTTPChannel) and not c.will_close]
    closed = 0
    idle = []
    for channel in channels:
        request = channel.request
        if request is not None and not request.headers_finished:
            if getattr(channel, "headers_of", None) is not request:  # a new request's headers
                channel.headers_of, channel.headers_since = request, now
            elif now - channel.headers_since > HEADER_TIMEOUT:
                channel.will_close = True
                closed += 1
                continue
        if not channel.requests and not channel.total_outbufs_len and (
                request is None or not request.headers_finished):
            idle.append(channel)
    open_count = len(channels) - closed
    if open_count >= connection_limit - SPARE_CONNECTIONS:
        idle.sort(key=lambda c: c.last_activity)  # the oldest first
        for channel in idle[:open_count - (connection_limit - 2 * SPARE_CONNECTIONS)]:
            channel.will_close = True
            closed += 1
    if closed:
        log.info("Closed %d connections (slow headers or idle at the connection limit)",
                 closed)
    return closed


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, threads: int = 8):
    """Serves `app` with waitress in a daemon thread; returns (base URL, server). For tests
    and benchmarks: port 0 picks a free port; `server.close()` stops it."""
    server = create_server(app, threads, host=host, port=port)
    thread = threading.Thread(target=run_until_stopped, args=(server, False), daemon=True)
    thread.start()
    return f"http://{host}:{server.effective_port}", server


if __name__ == "__main__":  # a serving process that serve() starts
    import sys

    try:
        _worker_main(*sys.argv[1:])
    except Exception as e:  # noqa: BLE001 (one line; the parent says how many still serve)
        sys.exit(f"flaxdigits: a serving process could not start: {e}")
