"""The pictures of the README and docs/, made from real runs:

    python docs/pictures.py --workdir=runs/page [--config=configs/page.py] [--data_dir=DIR]

- docs/images/confusion_matrix.png and training_curves.png: the workdir's own plots (its
  training, or `--mode=evaluate`, wrote them), shrunk;
- docs/images/page.png: the real page, served from the workdir and driven in Chromium, with
  "2026" written on its pad in mouse strokes, once the page has read it.

A workdir with no trained model is trained first with --config (configs/page.py: about 13
minutes on 2 cores). Needs Debian's chromium and Playwright (the test extra).
"""

import argparse
import math
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 720  # pixels: the plots are drawn larger than a README shows them


def digit_strokes(digit: str) -> list[list[tuple[float, float]]]:
    """Pen strokes of a handwritten-looking digit in a unit box (x right, y down; the box
    is 0.6 wide and 1 tall)."""
    def arc(cx, cy, rx, ry, start_deg, end_deg, steps=24):
        return [(cx + rx * math.cos(math.radians(a)), cy - ry * math.sin(math.radians(a)))
                for a in (start_deg + (end_deg - start_deg) * k / steps
                          for k in range(steps + 1))]

    if digit == "2":
        return [arc(0.3, 0.3, 0.27, 0.26, 160, -20) + [(0.04, 0.97), (0.62, 0.95)]]
    if digit == "0":
        return [arc(0.3, 0.5, 0.27, 0.47, 95, 95 + 370, 36)]
    if digit == "6":
        down = [(0.52 - 0.45 * t, 0.03 + 0.67 * t ** 0.8) for t in (k / 12 for k in range(13))]
        return [down + arc(0.31, 0.72, 0.25, 0.25, 180, -175, 28)]
    if digit == "1":
        return [[(0.33, 0.02), (0.31, 0.98)]]
    raise ValueError(f"no strokes for {digit!r}")


def write_number(page, number: str, left: float, top: float, height: float) -> None:
    """Writes `number` on the page's pad with mouse strokes, digit by digit."""
    box = page.locator("#pad").bounding_box()
    x = left
    for digit in number:
        for stroke in digit_strokes(digit):
            points = [(box["x"] + x + px * height, box["y"] + top + py * height)
                      for px, py in stroke]
            page.mouse.move(*points[0])
            page.mouse.down()
            for point in points[1:]:
                page.mouse.move(*point, steps=2)
            page.mouse.up()
        x += 0.6 * height + 0.3 * height


def page_picture(workdir: pathlib.Path, out: pathlib.Path, number: str = "2026") -> str:
    """Serves `workdir` on loopback, writes `number` on the page in Chromium and saves a
    screenshot once the reading has settled; returns the number the page showed."""
    from playwright.sync_api import sync_playwright

    from flaxdigits.serving import app as app_lib
    from flaxdigits.serving import reading

    url, server = app_lib.start_in_thread(app_lib.create_app(reading.Reader.from_workdir(workdir)))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox"])
            # bypass_csp: the page's policy forbids eval, which Playwright's waits use.
            page = browser.new_page(viewport={"width": 1000, "height": 640}, bypass_csp=True)
            page.goto(url + "/")
            write_number(page, number, left=130, top=55, height=170)
            page.wait_for_function("document.getElementById('number').dataset.number !== ''",
                                   timeout=10_000)
            page.wait_for_function("document.getElementById('number').dataset.settled === "
                                   "'yes'", timeout=10_000)
            shown = page.locator("#number").inner_text()
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.close()
    return shown


def shrink(source: pathlib.Path, out: pathlib.Path, width: int = WIDTH) -> None:
    """A smaller copy of a PNG, in at most 256 colours (plots and screenshots are flat)."""
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)),
                                 Image.Resampling.LANCZOS)
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/page", type=pathlib.Path)
    parser.add_argument("--config", default="configs/page.py")
    parser.add_argument("--data_dir", default="", help="MNIST's folder if not the cache")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from flaxdigits.workdir import Workdir

    if not Workdir(args.workdir).has_checkpoints():
        print(f"{args.workdir} holds no trained model: training {args.config} there first")
        data = [f"--config.data.dir={args.data_dir}"] if args.data_dir else []
        subprocess.run([sys.executable, "-m", "flaxdigits", f"--config={args.config}",
                        f"--workdir={args.workdir}", *data], check=True, cwd=REPO)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in ("confusion_matrix.png", "training_curves.png"):
        shrink(args.workdir / "plots" / name, IMAGES / name)
    raw = IMAGES / "page_full.png"
    shown = page_picture(args.workdir, raw)
    shrink(raw, IMAGES / "page.png", width=1000)
    raw.unlink()
    for path in sorted(IMAGES.glob("*.png")):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KB")
    print(f"the page read the written 2026 as {shown!r}")
    return 0 if shown == "2026" else 1


if __name__ == "__main__":
    sys.exit(main())
