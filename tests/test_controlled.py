"""The controlled-run runner behind analysis/diagnosis.py and analysis/levers.py: every condition of both scripts
builds a valid run on its base run, and the summary pairs each condition with its references by seed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from iakd.analysis.controlled import Condition, run_config, summarise
from iakd.config import from_dict, read_yaml

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "analysis" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script, config", [("levers", "digits.yaml"), ("levers", "fashion_mnist.yaml"),
                                            ("diagnosis", "digits.yaml")])
def test_every_condition_builds_a_valid_run_that_differs_from_its_base_only_where_it_says(script, config):
    conditions = _script(script).CONDITIONS
    base = read_yaml(ROOT / "tune" / "configs" / config)["run"]
    for name, condition in conditions.items():
        assert all(ref in conditions for ref in condition.references), name
        cfg = from_dict(run_config(condition, 7, "teacher.pth", base))
        assert cfg.seed == 7 and cfg.teacher.checkpoint == "teacher.pth" and cfg.device == "cpu"
        if "method.name" in condition.overrides:
            assert cfg.method.name == condition.overrides["method.name"], name
    levers = _script("levers").CONDITIONS if script == "levers" else None
    if levers:  # the KD-loss auxiliary path is KD's own loss (0.1 CE + 0.9 KD) plus the hybrid term
        cfg = from_dict(run_config(levers["iakd+kd/aux0.5"], 1, "t.pth", base))
        assert (cfg.method.ce_weight, cfg.method.kd_weight, cfg.method.hybrid_weight) == (0.1, None, 0.5)
    short = _script("diagnosis").CONDITIONS["iakd-short"]
    assert from_dict(run_config(short, 0, "t.pth", base)).optim.epochs == base["optim"]["epochs"] // 5


def test_the_summary_pairs_each_condition_with_its_references_by_seed(tmp_path):
    conditions = {"kd": Condition("baseline", {}), "x": Condition("a lever", {}, ("kd",))}

    def row(name, seed, test):
        return {"condition": name, "seed": seed, "status": "finished", "best_val_acc": test, "steps": 100,
                "history": [{"epoch": 1, "test_acc": test, "train_seconds": 2.0, "train_acc": 0.0, "swap_prob": 0.0}]}

    rows = [row("kd", 1, 90.0), row("kd", 2, 92.0), row("x", 1, 91.0), row("x", 2, 94.0)]
    text = summarise(conditions, rows, tmp_path)
    # differences 1 and 2: mean 1.5, sd 0.7071, t_{0.975,1} = 12.706: half-width 6.35
    assert "| x | a lever | 1,2 | 100 | 20.0 | 92.50 ± 19.06 |" in text
    assert "- kd: +1.50 ± 6.35" in text
    assert (tmp_path / "summary.md").read_text() == text
