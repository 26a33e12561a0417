"""Controlled runs behind docs/iakd-diagnosis.md: each hypothesis for why IAKD did not teach, tested on several
seeds with everything else fixed (same teacher file, data, student initialisation and data order per seed).

    python analysis/diagnosis.py --out analysis_out/diagnosis               # every condition, seeds 0 1 2
    python analysis/diagnosis.py --only ce kd --seeds 0 1 2 3 4             # some conditions, more seeds

Runs go through ``iakd.engine.train`` in worker processes (one thread each) and are appended to
``<out>/runs.jsonl`` as they finish, so an interrupted call continues where it stopped. ``summary.md`` holds,
per condition, the last-epoch test accuracy (mean +- 95 % interval over seeds), the best validation accuracy
over the judged epochs, the pure student's last validation accuracy with its running BatchNorm statistics, the
units' student/teacher RMS ratios, and the test difference to CE and to KD paired by seed; ``summary.png`` draws
those test accuracies with their intervals, and ``curves.png``, for seed 0, the pure student's validation accuracy
(recomputed and running statistics), the hybrid's training accuracy and p(t).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import math
import multiprocessing
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iakd.analysis.stats import mean_interval, paired_difference  # noqa: E402
from iakd.config import apply_overrides, from_dict, read_yaml  # noqa: E402

# The setting under test: the embedded default's run (tune/configs/digits.yaml), IAKD's default schedule.
BASE_CONFIG = ROOT / "tune" / "configs" / "digits.yaml"
IAKD = {"method.name": "iakd", "schedule": {"family": "linear", "p0": 0.5, "t_end": 0.8}}

# name -> (hypothesis it tests, overrides of the base run)
CONDITIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "ce": ("baseline", {"method.name": "ce"}),
    "kd": ("baseline", {"method.name": "kd"}),
    "iakd": ("reference: frozen teacher BN, student BN recomputed", {**IAKD, "method.teacher_bn": "frozen"}),
    "iakd-batch-bn": ("teacher BN mode", {**IAKD, "method.teacher_bn": "batch"}),
    # the same training as iakd-batch-bn, evaluated with the running statistics gathered inside hybrids
    "iakd-batch-bn-running-bn": ("student BN statistics", {**IAKD, "method.teacher_bn": "batch",
                                                           "evaluation.student_bn": "running"}),
    "iakd-short": ("step budget (a fifth of the steps)", {**IAKD, "optim.epochs": "/5"}),
    "iakd-batch-bn-short": ("step budget, batch-BN teacher", {**IAKD, "method.teacher_bn": "batch",
                                                               "optim.epochs": "/5"}),
    "iakd-batch-bn-lr0.01": ("learning rate inside the hybrid", {**IAKD, "method.teacher_bn": "batch",
                                                                 "optim.lr": 0.01}),
    "iakd-batch-bn-p0.2": ("swap probability", {**IAKD, "method.teacher_bn": "batch",
                                                "schedule": {"family": "linear", "p0": 0.2, "t_end": 0.8}}),
    "iakd+kd-batch-bn": ("IAKD plus the KD term (0.9) on the hybrid's logits", {**IAKD, "method.name": "iakd+kd",
                                                                               "method.teacher_bn": "batch"}),
}


def run_config(name: str, seed: int, teacher: str, base: dict[str, Any]) -> dict[str, Any]:
    """The run config (as plain data) of one condition at one seed: the base run with the condition's overrides."""
    overrides = dict(CONDITIONS[name][1])
    if overrides.get("optim.epochs") == "/5":
        overrides["optim.epochs"] = max(1, base["optim"]["epochs"] // 5)
    values = apply_overrides(base, {**overrides, "seed": seed, "device": "cpu", "checkpoint_every": 10_000,
                                    "teacher.checkpoint": teacher})
    from_dict(values)  # a bad condition fails here, before any worker starts
    return values


def _train(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    import torch

    from iakd.config import from_dict
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


def run(names: list[str], seeds: list[int], out: Path, workers: int, teacher: str | None) -> list[dict[str, Any]]:
    """Train every (condition, seed) not yet in ``out/runs.jsonl``; return every row there."""
    from iakd.engine import prepare_teacher

    out.mkdir(parents=True, exist_ok=True)
    base = read_yaml(BASE_CONFIG)["run"]
    if teacher is None:
        teacher = str(prepare_teacher(from_dict(apply_overrides(base, {"device": "cpu"}))))
    path = out / "runs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    done = {(r["condition"], r["seed"]) for r in rows}
    jobs = [(n, s, run_config(n, s, teacher, base)) for n in names for s in seeds if (n, s) not in done]
    print(f"{len(jobs)} runs to train ({len(done)} already in {path}), teacher {teacher}")
    with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(_train, jobs):
            rows.append(row)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            last = row["history"][-1]
            print(f"  {row['condition']:<24} seed {row['seed']}: test {last['test_acc']:.1f}%  "
                  f"({row['status']})", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]], out: Path) -> str:
    """summary.md: one line per condition, intervals over seeds, differences to CE and KD paired by seed."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["condition"], {})[r["seed"]] = r
    last = {n: {s: r["history"][-1]["test_acc"] for s, r in runs.items()} for n, runs in by.items()}
    lines = ["| condition | hypothesis | seeds | steps | test % (last epoch) | best val % (judged) | "
             "val % with running BN (last) | RMS s/t per unit (last) | test - CE | test - KD |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def running_bn(runs: dict) -> str:  # only a swapping student is evaluated with its running statistics too
        values = [r["history"][-1].get("val_acc_running_bn") for r in runs.values()]
        return mean_interval(values).format(digits=1) if None not in values else "-"

    for name in [n for n in CONDITIONS if n in by]:
        runs = by[name]
        first = next(iter(runs.values()))
        h0 = first["history"]
        ratios = [k for k in h0[-1] if k.startswith("rms_ratio_u")]
        rms = " / ".join(f"{mean_interval([r['history'][-1][k] for r in runs.values()]).mean:.2f}" for k in ratios)
        diff = {b: paired_difference(last[name], last[b]).format(signed=True, digits=1)
                if b in last and name != b else "" for b in ("ce", "kd")}
        lines.append(
            f"| {name} | {CONDITIONS[name][0]} | {','.join(map(str, sorted(runs)))} | {first['steps']} | "
            f"{mean_interval(last[name].values()).format(digits=1)} | "
            f"{mean_interval([r['best_val_acc'] for r in runs.values()]).format(digits=1)} | "
            f"{running_bn(runs)} | "
            f"{rms or '-'} | {diff['ce']} | {diff['kd']} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def plot(rows: list[dict[str, Any]], out: Path, seed: int = 0) -> Path:
    """curves.png: per condition at one seed, the pure student's val accuracy (recomputed and running BN),
    the hybrid's training accuracy, and p(t) on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {r["condition"]: r for r in rows if r["seed"] == seed}
    names = [n for n in CONDITIONS if n in runs]
    cols = 4
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(4 * cols, 3 * ((len(names) + 3) // 4)),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        h = runs[name]["history"]
        epochs = [m["epoch"] for m in h]
        ax.plot(epochs, [m["val_acc"] for m in h], label="pure student, val (recomputed BN)")
        if all("val_acc_running_bn" in m for m in h):
            ax.plot(epochs, [m["val_acc_running_bn"] for m in h], label="pure student, val (running BN)", alpha=0.7)
        ax.plot(epochs, [m["train_acc"] for m in h], label="hybrid (train batches)", alpha=0.7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 100)
        twin = ax.twinx()
        twin.plot(epochs, [m["swap_prob"] for m in h], color="k", ls=":", label="p(t)")
        twin.set_ylim(0, 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("epoch")
    fig.supylabel("accuracy %")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_summary(rows: list[dict[str, Any]], out: Path) -> Path:
    """summary.png: per condition, last-epoch test accuracy as mean with its 95 % interval over seeds, each seed
    as a dot, with the CE and KD means as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["condition"], []).append(r["history"][-1]["test_acc"])
    names = [n for n in CONDITIONS if n in by]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    for y, name in enumerate(names):
        interval = mean_interval(by[name])
        ax.errorbar(interval.mean, y, xerr=interval.half_width if len(by[name]) > 1 else None, fmt="o",
                    color="C0" if name.startswith("iakd") else "C1", capsize=3)
        ax.plot(by[name], [y] * len(by[name]), "k.", alpha=0.35)
    for ref, style in (("ce", ":"), ("kd", "--")):
        if ref in by:
            ax.axvline(mean_interval(by[ref]).mean, color="gray", ls=style, lw=1, label=f"{ref} mean")
    ax.set_yticks(range(len(names)), [f"{n} (n={len(by[n])})" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy % (last epoch): mean, 95 % interval over seeds, each seed")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="analysis_out/diagnosis")
    parser.add_argument("--only", nargs="*", choices=list(CONDITIONS), help="conditions (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--teacher", help="teacher file (default: the base config's, trained and cached if missing)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = run(args.only or list(CONDITIONS), args.seeds, out, args.workers, args.teacher)
    print(summarise(rows, out))
    print(f"plots: {plot(rows, out)}, {plot_summary(rows, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
