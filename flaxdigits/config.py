"""Every rule about a config, checked once, at the door.

`validate(config)` runs before any data is read or any model is built: launch.py calls it
for every mode, and so do the library's entry points (training.train_and_evaluate,
evaluation.report.evaluate_workdir and predict_workdir), so a bad value never costs a
training run. It raises FlaxDigitsError with one line naming the field, the value and what is
allowed. Code deeper down trusts a checked config and does not check it again.

`check_resumable` says which fields may change when a run resumes from its checkpoints.
`load("fast")` reads a config of configs/ from any working directory (scripts, notebooks).
"""

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import sys
from typing import Callable, Optional

import ml_collections

from flaxdigits import IMAGE_SIDE, augment, models
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import Workdir

# A rule takes a value and returns what is wrong with it ("must be ..."), or None.
Rule = Callable[[object], Optional[str]]


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Rule:
    if high is not None:
        wanted = f"an integer from {low} to {high}"
    else:
        wanted = "an integer" + (f" >= {low}" if low is not None else "")

    def rule(value):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be {wanted}"
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be {wanted}"
        return None
    return rule


def number(low: float, high: float = math.inf, *, low_open=False, high_open=False) -> Rule:
    if high == math.inf:
        wanted = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        wanted = (f"a number in {'(' if low_open else '['}{low:g}, "
                  f"{high:g}{')' if high_open else ']'}")

    def rule(value):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            return f"must be {wanted}"
        if value < low or (low_open and value == low):
            return f"must be {wanted}"
        if value > high or (high_open and value == high):
            return f"must be {wanted}"
        return None
    return rule


def choice(*options: str) -> Rule:
    def rule(value):
        if value not in options:
            return "must be one of " + ", ".join(repr(o) for o in options)
        return None
    return rule


def text(value) -> Optional[str]:
    return None if isinstance(value, str) else "must be a string (\"\" for the default)"


def odd_integer(low: int, high: int) -> Rule:
    def rule(value):
        if integer(low, high)(value) or value % 2 == 0:
            return f"must be an odd integer from {low} to {high}"
        return None
    return rule


def integers(low: int, high: int) -> Rule:
    """A non-empty list of integers from low to high (a tuple in a config, a list in JSON)."""
    def rule(value):
        if (not isinstance(value, (list, tuple)) or not value or len(value) > 64
                or any(integer(low, high)(v) for v in value)):
            return f"must be a non-empty list of integers from {low} to {high}"
        return None
    return rule


def workdirs(value) -> Optional[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        return "must be a list of workdir paths"
    return None


# Upper bounds far beyond any sensible run, so that a slip (num_epochs=1e23) is refused at the
# door instead of overflowing a step count or allocating without end.
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_STEPS = 10**9
MAX_FEATURES = 8_192

# Every field outside config.model, with its rule. A field that is not here is unknown.
FIELDS: dict[str, Rule] = {
    "seed": integer(0, 2**32 - 1),
    "num_epochs": integer(1, MAX_EPOCHS),
    "batch_size": integer(1, MAX_BATCH),
    "eval_batch_size": integer(1, MAX_BATCH),
    "log_every_steps": integer(0, MAX_STEPS),
    "checkpoint_every_steps": integer(0, MAX_STEPS),
    "profile_steps": integer(0, 10_000),
    "keep_checkpoints": integer(1, 1_000),
    "dtype": choice("float32", "bfloat16"),
    "data.source": choice("files", "tfds"),
    "data.dir": text,
    "data.cache_dir": text,
    "data.tfds_data_dir": text,
    "data.validation_fraction": number(0, 1, high_open=True),
    "data.split_seed": integer(0, 2**32 - 1),
    "data.cut_pieces": number(0, 1),
    "data.read_pieces": number(0, 1),
    "line_reader.steps": integer(0, MAX_STEPS),
    "line_reader.batch_size": integer(1, MAX_BATCH),
    "line_reader.learning_rate": number(0, low_open=True),
    "line_reader.glyphs": integer(10, 1_000_000),
    "augment.rotation_degrees": number(0, 180),
    "augment.scale": number(0, 1, high_open=True),
    "augment.translation_pixels": number(0, IMAGE_SIDE / 2),
    "augment.elastic_alpha": number(0, 100),
    "augment.elastic_sigma": number(0.5, 20),
    "augment.clean_final_epochs": integer(0, MAX_EPOCHS),
    "inference.tta_views": integer(1, len(augment.TTA_VIEWS)),
    "inference.ensemble_workdirs": workdirs,
    "optim.learning_rate": number(0, low_open=True),
    "optim.schedule": choice("constant", "cosine", "one_cycle"),
    "optim.warmup_fraction": number(0, 1, low_open=True, high_open=True),
    "optim.b1": number(0, 1, high_open=True),
    "optim.b2": number(0, 1, high_open=True),
    "optim.ema_decay": number(0, 1, high_open=True),
    "optim.label_smoothing": number(0, 1, high_open=True),
}
SECTIONS = ("data", "model", "augment", "inference", "optim")

# The fields of config.model, by what they mean; which of them a model takes is read from
# the module itself (its dataclass fields), so a new model needs no change here.
MODEL_FIELDS: dict[str, Rule] = {
    "conv_features": integers(1, MAX_FEATURES),
    "dense_features": integer(1, MAX_FEATURES),
    "dropout_rate": number(0, 1, high_open=True),
    "stem_features": integer(1, MAX_FEATURES),
    "block_features": integers(1, MAX_FEATURES),
    "convs_per_block": integer(1, 64),
    "kernel_size": odd_integer(1, 13),
    "num_classes": integer(10, 10),
}
# FastCNN may leave out its hidden dense layer.
MODEL_FIELD_OVERRIDES = {("fast_cnn", "dense_features"): integer(0, MAX_FEATURES)}
# Which field's length says how many times the model halves the 28x28 image, and the side
# before the first halving (a 5x5 stride-2 stem starts at 14x14).
POOLING = {"cnn": ("conv_features", IMAGE_SIDE), "fast_cnn": ("conv_features", IMAGE_SIDE // 2),
           "deep_cnn": ("block_features", IMAGE_SIDE // 2)}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples as lists, as JSON has them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def as_dict(config) -> dict:
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def validate(config, *, device_count: Optional[int] = None, environment: bool = True) -> None:
    """Raises FlaxDigitsError naming the first bad field of `config`; see the module
    docstring. `device_count`: the devices a batch is split across (default: all of JAX's).
    `environment=False` checks the config alone: not what this machine has (the devices,
    tensorflow-datasets, the ensemble members' workdirs), as for a workdir's saved config."""
    if not isinstance(config, (dict, ml_collections.ConfigDict)):
        raise FlaxDigitsError(f"the config is {type(config).__name__}, not an "
                              f"ml_collections.ConfigDict (start from configs/base.py)")
    tree = as_dict(config)
    for section in SECTIONS:
        if not isinstance(tree.get(section), dict):
            raise FlaxDigitsError(f"config.{section} is missing: start from configs/base.py, "
                                  f"which has every field")
    flat = flatten({k: v for k, v in tree.items() if k != "model"})
    for name in flat:
        if name not in FIELDS:
            raise FlaxDigitsError(f"config.{name}: no such config field")
    for name, rule in FIELDS.items():
        if name not in flat:
            raise FlaxDigitsError(f"config.{name} is missing: start from configs/base.py, "
                                  f"which has every field")
        fault = rule(flat[name])
        if fault:
            raise FlaxDigitsError(f"config.{name}={flat[name]!r} {fault}")
    if tree["augment"]["clean_final_epochs"] > tree["num_epochs"]:
        raise FlaxDigitsError(
            f"config.augment.clean_final_epochs={tree['augment']['clean_final_epochs']} must "
            f"be at most config.num_epochs={tree['num_epochs']}")
    validate_model(tree["model"], "config.model")
    if not environment:
        return
    data = tree["data"]
    kaggle_train = pathlib.Path(data["dir"]).expanduser() / "train.csv"
    if (data["source"] == "files" and data["dir"] and data["validation_fraction"] == 0
            and kaggle_train.is_file()):
        raise FlaxDigitsError(
            f"config.data.validation_fraction=0: {kaggle_train} has no labelled test split "
            f"(Kaggle's test.csv has no labels), so without a validation split nothing could "
            f"be reported on; hold one out (e.g. 0.1)")
    if tree["data"]["source"] == "tfds" and importlib.util.find_spec("tensorflow_datasets") is None:
        raise FlaxDigitsError("config.data.source='tfds' needs tensorflow-datasets, which is "
                              "not installed: pip install -e '.[tfds]' in the flaxdigits checkout")

    if device_count is None:
        import jax

        device_count = jax.device_count()
    for name in ("batch_size", "eval_batch_size"):
        if tree[name] % device_count:
            raise FlaxDigitsError(
                f"config.{name}={tree[name]} must be a multiple of the {device_count} devices "
                f"it is split across")
    for index, path in enumerate(tree["inference"]["ensemble_workdirs"]):
        validate_member(path, f"config.inference.ensemble_workdirs[{index}]")


def validate_model(model: dict, where: str) -> None:
    """The rules of a config.model section (`where` names it in the message)."""
    name = model.get("name")
    if name not in models.MODELS:
        raise FlaxDigitsError(f"{where}.name={name!r} must be one of "
                              f"{', '.join(repr(m) for m in models.MODELS)}")
    takes = [f.name for f in dataclasses.fields(models.MODELS[name])
             if f.name not in ("parent", "name", "dtype")]
    for field, value in model.items():
        if field == "name":
            continue
        if field not in takes:
            raise FlaxDigitsError(f"{where}.{field}: model {name!r} takes no such field (it "
                                  f"takes {', '.join(takes)})")
        rule = MODEL_FIELD_OVERRIDES.get((name, field)) or MODEL_FIELDS.get(field)
        fault = rule(value) if rule else None
        if fault:
            raise FlaxDigitsError(f"{where}.{field}={value!r} {fault}")
    field, side = POOLING[name]
    halvings = len(model.get(field, getattr(models.MODELS[name], field)))
    if side >> halvings < 1:
        raise FlaxDigitsError(
            f"{where}.{field}={model[field]!r} has {halvings} blocks, but each halves the "
            f"image and {name!r} has room for {side.bit_length() - 1} at most")


def saved_config(workdir: Workdir, where: Optional[str] = None) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its config.json), checked by the same rules as
    a new config (less this machine's devices and packages): one line naming the file and
    the field where it is damaged or odd. Fields added to flaxdigits after it was written
    get the value such runs used (ADDED_FIELDS)."""
    saved = workdir.read_config()
    where = where or str(workdir.config_file)
    if saved is None:
        raise FlaxDigitsError(f"{where}: no such file")
    tree = json.loads(json.dumps(saved))  # a copy
    for dotted, value in ADDED_FIELDS.items():
        section, _, leaf = dotted.rpartition(".")
        node = tree.get(section) if section else tree
        if section != "model" and isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    try:
        validate(tree, environment=False)
    except FlaxDigitsError as e:
        raise FlaxDigitsError(f"{where}: {e}") from None
    return ml_collections.ConfigDict(tree)


def validate_member(path: str, where: str) -> None:
    """An ensemble member must be a trained workdir of a model flaxdigits knows."""
    workdir = Workdir(path)
    if not workdir.path.is_dir():
        raise FlaxDigitsError(f"{where}={path!r}: no such folder")
    if workdir.read_config() is None:
        raise FlaxDigitsError(f"{where}={path!r}: not a trained workdir (no config.json)")
    saved_config(workdir, f"{where} ({workdir.config_file})")
    if not workdir.has_checkpoints():
        raise FlaxDigitsError(f"{where}={path!r}: holds no checkpoint to load")


# The shipped configs: inside the package where it was installed from a wheel (pyproject.toml
# maps the checkout's configs/ to flaxdigits/configs), else the checkout's own configs/ folder
# (a checkout, or `pip install -e .`). One source of truth: the wheel's copies are made from it.
PACKAGED_CONFIGS_DIR = pathlib.Path(__file__).resolve().parent / "configs"
CHECKOUT_CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
CONFIGS_DIR = (PACKAGED_CONFIGS_DIR if (PACKAGED_CONFIGS_DIR / "base.py").is_file()
               else CHECKOUT_CONFIGS_DIR)


def shipped_configs() -> list[str]:
    """The names --config= takes without a path: 'accurate', 'base', 'deep', ..."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.stem.startswith("_"))


def config_file(name_or_path: str) -> pathlib.Path:
    """The config file that `name_or_path` means: a shipped config's name ('base') or a path
    to a .py file. Raises naming the configs that exist when there is no such file."""
    text = str(name_or_path)
    path = pathlib.Path(text).expanduser()
    by_name = path.suffix != ".py" and "/" not in text and os.sep not in text
    if by_name:
        path = CONFIGS_DIR / f"{text}.py"
    if path.is_file():
        return path
    what = "no such shipped config" if by_name else "no such config file"
    raise FlaxDigitsError(f"{text or repr(text)}: {what}; the shipped configs are "
                          f"{', '.join(shipped_configs())} (a name, or a path to a .py file)")


def make_configs_importable(path: pathlib.Path) -> None:
    """Lets the config file at `path` `from configs import base`, as configs/ variants do:
    the shipped configs of an installed package are the `configs` package; a config in a
    checkout (or any folder named configs/) finds its siblings with the folder above it on the
    import path."""
    folder = path.resolve().parent
    if folder == PACKAGED_CONFIGS_DIR:
        if "configs" not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                "configs", folder / "__init__.py", submodule_search_locations=[str(folder)])
            module = importlib.util.module_from_spec(spec)
            sys.modules["configs"] = module
            spec.loader.exec_module(module)
    elif str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def load(name_or_path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a shipped config ('base', 'fast', 'deep', 'tiny', ...) or of a config
    file at a path, wherever the caller runs (an installed package, a checkout, a notebook).
    Anything but a ConfigDict, and any failure of the file itself (a syntax error, an import
    that fails, get_config() raising or missing), is one FlaxDigitsError naming the file."""
    path = config_file(name_or_path)
    make_configs_importable(path)
    try:
        spec = importlib.util.spec_from_file_location(f"_flaxdigits_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise FlaxDigitsError(f"{path}: has no get_config() function")
        config = module.get_config()
    except FlaxDigitsError:
        raise
    except SyntaxError as e:
        raise FlaxDigitsError(f"{path}: line {e.lineno}: SyntaxError: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 -- the user's own code: name the file, the cause
        raise FlaxDigitsError(f"{path}: loading it failed: {type(e).__name__}: "
                              f"{_one_line(str(e))}{_where_in(e, path)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise FlaxDigitsError(f"{path}: get_config() returned {type(config).__name__}, not an "
                              f"ml_collections.ConfigDict (start from configs/base.py)")
    return config


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _where_in(error: BaseException, path: pathlib.Path) -> str:
    """' (line N)': the last line of the config file in the error's traceback."""
    import traceback

    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
             if pathlib.Path(f.filename).resolve() == path.resolve()]
    return f" (line {lines[-1]})" if lines else ""


# Fields that may change between a run and its resumption: they do not change what is
# trained. Any other difference makes resuming an error rather than a silent mixture.
RESUMABLE_CHANGES = frozenset({
    "log_every_steps", "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints",
    "profile_steps",
    "data.dir", "data.cache_dir", "data.tfds_data_dir",
    "inference.tta_views", "inference.ensemble_workdirs",
    # The line reader is trained after the classifier and kept apart (W/line_reader/): a
    # change retrains it alone (training/line.py).
    "line_reader.steps", "line_reader.batch_size", "line_reader.learning_rate",
    "line_reader.glyphs",
})


# Fields added after workdirs were trained without them, with the value those runs used: a
# workdir from before resumes as long as the field keeps that value.
ADDED_FIELDS = {"optim.b1": 0.9, "optim.b2": 0.999, "optim.ema_decay": 0.0,
                "optim.label_smoothing": 0.0, "augment.clean_final_epochs": 0,
                "model.kernel_size": 3, "augment.elastic_alpha": 0.0,
                "augment.elastic_sigma": 4.0, "data.cut_pieces": 0.0,
                "data.read_pieces": 0.0, "line_reader.steps": 0,
                "line_reader.batch_size": 64, "line_reader.learning_rate": 2e-3,
                "line_reader.glyphs": 20_000}


def check_resumable(config, workdir: Workdir) -> None:
    """Raises if `config` trains something other than what `workdir` holds checkpoints of."""
    saved = workdir.read_config()
    if saved is None:
        raise FlaxDigitsError(
            f"{workdir.config_file}: missing, so the checkpoints in {workdir} cannot be "
            f"matched to a config; use a new --workdir")
    current = flatten(json.loads(config.to_json_best_effort()))
    # (An added field only where the config has it: model fields belong to some models.)
    saved = {**{k: v for k, v in ADDED_FIELDS.items() if k in current}, **flatten(saved)}
    differ = sorted(k for k in set(saved) | set(current)
                    if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)
    if differ:
        details = ", ".join(f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})"
                            for k in differ)
        raise FlaxDigitsError(
            f"{workdir} holds checkpoints of another config: {details}; resume with the saved "
            f"settings or use a new --workdir")
