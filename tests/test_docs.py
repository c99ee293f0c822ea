"""The README and docs/ stay true: links resolve, the configs and modes they name exist, the
README stays a front door."""

import pathlib
import re

import pytest

from flaxdigits import cli
from flaxdigits import config as config_lib
from tests.conftest import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_the_docs_pages_are_there():
    names = {page.stem for page in PAGES}
    assert {"checkpoints", "reliability", "data", "accuracy", "speed", "web", "reading",
            "export", "colab", "multihost", "kaggle", "layout", "development"} <= names


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    text = page.read_text()
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_every_page_is_linked_from_the_readme():
    linked = {t for t in LINK.findall(README.read_text())}
    assert {f"docs/{page.name}" for page in PAGES} <= linked


def test_the_configs_and_modes_the_readme_names_exist():
    text = README.read_text()
    configs = set(re.findall(r"--config=([^\s`'\"]+)", text))
    assert configs, "the README names no config"
    for name in configs:
        assert (REPO / name).is_file() or name in config_lib.shipped_configs(), name
    modes = set(re.findall(r"--mode=(\w+)", text))
    assert modes >= {"evaluate", "predict", "read", "serve"}
    assert modes <= set(cli.FLAGS["mode"].parser.enum_values), modes


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines: move detail into docs/"
    first = "\n".join(lines[:60])
    assert "python launch.py --config=configs/base.py --workdir=runs/base" in first
    assert "pip install -e '.[test]'" in first and "python -m pytest -q" in first
    # The section titled "Web page": its first launch.py line trains the page's model (the
    # line the tracker's floors for reading numbers are measured with).
    section = README.read_text().split("\n## Web page\n", 1)[1].split("\n## ", 1)[0]
    first_launch = next(line for line in section.splitlines() if "launch.py --config=" in line)
    assert first_launch == "python launch.py --config=configs/page.py --workdir=runs/page"


def test_the_pictures_are_small():
    pictures = list((REPO / "docs" / "images").glob("*.png"))
    assert {p.name for p in pictures} >= {"page.png", "confusion_matrix.png",
                                          "training_curves.png"}
    assert sum(p.stat().st_size for p in pictures) < 1_000_000


@pytest.mark.slow
def test_the_page_picture_is_the_real_page_reading_what_was_written(trained, tmp_path):
    """docs/pictures.py drives the real page: what it shows is what the model read."""
    import runpy
    import shutil

    if not pathlib.Path(shutil.which("chromium") or "/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
    pictures = runpy.run_path(str(REPO / "docs" / "pictures.py"))
    out = tmp_path / "page.png"
    shown = pictures["page_picture"](trained["workdir"], out, number="11")
    assert shown == "11" and out.stat().st_size > 10_000
