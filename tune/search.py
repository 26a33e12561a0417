"""python tune/search.py [--config FILE] [--num-samples N] [--epochs E] [--experiment NAME] [--tracking-uri URI]
[--storage-path DIR_OR_URI] [--address ADDR] [--resume] [key=value ...]

Runs an IAKD search on Ray Tune (Optuna TPE + ASHA) with every trial logged to MLflow. With no arguments:
the digits experiment (tune/configs/digits.yaml) on a local Ray. Overrides are dotted keys of the experiment
config, e.g. num_samples=4 run.optim.epochs=3 run.teacher.arch=resnet20. Bad input exits with code 2 and one
line naming the key, before Ray starts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from iakd.errors import ConfigError, RunError
from iakd.search.cluster_check import OPTUNA_STORAGE_VAR, STORAGE_PATH_VAR, TRACKING_URI_VAR
from iakd.search.experiment import DEFAULT_CONFIG, load_experiment
from iakd.search.runner import run_search
from iakd.search.summary import format_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tune/search.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML (default: digits)")
    parser.add_argument("--num-samples", type=int, help="number of searched trials")
    parser.add_argument("--epochs", type=int, help="epochs per trial (run.optim.epochs)")
    parser.add_argument("--experiment", help="experiment name (MLflow experiment and Tune folder)")
    # On a cluster started from cluster.yaml the head node defines both variables (see README).
    parser.add_argument("--tracking-uri", default=os.environ.get(TRACKING_URI_VAR),
                        help=f"MLflow tracking URI (default: ${TRACKING_URI_VAR}, else the config's)")
    parser.add_argument("--storage-path", default=os.environ.get(STORAGE_PATH_VAR),
                        help="Tune storage: a local folder, NFS path or s3:// / gs:// URI "
                             f"(default: ${STORAGE_PATH_VAR}, else the config's)")
    parser.add_argument("--optuna-storage", default=os.environ.get(OPTUNA_STORAGE_VAR),
                        help=f"RDB URL of the Optuna study (default: ${OPTUNA_STORAGE_VAR}, else the config's "
                             "optuna_storage, else optuna.db beside a sqlite mlflow.db)")
    parser.add_argument("--address", help="Ray cluster address; 'auto' joins a running cluster")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted experiment (Tuner.restore)")
    parser.add_argument("--no-analysis", action="store_true",
                        help="skip the report (tables, plots, report.md) at the end; python analysis/ablations.py "
                             "makes it later")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before, between or after the flags
    flags = {"num_samples": args.num_samples, "run.optim.epochs": args.epochs, "experiment": args.experiment,
             "tracking_uri": args.tracking_uri, "storage_path": args.storage_path,
             "optuna_storage": args.optuna_storage}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    # Trials checkpoint every epoch (exact resume), and a digits epoch takes seconds, so Tune snapshots its
    # state often; its warning about that only advises checkpointing less. Keep the console for the table.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The driver downloads a few small files from MLflow (the resumed sweep's config): no progress bars for them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # SIGTERM (a scheduler, systemd, docker stop) stops the sweep as Ctrl-C does: Tune stops its trials
    # gracefully on SIGINT, and outside a Tune stage it is a KeyboardInterrupt that closes the parent run.
    terminated: list[int] = []

    def stop(signum: int, frame: object) -> None:
        terminated.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, stop)
    given = list(argv if argv is not None else sys.argv[1:])
    script = sys.argv[0] if argv is None else "tune/search.py"  # as the user typed it: the command runs from here
    again = shlex.join(["python", script, *given, *([] if args.resume else ["--resume"])])

    def interrupted(what: str) -> int:
        """One line saying what stopped and the command that continues; exit 130 (Ctrl-C) or 143 (SIGTERM)."""
        how = " by SIGTERM" if terminated else ""
        print(f"interrupted{how}{what}: continue with: {again}", file=sys.stderr)
        return 143 if terminated else 130

    try:
        experiment = load_experiment(args.config, overrides)
        summary = run_search(experiment, resume=args.resume, address=args.address, analysis=not args.no_analysis)
    except KeyboardInterrupt:
        return interrupted(" before the sweep ended")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # it ran, and gave nothing: its parent run is FAILED with this line as iakd.error
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_summary(summary))
    if summary.interrupted:
        return interrupted(": the sweep stopped before its stages ended (its parent run is KILLED, no trial counted "
                           "that did not end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
