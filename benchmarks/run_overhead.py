"""Where a run's wall time goes: training, evaluation, checkpointing and logging, per epoch, side by side.

Each run is the run of a shipped experiment (its ``run`` section: the digits default, or Fashion-MNIST) trained
by ``iakd.engine.train`` in this process and logged the way a search trial logs it (``iakd.search.trainable``'s
``EpochLog`` into an MLflow run of a temporary SQLite store: the run made with its params and config, its epochs,
its artifacts, closed), timed by wrapping the engine's pieces:

- train: the epochs' steps (``train_seconds``, what the run reports as its training time);
- evaluate: the pure student's evaluation (BatchNorm recompute, validation, test, the hybrid's probes);
- checkpoint: ``checkpoint.pt`` and ``metrics.json``;
- logging: the MLflow calls (the run, its epochs, its artifacts);
- setup: the rest (data, teacher, student, optimizer).

Two cadences of one run config, one after the other in this process: ``every epoch`` (evaluated, checkpointed and
written to MLflow after every epoch: what every run did before ``evaluation.every``) and ``as shipped`` (the
config's ``evaluation.every`` and ``checkpoint_every``; MLflow written when an epoch is evaluated or
checkpointed). Both train the same weights (evaluating changes none), so the final test accuracies printed must
agree. Tune's own cost per report is ``tune_overhead.py``'s (a trial reports only evaluated or checkpointed
epochs).

    python benchmarks/run_overhead.py [--experiment tune/configs/digits.yaml] [--methods ce,kd,iakd+kd]
        [--epochs N] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from iakd import engine, judging, teacher_cache, tracking
from iakd.config import TrainConfig, from_dict, to_dict
from iakd.search.experiment import load_experiment
from iakd.search.trainable import EpochLog

PARTS = ("train", "evaluate", "checkpoint", "logging", "setup")


@contextlib.contextmanager
def _timed(spent: dict[str, float]):
    """Wrap the engine's pieces so that their wall time adds up in ``spent`` (undone on exit)."""
    patches = [(engine._Run, "train_epoch", "train"), (engine, "evaluate_student", "evaluate"),
               (engine._Run, "save", "checkpoint"), (engine, "write_text_atomic", "checkpoint")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]

    def timer(function, part):
        @functools.wraps(function)
        def wrapped(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started
        return wrapped

    for (owner, name, function), (_, _, part) in zip(originals, patches):
        setattr(owner, name, timer(function, part))
    try:
        yield
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def run_once(cfg: TrainConfig, uri: str, *, flush_every_epoch: bool) -> dict[str, Any]:
    """One run as a trial runs it, timed by part; its figures and the seconds of each part."""
    spent: dict[str, float] = collections.defaultdict(float)
    started = time.perf_counter()

    def logging(step):
        t = time.perf_counter()
        step()
        spent["logging"] += time.perf_counter() - t

    run: list[tracking.TrialRun] = []
    logging(lambda: run.append(tracking.TrialRun(uri, "overhead", parent_run_id=None, run_name=cfg.method.name,
                                                 params=to_dict(cfg))))
    logging(lambda: run[0].log_dict(to_dict(cfg), "config.yaml"))
    epochs = EpochLog(run[0])

    def callback(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        epochs.record(metrics)
        if flush_every_epoch or judging.evaluated(metrics) or checkpoint is not None:
            logging(epochs.flush)

    with _timed(spent):
        result = engine.train(cfg, [callback], log=lambda line: None)
    logging(epochs.flush)
    logging(lambda: run[0].log_artifact(Path(cfg.out_dir) / "student.pt"))
    logging(lambda: run[0].finish())
    wall = time.perf_counter() - started
    spent["setup"] = wall - sum(spent[p] for p in PARTS if p != "setup")
    return {"wall": wall, "train_seconds": result["history"][-1]["train_seconds"], "epochs": result["epochs"],
            "test": result["last_test_acc"], "spent": dict(spent)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="tune/configs/digits.yaml", help="an experiment config; its run")
    parser.add_argument("--methods", default="ce,kd,iakd+kd")
    parser.add_argument("--epochs", type=int, default=None, help="fewer epochs than the config's (both cadences)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's: resources.cpu)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = to_dict(load_experiment(args.experiment).base)
    with tempfile.TemporaryDirectory(prefix="iakd-overhead-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        base.update(device=args.device, out_dir=f"{tmp}/run")
        base["teacher"]["cache_dir"] = str(Path(base["teacher"]["cache_dir"]).resolve())
        if args.epochs:
            base["optim"]["epochs"] = args.epochs
        teacher_cache.prepare_teacher(from_dict(base), log=print)  # outside the timings, as a search does it once
        shipped = (base["evaluation"]["every"], base["checkpoint_every"])
        print(f"{args.experiment}: {base['teacher']['arch']} -> {base['student']['arch']} on {base['data']['name']}"
              f", {base['optim']['epochs']} epochs; shipped cadence: evaluation.every={shipped[0]}, "
              f"checkpoint_every={shipped[1]}; {args.threads} thread(s), {args.device}")
        print(f"{'method':<9} {'cadence':<12} {'wall s':>7} {'train s':>8} {'wall/train':>10}   ms per epoch: "
              + "  ".join(f"{p:>10}" for p in PARTS) + "   last test %")
        for method in args.methods.split(","):
            for label, every, checkpoint_every, flush in (("every epoch", 1, 1, True),
                                                          ("as shipped", *shipped, False)):
                values = {**base, "method": {**base["method"], "name": method, "kd_weight": None},
                          "evaluation": {**base["evaluation"], "every": every}, "checkpoint_every": checkpoint_every}
                r = run_once(from_dict(values), uri, flush_every_epoch=flush)
                per_epoch = "  ".join(f"{1000 * r['spent'].get(p, 0.0) / r['epochs']:>10.1f}" for p in PARTS)
                print(f"{method:<9} {label:<12} {r['wall']:>7.1f} {r['train_seconds']:>8.1f} "
                      f"{r['wall'] / r['train_seconds']:>10.2f}   {'':>13}{per_epoch}   {r['test']:.2f}", flush=True)


if __name__ == "__main__":
    main()
