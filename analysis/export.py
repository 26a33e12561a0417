"""python analysis/export.py [--tracking-uri URI] [--experiment NAME | --parent-run-id ID] [--out DIR]

Reads one sweep of ``tune/search.py`` from MLflow (by experiment name: its newest sweep; or by the sweep's
parent run id) and writes ``runs.parquet`` (one row per trial, baseline and confirmation run) and
``epochs.parquet`` (one row per run and epoch) into DIR (default: analysis_out/<experiment>). A missing
database, experiment or run prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from iakd.analysis.export import default_out_dir, load_sweep, search_defaults, write_tables
from iakd.checkpoint import check_writable_folder
from iakd.errors import ConfigError

DEFAULT_TRACKING_URI, DEFAULT_EXPERIMENT = search_defaults()  # what `python tune/search.py` runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analysis/export.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"default {DEFAULT_TRACKING_URI}")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--experiment", help=f"experiment name (default {DEFAULT_EXPERIMENT})")
    which.add_argument("--parent-run-id", help="the sweep's parent run id (default: the experiment's newest sweep)")
    parser.add_argument("--out", help="output folder (default analysis_out/<experiment>)")
    args = parser.parse_args(argv)
    experiment = args.experiment if args.experiment or args.parent_run_id else DEFAULT_EXPERIMENT
    try:
        if args.out is not None:
            check_writable_folder(args.out, "--out")
        sweep = load_sweep(args.tracking_uri, experiment, args.parent_run_id)
        runs_path, epochs_path = write_tables(sweep, args.out or default_out_dir(sweep.experiment))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, not a traceback
        print("interrupted: the tables were not finished; run the same command again to make them", file=sys.stderr)
        return 130
    print(f"{sweep.runs.num_rows} runs -> {runs_path}")
    print(f"{sweep.epochs.num_rows} epochs -> {epochs_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
