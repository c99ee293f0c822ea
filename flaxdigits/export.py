"""--mode=export: a trained workdir's model as files that need no flaxdigits, each loaded back
and checked against the library before the export counts as done.

    python launch.py --config=configs/page.py --workdir=W --mode=export

W/export/ holds
    model.onnx        the classifier (best checkpoint): images float32 [batch, 28, 28, 1] in
                      [0, 1] -> probabilities float32 [batch, 10] (jax2onnx, dynamic batch)
    model.jax         the same function serialized by jax.export (symbolic batch); loads with
                      jax and numpy only: jax.export.deserialize(bytes).call(images)
    line_reader.onnx  where W has a line reader: strips float32 [batch, 24, width, 1] ->
                      log-probabilities [batch, width / 4, 11] (class 0 the CTC blank)
    web/              a static page that reads numbers in the browser: index.html, page.js,
                      reading.js (the port of serving/reading.py), onnxruntime-web's wasm
                      build and the .onnx files; any static host serves it
    model.json        what a user of the files needs: inputs and outputs, the MNIST-style
                      preparation constants, where the model came from, what was verified,
                      the versions that made the files and each file's sha256

The files are written into a temporary folder beside export/ and renamed over it only once
verified, so a failed or stopped export leaves the previous export/ (or none), never half a
one. The checks: onnxruntime and jax.export on every digit of the test split (validation
where the data has no labelled test split) give the library's labels and probabilities
within VERIFY_TOLERANCE; the line reader's frames the same way on strips of test digits.
"""

import contextlib
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
from typing import Callable

import numpy as np

from flaxdigits import IMAGE_SIDE, NUM_CLASSES, config as config_lib, data, logs
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.evaluation import inference
from flaxdigits.serving import preprocess
from flaxdigits.serving.preprocess import LINE_STRIP
from flaxdigits.workdir import Workdir

log = logging.getLogger(__name__)

VERIFY_TOLERANCE = 1e-5  # max |probability difference| allowed between a file and the library
FORMAT_VERSION = 1  # of model.json
ONNX_OPSET = 21  # what onnxruntime 1.20 and later (and so the page's onnxruntime-web) run
EXPORT_EXTRA = "pip install -e '.[export]' (jax2onnx and onnxruntime)"


def export_workdir(config, workdir, config_name: str = "") -> pathlib.Path:
    """--mode=export: writes and verifies `workdir`/export/ (see the module docstring) for
    the best checkpoint, checked on the data `config` names. Returns the folder."""
    logs.show_progress()
    config_lib.validate(config)
    jax2onnx, onnxruntime = _export_libraries()
    workdir = Workdir(workdir)
    trained = inference.load(workdir, which="best")  # a damaged newest checkpoint: fallback
    page_runtime = onnxruntime_web()  # before the conversion: npm missing is one line at once
    line_variables = _line_reader_variables(workdir)
    dataset = data.load_dataset(config.data, training_pieces=False)  # held-out digits only
    split_name, split = (("test", dataset.test) if dataset.test is not None
                         else ("validation", dataset.validation))
    if split is None:
        raise FlaxDigitsError(f"{dataset.source} has no test or validation split to verify "
                              f"the exported files on")

    final = workdir.export_dir
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        classify = _classifier_function(trained)
        files = {"model.onnx": _onnx_bytes(jax2onnx, classify, [("batch", IMAGE_SIDE,
                                                                 IMAGE_SIDE, 1)],
                                           "images", "probabilities", trained.config.model.name),
                 "model.jax": _jax_export_bytes(classify)}
        if line_variables is not None:
            line = _line_reader_function(line_variables)
            files["line_reader.onnx"] = _onnx_bytes(
                jax2onnx, line, [("batch", LINE_STRIP, "width", 1)], "strips",
                "log_probabilities", "line_reader")
        for name, content in files.items():
            _write(partial / name, content)
        web = _write_page(partial, [name for name in files if name.endswith(".onnx")],
                          page_runtime)
        verified = verify_classifier(partial, trained, split.images, onnxruntime)
        verified["split"] = split_name
        if line_variables is not None:
            verified["line_reader"] = verify_line_reader(
                partial, _line_reader_function(line_variables), split.images, onnxruntime)
        accuracy = float(np.mean(verified.pop("labels") == split.label_ids))
        written = {name: partial / name for name in files}
        written.update({f"web/{p.name}": p for p in sorted(web.iterdir())})
        description = describe(trained, config_name, split_name, accuracy, verified, written,
                               jax2onnx)
        _write(partial / "model.json", json.dumps(description, indent=2) + "\n")
        _replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("Exported %s step %d to %s: %s", trained.config.model.name, trained.step, final,
             ", ".join(f"{n} {(final / n).stat().st_size:,} bytes" for n in sorted(files)))
    return final


def _export_libraries():
    """jax2onnx and onnxruntime, or one line saying how to install them."""
    # jax2onnx logs a traceback at import for plugins of libraries we do not use (dm_pix on
    # this JAX), and onnx_ir warns about values it leaves untyped: neither is ours to act on.
    for name in ("jax2onnx", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import jax2onnx
        import onnxruntime
    except ImportError as e:
        raise FlaxDigitsError(f"--mode=export needs {e.name}: {EXPORT_EXTRA}") from None
    # It also logs each conversion's parameters at INFO, from loggers it names after files.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("jax2onnx")]:
        logging.getLogger(name).setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(3)  # errors only: shape-merge notes are not ours
    return jax2onnx, onnxruntime


def _classifier_function(trained) -> Callable:
    from flaxdigits import models

    model, variables = trained.model, trained.variables
    return lambda images_bhwc: models.probabilities(model, variables, images_bhwc)


def _line_reader_variables(workdir):
    """The workdir's line reader's variables, or None where it has none."""
    import jax

    from flaxdigits import checkpoint, models

    if checkpoint.read_line_reader_info(workdir) is None:
        return None
    blank = np.zeros((1, LINE_STRIP, 64, 1), np.float32)
    return checkpoint.restore_line_reader(
        workdir, jax.eval_shape(models.LineReader().init, jax.random.key(0), blank))


def _line_reader_function(variables) -> Callable:
    import jax

    from flaxdigits import models

    model = models.LineReader()
    return lambda strips_bhwc: jax.nn.log_softmax(model.apply(variables, strips_bhwc))


def _onnx_bytes(jax2onnx, fn: Callable, inputs, input_name: str, output_name: str,
                what: str) -> bytes:
    """`fn` as an ONNX model. jax2onnx prints its plugins' debugging to stdout and logs its
    arguments on the root logger: both dropped."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            proto = jax2onnx.to_onnx(fn, inputs, model_name=f"flaxdigits_{what}",
                                     opset=ONNX_OPSET, input_names=[input_name],
                                     output_names=[output_name])
    except Exception as e:  # noqa: BLE001 -- any failure to convert is the model's, not ours
        message = " ".join(str(e).split())[:300]
        raise FlaxDigitsError(f"model {what}: jax2onnx cannot convert it "
                              f"({type(e).__name__}: {message})") from None
    finally:
        root.setLevel(level)
    # jax2onnx declares some intermediate shapes in its own (NCHW) layout where the values
    # are NHWC: onnxruntime (Python) merges them leniently, onnxruntime-web refuses the
    # model. They are hints only; without them every runtime infers the shapes itself,
    # and the strict check below is the one the web runtime makes.
    del proto.graph.value_info[:]
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 -- ValidationError, or shape inference's error
        raise FlaxDigitsError(f"model {what}: jax2onnx made an ONNX model that does not pass "
                              f"onnx.checker ({' '.join(str(e).split())[:240]})") from None
    return proto.SerializeToString()


def _jax_export_bytes(fn: Callable) -> bytes:
    import jax
    import jax.numpy as jnp

    batch, = jax.export.symbolic_shape("batch")
    exported = jax.export.export(jax.jit(fn))(
        jax.ShapeDtypeStruct((batch, IMAGE_SIDE, IMAGE_SIDE, 1), jnp.float32))
    return bytes(exported.serialize())


def _write(path: pathlib.Path, content) -> None:
    try:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    except OSError as e:  # a full disk, a read-only folder: name the file meant
        raise FlaxDigitsError(f"{path}: cannot write it ({e.strerror or e})") from None


def _replace(partial: pathlib.Path, final: pathlib.Path) -> None:
    """Puts the verified folder where the export lives, moving any previous one aside
    first and removing it only once the new one is in place."""
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    try:
        if final.exists() or final.is_symlink():
            if not final.is_dir():
                raise FlaxDigitsError(f"{final}: is a file where the export folder goes; move "
                                      f"it away")
            final.rename(old)
        partial.rename(final)
    except OSError as e:
        if old.exists() and not final.exists():
            old.rename(final)  # put the previous export back
        raise FlaxDigitsError(f"{final}: cannot put the export there ({e.strerror or e})") \
            from None
    shutil.rmtree(old, ignore_errors=True)


# The page (flaxdigits/serving/web/export/) and the onnxruntime-web build it runs: one
# version from npm, its tarball checked against the registry's sha512, kept in the cache.
# The served page's index.html and pad.js, its script swapped for page.js (which reads in
# the browser), and the files of serving/web/export/.
PAGE_SOURCE = pathlib.Path(__file__).parent / "serving" / "web"
PAGE_FILES = ("index.html", "pad.js", "page.js", "reading.js", "classify-worker.js")
ONNXRUNTIME_WEB = "1.22.0"  # its wasm build is 11 MB (1.31: 15 MB); runs ONNX opset 21
ONNXRUNTIME_WEB_SHA512 = ("Ud/+EBo6mhuaQWt/OjaOk0iNWjXqJoeeMFr6xQEERZdIZH2OWpGzuujz7lfuOBjUa6TEE"
                          "/sc4nb7Da5dNL34fg==")
ONNXRUNTIME_WEB_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.mjs",
                         "ort-wasm-simd-threaded.wasm")


def _write_page(folder: pathlib.Path, models: list, runtime: pathlib.Path) -> pathlib.Path:
    """folder/web/: the page, onnxruntime-web's files (from `runtime`) and copies of the
    models."""
    web = folder / "web"
    try:
        web.mkdir()
        page = (PAGE_SOURCE / "index.html").read_text()
        if 'src="served.js"' not in page:
            raise FlaxDigitsError(f"{PAGE_SOURCE / 'index.html'}: no served.js script to swap")
        (web / "index.html").write_text(page.replace('src="served.js"', 'src="page.js"'))
        shutil.copyfile(PAGE_SOURCE / "pad.js", web / "pad.js")
        for name in PAGE_FILES[2:]:
            shutil.copyfile(PAGE_SOURCE / "export" / name, web / name)
        for name in ONNXRUNTIME_WEB_FILES:
            shutil.copyfile(runtime / name, web / name)
        for name in models:
            shutil.copyfile(folder / name, web / name)
    except OSError as e:
        raise FlaxDigitsError(f"{e.filename or web}: cannot write it ({e.strerror or e})") \
            from None
    return web


def onnxruntime_web() -> pathlib.Path:
    """The cache folder holding ONNXRUNTIME_WEB_FILES, fetched with `npm pack` the first
    time (the tarball's sha512 checked), or one line saying what is missing."""
    import base64
    import subprocess
    import tarfile
    import tempfile

    from flaxdigits.data import fetch

    folder = fetch.default_cache_dir() / f"onnxruntime-web-{ONNXRUNTIME_WEB}"
    if all((folder / name).is_file() for name in ONNXRUNTIME_WEB_FILES):
        return folder
    missing = (f"the exported page needs onnxruntime-web {ONNXRUNTIME_WEB}: install npm "
               f"(Node.js) and run the export again, or put its dist/ files "
               f"{' and '.join(ONNXRUNTIME_WEB_FILES)} into {folder}")
    npm = shutil.which("npm")
    if npm is None:
        raise FlaxDigitsError(missing)
    log.info("Fetching onnxruntime-web %s with npm into %s", ONNXRUNTIME_WEB, folder)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([npm, "pack", f"onnxruntime-web@{ONNXRUNTIME_WEB}",
                            "--pack-destination", tmp, "--silent"], check=True,
                           capture_output=True, timeout=600, cwd=tmp)
        except (OSError, subprocess.SubprocessError) as e:
            why = getattr(e, "stderr", b"") or b""
            why = " ".join(why.decode(errors="replace").split())[:200] or type(e).__name__
            raise FlaxDigitsError(f"npm pack onnxruntime-web@{ONNXRUNTIME_WEB} failed "
                                  f"({why}); {missing}") from None
        tarball = next(pathlib.Path(tmp).glob("onnxruntime-web-*.tgz"))
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != ONNXRUNTIME_WEB_SHA512:
            raise FlaxDigitsError(f"npm gave an onnxruntime-web {ONNXRUNTIME_WEB} whose "
                                  f"sha512 is not the registry's ({digest[:16]}...); not used")
        partial = pathlib.Path(tmp) / "files"
        partial.mkdir()
        with tarfile.open(tarball) as archive:
            for name in ONNXRUNTIME_WEB_FILES:
                source = archive.extractfile(f"package/dist/{name}")
                (partial / name).write_bytes(source.read())
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.move(str(partial), folder)
        except OSError as e:
            raise FlaxDigitsError(f"{folder}: cannot write the onnxruntime-web cache "
                                  f"({e.strerror or e})") from None
    return folder


VERIFY_BATCH = 1000


def _batches(images: np.ndarray):
    for start in range(0, len(images), VERIFY_BATCH):
        yield images[start:start + VERIFY_BATCH]


def verify_classifier(folder: pathlib.Path, trained, images_bhwc: np.ndarray,
                      onnxruntime) -> dict:
    """Runs folder's model.onnx (onnxruntime) and model.jax (jax.export) on `images_bhwc`
    and compares them with the library's own predictions. Raises FlaxDigitsError if a label
    differs or a probability differs by more than VERIFY_TOLERANCE; returns the figures
    (and the library's labels, under 'labels')."""
    import jax

    expected = inference.predict_probabilities(trained.model, trained.variables, images_bhwc)
    session = _session(onnxruntime, folder / "model.onnx")
    try:
        exported = jax.export.deserialize(bytearray((folder / "model.jax").read_bytes()))
    except Exception as e:  # noqa: BLE001
        raise FlaxDigitsError(f"{folder / 'model.jax'}: jax.export cannot load it back "
                              f"({type(e).__name__})") from None
    got = {
        "onnx": np.concatenate([session.run(None, {"images": b})[0]
                                for b in _batches(images_bhwc)]),
        "jax": np.concatenate([np.asarray(exported.call(b)) for b in _batches(images_bhwc)]),
    }
    figures = {"digits": int(len(images_bhwc)), "tolerance": VERIFY_TOLERANCE,
               "labels": expected.argmax(-1)}
    for name, probabilities in got.items():
        file = "model.onnx" if name == "onnx" else "model.jax"
        if probabilities.shape != expected.shape:
            raise FlaxDigitsError(f"{folder / file}: gives {probabilities.shape} "
                                  f"probabilities for {expected.shape[0]} digits")
        differ = int(np.sum(probabilities.argmax(-1) != figures["labels"]))
        worst = float(np.abs(probabilities.astype(np.float64) - expected).max())
        figures[name] = {"labels_differing": differ, "max_abs_difference": worst}
        log.info("Verified %s on %d digits: %d labels differ from the library's, max "
                 "|probability difference| %.2e", file, len(images_bhwc), differ, worst)
        if differ or not worst <= VERIFY_TOLERANCE:
            raise FlaxDigitsError(
                f"{folder.with_name('export') / file}: does not match the library on "
                f"{len(images_bhwc)} digits ({differ} labels differ, max |probability "
                f"difference| {worst:.2e}, allowed {VERIFY_TOLERANCE:.0e}); not exported")
    return figures


VERIFY_STRIPS = 64  # strips of test digits the line reader's file is checked on


def verify_line_reader(folder: pathlib.Path, line: Callable, images_bhwc: np.ndarray,
                       onnxruntime) -> dict:
    """line_reader.onnx against the library's line reader on strips of 1-8 digits of
    `images_bhwc`, side by side as the reader's strips hold them: the same frame labels and
    frame probabilities within VERIFY_TOLERANCE."""
    rng = np.random.default_rng(0)
    session = _session(onnxruntime, folder / "line_reader.onnx")
    worst, differ, frames = 0.0, 0, 0
    for _ in range(VERIFY_STRIPS):
        count = int(rng.integers(1, 9))
        chosen = images_bhwc[rng.choice(len(images_bhwc), count), 4:-4, :, 0]
        strip = np.concatenate([np.zeros((20, 4), np.float32), *chosen,
                                np.zeros((20, 4), np.float32)], axis=1)
        strip = np.pad(strip, ((2, 2), (0, (-strip.shape[1]) % 4)))[None, :, :, None]
        expected = np.exp(np.asarray(line(strip), np.float64))
        got = np.exp(session.run(None, {"strips": strip})[0].astype(np.float64))
        differ += int(np.sum(got.argmax(-1) != expected.argmax(-1)))
        worst = max(worst, float(np.abs(got - expected).max()))
        frames += expected.shape[1]
    log.info("Verified line_reader.onnx on %d strips (%d frames): %d frame labels differ, "
             "max |probability difference| %.2e", VERIFY_STRIPS, frames, differ, worst)
    if differ or not worst <= VERIFY_TOLERANCE:
        raise FlaxDigitsError(
            f"{folder.with_name('export') / 'line_reader.onnx'}: does not match the library "
            f"on {VERIFY_STRIPS} strips ({differ} frame labels differ, max |probability "
            f"difference| {worst:.2e}, allowed {VERIFY_TOLERANCE:.0e}); not exported")
    return {"strips": VERIFY_STRIPS, "frames": frames, "labels_differing": differ,
            "max_abs_difference": worst}


def _session(onnxruntime, path: pathlib.Path):
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise FlaxDigitsError(f"{path}: onnxruntime cannot load it back "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") \
            from None


def describe(trained, config_name: str, split_name: str, accuracy: float, verified: dict,
             files: dict, jax2onnx) -> dict:
    """model.json: everything a user of the exported files needs, and where they came from."""
    import importlib.metadata

    import flax
    import jax

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    tensor = {"dtype": "float32"}
    return {
        "format": FORMAT_VERSION,
        "config": config_name,
        "model": trained.config.model.to_dict(),
        "step": int(trained.step),
        "accuracy": {"split": split_name, "digits": verified["digits"],
                     "value": round(accuracy, 6)},
        "inputs": {"images": {**tensor, "shape": ["batch", IMAGE_SIDE, IMAGE_SIDE, 1],
                              "range": [0.0, 1.0],
                              "meaning": "MNIST-style digits: white ink on black, "
                                         "fitted and centred as the preparation says"}},
        "outputs": {"probabilities": {**tensor, "shape": ["batch", NUM_CLASSES],
                                      "meaning": "softmax probability of each digit 0-9"}},
        "line_reader": ({"file": "line_reader.onnx",
                         "inputs": {"strips": {**tensor, "shape": ["batch", LINE_STRIP,
                                                                   "width", 1],
                                               "range": [0.0, 1.0]}},
                         "outputs": {"log_probabilities": {
                             **tensor, "shape": ["batch", "width / 4", NUM_CLASSES + 1],
                             "meaning": "per 4-column frame: log-softmax over the CTC blank "
                                        "(0) and the digits (1 + d)"}}}
                        if "line_reader.onnx" in files else None),
        "preparation": {
            "fit_box": preprocess.FIT_BOX, "mnist_centre": preprocess.MNIST_CENTRE,
            "work_box": preprocess.WORK_BOX, "thin_stroke": preprocess.THIN_STROKE,
            "thickened_stroke": preprocess.THICKENED_STROKE,
            "min_ink_pixels": preprocess.MIN_INK_PIXELS, "ink_level": preprocess.INK_LEVEL,
            "line_strip": preprocess.LINE_STRIP, "line_ink": preprocess.LINE_INK,
            "line_margin": preprocess.LINE_MARGIN,
            "line_thin_stroke": preprocess.LINE_THIN_STROKE,
            "code": "flaxdigits/serving/preprocess.py",
        },
        "verified": verified,
        "versions": {"jax": jax.__version__, "flax": flax.__version__,
                     "jax2onnx": version("jax2onnx"), "onnx": version("onnx"),
                     "onnxruntime": version("onnxruntime"),
                     "flaxdigits": version("flaxdigits"),
                     "jax_export_calling_convention": int(
                         jax.export.deserialize(bytearray(files["model.jax"].read_bytes()))
                         .calling_convention_version),
                     "onnx_opset": ONNX_OPSET},
        "onnxruntime_web": ONNXRUNTIME_WEB,
        "files": {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
                  for name, path in sorted(files.items())},
    }


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
