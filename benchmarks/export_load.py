"""The exported files loaded where flaxdigits is not: model.jax and model.onnx run by another
Python (with jax, numpy and onnxruntime only) on every MNIST test digit, against the
library's own probabilities.

    python -m venv /tmp/jaxonly && /tmp/jaxonly/bin/pip install jax numpy onnxruntime
    python benchmarks/export_load.py --workdir=runs/page --python=/tmp/jaxonly/bin/python

Prints, per file: labels that differ from the library's and the max |probability
difference| over the 10,000 test digits; the sizes of export/ and its files; and which
modules the other Python imported that are ours or flax's (there must be none).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from flaxdigits import data, testing  # noqa: E402
from flaxdigits.data import idx  # noqa: E402
from flaxdigits.evaluation import inference  # noqa: E402

# Run by the other Python, isolated (-I): numpy, jax and onnxruntime only.
ELSEWHERE = """
import json, sys
import numpy as np, jax, onnxruntime
folder, images_file, out_file = sys.argv[1:4]
images = np.load(images_file)
exported = jax.export.deserialize(bytearray(open(folder + "/model.jax", "rb").read()))
by_jax = np.concatenate([np.asarray(exported.call(images[i:i + 1000]))
                         for i in range(0, len(images), 1000)])
session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
by_onnx = np.concatenate([session.run(None, {"images": images[i:i + 1000]})[0]
                          for i in range(0, len(images), 1000)])
np.savez(out_file, jax=by_jax, onnx=by_onnx)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "flaxdigits", "optax",
                                                            "orbax"))
print(json.dumps({"python": sys.version.split()[0], "jax": jax.__version__,
                  "onnxruntime": onnxruntime.__version__, "imported_ours": ours}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a workdir with an export/")
    parser.add_argument("--python", required=True, help="the other Python (jax, numpy and "
                        "onnxruntime; no flax, no flaxdigits)")
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    folder = pathlib.Path(args.workdir).resolve() / "export"
    raw = idx.load_folder(pathlib.Path(args.data_dir or testing.mnist_folder(REPO)))
    images = data.to_model_inputs(raw.test_images)
    trained = inference.load(args.workdir)
    expected = inference.predict_probabilities(trained.model, trained.variables, images)
    with tempfile.TemporaryDirectory() as scratch:
        np.save(f"{scratch}/images.npy", images)
        result = subprocess.run([args.python, "-I", "-c", ELSEWHERE, str(folder),
                                 f"{scratch}/images.npy", f"{scratch}/out.npz"],
                                capture_output=True, text=True, cwd=scratch)
        if result.returncode != 0:
            sys.exit(f"{args.python} could not run the files: {result.stderr[-1500:]}")
        facts = json.loads(result.stdout.strip().splitlines()[-1])
        got = np.load(f"{scratch}/out.npz")
        described = json.loads((folder / "model.json").read_text())
        print(f"{args.workdir} ({described['config']}, {described['model']['name']}, step "
              f"{described['step']}) in Python {facts['python']}, jax {facts['jax']}, "
              f"onnxruntime {facts['onnxruntime']}; modules of ours or flax imported: "
              f"{facts['imported_ours'] or 'none'}")
        for name in ("jax", "onnx"):
            differ = int(np.sum(got[name].argmax(-1) != expected.argmax(-1)))
            worst = float(np.abs(got[name].astype(np.float64) - expected).max())
            print(f"  model.{name}: {differ} of {len(images)} labels differ from the "
                  f"library's; max |probability difference| {worst:.2e}")
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file()}
    print(f"  export/ {sum(sizes.values()) / 1e6:.2f} MB in all; " + ", ".join(
        f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items() if size > 100_000))


if __name__ == "__main__":
    main()
