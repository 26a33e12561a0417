"""Hyperparameter search: the declared search space and the Ray Tune sweep that samples it."""
