"""Classification metrics from predictions, as plain JSON-able Python values."""

import numpy as np

from flaxdigits import NUM_CLASSES


def confusion_matrix(true_ids: np.ndarray, predicted_ids: np.ndarray,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes, num_classes) counts: rows are the true digit, columns the prediction."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(true_ids), np.asarray(predicted_ids)), 1)
    return matrix


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where the denominator is 0 (as scikit-learn's
    zero_division=0): a class never predicted has precision 0, not NaN."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator != 0)


def loss_and_accuracy(log_probabilities_nk: np.ndarray, true_ids: np.ndarray) -> dict:
    """Mean categorical cross-entropy and accuracy of log-probabilities (N, K)."""
    true_ids = np.asarray(true_ids)
    picked = log_probabilities_nk[np.arange(len(true_ids)), true_ids].astype(np.float64)
    return {"loss": float(-picked.mean()),
            "accuracy": float(np.mean(log_probabilities_nk.argmax(-1) == true_ids))}


def classification_report(true_ids: np.ndarray, predicted_ids: np.ndarray,
                          num_classes: int = NUM_CLASSES) -> dict:
    """Accuracy, confusion matrix, per-class precision/recall/F1/support and their macro
    and support-weighted averages."""
    matrix = confusion_matrix(true_ids, predicted_ids, num_classes)
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    precision = safe_divide(true_positives, matrix.sum(axis=0))
    recall = safe_divide(true_positives, support)
    f1 = safe_divide(2 * precision * recall, precision + recall)
    total = int(matrix.sum())
    per_class = {
        str(k): {"precision": float(precision[k]), "recall": float(recall[k]),
                 "f1": float(f1[k]), "support": int(support[k])}
        for k in range(num_classes)}

    def average(weights):
        weights = np.asarray(weights, np.float64)
        weights = weights / weights.sum() if weights.sum() else weights
        return {"precision": float(precision @ weights), "recall": float(recall @ weights),
                "f1": float(f1 @ weights), "support": total}

    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "count": total,
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "macro_avg": average(np.ones(num_classes)),
        "weighted_avg": average(support),
    }


def format_report(report: dict) -> str:
    """The report as a table for the log."""
    lines = [f"{'digit':>12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    rows = list(report["per_class"].items()) + [("macro avg", report["macro_avg"]),
                                                ("weighted avg", report["weighted_avg"])]
    for name, row in rows:
        if name == "macro avg":
            lines.append("")
        lines.append(f"{name:>12} {row['precision']:9.4f} {row['recall']:7.4f} "
                     f"{row['f1']:7.4f} {row['support']:8d}")
    lines.append(f"{'accuracy':>12} {report['accuracy']:9.4f} over {report['count']} digits "
                 f"({report['split']} split, step {report['step']})")
    lines.append("confusion matrix (rows: true digit, columns: predicted):")
    lines.append("      " + "".join(f"{k:>6}" for k in range(len(report["confusion_matrix"]))))
    for k, row in enumerate(report["confusion_matrix"]):
        lines.append(f"{k:>6}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
