"""python analysis/ablations.py [--tracking-uri URI] [--experiment NAME] [--parent-run-id ID] [--out DIR] [--no-log]

Analyses one sweep of ``tune/search.py``: writes runs.parquet, epochs.parquet, the ablation plots and
report.md into DIR (default: analysis_out/<experiment>) and logs that folder to the sweep's parent run in
MLflow under analysis/ (unless --no-log). The sweep is the experiment's newest, or the given parent run. A
missing database, experiment or run, or a sweep without a finished run, prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from iakd.analysis.export import search_defaults
from iakd.analysis.report import ARTIFACT_PATH, analyse
from iakd.checkpoint import check_writable_folder
from iakd.errors import ConfigError

DEFAULT_TRACKING_URI, DEFAULT_EXPERIMENT = search_defaults()  # what `python tune/search.py` runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analysis/ablations.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"default {DEFAULT_TRACKING_URI}")
    parser.add_argument("--experiment", help=f"experiment name (default {DEFAULT_EXPERIMENT} without --parent-run-id)")
    parser.add_argument("--parent-run-id", help="the sweep's parent run id (default: the experiment's newest sweep)")
    parser.add_argument("--out", help="output folder (default analysis_out/<experiment>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the folder to the parent run")
    args = parser.parse_args(argv)
    experiment = args.experiment if args.experiment or args.parent_run_id else DEFAULT_EXPERIMENT
    try:
        if args.out is not None:
            check_writable_folder(args.out, "--out")
        report = analyse(args.tracking_uri, experiment, args.parent_run_id, args.out, log_to_mlflow=not args.no_log)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, not a traceback
        print("interrupted: the report was not finished; run the same command again to make it", file=sys.stderr)
        return 130
    print(f"report: {report}")
    if not args.no_log:
        print(f"logged to the sweep's parent run under {ARTIFACT_PATH}/ (browse: mlflow ui --backend-store-uri "
              f"{shlex.quote(args.tracking_uri)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
