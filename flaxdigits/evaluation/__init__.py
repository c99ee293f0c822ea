"""Evaluation: inference.py (load a trained workdir; predict with TTA and ensembles),
metrics.py (accuracy, confusion matrix, per-class precision/recall/F1), plots.py, and
report.py (report.json, submission.csv, and the evaluate and predict modes)."""
