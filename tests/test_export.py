"""--mode=export: the files, their parity with the library, model.json, and the refusals."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from flaxdigits import data, export
from flaxdigits.data import idx
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.evaluation import inference

from .conftest import REPO, tiny_config

pytestmark = pytest.mark.slow  # each test trains or converts a model


def export_config(data_dir):
    return tiny_config(**{"data.dir": str(data_dir), "num_epochs": 1,
                          "line_reader.steps": 4, "line_reader.glyphs": 100,
                          "line_reader.batch_size": 8})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_dir):
    """A tiny model and line reader, trained, and exported once (read-only for the tests)."""
    from flaxdigits.training import loop

    root = tmp_path_factory.mktemp("export")
    loop.train_and_evaluate(export_config(synthetic_dir), root / "w")
    export.export_workdir(export_config(synthetic_dir), root / "w", "tiny")
    return root / "w"


def test_export_writes_the_files_and_model_json_describes_them(workdir):
    folder = workdir / "export"
    assert sorted(p.name for p in folder.iterdir()) == [
        "line_reader.onnx", "model.jax", "model.json", "model.onnx", "web"]
    assert sorted(p.name for p in (folder / "web").iterdir()) == sorted(
        [*export.PAGE_FILES, *export.ONNXRUNTIME_WEB_FILES, "model.onnx", "line_reader.onnx"])
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 20e6
    assert not [p for p in workdir.iterdir() if p.name.startswith(".export")]
    described = json.loads((folder / "model.json").read_text())
    assert described["config"] == "tiny" and described["model"]["name"] == "cnn"
    assert described["step"] == inference.load(workdir).step
    assert described["inputs"]["images"]["shape"] == ["batch", 28, 28, 1]
    assert described["outputs"]["probabilities"]["shape"] == ["batch", 10]
    assert described["preparation"]["fit_box"] == 20
    assert described["accuracy"]["split"] == "test" and described["accuracy"]["digits"] == 100
    assert described["verified"]["onnx"]["labels_differing"] == 0
    assert described["verified"]["onnx"]["max_abs_difference"] <= 1e-5
    assert described["verified"]["line_reader"]["frames"] > 0
    for name in ("jax", "flax", "jax2onnx"):
        assert described["versions"][name]
    for name, facts in described["files"].items():
        content = (folder / name).read_bytes()
        assert facts == {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def test_onnx_gives_the_librarys_probabilities_for_any_batch(workdir, synthetic_dir):
    import onnxruntime

    trained = inference.load(workdir)
    images = data.to_model_inputs(idx.load_folder(synthetic_dir).test_images[:37])
    expected = inference.predict_probabilities(trained.model, trained.variables, images)
    session = onnxruntime.InferenceSession(str(workdir / "export" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    for batch in (1, 37):
        got = session.run(None, {"images": images[:batch]})[0]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected[:batch], atol=1e-5, rtol=0)


JAX_ONLY = """
import sys, numpy as np, jax
exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
images = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(exported.call(images)))
ours = [m for m in sys.modules if m.split('.')[0] in ('flax', 'flaxdigits', 'optax', 'orbax')]
assert not ours, ours
"""


def test_model_jax_loads_with_jax_and_numpy_alone(workdir, synthetic_dir, tmp_path):
    trained = inference.load(workdir)
    images = data.to_model_inputs(idx.load_folder(synthetic_dir).test_images[:5])
    np.save(tmp_path / "images.npy", images)
    # -I: isolated, so that neither the checkout nor the tests' folder is importable.
    result = subprocess.run([sys.executable, "-I", "-c", JAX_ONLY,
                             str(workdir / "export" / "model.jax"), str(tmp_path / "images.npy"),
                             str(tmp_path / "out.npy")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"),
        inference.predict_probabilities(trained.model, trained.variables, images),
        atol=1e-5, rtol=0)


def test_a_broken_weight_is_refused_and_the_previous_export_kept(workdir, synthetic_dir,
                                                                 tmp_path, monkeypatch):
    import jax

    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    before = (copy / "export" / "model.json").read_text()
    whole = export._classifier_function

    def broken(trained):
        params = jax.tree_util.tree_map(np.array, trained.variables["params"])  # a copy
        first = sorted(params)[0]
        params[first]["bias"][0] += 0.5
        return whole(trained._replace(variables={**trained.variables, "params": params}))

    monkeypatch.setattr(export, "_classifier_function", broken)
    with pytest.raises(FlaxDigitsError, match=r"export/model.onnx: does not match the library "
                                              r"on 100 digits \(\d+ labels differ, max "
                                              r"\|probability difference\| .*; not exported"):
        export.export_workdir(export_config(synthetic_dir), copy, "tiny")
    assert (copy / "export" / "model.json").read_text() == before
    assert not [p for p in copy.iterdir() if p.name.startswith(".export")]


def test_a_workdir_without_a_model_is_one_line(tmp_path, synthetic_dir):
    with pytest.raises(FlaxDigitsError, match="no trained model here"):
        export.export_workdir(export_config(synthetic_dir), tmp_path / "empty")
    assert not (tmp_path / "empty" / "export").exists()


def test_without_the_export_extra_it_says_what_to_install(workdir, synthetic_dir,
                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # import jax2onnx: ImportError
    with pytest.raises(FlaxDigitsError, match=r"--mode=export needs jax2onnx: pip install "
                                              r"-e '.\[export\]'"):
        export.export_workdir(export_config(synthetic_dir), workdir)


def test_without_npm_or_a_cached_runtime_it_says_what_to_do(workdir, synthetic_dir,
                                                           tmp_path, monkeypatch):
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    before = (copy / "export" / "model.json").read_text()
    monkeypatch.setenv("FLAXDIGITS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FlaxDigitsError, match=r"the exported page needs onnxruntime-web "
                                              r"1\.22\.0: install npm \(Node\.js\) and run the "
                                              r"export again, or put its dist/ files .* into "
                                              r".*empty-cache/onnxruntime-web-1\.22\.0"):
        export.export_workdir(export_config(synthetic_dir), copy)
    assert (copy / "export" / "model.json").read_text() == before
    assert not [p for p in copy.iterdir() if p.name.startswith(".export")]


def test_a_file_where_the_export_folder_goes_is_one_line(workdir, synthetic_dir, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("export"))
    (copy / "export").write_text("not a folder")
    with pytest.raises(FlaxDigitsError, match=r"export: is a file where the export folder "
                                              r"goes"):
        export.export_workdir(export_config(synthetic_dir), copy)
    assert (copy / "export").read_text() == "not a folder"
    assert not [p for p in copy.iterdir() if p.name.startswith(".export")]


def test_a_full_disk_is_one_line_and_leaves_no_export(workdir, synthetic_dir, small_disk):
    copy = small_disk / "w"
    subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("export", "tensorboard",
                                                                 "plots"))
    disk = os.statvfs(small_disk)
    used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
    subprocess.run(["mount", "-o", f"remount,size={used // 1024 + 64}k", str(small_disk)],
                   check=True)
    with pytest.raises(FlaxDigitsError, match=r"\.partial/.*: cannot write it"):
        export.export_workdir(export_config(synthetic_dir), copy)
    assert not (copy / "export").exists()
    assert not [p for p in copy.iterdir() if p.name.startswith(".export")]


def test_the_command_line_exports_and_prints_the_folder(workdir, synthetic_dir, tmp_path,
                                                       launch, last_line):
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("export"))
    result = launch("--config=configs/tiny.py", f"--workdir={copy}", "--mode=export",
                    f"--config.data.dir={synthetic_dir}")
    assert last_line(result) == f"export={copy / 'export'}"
    shown = [line for line in result.stderr.splitlines() if not line.startswith(("I1", "W1"))]
    assert not shown, result.stderr[-3000:]  # nothing but the log: no converter chatter
    assert "Verified model.onnx on 100 digits: 0 labels differ" in result.stderr
    assert json.loads((copy / "export" / "model.json").read_text())["config"] == "tiny"


def test_a_model_onnx_cannot_hold_is_one_line_and_no_export(tmp_path, synthetic_dir):
    from flaxdigits.training import loop

    config = tiny_config(**{"data.dir": str(synthetic_dir), "num_epochs": 1,
                            "dtype": "bfloat16"})
    loop.train_and_evaluate(config, tmp_path / "w")
    with pytest.raises(FlaxDigitsError, match=r"model cnn: jax2onnx made an ONNX model that "
                                              r"does not pass onnx.checker \(.*bfloat16"):
        export.export_workdir(config, tmp_path / "w")
    assert not [p for p in (tmp_path / "w").iterdir() if "export" in p.name]
