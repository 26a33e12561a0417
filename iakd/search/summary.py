"""What a sweep hands back: one summary per trial, the sweep's summary, and the closing text of
``tune/search.py`` (the best configuration beside the baselines, the confirmed table from the sweep's answer, and
how to browse the runs)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from iakd import outcomes
from iakd.analysis.results import SweepResults
from iakd.tracking import baseline_label

__all__ = ["TrialSummary", "SearchSummary", "format_summary", "format_value"]


@dataclass
class TrialSummary:
    name: str
    overrides: dict[str, Any]
    score: float  # best_val_acc: the best val_acc over the epochs it is judged on (iakd.judging.best_judged_epoch)
    last_test_acc: float
    epochs: int
    run_id: str | None
    outcome: str = outcomes.FINISHED  # how it ended (iakd.outcomes): only finished or stopped early ones are ranked


@dataclass
class SearchSummary:
    experiment: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    best: TrialSummary | None
    baselines: list[TrialSummary] = field(default_factory=list)
    trials: list[TrialSummary] = field(default_factory=list)
    interrupted: bool = False
    answer: SweepResults | None = None  # the sweep's answer (None when interrupted): what the printout shows
    experiment_id: str = ""
    optuna_storage: str = ""  # the search's Optuna study: optuna-dashboard <optuna_storage>, study <study>
    study: str = ""


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _left_out(left_out: dict[str, int]) -> str:
    if not left_out:
        return "every confirmation run counted"
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items()))
    return f"left out: {sum(left_out.values())} confirmation run(s) ({reasons})"


def format_summary(summary: SearchSummary) -> str:
    """The closing text of ``tune/search.py``: best configuration, its accuracy beside the baselines, and how
    to browse the runs."""
    lines = [f"Search {summary.experiment!r}: {len(summary.trials)} trials, {len(summary.baselines)} baselines"]
    if summary.best is not None:
        b = summary.best
        lines.append(f"Best trial {b.name} (MLflow run {b.run_id}):")
        lines += [f"    {k} = {format_value(v)}" for k, v in sorted(b.overrides.items())]
    rows = ([("best IAKD", summary.best)] if summary.best else []) + [
        (f"{baseline_label(t.overrides.get('method.name'), t.overrides.get('student.init'))} "
         f"(seed {t.overrides.get('seed')})", t) for t in summary.baselines]
    if rows:
        best = f"best {summary.metric}"
        width = max(10, len(best))
        lines.append(f"    {'':<26} {best:>{width}} {'last test_acc':>13} {'epochs':>6}")
        lines += [f"    {label:<26} {t.score:>{width}.2f} {t.last_test_acc:>13.2f} {t.epochs:>6}" for label, t in rows]
    answer = summary.answer
    if answer is not None and (answer.confirmed or answer.left_out):
        seeds = sorted({s for c in answer.confirmed for s in c.seeds})
        lines.append(f"Confirmed on seeds {', '.join(map(str, seeds))} (mean ± 95 % interval; the configuration was "
                     f"chosen on {summary.metric} in the search, test_acc is the last epoch's, reported only):")
        # a configuration meets the reference baseline (KD where it ran) trained from its own initialisation
        ref = answer.reference_method
        column = f"test_acc - {ref}" if ref is not None else ""
        lines.append(f"    {'':<28} {'best ' + summary.metric:>16} {'test_acc':>16} {column:>16}")
        for c in answer.confirmed:
            diff = answer.difference(c.name, ref) if ref is not None else None
            lines.append(f"    {c.name:<28} {c.val_interval.format():>16} {c.test_interval.format():>16} "
                         f"{diff.format(signed=True) if diff is not None else '':>16}")
        if ref is None:
            lines.append("    no baseline was confirmed (baselines.methods is empty): nothing to compare with")
        elif ref != "kd":
            lines.append(f"    KD was not a baseline (baselines.methods): the differences are to {ref}")
        others = [f"{c.name} against {answer.reference(c.name, ref)}" for c in answer.confirmed
                  if ref is not None and not c.is_baseline and answer.reference(c.name, ref) != ref]
        if others:
            lines.append(f"    test_acc - {ref}: against the {ref.upper()} trained from the same initialisation "
                         f"({'; '.join(others)})")
        lines.append(f"    {_left_out(answer.left_out)}")
    uri = summary.tracking_uri
    # The runs table, not MLflow 3's GenAI overview (which the UI opens without workflowType).
    page = f"#/experiments/{summary.experiment_id}/runs?workflowType=machine_learning"
    if uri.startswith("http"):
        lines.append(f"Browse the runs: {uri.rstrip('/')}/{page}")
    else:
        lines.append(f"Browse the runs: mlflow ui --backend-store-uri {shlex.quote(uri)}, then open "
                     f"http://127.0.0.1:5000/{page}")
    if summary.optuna_storage:
        dashboard = f"optuna-dashboard {shlex.quote(summary.optuna_storage)}"
        lines.append(f"Browse the Optuna study {summary.study!r}: {dashboard}")
    return "\n".join(lines)
