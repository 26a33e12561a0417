"""From the MLflow logs of a sweep to its answer: Parquet tables, intervals over seeds, ablation plots, a report.

- :mod:`iakd.analysis.export`: one sweep out of MLflow into ``runs.parquet`` and ``epochs.parquet``.
- :mod:`iakd.analysis.stats`: means with Student-t intervals, differences paired by seed.
- :mod:`iakd.analysis.plots`: the ablation plots (matplotlib, PNG).
- :mod:`iakd.analysis.report`: ``analyse(...)``: all of the above, ``report.md``, logged to the parent run.

The command lines over them are ``analysis/export.py`` and ``analysis/ablations.py``.
"""
