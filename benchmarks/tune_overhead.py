"""Ray Tune's overhead on one short run: ``iakd.engine.train`` called directly against the same run as a one-trial
Ray Tune experiment (a function trainable that calls ``iakd.engine.train`` and reports every epoch's metrics).

The run is method ``ce`` on digits (no teacher to train, nothing to download), sized to take about a minute on a
2-core CPU (``--quick``: about 15 s). The order is direct, Tune, direct (or more rounds with ``--repeats``), so that
a drift in machine load hits both; the ratio is the Tune wall time over the mean direct wall time. Tune's wall
time is ``Tuner.fit()`` (trial start-up, the run, reporting, result logging); ``ray.init`` once per process is
printed separately, as is the total with it. Both run with the same number of torch threads.

    python benchmarks/tune_overhead.py [--quick] [--device auto|cpu|cuda] [--epochs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from iakd.config import load_config
from iakd.devices import resolve_device
from iakd.engine import train


def _epochs(args: argparse.Namespace) -> int:
    return args.epochs or (5 if args.quick else 12)


def _overrides(args: argparse.Namespace, out_dir: Path) -> list[str]:
    size, student = (16, "resnet8") if args.quick else (32, "resnet14")
    return ["data.name=digits", f"data.image_size={size}", f"student.arch={student}", "method.name=ce",
            f"optim.epochs={_epochs(args)}", f"device={args.device}", f"out_dir={out_dir}"]


def trainable(config: dict) -> None:
    """The Tune side: the same ``train`` call, each epoch's metrics reported to Tune."""
    from ray.tune import report

    started = time.time()  # wall clock, comparable with the driver's: where Tune's time goes
    torch.set_num_threads(config["threads"])
    cfg = load_config(None, config["overrides"])

    def callback(metrics, checkpoint) -> None:
        report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                "trial_started_at": started, "reported_at": time.time()})

    result = train(cfg, [callback], log=lambda line: None)
    if result["status"] != "finished":
        raise RuntimeError(result["message"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the run (default 12, quick 5)")
    parser.add_argument("--repeats", type=int, default=1, help="Tune runs; direct runs are one more")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = resolve_device(args.device)

    tmp = Path(tempfile.mkdtemp(prefix="iakd-tune-"))
    os.environ["RAY_TMPDIR"] = str(tmp / "ray")  # Ray's sockets and logs stay out of /tmp/ray and go with tmp
    # Ray's workers inherit the environment but not the working directory: make a PYTHONPATH=. absolute.
    paths = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    (tmp / "ray").mkdir()
    import ray
    from ray.tune import RunConfig, TuneConfig, Tuner, with_resources

    print(f"# tune_overhead: torch {torch.__version__}, ray {ray.__version__}, device {device}, {threads} torch "
          f"threads, {' '.join(_overrides(args, tmp)[:-2])}")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, num_gpus=1 if device.type == "cuda" else 0, include_dashboard=False,
             log_to_driver=False)
    ray_init = time.perf_counter() - started
    resources = {"cpu": 2, "gpu": 1 if device.type == "cuda" else 0}

    direct, tuned, parts = [], [], []
    try:
        for i in range(2 * args.repeats + 1):
            out_dir = tmp / f"run{i}"
            overrides = _overrides(args, out_dir)
            started, started_at = time.perf_counter(), time.time()
            if i % 2 == 0:
                result = train(load_config(None, overrides), log=lambda line: None)
                assert result["status"] == "finished", result["message"]
                direct.append(time.perf_counter() - started)
            else:
                tuner = Tuner(
                    with_resources(trainable, resources),
                    param_space={"overrides": overrides, "threads": threads},
                    tune_config=TuneConfig(num_samples=1),
                    run_config=RunConfig(name=f"overhead{i}", storage_path=str(tmp / "results"), verbose=0),
                )
                results = tuner.fit()
                tuned.append(time.perf_counter() - started)
                ended_at = time.time()
                if results.errors:
                    raise SystemExit(f"the Tune trial failed: {results.errors[0]}")
                last = results[0].metrics
                assert last["epoch"] == _epochs(args)
                parts.append((last["trial_started_at"] - started_at, last["reported_at"] - last["trial_started_at"],
                              ended_at - last["reported_at"]))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    mean_direct, mean_tuned = statistics.fmean(direct), statistics.fmean(tuned)
    print(f"direct iakd.engine.train       {mean_direct:7.1f} s  (runs: {', '.join(f'{s:.1f}' for s in direct)})")
    print(f"one-trial Tuner.fit()          {mean_tuned:7.1f} s  (runs: {', '.join(f'{s:.1f}' for s in tuned)})")
    startup, inside, teardown = (statistics.fmean(p[i] for p in parts) for i in range(3))
    print(f"  of which: trial start-up     {startup:7.1f} s  (Tuner.fit() to the trainable's first line)")
    print(f"  of which: the run in the trial {inside:5.1f} s  (to its last report)")
    print(f"  of which: after the last report {teardown:4.1f} s  (trial and experiment teardown)")
    print(f"ray.init (once per process)    {ray_init:7.1f} s")
    print(f"ratio Tune / direct            {mean_tuned / mean_direct:7.3f}  (target <= 1.10)")
    print(f"ratio (Tune + ray.init) / direct {(mean_tuned + ray_init) / mean_direct:5.3f}")


if __name__ == "__main__":
    main()
