"""``python -m iakd.train --config FILE [--out DIR] [--resume] [key=value ...]``: one training run.

Trains a student (or a teacher: method ``ce`` on the teacher's architecture) with a progress line per epoch,
and writes ``checkpoint.pt``, ``student.pt`` (RepDistiller format) and ``metrics.json`` into the output dir.
Bad input prints one line naming the key or file and exits with code 2 before training starts. An output dir
that already holds a run is never overwritten silently: ``--resume`` continues it, ``--restart`` starts it over
on purpose. Ctrl-C prints where the last checkpoint is and exits with code 130.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from iakd import outcomes
from iakd.checkpoint import check_writable_folder
from iakd.config import load_config
from iakd.data import check_data_folder
from iakd.engine import train
from iakd.errors import ConfigError, RunError

__all__ = ["train", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iakd.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML run config (see configs/ for examples)")
    parser.add_argument("--out", help="output directory (overrides out_dir)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    how.add_argument("--restart", action="store_true", help="start over in OUT, replacing the run it holds")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. schedule.p0=0.3 optim.epochs=5")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before, between or after the flags
    checkpoint: Path | None = None
    try:
        overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
        cfg = load_config(args.config, overrides)
        check_data_folder(cfg.data.name, cfg.data.dir, download=cfg.data.download)
        check_writable_folder(cfg.out_dir, "--out (out_dir)")
        checkpoint = Path(cfg.out_dir) / "checkpoint.pt"
        if checkpoint.is_file() and not (args.resume or args.restart):
            raise ConfigError(f"--out {cfg.out_dir} already holds a run ({checkpoint}); continue it with --resume, "
                              "or start it over on purpose with --restart (its files are replaced)")
        result = train(cfg, resume_from=checkpoint if args.resume and checkpoint.is_file() else None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # e.g. the teacher it trains first diverged
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # one line, not a traceback: where the run stands and how to continue it
        if checkpoint is not None and checkpoint.is_file():
            again = shlex.join(["python", "-m", "iakd.train", "--config", args.config, "--out", str(checkpoint.parent),
                                "--resume", *args.overrides])
            print(f"interrupted: the last checkpoint is {checkpoint}; continue with: {again}", file=sys.stderr)
        else:
            given = list(argv if argv is not None else sys.argv[1:])
            print("interrupted before the run's first checkpoint (a teacher it was training continues from its last "
                  f"epoch): start it again with: {shlex.join(['python', '-m', 'iakd.train', *given])}",
                  file=sys.stderr)
        return 130
    if result["best_epoch"] is not None:
        best = f"best val {result['best_val_acc']:.2f}% (epoch {result['best_epoch']})"
    elif cfg.data.val_fraction == 0:
        best = "no validation split (data.val_fraction=0), so no best epoch"
    else:
        best = "no epoch evaluated"
    print(f"{result['status']}: {result['message']}; {best}, last test {result['last_test_acc']:.2f}%; outputs in "
          f"{cfg.out_dir}")
    return 0 if result["status"] != outcomes.DIVERGED else 1


if __name__ == "__main__":
    sys.exit(main())
