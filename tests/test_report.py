"""flaxdigits/evaluation/report.py (and plots.py): the report, the evaluate and predict
modes, on a real (small) trained workdir."""

import json

import numpy as np
import pandas as pd
import pytest

from flaxdigits import data, testing
from flaxdigits.data import idx, kaggle
from flaxdigits.errors import FlaxDigitsError
from flaxdigits.evaluation import inference, plots, report as report_lib
from flaxdigits.training import loop
from tests.conftest import tiny_config


def png_shape(path):
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05, f"{path} is (nearly) blank"
    return pixels.shape


def test_plots_are_drawn_and_not_blank(tmp_path):
    records = [{"step": 10 * e, "epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.1 / e,
                "val_loss": 1.1 / e, "val_accuracy": 1 - 0.12 / e} for e in range(1, 4)]
    assert plots.plot_training_curves([], tmp_path / "none.png", "t") is None
    curves = plots.plot_training_curves(records, tmp_path / "curves.png", "Training curves")
    matrix = plots.plot_confusion_matrix(np.eye(10, dtype=int) * 90 + 1,
                                         tmp_path / "matrix.png", "Confusion")
    images = data.to_model_inputs(testing.synthetic_digits(30)[0])
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), 30).astype(np.float32)
    wrong = plots.plot_misclassified(images, np.zeros(30, int), probabilities,
                                     tmp_path / "wrong.png")
    for path in (curves, matrix, wrong):
        height, width, _ = png_shape(path)
        assert 300 <= height <= 2000 and 500 <= width <= 2000, (path, height, width)


@pytest.mark.slow
def test_training_ends_with_report_and_plots(trained):
    workdir = trained["workdir"]
    report = json.loads((workdir / "report.json").read_text())
    assert report == trained["final"]["report"]
    assert report["split"] == "test" and report["count"] == 1000
    assert sum(map(sum, report["confusion_matrix"])) == 1000
    assert set(report["per_class"]) == {str(k) for k in range(10)}
    assert report["accuracy"] > 0.85  # 2 epochs of the tiny CNN on 6,000 real digits
    assert report["step"] == inference.load(workdir).step
    for name in ("training_curves", "confusion_matrix", "misclassified"):
        height, width, _ = png_shape(workdir / "plots" / f"{name}.png")
        assert 300 <= height <= 2000 and 500 <= width <= 2000, (name, height, width)
    assert report["plots"] == ["plots/training_curves.png", "plots/confusion_matrix.png",
                               "plots/misclassified.png"]


@pytest.mark.slow
def test_evaluate_mode_agrees_with_predict_mode_on_a_kaggle_file(trained, tmp_path, launch,
                                                                  last_line):
    workdir, data_dir = trained["workdir"], trained["data_dir"]
    result = launch("--config=configs/tiny.py", f"--workdir={workdir}", "--mode=evaluate",
                    f"--config.data.dir={data_dir}", "--config.eval_batch_size=256")
    report = json.loads((workdir / "report.json").read_text())
    assert last_line(result) == f"test_accuracy={report['accuracy']:.4f}"
    assert "weighted avg" in result.stderr and "confusion matrix" in result.stderr

    # The same 1,000 test digits as a Kaggle test.csv (no labels).
    raw = idx.load_folder(data_dir)
    folder = tmp_path / "kaggle"
    folder.mkdir()
    pd.DataFrame(raw.test_images.reshape(len(raw.test_images), -1),
                 columns=kaggle.PIXEL_COLUMNS).to_csv(folder / "test.csv", index=False)
    result = launch("--config=configs/tiny.py", f"--workdir={workdir}", "--mode=predict",
                    f"--config.data.dir={folder}", "--config.eval_batch_size=256")
    assert last_line(result) == f"submission={workdir / 'submission.csv'}"
    submission = pd.read_csv(workdir / "submission.csv")
    assert list(submission.columns) == ["ImageId", "Label"]
    assert submission["ImageId"].tolist() == list(range(1, 1001))
    assert np.mean(submission["Label"].to_numpy() == raw.test_labels) == report["accuracy"]


@pytest.mark.slow
def test_kaggle_trained_model_reports_on_validation_and_says_so(tmp_path):
    testing.write_kaggle_folder(tmp_path / "data", 300, 20)
    config = tiny_config(**{"data.dir": str(tmp_path / "data")})
    report = loop.train_and_evaluate(config, tmp_path / "work")["report"]
    assert report["split"] == "validation" and report["count"] == 30
    assert "no labelled test split" in report["note"]
    saved = json.loads((tmp_path / "work" / "report.json").read_text())
    assert saved["split"] == "validation"

    # Another validation split would mix training examples into the report: refused.
    other = tiny_config(**{"data.dir": str(tmp_path / "data"), "data.split_seed": 1})
    with pytest.raises(FlaxDigitsError, match="data.split_seed=1.*trained with 0"):
        report_lib.evaluate_workdir(other, tmp_path / "work")


def kaggle_test_csv(folder, frame):
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "test.csv", index=False)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("case", ["label column", "wrong pixel columns"])
def test_predict_rejects_a_bad_test_csv(trained, tmp_path, case, launch):
    frame = testing.kaggle_train_frame(5)
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


@pytest.mark.slow
def test_modes_fail_clearly_without_a_trained_model(tmp_path, launch):
    folder = kaggle_test_csv(tmp_path / "kaggle", testing.kaggle_train_frame(5).drop(
        columns="label"))
    result = launch("--config=configs/tiny.py", f"--workdir={tmp_path / 'nothing'}",
                    "--mode=predict", f"--config.data.dir={folder}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"flaxdigits: error: {tmp_path / 'nothing'}: no trained model here (no config.json); "
        f"train one first with --mode=train")


def test_a_workdir_without_a_checkpoint_or_test_csv_is_one_line(tmp_path):
    (tmp_path / "early").mkdir()  # a run stopped before its first save
    (tmp_path / "early" / "config.json").write_text(tiny_config().to_json())
    with pytest.raises(FlaxDigitsError, match="no checkpoint to load"):
        inference.load(tmp_path / "early")
    with pytest.raises(FlaxDigitsError, match="test.csv: no such file"):
        report_lib.predict_workdir(tiny_config(**{"data.dir": str(tmp_path)}),
                                   tmp_path / "early")


@pytest.mark.slow
def test_report_with_tta_and_an_ensemble_workdir(trained, monkeypatch):
    from flaxdigits.data import cut_pieces

    workdir = trained["workdir"]
    config = tiny_config(**{"data.dir": str(trained["data_dir"]), "eval_batch_size": 256,
                            "inference.tta_views": 5, "data.read_pieces": 0.25,
                            "inference.ensemble_workdirs": (str(workdir),)})
    # Evaluating reads the held-out split only: the config's training pieces are not made.
    monkeypatch.setattr(cut_pieces, "read", None)
    report = report_lib.evaluate_workdir(config, workdir)
    assert report["tta_views"] == 5 and report["ensemble_workdirs"] == [str(workdir)]
    # The same model twice, each with the same 5 views: the mean of 5 views of one model.
    one = inference.load(workdir)
    split = data.load_dataset(config.data, training_pieces=False).test
    probabilities = inference.predict_probabilities(one.model, one.variables, split.images,
                                                    256, 5)
    assert report["accuracy"] == np.mean(probabilities.argmax(-1) == split.label_ids)


def test_an_ensemble_is_not_scored_on_a_validation_split_a_member_trained_on(tmp_path):
    member = tmp_path / "member_1"
    member.mkdir()
    saved = json.loads(json.dumps(tiny_config().to_dict()))
    saved["data"]["split_seed"] = 1  # `python -m flaxdigits.ensemble --own_splits`
    (member / "config.json").write_text(json.dumps(saved))
    config = tiny_config(**{"inference.ensemble_workdirs": (str(member),)})
    with pytest.raises(FlaxDigitsError, match=f"member {member} was trained with "
                                              "config.data.split_seed=1, not 0"):
        report_lib.check_same_validation_split(config, tiny_config())
    saved["data"]["split_seed"] = 0
    (member / "config.json").write_text(json.dumps(saved))
    report_lib.check_same_validation_split(config, tiny_config())  # the same split: fine
