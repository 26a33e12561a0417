"""From the MLflow logs of a sweep to its answer: Parquet tables, intervals over seeds, ablation plots, a report.

- :mod:`iakd.analysis.export`: one sweep out of MLflow into ``runs.parquet`` and ``epochs.parquet``; the
  search's default tracking URI and experiment (:func:`~iakd.analysis.export.search_defaults`).
- :mod:`iakd.analysis.results`: the sweep's answer, computed once: which runs count, the ranking, the confirmation.
- :mod:`iakd.analysis.stats`: means with Student-t intervals, differences paired by seed.
- :mod:`iakd.analysis.labels`: how a configuration and a baseline are named in plots and report.
- :mod:`iakd.analysis.importance`: fANOVA importance of the searched parameters (an in-memory Optuna study).
- :mod:`iakd.analysis.pareto`: the Pareto front of cost against accuracy.
- :mod:`iakd.analysis.plots`: the ablation plots (matplotlib, PNG), a package: ``search``, ``curves`` and
  ``confirmation`` draw, ``rows`` picks the rows, ``style`` gives the look.
- :mod:`iakd.analysis.report`: ``analyse(...)``: all of the above, ``report.md``, logged to the parent run.
- :mod:`iakd.analysis.controlled`: controlled runs of conditions over seeds (``analysis/diagnosis.py``, ``levers.py``).

The command lines over them are ``analysis/export.py`` and ``analysis/ablations.py``.
"""
