"""Metrics, report, plots and Kaggle submissions (flaxdigits/evaluate.py and its modes)."""

import json

import jax
import numpy as np
import pandas as pd
import pytest

from flaxdigits import checkpoint as checkpoint_lib
from flaxdigits import data as data_lib
from flaxdigits import evaluate
from flaxdigits import train
from flaxdigits.errors import FlaxDigitsError
from tests import helpers
from tests.test_launch import launch, last_line


# ---------------------------------------------------------------------------------------
# Metrics against a case computed by hand


def test_metrics_of_a_hand_computed_case_with_a_class_never_predicted():
    true = np.array([0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0, 0])  # digit 2 is never predicted
    report = evaluate.classification_report(true, predicted, num_classes=3)

    assert report["confusion_matrix"] == [[1, 1, 0], [0, 3, 0], [2, 0, 0]]
    assert report["accuracy"] == pytest.approx(4 / 7)
    assert report["count"] == 7
    expected = {  # precision = tp / predicted, recall = tp / support
        "0": (1 / 3, 1 / 2, 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2), 2),
        "1": (3 / 4, 1.0, 2 * (3 / 4) / (3 / 4 + 1), 3),
        "2": (0.0, 0.0, 0.0, 2),
    }
    for digit, (precision, recall, f1, support) in expected.items():
        row = report["per_class"][digit]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    f1s = [e[2] for e in expected.values()]
    assert report["macro_avg"]["precision"] == pytest.approx((1 / 3 + 3 / 4 + 0) / 3)
    assert report["macro_avg"]["f1"] == pytest.approx(sum(f1s) / 3)
    assert report["weighted_avg"]["recall"] == pytest.approx((2 * 0.5 + 3 * 1 + 2 * 0) / 7)
    assert report["weighted_avg"]["f1"] == pytest.approx((2 * f1s[0] + 3 * f1s[1]) / 7)
    assert report["weighted_avg"]["support"] == 7
    text = json.dumps(report)  # JSON-able, and no NaN anywhere
    assert "NaN" not in text and "Infinity" not in text


def test_confusion_matrix_counts_every_example_once():
    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, 10, 1234), rng.integers(0, 10, 1234)
    matrix = evaluate.confusion_matrix(true, predicted)
    assert matrix.shape == (10, 10) and matrix.sum() == 1234
    assert np.array_equal(matrix.sum(axis=1), np.bincount(true, minlength=10))
    assert np.array_equal(matrix.sum(axis=0), np.bincount(predicted, minlength=10))
    assert np.trace(matrix) == np.sum(true == predicted)


def test_empty_split_gives_zeros_not_nan():
    report = evaluate.classification_report(np.array([], int), np.array([], int))
    assert report["accuracy"] == 0.0 and report["macro_avg"]["f1"] == 0.0


def test_predictions_do_not_depend_on_batching():
    config = helpers.tiny_config()
    model = train.create_model(config.model)
    state = train.create_train_state(config, model, jax.random.key(0), 10)
    images = data_lib.to_model_inputs(helpers.synthetic_digits(37)[0])
    whole = evaluate.predict_probabilities(model, {"params": state.params}, images, 1000)
    batched = evaluate.predict_probabilities(model, {"params": state.params}, images, 8)
    assert whole.shape == (37, 10)
    np.testing.assert_allclose(whole, batched, atol=1e-6)
    np.testing.assert_allclose(whole.sum(-1), 1.0, atol=1e-5)


def test_submission_format(tmp_path):
    path = evaluate.write_submission(tmp_path / "submission.csv", np.array([7, 2, 1, 0]))
    assert path.read_text() == "ImageId,Label\n1,7\n2,2\n3,1\n4,0\n"
    assert not list(tmp_path.glob("*.partial"))


# ---------------------------------------------------------------------------------------
# A real (small) trained workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on 3,000 real MNIST digits, and the folders it used."""
    root = tmp_path_factory.mktemp("evaluate")
    data_dir = helpers.write_mnist_subset(root / "mnist", 3000, 1000)
    workdir = root / "work"
    config = helpers.tiny_config(**{"data.dir": str(data_dir), "num_epochs": 3,
                                    "optim.learning_rate": 3e-3, "eval_batch_size": 256})
    final = train.train_and_evaluate(config, workdir)
    return {"root": root, "data_dir": data_dir, "workdir": workdir, "final": final}


def png_shape(path):
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05, f"{path} is (nearly) blank"
    return pixels.shape


def test_training_ends_with_report_and_plots(trained):
    workdir = trained["workdir"]
    report = json.loads((workdir / "report.json").read_text())
    assert report == trained["final"]["report"]
    assert report["split"] == "test" and report["count"] == 1000
    assert sum(map(sum, report["confusion_matrix"])) == 1000
    assert set(report["per_class"]) == {str(k) for k in range(10)}
    assert report["accuracy"] > 0.8  # 3 epochs of the tiny CNN on 3,000 real digits
    assert report["step"] == checkpoint_lib.load(workdir).step
    for name in ("training_curves", "confusion_matrix", "misclassified"):
        height, width, _ = png_shape(workdir / "plots" / f"{name}.png")
        assert 300 <= height <= 2000 and 500 <= width <= 2000, (name, height, width)
    assert report["plots"] == ["plots/training_curves.png", "plots/confusion_matrix.png",
                               "plots/misclassified.png"]


def test_evaluate_mode_agrees_with_predict_mode_on_a_kaggle_file(trained, tmp_path):
    workdir, data_dir = trained["workdir"], trained["data_dir"]
    result = launch("--config=configs/tiny.py", f"--workdir={workdir}", "--mode=evaluate",
                    f"--config.data.dir={data_dir}", "--config.eval_batch_size=256")
    report = json.loads((workdir / "report.json").read_text())
    assert last_line(result) == f"test_accuracy={report['accuracy']:.4f}"
    assert "weighted avg" in result.stderr and "confusion matrix" in result.stderr

    # The same 1,000 test digits as a Kaggle test.csv (no labels).
    _, _, test_images, test_labels = data_lib.load_idx_folder(data_dir)
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    pd.DataFrame(test_images.reshape(len(test_images), -1),
                 columns=data_lib.PIXEL_COLUMNS).to_csv(kaggle / "test.csv", index=False)
    result = launch("--config=configs/tiny.py", f"--workdir={workdir}", "--mode=predict",
                    f"--config.data.dir={kaggle}", "--config.eval_batch_size=256")
    assert last_line(result) == f"submission={workdir / 'submission.csv'}"
    submission = pd.read_csv(workdir / "submission.csv")
    assert list(submission.columns) == ["ImageId", "Label"]
    assert submission["ImageId"].tolist() == list(range(1, 1001))
    accuracy = np.mean(submission["Label"].to_numpy() == test_labels)
    assert accuracy == report["accuracy"]


def test_kaggle_trained_model_reports_on_validation_and_says_so(tmp_path):
    helpers.write_kaggle_folder(tmp_path / "data", 300, 20)
    config = helpers.tiny_config(**{"data.dir": str(tmp_path / "data")})
    report = train.train_and_evaluate(config, tmp_path / "work")["report"]
    assert report["split"] == "validation" and report["count"] == 30
    assert "no labelled test split" in report["note"]
    saved = json.loads((tmp_path / "work" / "report.json").read_text())
    assert saved["split"] == "validation"

    # Another validation split would mix training examples into the report: refused.
    other = helpers.tiny_config(**{"data.dir": str(tmp_path / "data"), "data.split_seed": 1})
    with pytest.raises(FlaxDigitsError, match="data.split_seed=1.*trained with 0"):
        evaluate.evaluate_workdir(other, tmp_path / "work")


# ---------------------------------------------------------------------------------------
# Bad input: one clear line, non-zero exit


def kaggle_test_csv(folder, frame):
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "test.csv", index=False)
    return folder


@pytest.mark.parametrize("case", ["label column", "wrong pixel columns"])
def test_predict_rejects_a_bad_test_csv(trained, tmp_path, case):
    frame = helpers.kaggle_train_frame(5)
    if case == "wrong pixel columns":
        frame = frame.drop(columns=["label", "pixel783"])
        expected = "missing 1 column(s) (pixel783)"
    else:
        expected = "unexpected column(s) label"
    folder = kaggle_test_csv(tmp_path / "kaggle", frame)
    result = launch("--config=configs/tiny.py", f"--workdir={trained['workdir']}",
                    "--mode=predict", f"--config.data.dir={folder}")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"flaxdigits: error: {folder / 'test.csv'}: ")
    assert expected in message


def test_modes_fail_clearly_without_a_trained_model(tmp_path):
    folder = kaggle_test_csv(tmp_path / "kaggle", helpers.kaggle_train_frame(5).drop(
        columns="label"))
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'nothing'}",
                    "--mode=predict", f"--config.data.dir={folder}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"flaxdigits: error: {tmp_path / 'nothing'}: no trained model here (no config.json); "
        f"train one first with --mode=train")

    # A config.json but no checkpoint (a run stopped before its first save).
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text(helpers.tiny_config().to_json())
    with pytest.raises(FlaxDigitsError, match="no checkpoint to load"):
        checkpoint_lib.load(tmp_path / "early")


def test_unknown_mode_is_one_line(tmp_path):
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=score")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == ["flaxdigits: error: flag --mode=score: value should be one of "
                     "<train|evaluate|predict|serve>"]


def test_predict_needs_a_test_csv(trained, tmp_path):
    with pytest.raises(FlaxDigitsError, match="test.csv: no such file"):
        evaluate.predict_workdir(helpers.tiny_config(**{"data.dir": str(tmp_path)}),
                                 trained["workdir"])


# ---------------------------------------------------------------------------------------
# Test-time augmentation and ensembles


def small_trained(seed):
    config = helpers.tiny_config(**{"model.name": "fast_cnn", "seed": seed})
    model = train.create_model(config.model)
    state = train.create_train_state(config, model, jax.random.key(seed), 10)
    return checkpoint_lib.Trained(model, train.model_variables(state), config, 0)


def test_tta_averages_the_views_it_names():
    from flaxdigits import augment

    member = small_trained(0)
    images = data_lib.to_model_inputs(helpers.synthetic_digits(12)[0])
    got = evaluate.predict_probabilities(member.model, member.variables, images, 5,
                                         tta_views=3)
    views = [images] + [np.asarray(jax.vmap(augment.transform,
                                            in_axes=(0, None, None, None, None))(images, *v))
                        for v in evaluate.TTA_VIEWS[1:3]]
    assert evaluate.TTA_VIEWS[1:3] == ((0.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, 0.0))
    expected = np.mean([jax.nn.softmax(member.model.apply(member.variables, v)) for v in views],
                       axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, evaluate.predict_probabilities(
        member.model, member.variables, images, 5), atol=1e-4)  # the views changed something
    with pytest.raises(FlaxDigitsError, match="tta_views=10 must be between 1 and 9"):
        evaluate.predict_probabilities(member.model, member.variables, images, tta_views=10)


def test_ensemble_is_the_mean_of_its_members():
    members = [small_trained(0), small_trained(1)]
    images = data_lib.to_model_inputs(helpers.synthetic_digits(7)[0])
    each = [evaluate.predict_probabilities(m.model, m.variables, images) for m in members]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(evaluate.ensemble_probabilities(members, images),
                               (each[0] + each[1]) / 2, atol=1e-6)


def test_report_with_tta_and_an_ensemble_workdir(trained, tmp_path):
    workdir = trained["workdir"]
    config = helpers.tiny_config(**{"data.dir": str(trained["data_dir"]),
                                    "eval_batch_size": 256, "inference.tta_views": 5,
                                    "inference.ensemble_workdirs": (str(workdir),)})
    report = evaluate.evaluate_workdir(config, workdir)
    assert report["tta_views"] == 5 and report["ensemble_workdirs"] == [str(workdir)]
    # The same model twice, each with the same 5 views: the mean of 5 views of one model.
    one = checkpoint_lib.load(workdir)
    split = data_lib.load_dataset(config.data).test
    probs = evaluate.predict_probabilities(one.model, one.variables, split.images, 256, 5)
    assert report["accuracy"] == np.mean(probs.argmax(-1) == split.label_ids)
