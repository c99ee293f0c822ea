"""The package as a user installs it: a wheel built from the checkout, installed outside it,
trains with the shipped configs by name (`flaxdigits --config=tiny`)."""

import os
import pathlib
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import MNIST_DIR, REPO, last_line, needs_mnist, run_launch


def test_the_wheel_lists_every_package_of_the_checkout():
    """pyproject.toml names the packages (it maps configs/ into flaxdigits.configs, which
    setuptools' automatic discovery cannot): a new subpackage must be added there."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "flaxdigits").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"flaxdigits.configs"}
    assert setuptools["package-dir"] == {"flaxdigits.configs": "configs"}


def build_wheel(folder: pathlib.Path) -> pathlib.Path:
    """The wheel of the checkout, built with this environment's setuptools (no download)."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    pytest.importorskip("wheel", reason="building the wheel needs the wheel package")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(folder), str(REPO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = folder.glob("flaxdigits-*.whl")
    return wheel


@pytest.mark.slow
@needs_mnist
def test_the_installed_wheel_trains_the_tiny_config_by_name_outside_any_checkout(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"flaxdigits/configs/{name}.py" for name in
            ("base", "tiny", "fast", "deep", "accurate", "page")} <= names
    # The served page and what the exported page is made of.
    assert {f"flaxdigits/serving/web/{name}" for name in (
        "index.html", "pad.js", "served.js", "export/page.js", "export/reading.js",
        "export/classify-worker.js")} <= names
    # Installed into a folder of its own, as a venv's site-packages holds it; its
    # dependencies are this environment's.
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    empty = tmp_path / "empty"  # no checkout, no configs/ folder here
    empty.mkdir()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import flaxdigits; print(flaxdigits.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(site / "flaxdigits" / "__init__.py"), where

    def installed(*args):
        return subprocess.run([str(site / "bin" / "flaxdigits"), *args], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=300)

    data = f"--config.data.dir={MNIST_DIR}"
    from_wheel = last_line(installed("--config=tiny", "--workdir=w", data))
    in_checkout = last_line(run_launch("--config=configs/tiny.py",
                                       f"--workdir={tmp_path / 'checkout'}", data))
    assert from_wheel == in_checkout and from_wheel.startswith("test_accuracy=0.9")
    # Overrides work on a config named as on one given by path; a bad name lists the others.
    override = installed("--config=base", "--workdir=x", "--config.optim.learnin_rate=1")
    assert override.returncode == 1
    assert override.stderr.strip().splitlines()[-1] == (
        'flaxdigits: error: --config.optim.learnin_rate: no such config field; Did you mean '
        '"learning_rate" instead of "learnin_rate"?')
    missing = installed("--config=bse", "--workdir=x")
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "flaxdigits: error: --config=bse: no such shipped config; the shipped configs are "
        "accurate, base, deep, fast, page, tiny (a name, or a path to a .py file)")
    # The library's own loader finds the shipped configs too (what the notebook uses).
    loaded = subprocess.run(
        [sys.executable, "-c", "from flaxdigits import config; c = config.load('deep'); "
         "print(c.model.name, config.CONFIGS_DIR)"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=60)
    assert loaded.stdout.split() == ["deep_cnn", str(site / "flaxdigits" / "configs")], loaded
