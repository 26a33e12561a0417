"""Controlled runs: conditions (overrides of one base run) trained on several seeds with everything else fixed (the
same teacher file, data, validation split, student initialisation and data order per seed), compared by seed.

``analysis/diagnosis.py`` (why IAKD did not teach) and ``analysis/levers.py`` (the levers of swapping-in) are
two sets of conditions over this one runner:

- :func:`run` trains every (condition, seed) not yet in ``<out>/runs.jsonl`` through ``iakd.engine.train`` in
  worker processes (one thread each) and appends each run as it finishes, so an interrupted call continues;
- :func:`summarise` writes ``summary.md``: per condition the last-epoch test accuracy (mean +- 95 % interval over
  seeds), the best validation accuracy over the judged epochs, the pure student's validation accuracy with its
  running BatchNorm statistics, the units' RMS ratios, the training time per step, and the test difference to
  each of its references, paired by seed;
- :func:`plot_summary` and :func:`plot_curves` draw ``summary.png`` and ``curves.png``.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import multiprocessing
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iakd.analysis.stats import mean_interval, paired_difference
from iakd.checkpoint import atomic_path, write_text_atomic
from iakd.config import apply_overrides, from_dict

__all__ = ["Condition", "run_config", "run", "summarise", "plot_summary", "plot_curves", "by_condition"]


@dataclass(frozen=True)
class Condition:
    """One arm of a controlled comparison: what it asks, its overrides of the base run, and the conditions its
    test accuracy is compared with, paired by seed (``references``)."""

    question: str
    overrides: dict[str, Any]
    references: tuple[str, ...] = ()
    # overrides computed from the base run (e.g. a fifth of its epochs): base run (nested) -> dotted overrides
    derived: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)


def run_config(condition: Condition, seed: int, teacher: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """The run config (plain nested data) of one condition at one seed; a bad condition fails here, before any
    worker starts."""
    overrides = {**condition.overrides, **(condition.derived(dict(base)) if condition.derived else {})}
    values = apply_overrides(base, {**overrides, "seed": seed, "device": "cpu", "checkpoint_every": 10_000,
                                    "teacher.checkpoint": teacher})
    from_dict(values)
    return values


def _train(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    import torch

    from iakd.engine import train

    torch.set_num_threads(1)
    name, seed, values = job
    cfg = from_dict(values)
    with tempfile.TemporaryDirectory() as out:
        cfg.out_dir = out
        result = train(cfg, log=lambda line: None)
    steps = cfg.optim.epochs * math.ceil(result["history"][0]["images_seen"] / cfg.optim.batch_size)
    return {"condition": name, "seed": seed, "status": result["status"], "best_val_acc": result["best_val_acc"],
            "steps": steps, "history": result["history"]}


def run(conditions: Mapping[str, Condition], names: Sequence[str], seeds: Sequence[int], base: Mapping[str, Any],
        out: Path, workers: int, teacher: str | None) -> list[dict[str, Any]]:
    """Train every (condition, seed) of ``names`` x ``seeds`` not yet in ``out/runs.jsonl``; return every row there.
    ``teacher``: a teacher file; None trains (or reuses) the base run's cached one first."""
    from iakd.teacher_cache import prepare_teacher

    out.mkdir(parents=True, exist_ok=True)
    if teacher is None:
        teacher = str(prepare_teacher(from_dict(apply_overrides(dict(base), {"device": "cpu"}))))
    path = out / "runs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    done = {(r["condition"], r["seed"]) for r in rows}
    jobs = [(n, s, run_config(conditions[n], s, teacher, base)) for s in seeds for n in names if (n, s) not in done]
    print(f"{len(jobs)} runs to train ({len(done)} already in {path}), teacher {teacher}", flush=True)
    with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(_train, jobs):
            rows.append(row)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"  {row['condition']:<28} seed {row['seed']}: test {row['history'][-1]['test_acc']:.2f}%  "
                  f"({row['status']})", flush=True)
    return rows


def by_condition(rows: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """condition -> seed -> run row (a later row of the same pair wins)."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["condition"], {})[r["seed"]] = r
    return by


def _seconds_per_step(runs: Mapping[int, dict[str, Any]]) -> float:
    return mean_interval([r["history"][-1]["train_seconds"] / r["steps"] for r in runs.values()]).mean


def summarise(conditions: Mapping[str, Condition], rows: Sequence[dict[str, Any]], out: Path) -> str:
    """summary.md: one line per condition, intervals over seeds, differences to its references paired by seed."""
    by = by_condition(rows)
    test = {n: {s: r["history"][-1]["test_acc"] for s, r in runs.items()} for n, runs in by.items()}
    lines = ["| condition | question | seeds | steps | ms / step | test % (last epoch) | best val % (judged) | "
             "val % with running BN (last) | RMS s/t per unit (last) | test difference, paired by seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def running_bn(runs: Mapping[int, dict[str, Any]]) -> str:  # only a swapping student has it
        values = [r["history"][-1].get("val_acc_running_bn") for r in runs.values()]
        return mean_interval(values).format(digits=1) if None not in values else "-"

    for name in [n for n in conditions if n in by]:
        runs = by[name]
        first = next(iter(runs.values()))
        ratios = [k for k in first["history"][-1] if k.startswith("rms_ratio_u")]
        rms = " / ".join(f"{mean_interval([r['history'][-1][k] for r in runs.values()]).mean:.2f}" for k in ratios)
        diffs = [f"- {ref}: {paired_difference(test[name], test[ref]).format(signed=True, digits=2)}"
                 for ref in conditions[name].references if ref in test]
        lines.append(
            f"| {name} | {conditions[name].question} | {','.join(map(str, sorted(runs)))} | {first['steps']} | "
            f"{1000 * _seconds_per_step(runs):.1f} | {mean_interval(test[name].values()).format(digits=2)} | "
            f"{mean_interval([r['best_val_acc'] for r in runs.values()]).format(digits=2)} | "
            f"{running_bn(runs)} | {rms or '-'} | {'<br>'.join(diffs)} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "summary.md", text)
    return text


def plot_curves(conditions: Mapping[str, Condition], rows: Sequence[dict[str, Any]], out: Path,
                seed: int | None = None) -> Path:
    """curves.png: per condition at one seed (the smallest present), the pure student's validation accuracy
    (recomputed and running BatchNorm statistics), the hybrid's training accuracy, and p(t) on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = min(r["seed"] for r in rows) if seed is None else seed
    runs = {r["condition"]: r for r in rows if r["seed"] == seed}
    names = [n for n in conditions if n in runs]
    cols = 4
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        h = runs[name]["history"]
        scored = [m for m in h if "val_acc" in m]
        ax.plot([m["epoch"] for m in scored], [m["val_acc"] for m in scored], "o-", ms=3,
                label="pure student, val (recomputed BN)")
        if all("val_acc_running_bn" in m for m in scored):
            ax.plot([m["epoch"] for m in scored], [m["val_acc_running_bn"] for m in scored], "o-", ms=3, alpha=0.7,
                    label="pure student, val (running BN)")
        ax.plot([m["epoch"] for m in h], [m["train_acc"] for m in h], alpha=0.7, label="training batches (hybrid)")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 100)
        twin = ax.twinx()
        twin.plot([m["epoch"] for m in h], [m["swap_prob"] for m in h], color="k", ls=":", label="p(t)")
        twin.set_ylim(0, 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.supxlabel(f"epoch (seed {seed})")
    fig.supylabel("accuracy %")
    fig.tight_layout()
    path = out / "curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def plot_summary(conditions: Mapping[str, Condition], rows: Sequence[dict[str, Any]], out: Path,
                 references: Sequence[str] = ("ce", "kd")) -> Path:
    """summary.png: per condition, the last-epoch test accuracy as a mean with its 95 % interval over seeds and
    each seed as a dot, with the means of ``references`` as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {n: [r["history"][-1]["test_acc"] for r in runs.values()] for n, runs in by_condition(rows).items()}
    names = [n for n in conditions if n in by]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(names) + 1.6))
    for y, name in enumerate(names):
        interval = mean_interval(by[name])
        swaps = "method.name" in conditions[name].overrides and conditions[name].overrides["method.name"] in (
            "iakd", "iakd+kd")
        ax.errorbar(interval.mean, y, xerr=interval.half_width if len(by[name]) > 1 else None, fmt="o",
                    color="C0" if swaps else "C1", capsize=3)
        ax.plot(by[name], [y] * len(by[name]), "k.", alpha=0.35)
    for ref, style in zip(references, (":", "--", "-.")):
        if ref in by:
            ax.axvline(mean_interval(by[ref]).mean, color="gray", ls=style, lw=1, label=f"{ref} mean")
    ax.set_yticks(range(len(names)), [f"{n} (n={len(by[n])})" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy % (last epoch): mean, 95 % interval over seeds, each seed")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "summary.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
