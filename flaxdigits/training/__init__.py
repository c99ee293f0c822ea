"""Training: steps.py (TrainState, loss, the jitted steps), optim.py (Adam and its
schedule), hooks.py (metrics on disk, progress in the log, stop signals), loop.py (the
driver, `train_and_evaluate`)."""
