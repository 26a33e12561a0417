"""The command lines in analysis/: thin scripts over the package, whose defaults are the search's own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from iakd.analysis.export import search_defaults
from iakd.search.experiment import DEFAULT_CONFIG, load_experiment

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
SCRIPTS = sorted(ANALYSIS.glob("*.py"))


def test_the_analysis_defaults_are_the_experiment_the_search_runs_without_a_config():
    experiment = load_experiment(DEFAULT_CONFIG).config
    assert search_defaults() == (experiment.tracking_uri, experiment.experiment)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_an_analysis_script_imports_the_package_never_a_sibling_script_nor_edits_sys_path(script):
    tree = ast.parse(script.read_text(), filename=str(script))
    siblings = {p.stem for p in SCRIPTS}
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert not imported & siblings, f"{script.name} imports a sibling script"
    assert "sys.path" not in {ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


@pytest.mark.parametrize("script, interrupted, line", [
    ("ablations.py", "analyse", "interrupted: the report was not finished; run the same command again to make it"),
    ("export.py", "load_sweep", "interrupted: the tables were not finished; run the same command again to make them"),
])
def test_ctrl_c_in_an_analysis_command_is_one_line_and_exit_130(script, interrupted, line, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"analysis_{script[:-3]}", ANALYSIS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, interrupted, ctrl_c)
    assert module.main(["--experiment", "x"]) == 130
    assert capsys.readouterr().err == line + "\n"
