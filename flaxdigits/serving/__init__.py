"""Serving: preprocess.py (any drawn digit -> an MNIST-style 28x28 digit), app.py (the
Flask app, served by waitress, over a trained workdir), web/index.html (the drawing page)."""
