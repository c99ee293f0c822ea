"""flaxdigits/config.py: every field of every config checked at the door, in one line."""

import json
import re
import time

import pytest

from configs import accurate, base, deep, fast, tiny
from flaxdigits import config as config_lib
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.workdir import Workdir
from tests.conftest import tiny_config

CONFIGS = {"accurate": accurate, "base": base, "deep": deep, "fast": fast, "tiny": tiny}

# (field, a bad value, what the message must say). Every field of every config in configs/
# has at least one row (test_every_field_has_a_bad_value_row checks it).
BAD_VALUES = [
    ("seed", -1, "config.seed=-1 must be an integer from 0 to 4294967295"),
    ("seed", 1.5, "config.seed=1.5 must be an integer"),
    ("num_epochs", 0, "config.num_epochs=0 must be an integer from 1 to 10000"),
    ("num_epochs", True, "config.num_epochs=True must be an integer from 1 to 10000"),
    ("batch_size", 0, "config.batch_size=0 must be an integer from 1 to 65536"),
    ("batch_size", "128", "config.batch_size='128' must be an integer from 1 to 65536"),
    ("eval_batch_size", -5, "config.eval_batch_size=-5 must be an integer from 1 to 65536"),
    ("log_every_steps", -1, "config.log_every_steps=-1 must be an integer from 0 to 1000000000"),
    ("checkpoint_every_steps", -10, "config.checkpoint_every_steps=-10 must be an integer "
                                    "from 0 to 1000000000"),
    ("profile_steps", 2.5, "config.profile_steps=2.5 must be an integer from 0 to 10000"),
    ("augment.clean_final_epochs", -1, "config.augment.clean_final_epochs=-1 must be an "
                                       "integer from 0 to 10000"),
    ("augment.clean_final_epochs", 99, "must be at most config.num_epochs"),
    ("augment.elastic_alpha", -1.0, "config.augment.elastic_alpha=-1.0 must be a number in "
                                    "[0, 100]"),
    ("augment.elastic_sigma", 0.0, "config.augment.elastic_sigma=0.0 must be a number in "
                                   "[0.5, 20]"),
    ("optim.ema_decay", 1.0, "config.optim.ema_decay=1.0 must be a number in [0, 1)"),
    ("optim.label_smoothing", -0.1, "config.optim.label_smoothing=-0.1 must be a number in "
                                    "[0, 1)"),
    ("num_epochs", 10**23, "config.num_epochs=100000000000000000000000 must be an integer from "
                           "1 to 10000"),
    ("batch_size", 10**6, "config.batch_size=1000000 must be an integer from 1 to 65536"),
    ("model.conv_features", (32, 10**9), "must be a non-empty list of integers from 1 to 8192"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0 must be an integer from 1 to 1000"),
    ("dtype", "float16", "config.dtype='float16' must be one of 'float32', 'bfloat16'"),
    ("data.source", "hub", "config.data.source='hub' must be one of 'files', 'tfds'"),
    ("data.dir", 3, "config.data.dir=3 must be a string"),
    ("data.cache_dir", None, "config.data.cache_dir=None must be a string"),
    ("data.tfds_data_dir", 1.0, "config.data.tfds_data_dir=1.0 must be a string"),
    ("data.validation_fraction", 1.0,
     "config.data.validation_fraction=1.0 must be a number in [0, 1)"),
    ("data.validation_fraction", -0.1, "must be a number in [0, 1)"),
    ("data.validation_fraction", float("nan"), "must be a number in [0, 1)"),
    ("data.split_seed", -3, "config.data.split_seed=-3 must be an integer from 0"),
    ("data.cut_pieces", 1.5, "config.data.cut_pieces=1.5 must be a number in [0, 1]"),
    ("data.read_pieces", -0.1, "config.data.read_pieces=-0.1 must be a number in [0, 1]"),
    ("line_reader.steps", -1, "config.line_reader.steps=-1 must be an integer from 0 to "
                              "1000000000"),
    ("line_reader.batch_size", 0, "config.line_reader.batch_size=0 must be an integer from 1 "
                                  "to 65536"),
    ("line_reader.learning_rate", 0.0, "config.line_reader.learning_rate=0.0 must be a finite "
                                       "number > 0"),
    ("line_reader.glyphs", 5, "config.line_reader.glyphs=5 must be an integer from 10 to "
                              "1000000"),
    ("model.name", "vgg", "config.model.name='vgg' must be one of 'cnn', 'fast_cnn', "
                          "'deep_cnn'"),
    ("model.conv_features", (), "config.model.conv_features=() must be a non-empty list of "
                                "integers from 1 to 8192"),
    ("model.conv_features", (32, 0), "must be a non-empty list of integers from 1 to 8192"),
    ("model.conv_features", (8, 8, 8, 8, 8), "has 5 blocks, but each halves the image"),
    ("model.dense_features", 0, "config.model.dense_features=0 must be an integer from 1 to 8192"),
    ("model.dropout_rate", 1.0, "config.model.dropout_rate=1.0 must be a number in [0, 1)"),
    ("model.stem_features", 0, "config.model.stem_features=0 must be an integer from 1 to 8192"),
    ("model.block_features", (48, 96, 96, 96), "has 4 blocks, but each halves the image and "
                                               "'deep_cnn' has room for 3 at most"),
    ("model.convs_per_block", 0, "config.model.convs_per_block=0 must be an integer from 1 to 64"),
    ("model.kernel_size", 4, "config.model.kernel_size=4 must be an odd integer from 1 to 13"),
    ("model.kernel_size", 15, "must be an odd integer from 1 to 13"),
    ("augment.rotation_degrees", -5.0, "config.augment.rotation_degrees=-5.0 must be a "
                                       "number in [0, 180]"),
    ("augment.scale", 1.5, "config.augment.scale=1.5 must be a number in [0, 1)"),
    ("augment.translation_pixels", 20.0, "config.augment.translation_pixels=20.0 must be a "
                                         "number in [0, 14]"),
    ("inference.tta_views", 50, "config.inference.tta_views=50 must be an integer from 1 to 9"),
    ("inference.tta_views", 0, "must be an integer from 1 to 9"),
    ("inference.ensemble_workdirs", "runs/a", "must be a list of workdir paths"),
    ("inference.ensemble_workdirs", ("/nonexistent/run",),
     "config.inference.ensemble_workdirs[0]='/nonexistent/run': no such folder"),
    ("optim.learning_rate", 0.0, "config.optim.learning_rate=0.0 must be a finite number > 0"),
    ("optim.learning_rate", float("inf"), "must be a finite number > 0"),
    ("optim.schedule", "linear", "config.optim.schedule='linear' must be one of 'constant', "
                                 "'cosine', 'one_cycle'"),
    ("optim.warmup_fraction", 0.0, "config.optim.warmup_fraction=0.0 must be a number in "
                                   "(0, 1)"),
    ("optim.b1", 1.0, "config.optim.b1=1.0 must be a number in [0, 1)"),
    ("optim.b2", -0.5, "config.optim.b2=-0.5 must be a number in [0, 1)"),
]

# The config each model field's row is tried on: the one whose model takes the field.
MODEL_OF_FIELD = {"stem_features": deep, "block_features": deep, "convs_per_block": deep,
                  "kernel_size": deep}


def with_value(module, dotted, value):
    config = module.get_config()
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node[name]
    with config.ignore_type():
        node[leaf] = value
    return config


def leaf_fields(module) -> set:
    return set(config_lib.flatten(module.get_config().to_dict()))


def test_the_shipped_configs_are_valid():
    for module in CONFIGS.values():
        config_lib.validate(module.get_config(), device_count=1)


def test_every_field_has_a_bad_value_row():
    covered = {field for field, _, _ in BAD_VALUES}
    for name, module in CONFIGS.items():
        missing = leaf_fields(module) - covered
        assert not missing, f"configs/{name}.py fields without a row in BAD_VALUES: {missing}"


@pytest.mark.parametrize("field,value,message", BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_field_value_and_rule(field, value, message):
    module = MODEL_OF_FIELD.get(field.split(".")[-1], base)
    config = with_value(module, field, value)
    start = time.monotonic()
    with pytest.raises(FlaxDigitsError) as error:
        config_lib.validate(config, device_count=1)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert time.monotonic() - start < 5  # no data read, no model built


def test_a_model_field_the_model_does_not_take():
    config = deep.get_config()
    config.model.conv_features = (32, 64)
    with pytest.raises(FlaxDigitsError, match=r"config.model.conv_features: model 'deep_cnn' "
                                              r"takes no such field \(it takes stem_features"):
        config_lib.validate(config, device_count=1)


def test_unknown_and_missing_fields():
    config = base.get_config()
    config.num_epoch = 3  # a typo in a script: the config is not locked there
    with pytest.raises(FlaxDigitsError, match="config.num_epoch: no such config field"):
        config_lib.validate(config, device_count=1)
    config = base.get_config()
    del config.optim["schedule"]
    with pytest.raises(FlaxDigitsError, match="config.optim.schedule is missing"):
        config_lib.validate(config, device_count=1)
    config = base.get_config()
    del config["inference"]
    with pytest.raises(FlaxDigitsError, match="config.inference is missing"):
        config_lib.validate(config, device_count=1)


def test_batch_sizes_must_split_across_the_devices():
    with pytest.raises(FlaxDigitsError, match=r"config.batch_size=128 must be a multiple of "
                                              r"the 3 devices"):
        config_lib.validate(base.get_config(), device_count=3)
    config = tiny_config(batch_size=32, eval_batch_size=60)
    with pytest.raises(FlaxDigitsError, match="config.eval_batch_size=60 .* 8 devices"):
        config_lib.validate(config, device_count=8)
    config_lib.validate(tiny_config(batch_size=32, eval_batch_size=64), device_count=8)


def test_ensemble_members_must_be_trained_workdirs_of_known_models(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    config = tiny_config(**{"inference.ensemble_workdirs": (str(bare),)})
    with pytest.raises(FlaxDigitsError, match=r"ensemble_workdirs\[0\]=.*not a trained "
                                              r"workdir \(no config.json"):
        config_lib.validate(config, device_count=1)

    (bare / "config.json").write_text(json.dumps({"model": {"name": "resnet50"}}))
    with pytest.raises(FlaxDigitsError, match=r"ensemble_workdirs\[0\] .*config.json\): "
                                              r"config.data is missing"):
        config_lib.validate(config, device_count=1)
    (bare / "config.json").write_text(tiny_config(**{"model.name": "resnet50"}).to_json())
    with pytest.raises(FlaxDigitsError, match=r"ensemble_workdirs\[0\] .*config.json\): "
                                              r"config.model.name='resnet50' must be one of"):
        config_lib.validate(config, device_count=1)

    (bare / "config.json").write_text(tiny_config().to_json())
    with pytest.raises(FlaxDigitsError, match="holds no checkpoint to load"):
        config_lib.validate(config, device_count=1)
    (bare / "checkpoints" / "12").mkdir(parents=True)
    config_lib.validate(config, device_count=1)


def test_a_workdir_from_before_a_field_was_added_resumes_with_its_old_value(tmp_path):
    workdir = Workdir(tmp_path)
    old = tiny_config()
    del old.optim["b1"], old.optim["b2"]  # as config.json was written before they existed
    workdir.write_config(old)
    config_lib.check_resumable(tiny_config(), workdir)
    with pytest.raises(FlaxDigitsError, match=r"optim.b1 \(saved 0.9, now 0.7\)"):
        config_lib.check_resumable(tiny_config(**{"optim.b1": 0.7}), workdir)

    # A model field added later: only for the models that take it.
    from configs import deep as deep_config

    old_deep = deep_config.get_config()
    del old_deep.model["kernel_size"]
    workdir.write_config(old_deep)
    config_lib.check_resumable(deep_config.get_config(), workdir)
    with pytest.raises(FlaxDigitsError, match=r"model.kernel_size \(saved 3, now 5\)"):
        changed = deep_config.get_config()
        changed.model.kernel_size = 5
        config_lib.check_resumable(changed, workdir)


def test_resuming_refuses_other_training_settings_and_names_them(tmp_path):
    workdir = Workdir(tmp_path)
    workdir.write_config(tiny_config())
    config_lib.check_resumable(tiny_config(log_every_steps=7, **{"data.dir": "/elsewhere"}),
                               workdir)  # bookkeeping and the data's place may change
    with pytest.raises(FlaxDigitsError) as error:
        config_lib.check_resumable(tiny_config(**{"model.dense_features": 32,
                                                  "optim.learning_rate": 1e-2}), workdir)
    assert "model.dense_features (saved 16, now 32)" in str(error.value)
    assert "optim.learning_rate (saved 0.001, now 0.01)" in str(error.value)


BAD_COMMAND_LINES = [
    ("configs/base.py", "--config.num_epochs=0", "config.num_epochs=0 must be an integer from 1 to 10000"),
    ("configs/base.py", "--config.batch_size=-1", "config.batch_size=-1 must be"),
    ("configs/base.py", "--config.eval_batch_size=0", "config.eval_batch_size=0 must be"),
    ("configs/base.py", "--config.seed=-1", "config.seed=-1 must be"),
    ("configs/base.py", "--config.keep_checkpoints=0", "config.keep_checkpoints=0 must be"),
    ("configs/base.py", "--config.log_every_steps=-5", "config.log_every_steps=-5 must be"),
    ("configs/base.py", "--config.dtype=float16", "config.dtype='float16' must be one of"),
    ("configs/base.py", "--config.data.source=hub", "config.data.source='hub' must be one of"),
    ("configs/base.py", "--config.data.validation_fraction=1.5",
     "config.data.validation_fraction=1.5 must be"),
    ("configs/base.py", "--config.model.name=vgg", "config.model.name='vgg' must be one of"),
    ("configs/base.py", "--config.model.dropout_rate=1.0", "config.model.dropout_rate=1.0"),
    ("configs/base.py", "--config.model.conv_features=(8,8,8,8,8)", "has 5 blocks"),
    ("configs/base.py", "--config.augment.scale=1.5", "config.augment.scale=1.5 must be"),
    ("configs/base.py", "--config.optim.learning_rate=-0.1",
     "config.optim.learning_rate=-0.1 must be"),
    ("configs/base.py", "--config.optim.schedule=linear", "config.optim.schedule='linear'"),
    ("configs/deep.py", "--config.inference.tta_views=50",
     "config.inference.tta_views=50 must be an integer from 1 to 9"),
    ("configs/deep.py", "--config.augment.rotation_degrees=-10",
     "config.augment.rotation_degrees=-10.0 must be"),
    ("configs/deep.py", "--config.model.convs_per_block=0", "config.model.convs_per_block=0"),
    ("configs/deep.py", "--config.optim.warmup_fraction=1.0", "warmup_fraction=1.0 must be"),
    ("configs/deep.py", "--config.inference.ensemble_workdirs=('/no/such/run',)",
     "ensemble_workdirs[0]='/no/such/run': no such folder"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config_file,flag,message", BAD_COMMAND_LINES,
                         ids=[f"{c.split('/')[1]} {f}" for c, f, _ in BAD_COMMAND_LINES])
def test_bad_values_on_the_command_line_fail_before_any_data_is_read(
        tmp_path, launch, config_file, flag, message):
    # The data folder does not exist: reaching the data would be a different error.
    start = time.monotonic()
    result = launch(f"--config={config_file}", f"--workdir={tmp_path / 'work'}",
                    f"--config.data.dir={tmp_path / 'no-data'}", flag)
    assert time.monotonic() - start < 15
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flaxdigits: error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "work").exists()  # nothing written either


def test_tfds_without_its_extra_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow_datasets" else real(name, *a))
    config = tiny_config(**{"data.source": "tfds"})
    with pytest.raises(FlaxDigitsError, match=r"needs tensorflow-datasets, which is not "
                                              r"installed: pip install -e '\.\[tfds\]'"):
        config_lib.validate(config, device_count=1)


def test_configs_load_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: `from configs import ...` would fail
    fast = config_lib.load("fast")
    assert fast.model.name == "fast_cnn" and fast.num_epochs == fast_module().num_epochs
    assert config_lib.load(str(config_lib.CONFIGS_DIR / "deep.py")).model.name == "deep_cnn"
    with pytest.raises(FlaxDigitsError, match=r"^nope: no such shipped config; the shipped "
                                              r"configs are accurate, base, deep, fast, page, "
                                              r"tiny \(a name, or a path to a \.py file\)$"):
        config_lib.load("nope")
    with pytest.raises(FlaxDigitsError, match=r"^configs/nope.py: no such config file; the "
                                              r"shipped configs are accurate, base, "):
        config_lib.load("configs/nope.py")


def test_every_shipped_config_loads_by_name_and_is_valid():
    assert config_lib.shipped_configs() == ["accurate", "base", "deep", "fast", "page", "tiny"]
    for name in config_lib.shipped_configs():
        config_lib.validate(config_lib.load(name), device_count=1)


# A config file that fails as it loads: one line naming the file, the cause and its line.
BROKEN_CONFIG_FILES = [
    ("def get_config(:\n", r"line 1: SyntaxError: "),
    ("def get_config():\n    raise ValueError('boom')\n",
     r"loading it failed: ValueError: boom \(line 2\)$"),
    ("import not_a_module_anywhere\n",
     r"loading it failed: ModuleNotFoundError: No module named 'not_a_module_anywhere' "
     r"\(line 1\)$"),
    ("x = 1\n", r"has no get_config\(\) function$"),
    ("get_config = 3\n", r"has no get_config\(\) function$"),
    ("def get_config():\n    return {'num_epochs': 1}\n",
     r"get_config\(\) returned dict, not an ml_collections.ConfigDict \(start from "
     r"configs/base.py\)$"),
    ("def get_config():\n    return None\n", r"get_config\(\) returned NoneType, not an "),
    ("from configs import base\ndef get_config():\n    c = base.get_config()\n"
     "    return c.nope\n", r"loading it failed: AttributeError: .*nope.* \(line 4\)$"),
]


@pytest.mark.parametrize("text,message", BROKEN_CONFIG_FILES)
def test_a_config_file_that_fails_to_load_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "configs" / "mine.py"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(FlaxDigitsError) as caught:
        config_lib.load(str(path))
    assert "\n" not in str(caught.value)
    assert re.match(re.escape(str(path)) + ": " + message, str(caught.value)), caught.value


def fast_module():
    return fast.get_config()
