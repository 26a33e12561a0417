"""``python -m iakd.train --config FILE [--out DIR] [--resume] [key=value ...]``: one training run.

Trains a student (or a teacher: method ``ce`` on the teacher's architecture) with a progress line per epoch,
and writes ``checkpoint.pt``, ``student.pt`` (RepDistiller format) and ``metrics.json`` into the output dir.
Bad input prints one line naming the key or file and exits with code 2 before training starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iakd.config import load_config
from iakd.data import check_data_folder
from iakd.engine import train
from iakd.errors import ConfigError

__all__ = ["train", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iakd.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML run config (see configs/ for examples)")
    parser.add_argument("--out", help="output directory (overrides out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. schedule.p0=0.3 optim.epochs=5")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before, between or after the flags
    try:
        overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
        cfg = load_config(args.config, overrides)
        check_data_folder(cfg.data.name, cfg.data.dir, download=cfg.data.download)
        checkpoint = Path(cfg.out_dir) / "checkpoint.pt"
        result = train(cfg, resume_from=checkpoint if args.resume and checkpoint.is_file() else None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{result['status']}: {result['message']}; best val {result['best_val_acc']:.2f}% "
          f"(epoch {result['best_epoch']}), last test {result['last_test_acc']:.2f}%; outputs in {cfg.out_dir}")
    return 0 if result["status"] != "diverged" else 1


if __name__ == "__main__":
    sys.exit(main())
