"""Evaluation of trained models: metrics, the benchmark report and its figures.

`metrics` is pure NumPy (scikit-learn for the AUCs); `report` builds and writes ``report.json``
and ``report.md``; `plots` draws the PNGs. None of them runs a model: they take predictions.
"""
