"""flaxdigits/evaluation/metrics.py against cases computed by hand."""

import json

import numpy as np
import pytest

from flaxdigits.evaluation import metrics


def test_metrics_of_a_hand_computed_case_with_a_class_never_predicted():
    true = np.array([0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0, 0])  # digit 2 is never predicted
    report = metrics.classification_report(true, predicted, num_classes=3)

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
    matrix = metrics.confusion_matrix(true, predicted)
    assert matrix.shape == (10, 10) and matrix.sum() == 1234
    assert np.array_equal(matrix.sum(axis=1), np.bincount(true, minlength=10))
    assert np.array_equal(matrix.sum(axis=0), np.bincount(predicted, minlength=10))
    assert np.trace(matrix) == np.sum(true == predicted)


def test_empty_split_gives_zeros_not_nan():
    report = metrics.classification_report(np.array([], int), np.array([], int))
    assert report["accuracy"] == 0.0 and report["macro_avg"]["f1"] == 0.0


def test_loss_and_accuracy_of_log_probabilities():
    log_probabilities = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], np.float32))
    result = metrics.loss_and_accuracy(log_probabilities, np.array([0, 1]))
    assert result["loss"] == pytest.approx(-(np.log(0.5) + np.log(0.1)) / 2, rel=1e-6)
    assert result["accuracy"] == 0.5


def test_the_report_table_names_every_digit():
    report = metrics.classification_report(np.arange(10), np.arange(10))
    report.update(split="test", step=7)
    text = metrics.format_report(report)
    assert "weighted avg" in text and "(test split, step 7)" in text
    assert len(text.splitlines()) == 1 + 10 + 1 + 2 + 1 + 2 + 10
