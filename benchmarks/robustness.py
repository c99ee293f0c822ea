"""Does a model keep its accuracy on digits that are moved, turned and resized?

    python benchmarks/robustness.py runs/base runs/deep [--data_dir=../shared/data/mnist]

Evaluates each workdir's best checkpoint on the 10,000 MNIST test digits as they are, and
on the same digits transformed (augment.transform: bilinear, black outside), side by side:
fixed shifts, turns and sizes, and random combinations of all three. The random draws are
fixed by a seed, so every workdir sees exactly the same images.
"""

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flaxdigits import testing  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from flaxdigits import augment, data  # noqa: E402
from flaxdigits.data import idx  # noqa: E402
from flaxdigits.evaluation import inference  # noqa: E402

# (name, degrees, scale, shift rows, shift cols)
FIXED = [
    ("as they are", 0, 1.0, 0, 0),
    ("moved 2 px right", 0, 1.0, 0, 2),
    ("moved 3 px down-left", 0, 1.0, 3, -3),
    ("turned +15 deg", 15, 1.0, 0, 0),
    ("turned -20 deg", -20, 1.0, 0, 0),
    ("shrunk to 80%", 0, 0.8, 0, 0),
    ("grown to 115%", 0, 1.15, 0, 0),
]
RANDOM = [
    ("random: 10 deg, 10%, 2 px", augment.Strength(10.0, 0.1, 2.0)),
    ("random: 20 deg, 20%, 3 px", augment.Strength(20.0, 0.2, 3.0)),
]


def transformed_sets(images):
    sets = []
    for name, degrees, scale, rows, cols in FIXED:
        if (degrees, scale, rows, cols) == (0, 1.0, 0, 0):
            sets.append((name, images))
            continue
        moved = jax.jit(jax.vmap(augment.transform, in_axes=(0, None, None, None, None)))(
            jnp.asarray(images), float(degrees), float(scale), float(rows), float(cols))
        sets.append((name, np.asarray(moved)))
    for name, strength in RANDOM:
        moved = jax.jit(augment.augment_batch, static_argnums=2)(
            jax.random.key(0), jnp.asarray(images), strength)
        sets.append((name, np.asarray(moved)))
    return sets


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--data_dir", default=None, help="a folder of the MNIST IDX files; "
                        "default: ../shared/data/mnist, else flaxdigits' cache (fetched once)")
    args = parser.parse_args()
    args.data_dir = str(args.data_dir or testing.mnist_folder(REPO))

    raw = idx.load_folder(pathlib.Path(args.data_dir))
    test_labels = raw.test_labels
    sets = transformed_sets(data.to_model_inputs(raw.test_images))
    models = [inference.load(w) for w in args.workdirs]
    names = [f"{pathlib.Path(w).name} ({m.config.model.name})" for w, m in zip(args.workdirs, models)]

    print(f"MNIST test accuracy ({len(test_labels)} digits), best checkpoint of each workdir")
    print(f"{'test digits':<28}" + "".join(f"{n:>24}" for n in names))
    for set_name, set_images in sets:
        row = f"{set_name:<28}"
        for model in models:
            probabilities = inference.predict_probabilities(model.model, model.variables,
                                                            set_images)
            row += f"{np.mean(probabilities.argmax(-1) == test_labels):24.4f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
