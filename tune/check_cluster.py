"""python tune/check_cluster.py [cluster.yaml]

Checks a Ray cluster launcher file offline, without AWS credentials: Ray's autoscaler schema and defaults
(as `ray up` applies them), then the project's rules (image's Ray version, a head without trial resources,
GPU workers, an MLflow server and its URI for the search, S3 storage, no credentials in the file). Prints one
"ok" line and exits 0 when the file is good; otherwise one line per problem, naming its key, and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iakd.errors import ConfigError
from iakd.search.cluster_check import check_cluster_file, placeholders

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "cluster.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tune/check_cluster.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_FILE), help="cluster file (default: cluster.yaml)")
    args = parser.parse_args(argv)
    try:
        problems = check_cluster_file(args.path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if problems:
        for problem in problems:
            print(f"{args.path}: {problem}", file=sys.stderr)
        return 2
    left = placeholders(args.path)
    note = f"; fill in before `ray up`: {', '.join(left)}" if left else ""
    print(f"ok: {args.path} passes Ray's cluster schema and the project's rules{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
