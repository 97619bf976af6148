"""Bilinear-MLP interpretability suite: the library behind ``python -m train`` and ``python -m analyze``."""
