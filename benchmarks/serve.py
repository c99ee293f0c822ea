"""The web API under realistic input and load, measured through a real waitress server.

    python benchmarks/serve.py --workdir=runs/fast [--digits=300] [--clients=16]

With no --workdir it first trains configs/fast.py (about 20 s) into a temporary folder.
Prints, side by side:
  1. accuracy of the model on the first --digits MNIST test digits as they are (28x28 arrays,
     the baseline), and of the API on the same digits redrawn the way people draw: large
     (100-250 px tall), off-centre but whole, dark strokes on a light 280x280 canvas, blurred
     a little, sent as PNG; and written with a round brush and with a thin pen
     (flaxdigits.data.written, one digit 126-168 px tall on a 280x280 canvas);
  2. latency with --clients concurrent clients (threads of this process) posting those PNGs
     to the server (launch.py --mode=serve in its own processes): p50, p90, p99, max, and
     requests per second, for each of --workers (default: one serving process, the
     baseline, then serve's default, one per core);
  3. the status code of every kind of bad body (each must be a 4xx), and whether the server
     still answers afterwards.
"""

import argparse
import concurrent.futures
import contextlib
import gc
import http.client
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from flaxdigits import data, testing  # noqa: E402
from flaxdigits.data import idx  # noqa: E402
from flaxdigits.evaluation import inference  # noqa: E402
from flaxdigits.serving import app  # noqa: E402


def redrawn_png(digit: np.ndarray, rng: np.random.Generator, canvas: int = 280) -> bytes:
    """An MNIST digit drawn 100-250 px tall at a random place, dark on light, blurred."""
    return testing.encode(testing.redraw_anywhere(digit, rng, canvas))


def as_digits(answers) -> np.ndarray:
    """The API's answers -> the digit read, or -1 where not exactly one digit was read."""
    return np.array([int(result["number"]) if status == 200 and len(result["number"]) == 1
                     else -1 for status, result in answers])


def post(url: str, body: bytes, kind: str, timeout: float = 30.0):
    request = urllib.request.Request(url + "/api/predict", data=body, method="POST",
                                     headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body or b"{}")
        except json.JSONDecodeError:
            return e.code, {"error": f"(not JSON) {body[:60]!r}"}


def train_fast(workdir: pathlib.Path, data_dir: str) -> None:
    print(f"(training configs/fast.py into {workdir} ...)", flush=True)
    subprocess.run([sys.executable, "launch.py", "--config=configs/fast.py",
                    f"--workdir={workdir}", f"--config.data.dir={data_dir}"],
                   cwd=REPO, check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="a trained workdir; default: train configs/fast.py")
    parser.add_argument("--data_dir", default=None, help="a folder of the MNIST IDX files; "
                        "default: ../shared/data/mnist, else flaxdigits' cache (fetched once)")
    parser.add_argument("--digits", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1600, help="in the latency part")
    parser.add_argument("--workers", default="1,0", help="serving processes (launch.py "
                        "--workers) to measure the latency with, comma-separated")
    args = parser.parse_args()
    args.data_dir = str(args.data_dir or testing.mnist_folder(REPO))

    with tempfile.TemporaryDirectory() as scratch:
        workdir = pathlib.Path(args.workdir or pathlib.Path(scratch) / "fast")
        if not args.workdir:
            train_fast(workdir, args.data_dir)
        raw = idx.load_folder(pathlib.Path(args.data_dir))
        images, labels = raw.test_images[:args.digits], raw.test_labels[:args.digits]
        rng = np.random.default_rng(0)
        pngs = [redrawn_png(image, rng) for image in images]
        for k, workers in enumerate(int(w) for w in args.workers.split(",")):
            with serving(workdir, workers) as url:
                if k == 0:
                    accuracy(args, inference.load(workdir), url, images, labels, pngs)
                latency(args, url, pngs, workers)
                if k == 0:
                    refusals(url, pngs)


@contextlib.contextmanager
def serving(workdir: pathlib.Path, workers: int):
    """The server as an operator runs it: launch.py --mode=serve, in its own processes (a
    server inside this process would share the GIL with the client threads)."""
    port = testing.free_port()
    server = subprocess.Popen(
        [sys.executable, "launch.py", "--config=configs/base.py", f"--workdir={workdir}",
         "--mode=serve", f"--port={port}", f"--workers={workers}"], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        testing.wait_until_up(url + "/healthz", server)
        # The other processes load and join: wait until every one has answered.
        wanted, seen, deadline = workers or app.serving_processes(), set(), time.time() + 180
        while len(seen) < wanted and time.time() < deadline:
            with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
                seen.add(json.loads(response.read())["pid"])
            time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def accuracy(args, trained, url, images, labels, pngs):
    baseline = inference.predict_probabilities(trained.model, trained.variables,
                                               data.to_model_inputs(images)).argmax(-1)
    answers = [post(url, body, "image/png") for body in pngs]
    refused = [(i, status, result.get("error")) for i, (status, result) in enumerate(answers)
               if status != 200]
    # The API reads numbers: a digit read as anything but one digit is wrong.
    api = as_digits(answers)
    print(f"model: {trained.config.model.name}, step {trained.step}")
    print(f"\n1. accuracy on the first {len(labels)} MNIST test digits")
    print(f"   as 28x28 arrays, straight into the model: {np.mean(baseline == labels):.4f}")
    print(f"   redrawn (100-250 px, off-centre, dark on light 280x280, blurred), via the API: "
          f"{np.mean(api == labels):.4f} ({np.sum(api == -1)} not read as one digit; "
          f"refused: {refused[:3]})")
    for stroke in ("brush", "pen"):
        stroke_rng = np.random.default_rng(1)
        bodies = [testing.encode(testing.stroked(image, stroke, stroke_rng)) for image in images]
        read = as_digits([post(url, body, "image/png") for body in bodies])
        print(f"   written with a {'round brush' if stroke == 'brush' else 'thin pen'}, via "
              f"the API: {np.mean(read == labels):.4f} ({np.sum(read == -1)} not read as one "
              f"digit)", flush=True)


def latency(args, url, pngs, workers):
    local = threading.local()
    host, port = url.removeprefix("http://").split(":")

    def keep_alive(i):  # each client keeps its connection open, as a browser does
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        start = time.perf_counter()
        local.connection.request("POST", "/api/predict", body=pngs[i % len(pngs)],
                                 headers={"Content-Type": "image/png"})
        response = local.connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - start

    def new_connection(i):  # a new connection per request, as curl or a script does
        start = time.perf_counter()
        status, _ = post(url, pngs[i % len(pngs)], "image/png")
        return status, time.perf_counter() - start

    gc.collect()
    gc.freeze()  # as the server does: no full garbage-collector pass stalls the clients
    print(f"\n2. {args.requests} PNG requests from {args.clients} concurrent clients "
          f"(latency in ms), --workers={workers}"
          f"{' (one per core, at most 4)' if workers == 0 else ''}")
    for name, one in (("keep-alive connections", keep_alive),
                      ("a new connection per request", new_connection)):
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.clients * 2)))  # warm up every client
            start = time.perf_counter()
            results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
        latencies = np.array([seconds for _, seconds in results]) * 1000
        print(f"   {name:<30} {args.requests / wall:5.0f} requests/s; p50 "
              f"{np.percentile(latencies, 50):.1f}, p90 {np.percentile(latencies, 90):.1f}, "
              f"p99 {np.percentile(latencies, 99):.1f}, max {latencies.max():.1f}; non-200: "
              f"{sum(status != 200 for status, _ in results)}", flush=True)


def refusals(url, pngs):
    print("\n3. bad bodies")
    all_4xx = True
    for name, body, kind, _ in testing.bad_bodies(app.MAX_BODY_BYTES):
        status, answer = post(url, body, kind)
        all_4xx &= 400 <= status < 500
        print(f"   {name:<22} {status}  {answer.get('error', '')[:90]}")
    status, _ = post(url, pngs[0], "image/png")
    print(f"   every one a 4xx: {all_4xx}; a good request afterwards: {status}")


if __name__ == "__main__":
    main()
