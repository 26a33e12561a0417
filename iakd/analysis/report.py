"""The answer of a sweep: export, plots and ``report.md`` in one folder, logged to the sweep's parent run.

:func:`analyse` reads the sweep (:mod:`iakd.analysis.export`), writes the two Parquet tables, draws every plot
(:mod:`iakd.analysis.plots`), writes ``report.md`` (which schedule and granularity is best, the top
configurations, the baselines and the confirmed differences to KD and CE with 95 % intervals, what was left
out and why, every plot) and logs the folder as artifacts of the parent run under ``analysis/``, where the
MLflow UI shows it beside the trials.

Selection is on validation only (best-epoch validation accuracy, the search metric); test accuracy (last
epoch) is reported beside it and never used to choose anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from iakd import outcomes, tracking
from iakd.analysis import plots
from iakd.analysis.export import Sweep, default_out_dir, exclusions, load_sweep, usable, write_tables
from iakd.analysis.labels import config_label
from iakd.analysis.results import SCORE, sweep_results
from iakd.analysis.stats import Interval, mean_interval
from iakd.checkpoint import write_text_atomic
from iakd.errors import ConfigError

__all__ = ["ARTIFACT_PATH", "REPORT_NAME", "analyse", "publish_report", "write_report"]

ARTIFACT_PATH = "analysis"  # the folder of the parent run's artifacts that holds the report
REPORT_NAME = "report.md"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _pct(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else "n/a"


def _num(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _with_n(interval: Interval, signed: bool = False) -> str:
    return f"{interval.format(signed=signed)} (n={interval.n})" if interval.n else "n/a"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# ------------------------------------------------------------------------------------------ sections


def _header(sweep: Sweep, runs: pd.DataFrame) -> list[str]:
    pairs = runs[["teacher", "student", "dataset"]].dropna().drop_duplicates()
    pair = "; ".join(f"{t} -> {s} on {d}" for t, s, d in pairs.itertuples(index=False)) or "unknown pair"
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"# Sweep `{sweep.experiment}`: analysis", "",
        f"Parent run `{sweep.parent_run_id}` of experiment `{sweep.experiment}` at `{sweep.tracking_uri}`; "
        f"{pair}. Written {written}.", "",
        "Scores are in %: **validation accuracy at the best epoch after the swap schedule handed over** (the "
        "search's selection metric; a schedule is never scored while its student still trains inside hybrids, "
        "and one that never reaches p = 0 is scored at its last epoch) and **test accuracy at the last epoch**. "
        "The pure student is evaluated with BatchNorm statistics recomputed on training images unless a run "
        "says otherwise (`evaluation.student_bn`). Every choice below is made on validation; test accuracy is reported "
        "beside it and never used to choose. Intervals are 95 % Student-t intervals over seeds "
        "(`mean ± half-width`, n/a for one seed); differences are paired by seed.", "",
    ]


def _completeness(sweep: Sweep, runs: pd.DataFrame) -> list[str]:
    """A line at the top when the sweep did not end: its answer is provisional."""
    if sweep.complete:
        return []
    searched = int((runs["role"] == "search").sum())
    expected = sweep.num_samples
    missing = f"{expected - searched} of its {expected} searched trials never started, " if expected else ""
    state = "was interrupted" if sweep.parent_status == "KILLED" or sweep.interrupted else (
        f"has not ended (its parent run is {sweep.parent_status}: still running, or its driver was killed)")
    return [f"**Provisional: this sweep {state}.** {missing}"
            "runs still open count as unfinished, and stages that never ran (e.g. the confirmation) are missing: "
            "read every figure below as a snapshot, not as the sweep's answer. Continue it with "
            "`python tune/search.py --resume`.", ""]


def _runs_section(runs: pd.DataFrame) -> list[str]:
    ok = usable(runs)
    rows = []
    for role in [r for r in ("search", "baseline", "confirm") if r in set(runs["role"])] + sorted(
            {r for r in runs["role"].dropna()} - {"search", "baseline", "confirm"}):
        mine, kept = runs[runs["role"] == role], ok[ok["role"] == role]
        stopped = int((kept["outcome"] == outcomes.STOPPED_EARLY).sum())
        rows.append((role, len(mine), len(kept), stopped, len(mine) - len(kept)))
    lines = ["## Runs", ""] + _table(["role", "runs", "used", "of which stopped early", "excluded"], rows)
    left_out = exclusions(runs)
    if left_out:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(left_out.items()))
        lines += [f"**Excluded from every figure and table below: {_plural(sum(left_out.values()), 'run')}** "
                  f"({reasons}). They keep their rows in `runs.parquet`, with the `outcome` column saying why.", ""]
    else:
        lines += ["No run was excluded: every run finished (or was stopped early by ASHA) with a finite score.", ""]
    lines += ["Stopped-early trials count with the best validation accuracy they reached after their handover and "
              "before ASHA stopped them (fewer epochs than the others; ASHA never stops a trial that still "
              "swaps). The top table says from which epoch each trial was judged.", ""]
    return lines


def _best_by(trials: pd.DataFrame, column: str) -> list[tuple[str, int, float, float]]:
    """(value, trials, best score, mean score) per value of ``column``, best first."""
    stats = [(str(value), len(group), float(group[SCORE].max()), float(group[SCORE].mean()))
             for value, group in trials.groupby(column)]
    return sorted(stats, key=lambda s: (-s[2], s[0]))


def _answer_section(runs: pd.DataFrame) -> list[str]:
    trials = usable(runs)
    trials = trials[trials["role"] == "search"]
    lines = ["## Which schedule and granularity is best (by validation)", ""]
    if trials.empty:
        return lines + ["No usable search trial: nothing to rank.", ""]
    best = plots.best_trials(runs, 1).iloc[0]
    lines += [f"Best search trial: **{best['run_name']}** ({best['method']}: {config_label(best)}), "
              f"validation {_pct(best[SCORE])} % (best judged epoch), test {_pct(best['last_test_acc'])} % "
              f"(last epoch), {best['epochs']} epochs{', stopped early' if best['stopped_early'] else ''}.", ""]
    for column, title in (("schedule_family", "schedule family"), ("granularity", "granularity"),
                          ("profile", "depth profile"), ("init", "student initialisation"), ("mixing", "mixing")):
        ranked = _best_by(trials[trials[column].notna()], column)
        if not ranked:
            continue
        lines += [f"Best {title}: **{ranked[0][0]}** (its best trial: {_pct(ranked[0][2])} % validation).", ""]
        lines += _table([title, "trials", "best val %", "mean val %"],
                        ((v, n, _pct(b), _pct(m)) for v, n, b, m in ranked))
    lines += ["One search trial per configuration on one seed is a noisy ranking: the confirmation below "
              "re-trains the top configurations on fresh seeds.", ""]
    return lines


def _top_section(runs: pd.DataFrame) -> list[str]:
    top = plots.best_trials(runs)
    if top.empty:
        return []
    lines = [f"## Top {len(top)} search configurations (by best validation accuracy after the handover)", ""]
    rows = []
    for rank, (_, row) in enumerate(top.iterrows(), start=1):
        extra = ", ".join(f"{k}={_num(row[k])}" for k in ("rate", "interval") if _num(row[k]))
        rows.append((rank, f"`{row['run_name']}`", row["method"], row["schedule_family"], _num(row["p0"]),
                     _num(row["t_end"]), extra, row["profile"], row["granularity"], _num(row["kd_weight"]),
                     row.get("teacher_bn"), _levers(row), _pct(row[SCORE]), _judged(row),
                     _pct(row["last_test_acc"]),
                     _num(row["epochs"]), "stopped early" if row["stopped_early"] else "finished"))
    return lines + _table(["#", "run", "method", "family", "p0", "t_end", "extra", "profile", "granularity",
                           "KD weight", "teacher BN", "levers", "best val %", "judged epochs", "last test %",
                           "epochs", "outcome"], rows)


def _levers(row: pd.Series) -> str:
    """The levers of swapping-in a trial used, where they differ from today's IAKD (docs/iakd-levers.md)."""
    def positive(key: str) -> bool:
        value = row.get(key)
        return isinstance(value, (int, float)) and not math.isnan(value) and value > 0

    parts = []
    if row.get("init") == "teacher":
        parts.append("teacher init")
    if row.get("mixing") == "blend":
        parts.append("blend")
    if positive("hybrid_weight"):
        parts.append(f"hybrid aux. {_num(row['hybrid_weight'])}")
    if positive("t_start"):
        parts.append(f"t_start {_num(row['t_start'])}")
    if row.get("kd_on") == "student" and not positive("hybrid_weight"):
        parts.append("KD on the student")
    return ", ".join(parts) or "-"


def _judged(row: pd.Series) -> str:
    """The epochs a trial's score was taken from: after its handover, or its last epoch if it never handed over."""
    start = row.get("judged_from_epoch")
    if start is None or pd.isna(start):
        return f"{_num(row['epochs'])} (never handed over)"
    return f"{int(start)}-{_num(row['epochs'])}"


def _baselines_section(runs: pd.DataFrame) -> list[str]:
    baselines = usable(runs)
    baselines = baselines[baselines["role"] == "baseline"]
    if baselines.empty:
        return ["## Baselines (search stage)", "", "No usable baseline run.", ""]
    rows = []
    for _, group in sorted(baselines.groupby("method"), key=lambda item: str(item[0])):
        seeds = ", ".join(str(int(s)) for s in sorted(group["seed"].dropna()))
        rows.append((config_label(group.iloc[0]), seeds, _with_n(mean_interval(group[SCORE])),
                     _with_n(mean_interval(group["last_test_acc"]))))
    return (["## Baselines (search stage)", ""]
            + _table(["method", "seeds", "best val % (mean ± 95 % CI)", "last test % (mean ± 95 % CI)"], rows))


def _confirmation_section(runs: pd.DataFrame) -> list[str]:
    lines = ["## Confirmation on fresh seeds", ""]
    answer = sweep_results(runs)  # the same answer tune/search.py prints and logs to the parent run
    candidates = plots.confirmation_groups(runs)
    left_out = (f"**Left out: {_plural(answer.left_out_count, 'confirmation run')}** ("
                + ", ".join(f"{n} {reason}" for reason, n in sorted(answer.left_out.items()))
                + "); the figures below are over the runs that count." if answer.left_out
                else "Every confirmation run counted.")
    if not candidates:
        return lines + ["No confirmation runs in this sweep (no usable run with role `confirm`): the "
                        "differences to KD and CE are not confirmed, and the confirmation plot was not made. "
                        + left_out, ""]
    rows = []
    for c in candidates:
        cells = [c.label, ", ".join(str(s) for s in sorted(c.test)), _with_n(mean_interval(c.val.values())),
                 _with_n(mean_interval(c.test.values()))]
        for reference in ("kd", "ce"):
            for column in ("test", "val"):
                diff = answer.difference(c.name, reference, column)
                cells.append("" if diff is None else _with_n(diff, signed=True))
        rows.append(cells)
    lines += ["The search's best configurations (chosen on validation in the search stage, on its own seed) "
              "re-trained on fresh seeds, beside the baselines on the same seeds; searched configurations are in "
              "the search's order. Differences are in percentage points, paired by seed, with 95 % intervals: an "
              "interval that excludes 0 is a difference the seeds support. " + left_out, ""]
    lines += ["A configuration is compared with the baselines trained from its own initialisation (a student "
              "initialised from the teacher with KD and CE initialised from the teacher too).", ""]
    lines += _table(["configuration", "seeds", "best val %", "last test %", "test − KD", "val − KD", "test − CE",
                     "val − CE"], rows)
    reference = answer.reference_method
    confirmed = {c.row["method"] for c in answer.confirmed if c.is_baseline}
    missing = [m.upper() for m in ("kd", "ce") if m not in confirmed]
    if missing:
        lines += [f"{' and '.join(missing)} {'was' if len(missing) == 1 else 'were'} not among the confirmed "
                  f"baselines (`baselines.methods`): {'its' if len(missing) == 1 else 'their'} columns are empty"
                  + (f", and the configurations are measured against {reference.upper()}." if reference is not None
                     else "; with no baseline confirmed, nothing is compared."), ""]
    winner = answer.winner
    diff = answer.difference(winner["run_name"], reference) if winner is not None and reference else None
    if diff is not None:
        verdict = ("better than" if diff.low > 0 else "worse than" if diff.high < 0
                   else "not distinguishable from") if not math.isnan(diff.half_width) else "not yet comparable to"
        lines += [f"The configuration the search chose on validation, **{winner['run_name']}**, is {verdict} "
                  f"{reference.upper()}{' initialised from the teacher' if winner.get('init') == 'teacher' else ''} "
                  f"on test accuracy over the confirmation's seeds (which played no part in choosing it): "
                  f"{_with_n(diff, signed=True)} points.", ""]
    return lines


def _plots_section(rendered: Sequence[plots.Rendered]) -> list[str]:
    lines = ["## Plots", ""]
    for item in rendered:
        if item.path is not None:
            lines += [f"### {item.title}", "", f"![{item.title}]({item.path.name})", ""]
    skipped = [item for item in rendered if item.path is None]
    if skipped:
        lines += ["### Plots not made", ""]
        lines += [f"- {item.title} (`{item.name}.png`): {item.reason}." for item in skipped] + [""]
    return lines


def write_report(sweep: Sweep, out_dir: str | Path) -> Path:
    """Write the tables, the plots and ``report.md`` of ``sweep`` into ``out_dir``; return the report's path.

    Raises :class:`~iakd.errors.ConfigError` when the sweep has no usable run (nothing is written then).
    """
    runs, epochs = sweep.runs.to_pandas(), sweep.epochs.to_pandas()
    if usable(runs).empty:
        left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(exclusions(runs).items())) or "none logged"
        raise ConfigError(f"experiment {sweep.experiment!r} (parent run {sweep.parent_run_id}) has no finished "
                          f"runs ({_plural(len(runs), 'run')}: {left_out})")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for plot in plots.PLOTS:  # a plot skipped this time must not leave last time's PNG behind
        (folder / f"{plot.name}.png").unlink(missing_ok=True)
    write_tables(sweep, folder)
    rendered = plots.render_all(runs, epochs, folder)
    lines = (_header(sweep, runs) + _completeness(sweep, runs) + _runs_section(runs) + _answer_section(runs)
             + _top_section(runs) + _baselines_section(runs) + _confirmation_section(runs) + _plots_section(rendered)
             + ["## Files", "", "`runs.parquet` (one row per run, every outcome) and `epochs.parquet` (one row per "
                "run and epoch), written by `iakd.analysis.export`.", ""])
    path = folder / REPORT_NAME
    write_text_atomic(path, "\n".join(lines))
    return path


def analyse(tracking_uri: str, experiment: str | None = None, parent_run_id: str | None = None,
            out_dir: str | Path | None = None, log_to_mlflow: bool = True) -> Path:
    """Export one sweep, draw its plots, write ``report.md`` and (``log_to_mlflow``) log the whole output folder
    as artifacts of the sweep's parent run under ``analysis/``; return the report's path.

    The sweep is the newest parent run of ``experiment``, or the parent run ``parent_run_id``. ``out_dir``
    defaults to ``analysis_out/<experiment>``. A missing store, experiment or run, or a sweep without one
    finished run, raises :class:`~iakd.errors.ConfigError` with a one-line message.
    """
    return publish_report(load_sweep(tracking_uri, experiment, parent_run_id), out_dir, log_to_mlflow)


def publish_report(sweep: Sweep, out_dir: str | Path | None = None, log_to_mlflow: bool = True) -> Path:
    """:func:`analyse` on a sweep already read (the search's closing stage reads it once, for its answer too)."""
    folder = Path(out_dir) if out_dir is not None else default_out_dir(sweep.experiment)
    report = write_report(sweep, folder)
    if log_to_mlflow:
        tracking.mlflow_client(sweep.tracking_uri).log_artifacts(sweep.parent_run_id, str(folder), ARTIFACT_PATH)
    return report
