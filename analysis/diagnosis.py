"""Controlled runs behind docs/iakd-diagnosis.md: each hypothesis for why IAKD did not teach, tested on several
seeds with everything else fixed (same teacher file, data, student initialisation and data order per seed).

    python analysis/diagnosis.py --out analysis_out/diagnosis               # every condition, seeds 0 1 2
    python analysis/diagnosis.py --only ce kd --seeds 0 1 2 3 4             # some conditions, more seeds

Runs go through ``iakd.engine.train`` (``iakd.analysis.controlled``, the runner that ``analysis/levers.py`` uses
too) in worker processes (one thread each) and are appended to ``<out>/runs.jsonl`` as they finish, so an
interrupted call continues where it stopped. ``summary.md`` holds,
per condition, the last-epoch test accuracy (mean +- 95 % interval over seeds), the best validation accuracy
over the judged epochs, the pure student's last validation accuracy with its running BatchNorm statistics, the
units' student/teacher RMS ratios, and the test difference to CE and to KD paired by seed; ``summary.png`` draws
those test accuracies with their intervals, and ``curves.png``, for seed 0, the pure student's validation accuracy
(recomputed and running statistics), the hybrid's training accuracy and p(t).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from iakd.analysis.controlled import Condition, plot_curves, plot_summary, run, summarise
from iakd.config import read_yaml
from iakd.search.experiment import DEFAULT_CONFIG

# The setting under test: the embedded default's run (tune/configs/digits.yaml), IAKD's default schedule.
BASE_CONFIG = DEFAULT_CONFIG
IAKD = {"method.name": "iakd", "schedule": {"family": "linear", "p0": 0.5, "t_end": 0.8}}
BASELINES = ("ce", "kd")


def _fifth(base: dict[str, Any]) -> dict[str, Any]:
    return {"optim.epochs": max(1, base["optim"]["epochs"] // 5)}


# name -> the hypothesis it tests and its overrides of the base run
CONDITIONS: dict[str, Condition] = {
    "ce": Condition("baseline", {"method.name": "ce"}),
    "kd": Condition("baseline", {"method.name": "kd"}, ("ce",)),
    "iakd": Condition("reference: frozen teacher BN, student BN recomputed", {**IAKD, "method.teacher_bn": "frozen"},
                      BASELINES),
    "iakd-batch-bn": Condition("teacher BN mode", {**IAKD, "method.teacher_bn": "batch"}, BASELINES),
    # the same training as iakd-batch-bn, evaluated with the running statistics gathered inside hybrids
    "iakd-batch-bn-running-bn": Condition("student BN statistics", {**IAKD, "method.teacher_bn": "batch",
                                                                    "evaluation.student_bn": "running"}, BASELINES),
    "iakd-short": Condition("step budget (a fifth of the steps)", IAKD, BASELINES, derived=_fifth),
    "iakd-batch-bn-short": Condition("step budget, batch-BN teacher", {**IAKD, "method.teacher_bn": "batch"},
                                     BASELINES, derived=_fifth),
    "iakd-batch-bn-lr0.01": Condition("learning rate inside the hybrid", {**IAKD, "method.teacher_bn": "batch",
                                                                          "optim.lr": 0.01}, BASELINES),
    "iakd-batch-bn-p0.2": Condition("swap probability", {**IAKD, "method.teacher_bn": "batch",
                                                         "schedule": {"family": "linear", "p0": 0.2, "t_end": 0.8}},
                                    BASELINES),
    "iakd+kd-batch-bn": Condition("IAKD plus the KD term (0.9) on the hybrid's logits",
                                  {**IAKD, "method.name": "iakd+kd", "method.teacher_bn": "batch"}, BASELINES),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="analysis_out/diagnosis")
    parser.add_argument("--only", nargs="*", choices=list(CONDITIONS), help="conditions (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--teacher", help="teacher file (default: the base config's, trained and cached if missing)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    base = read_yaml(BASE_CONFIG)["run"]
    rows = run(CONDITIONS, args.only or list(CONDITIONS), args.seeds, base, out, args.workers, args.teacher)
    print(summarise(CONDITIONS, rows, out))
    print(f"plots: {plot_curves(CONDITIONS, rows, out, seed=0)}, {plot_summary(CONDITIONS, rows, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
