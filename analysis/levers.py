"""Controlled runs behind docs/iakd-levers.md: each lever of swapping-in against today's IAKD and against KD under
the same student initialisation, on the shipped experiments' run configs, several seeds, paired by seed.

    python analysis/levers.py --dataset digits --seeds 1 2 3 4 5              # the digits default's run
    python analysis/levers.py --dataset fashion_mnist --seeds 1 2 3 --set evaluation.every=30
    python analysis/levers.py --dataset digits --only kd iakd+kd/aux0.5       # some conditions

The base run is the ``run:`` section of ``tune/configs/<dataset>.yaml`` (today's IAKD: Bernoulli swaps, linear
p0 = 0.5 -> 0 at t_end = 0.8, teacher BN on batch statistics, no KD term); ``--set key=value`` changes it for
every condition alike. Runs go through ``iakd.engine.train`` (iakd.analysis.controlled) into
``<out>/runs.jsonl`` and continue where an interrupted call stopped; ``summary.md``, ``summary.png`` and
``curves.png`` are written to ``--out`` (default ``analysis_out/levers-<dataset>``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iakd.analysis.controlled import Condition, plot_curves, plot_summary, run, summarise
from iakd.config import apply_overrides, parse_overrides, read_yaml
from iakd.errors import ConfigError
from iakd.search.experiment import EXPERIMENT_CONFIGS

EXPERIMENTS = {name: EXPERIMENT_CONFIGS / f"{name}.yaml" for name in ("digits", "fashion_mnist")}

INIT = {"student.init": "teacher"}  # the stem, the first block of each stage and the classifier (resnet20 -> resnet8)
IAKD = {"method.name": "iakd"}
IAKDKD = {"method.name": "iakd+kd"}
KD_LOSS = {"method.ce_weight": 0.1}  # with kd_weight 0.9 (iakd+kd's default): KD's own loss, 0.1 CE + 0.9 KD
# The configurations the searches chose (README: tune/configs/digits.yaml and fashion_mnist.yaml, 2026-12-04)
CHOICE = {**IAKDKD, "method.mixing": "blend", "method.hybrid_weight": 1.0, "method.kd_on": "hybrid",
          "schedule.family": "step", "schedule.profile": "uniform"}
CHOICES = {
    "digits": {**CHOICE, "method.kd_weight": 0.8024762586578099, "method.teacher_bn": "frozen",
               "schedule.p0": 0.4450973669431999, "schedule.t_end": 0.9479176468048627,
               "schedule.interval": 0.15734131496361858, "schedule.t_start": 0.017759014549471736},
    "fashion_mnist": {**CHOICE, **INIT, "method.kd_weight": 0.6278616413290748, "method.teacher_bn": "batch",
                      "schedule.p0": 0.15773274671390594, "schedule.t_end": 0.6662736374266898,
                      "schedule.interval": 0.10187819047701883, "schedule.t_start": 0.02348512768961042},
}
R14 = {"student.arch": "resnet14"}  # two blocks per stage under resnet20's three: granularities finer than a stage

CONDITIONS: dict[str, Condition] = {
    "ce": Condition("baseline", {"method.name": "ce"}),
    "kd": Condition("baseline", {"method.name": "kd"}, ("ce",)),
    "ce/teacher-init": Condition("baseline, initialised from the teacher", {"method.name": "ce", **INIT}, ("ce",)),
    "kd/teacher-init": Condition("baseline, initialised from the teacher", {"method.name": "kd", **INIT},
                                 ("kd", "ce/teacher-init")),
    "iakd": Condition("today's IAKD (Bernoulli, on the hybrid, no KD term)", IAKD, ("ce", "kd")),
    "iakd/blend": Condition("method.mixing: blend", {**IAKD, "method.mixing": "blend"}, ("iakd", "kd")),
    "iakd/aux0.5": Condition("method.hybrid_weight: 0.5 (CE on the student + 0.5 CE on the hybrid)",
                             {**IAKD, "method.hybrid_weight": 0.5}, ("iakd", "ce", "kd")),
    "iakd/warmup0.2": Condition("schedule.t_start: 0.2", {**IAKD, "schedule.t_start": 0.2}, ("iakd", "kd")),
    "iakd/teacher-init": Condition("student.init: teacher", {**IAKD, **INIT}, ("iakd", "kd/teacher-init")),
    "iakd+kd": Condition("today's IAKD+KD (KD on the hybrid)", IAKDKD, ("iakd", "kd")),
    "iakd+kd/kd-on-student": Condition("method.kd_on: student", {**IAKDKD, "method.kd_on": "student"},
                                       ("iakd+kd", "kd")),
    "iakd+kd/aux0.5": Condition("KD's loss on the student + 0.5 CE on the hybrid",
                                {**IAKDKD, **KD_LOSS, "method.hybrid_weight": 0.5}, ("kd", "iakd+kd")),
    "iakd+kd/aux0.5/blend": Condition("... with blend", {**IAKDKD, **KD_LOSS, "method.hybrid_weight": 0.5,
                                                         "method.mixing": "blend"}, ("kd", "iakd+kd/aux0.5")),
    "iakd+kd/aux0.5/teacher-init": Condition("... initialised from the teacher",
                                             {**IAKDKD, **KD_LOSS, "method.hybrid_weight": 0.5, **INIT},
                                             ("kd/teacher-init", "iakd+kd/aux0.5")),
    # Each search's choice, and the same losses without swapping (p0 = 0: the hybrid is the student throughout,
    # so the run is CE + kd_weight x KD on the student): what the swaps add to it.
    **{f"choice/{name}": Condition(f"the {name} search's choice", over, (ref, f"choice/{name}/no-swap"))
       for name, over, ref in (("digits", CHOICES["digits"], "kd"),
                               ("fashion_mnist", CHOICES["fashion_mnist"], "kd/teacher-init"))},
    **{f"choice/{name}/no-swap": Condition("... without swapping (p0 = 0)", {**over, "schedule.p0": 0.0}, (ref,))
       for name, over, ref in (("digits", CHOICES["digits"], "kd"),
                               ("fashion_mnist", CHOICES["fashion_mnist"], "kd/teacher-init"))},
    "r14/ce": Condition("resnet14 student: baseline", {**R14, "method.name": "ce"}),
    "r14/kd": Condition("resnet14 student: baseline", {**R14, "method.name": "kd"}, ("r14/ce",)),
    "r14/iakd": Condition("resnet14 student: IAKD by stage (3 units)", {**R14, **IAKD}, ("r14/ce", "r14/kd")),
    "r14/iakd/block": Condition("resnet14 student: IAKD by block (6 units)",
                                {**R14, **IAKD, "method.granularity": "block"}, ("r14/iakd", "r14/kd")),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(EXPERIMENTS), default="digits")
    parser.add_argument("--out", help="default: analysis_out/levers-<dataset>")
    parser.add_argument("--only", nargs="*", choices=list(CONDITIONS), help="conditions (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="change the base run for all")
    parser.add_argument("--teacher", help="teacher file (default: the base run's, trained and cached if missing)")
    args = parser.parse_args(argv)
    out = Path(args.out or f"analysis_out/levers-{args.dataset}")
    try:
        base = apply_overrides(read_yaml(EXPERIMENTS[args.dataset])["run"], parse_overrides(args.set))
        rows = run(CONDITIONS, args.only or list(CONDITIONS), args.seeds, base, out, args.workers, args.teacher)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarise(CONDITIONS, rows, out))
    print(f"plots: {plot_summary(CONDITIONS, rows, out)}, {plot_curves(CONDITIONS, rows, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
