"""What do test-time augmentation and ensembling add? Every member alone and the ensembles
of the first k members, with 1 and more TTA views, side by side.

    python benchmarks/ensemble.py runs/ens/member_0 runs/ens/member_1 ... \
        [--tta_views=1,9] [--split=test|validation] [--data_dir=../shared/data/mnist]

Each workdir's best checkpoint (by validation) on the 10,000 MNIST test digits. The
ensembles are the first k workdirs in the order given, for every k (no subset is picked by
its test accuracy); an ensemble averages the members' probabilities, as
`--config.inference.ensemble_workdirs` does. The last row of each column is what
`python launch.py --mode=evaluate` reports for all the workdirs together.

`--split=validation` scores the members' validation digits instead: the honest place to
decide how many members or views to use, or which kind of member to add. It needs members
that hold out the same validation digits (the same data.split_seed and
data.validation_fraction): none of them has trained on them.
"""

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flaxdigits import testing  # noqa: E402

import numpy as np  # noqa: E402

from flaxdigits import augment, data  # noqa: E402
from flaxdigits.data import idx  # noqa: E402
from flaxdigits.evaluation import inference  # noqa: E402


def view_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or not all(1 <= c <= len(augment.TTA_VIEWS) for c in counts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: want numbers from 1 to {len(augment.TTA_VIEWS)}, e.g. 1,9")
    return counts


def validation_digits(raw, members, workdirs, parser):
    """(images, label ids) of the validation digits that every member held out; a parser
    error where they did not all hold out the same ones."""
    held_out = {(m.config.data.validation_fraction, m.config.data.split_seed) for m in members}
    if len(held_out) != 1 or not next(iter(held_out))[0]:
        listing = ", ".join(f"{w} (validation_fraction {m.config.data.validation_fraction}, "
                            f"split_seed {m.config.data.split_seed})"
                            for w, m in zip(workdirs, members))
        parser.error(f"--split=validation needs workdirs that held out the same validation "
                     f"digits: {listing}")
    fraction, split_seed = next(iter(held_out))
    dataset = data.make_splits(raw, validation_fraction=fraction, split_seed=split_seed,
                               source="files")
    return dataset.validation.images, dataset.validation.labels.argmax(-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--tta_views", type=view_counts, default=[1, 9])
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="the MNIST test digits, or the validation digits that all the "
                             "workdirs held out")
    parser.add_argument("--data_dir", default=None, help="a folder of the MNIST IDX files; "
                        "default: ../shared/data/mnist, else flaxdigits' cache (fetched once)")
    args = parser.parse_args()
    args.data_dir = str(args.data_dir or testing.mnist_folder(REPO))

    members = [inference.load(workdir) for workdir in args.workdirs]
    raw = idx.load_folder(pathlib.Path(args.data_dir))
    if args.split == "test":
        images, labels = data.to_model_inputs(raw.test_images), raw.test_labels
    else:
        images, labels = validation_digits(raw, members, args.workdirs, parser)
    # probabilities[views][i]: member i's (N, 10) probabilities with that many views
    probabilities = {views: [] for views in args.tta_views}
    names = []
    for workdir, member in zip(args.workdirs, members):
        names.append(f"{pathlib.Path(workdir).name} (seed {member.config.seed}, "
                     f"split {member.config.data.split_seed}, step {member.step})")
        for views in args.tta_views:
            probabilities[views].append(inference.predict_probabilities(
                member.model, member.variables, images, tta_views=views).astype(np.float64))

    def accuracy(p) -> str:
        return f"{np.mean(p.argmax(-1) == labels):.4f}"

    header = "".join(f"{f'{v} view' + ('s' if v > 1 else ''):>12}" for v in args.tta_views)
    print(f"MNIST {args.split} accuracy ({len(labels)} digits), best checkpoint of each "
          f"workdir")
    print(f"{'member alone':<44}{header}")
    for index, name in enumerate(names):
        print(f"{name:<44}" + "".join(f"{accuracy(probabilities[v][index]):>12}"
                                      for v in args.tta_views))
    print(f"{'ensemble of the first k':<44}{header}")
    for k in range(2, len(names) + 1):
        print(f"{f'k = {k}':<44}" + "".join(
            f"{accuracy(np.mean(probabilities[v][:k], axis=0)):>12}" for v in args.tta_views))


if __name__ == "__main__":
    main()
