"""The exported page (W/export/web/) in headless Chromium, beside the Python reader on the
same images: what the page reads, how fast, and whether it agrees with the server.

    python benchmarks/export_page.py --workdir=runs/page [--digits=1000] [--per_case=20]

W must hold an export (launch.py --mode=export); the page is served by a plain static
server on 127.0.0.1 with every other request cut off. Prints, side by side with the Python
reader (the code behind the API's /api/predict, in this process, on the same PNG bytes):
  1. seconds from opening the page to its first number (models downloaded and loaded, one
     digit uploaded and read);
  2. accuracy on the first --digits MNIST test digits redrawn as on the pad
     (testing.redraw_anywhere, the redrawn digits of benchmarks/serve.py, seed 0), and on
     --per_case written numbers per kind and length 1-6 (testing.number_cases, seed 404);
  3. how often the page's number and boxes are the Python reader's;
  4. the time from an uploaded PNG to its number in the page (decoding included): p50 and
     p99 for the single digits, and per number length.
"""

import argparse
import base64
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from flaxdigits import testing  # noqa: E402
from flaxdigits.data import idx  # noqa: E402
from flaxdigits.serving import preprocess, reading  # noqa: E402

STRINGS_SEED = 404  # its own: not benchmarks/reading.py's strings


def python_read(reader, body: bytes):
    try:
        result = reader.read(preprocess.decode_image(body))
    except preprocess.BadInput as e:
        return {"error": str(e)}
    return {"number": result.number, "boxes": [list(d.box) for d in result.digits]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a workdir with an export/")
    parser.add_argument("--data_dir", default=None, help="a folder of the MNIST IDX files; "
                        "default: ../shared/data/mnist, else flaxdigits' cache")
    parser.add_argument("--digits", type=int, default=1000)
    parser.add_argument("--per_case", type=int, default=20)
    args = parser.parse_args()
    web = pathlib.Path(args.workdir) / "export" / "web"
    if not (web / "index.html").is_file():
        sys.exit(f"{web}: no exported page; run launch.py --mode=export first")
    raw = idx.load_folder(pathlib.Path(args.data_dir or testing.mnist_folder(REPO)))
    rng = np.random.default_rng(0)
    digits = [(str(int(label)), testing.encode(testing.redraw_anywhere(image, rng)), "digit")
              for image, label in zip(raw.test_images[:args.digits],
                                      raw.test_labels[:args.digits])]
    numbers = [(c["number"], testing.encode(c["image"]), f"{c['kind']} {c['length']}")
               for c in testing.number_cases(raw.test_images, raw.test_labels, args.per_case,
                                             seed=STRINGS_SEED)]
    reader = reading.Reader.from_workdir(args.workdir)

    with testing.static_page(web) as (page, outside, loaded):
        begun = time.perf_counter()
        page.evaluate(testing.READ_PNG_IN_PAGE, base64.b64encode(digits[0][1]).decode())
        first = loaded + time.perf_counter() - begun
        rows = []
        for truth, body, kind in digits + numbers:
            theirs = page.evaluate(testing.READ_PNG_IN_PAGE, base64.b64encode(body).decode())
            ours = python_read(reader, body)
            rows.append((kind, truth, theirs, ours))
    print(f"exported page of {args.workdir}: {web}")
    print(f"first number {first:.2f} s after opening the page (models loaded in "
          f"{loaded:.2f} s); requests outside the page's host: {len(outside)}")

    def summary(selected, name):
        page_right = sum(r[2].get("number") == r[1] for r in selected)
        python_right = sum(r[3].get("number") == r[1] for r in selected)
        same = sum(r[2].get("number") == r[3].get("number") and
                   r[2].get("boxes") == r[3].get("boxes") for r in selected)
        times = [r[2]["ms"] for r in selected if "ms" in r[2]]
        n = len(selected)
        print(f"| {name} | {n} | {page_right / n:.4f} | {python_right / n:.4f} | "
              f"{same}/{n} | {np.percentile(times, 50):.1f} | {np.percentile(times, 99):.1f} |")

    print("\n| images | count | page accuracy | Python reader (API) | same number and boxes "
          "| page ms p50 | page ms p99 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary([r for r in rows if r[0] == "digit"], "digits redrawn as on the pad")
    for kind in testing.NUMBER_KINDS:
        summary([r for r in rows if r[0].startswith(kind + " ")], f"{kind} numbers, 1-6 digits")
    summary([r for r in rows if r[0] != "digit"], "all numbers")
    for length in range(1, 7):
        summary([r for r in rows if r[0].endswith(f" {length}")], f"numbers of {length}")
    differ = [(r[1], r[3].get("number"), r[2].get("number")) for r in rows
              if r[2].get("number") != r[3].get("number")]
    print(f"\nnumbers that differ (truth, Python, page), first 10 of {len(differ)}: "
          f"{differ[:10]}")


if __name__ == "__main__":
    main()
