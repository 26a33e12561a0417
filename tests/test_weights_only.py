"""Files the project reads are data, never code; files it writes are whole or absent.

Every checkpoint and teacher file goes through ``iakd.checkpoint.load_file``, which calls ``torch.load`` with
``weights_only=True``: a pickle that would run code on load (here: create a marker file) is refused with a
ConfigError naming the file, and the marker never appears. The control test shows the same file does create
the marker when loaded without ``weights_only``, so the refusal is what keeps it out.

``save_atomic`` writes to a temporary file beside the target and renames it: a write that fails half-way
leaves the previous file as it was and no temporary file behind.
"""

from __future__ import annotations

import ast
import io
import pathlib
import stat
from pathlib import Path

import pytest
import torch

from iakd import checkpoint
from iakd.checkpoint import CHECKPOINT_FORMAT, load_file, save_atomic
from iakd.config import load_config
from iakd.engine import train
from iakd.errors import ConfigError
from iakd.search import storage
from iakd.teachers import load_teacher

IAKD = Path(__file__).resolve().parents[1] / "iakd"


class _TouchOnLoad:
    """Unpickling this object calls ``Path.touch(marker)``: code run by merely reading the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _malicious(path: Path, marker: Path, shape: dict) -> Path:
    """A torch file shaped like a real one (``shape``'s keys), with the payload in one of its values."""
    torch.save({**shape, "payload": _TouchOnLoad(marker)}, path)
    return path


TEACHER_SHAPE = {"model": {}, "arch": "resnet8", "dataset": "digits", "num_classes": 10, "accuracy": 90.0}
CHECKPOINT_SHAPE = {"format": CHECKPOINT_FORMAT, "epoch": 1, "step": 1, "trainable": {}, "optimizer": {},
                    "lr_scheduler": {}, "rng": {}, "history": [], "config": {}}


def test_the_crafted_file_does_run_code_when_read_without_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "evil.pth", marker, TEACHER_SHAPE)
    torch.load(path, weights_only=False)  # the control: this is what a careless reader would do
    assert marker.exists()


def test_a_teacher_file_that_runs_code_on_load_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "teacher.pth", marker, TEACHER_SHAPE)
    # one whole line that says why, not torch's advice to load it with weights_only=False
    with pytest.raises(ConfigError, match=rf"^teacher checkpoint {path}: refused, it holds objects other than tensors "
                                          r"and plain data \(a pickle that could run code\); files are read with "
                                          r"torch.load\(weights_only=True\)$"):
        load_teacher(path, "resnet8", 10)
    assert not marker.exists()


def test_a_resume_checkpoint_that_runs_code_on_load_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "checkpoint.pt", marker, CHECKPOINT_SHAPE)
    cfg = load_config(overrides=["method.name=ce", "data.image_size=8", "optim.epochs=1", f"out_dir={tmp_path}/run"])
    with pytest.raises(ConfigError, match=rf"checkpoint {path}: refused, it holds objects other than tensors"):
        train(cfg, resume_from=path, log=lambda _: None)
    assert not marker.exists()
    assert not (tmp_path / "run" / "student.pt").exists()  # refused before any training


def test_load_file_refuses_a_pickle_that_runs_code_on_load(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "anything.pt", marker, {})
    with pytest.raises(ConfigError, match=rf"checkpoint {path}: refused, it holds objects other than tensors"):
        load_file(path)
    assert not marker.exists()


def test_every_torch_load_in_the_package_passes_weights_only_true():
    """load_file reads with weights_only=True, and so must any other torch.load the package gains."""
    calls = []
    for source in sorted(IAKD.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                calls.append((source.relative_to(IAKD.parent).as_posix(), isinstance(flag, ast.Constant)
                              and flag.value is True))
    assert ("iakd/checkpoint.py", True) in calls  # load_file, the reader every checkpoint and teacher goes through
    assert [where for where, weights_only in calls if not weights_only] == []


# ------------------------------------------------------------------------------------------ atomic writes


def _failing_save(after_bytes: int):
    """A torch.save that writes the first ``after_bytes`` bytes of the real file, then fails (disk full)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        whole = io.BytesIO()
        real_save(obj, whole, *args, **kwargs)
        f.write(whole.getvalue()[:after_bytes])
        raise OSError(28, "No space left on device")

    return save


def test_save_atomic_keeps_the_old_file_when_the_write_fails_midway(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"epoch": 1, "weights": torch.arange(4.0)}, path)
    before = path.read_bytes()

    monkeypatch.setattr(checkpoint.torch, "save", _failing_save(after_bytes=100))
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"epoch": 2, "weights": torch.arange(8.0)}, path)

    assert path.read_bytes() == before
    assert torch.equal(load_file(path)["weights"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_save_atomic_leaves_nothing_when_the_first_write_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.torch, "save", _failing_save(after_bytes=10))
    with pytest.raises(OSError):
        save_atomic({"epoch": 1}, tmp_path / "sub" / "checkpoint.pt")
    assert list((tmp_path / "sub").iterdir()) == []


def test_save_atomic_cleans_up_when_interrupted(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) and Tune's SystemExit inside a write leave no partial or temporary file."""
    path = tmp_path / "checkpoint.pt"
    save_atomic({"epoch": 1}, path)
    before = path.read_bytes()

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_writes_give_files_the_permissions_of_a_plain_open(tmp_path):
    """mkstemp's temporary files are private (0600); the published file has what ``open`` would give it under
    the process's umask, so a report, a table or a teacher file is as readable as any other output."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected != 0o600  # the test's umask (022 or 002) makes the difference visible
    checkpoint.save_atomic({"epoch": 1}, tmp_path / "a.pt")
    checkpoint.write_text_atomic(tmp_path / "b.md", "report")
    with checkpoint.atomic_path(tmp_path / "c.png") as tmp:
        tmp.write_bytes(b"png")
    checkpoint.copy_atomic(plain, tmp_path / "d.pth")
    storage.download(str(plain), tmp_path / "cache" / "e.pth")
    for name in ("a.pt", "b.md", "c.png", "d.pth", "cache/e.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_copy_atomic_keeps_the_old_file_when_the_copy_fails_midway(tmp_path, monkeypatch):
    source, path = tmp_path / "student.pt", tmp_path / "teacher.pth"
    path.write_bytes(b"the old teacher")
    source.write_bytes(b"x" * 10_000)

    def copy_half(src, dst, *args):
        dst.write(src.read(5_000))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.shutil, "copyfileobj", copy_half)
    with pytest.raises(OSError):
        checkpoint.copy_atomic(source, path)
    assert path.read_bytes() == b"the old teacher"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.pt", "teacher.pth"]


# Calls that put bytes into a file: methods by name (``path.write_text``, ``fig.savefig``...), functions by
# their full name, and ``open`` with a writing mode.
WRITING_METHODS = {"write_text", "write_bytes", "write_table", "savefig", "to_parquet", "to_csv"}
WRITING_FUNCTIONS = {"torch.save", "json.dump", "yaml.dump", "yaml.safe_dump", "pickle.dump", "shutil.copyfile",
                     "shutil.copy", "shutil.copy2", "shutil.copyfileobj", "pyarrow.fs.copy_files", "np.save"}
# Write sites that are atomic by construction (a temporary file beside the target, then os.replace), or that
# hold nothing to protect (an append-only log, a lock file): (module, function, call).
ATOMIC_OR_EXEMPT = {
    ("iakd/checkpoint.py", "_write_atomic", "open(w)"),
    ("iakd/checkpoint.py", "save_atomic", "torch.save"),  # inside _write_atomic
    ("iakd/checkpoint.py", "copy_atomic", "shutil.copyfileobj"),  # inside _write_atomic
    ("iakd/search/storage.py", "download", "pyarrow.fs.copy_files"),  # mkstemp beside the target, os.replace
    ("iakd/prepare_data.py", "_locked", "open(a)"),  # an empty lock file
    ("iakd/search/trainable.py", "_train_and_log", "open(a|w)"),  # train.log: append-only, a line at a time
    ("iakd/search/storage.py", "upload", "pyarrow.fs.copy_files"),  # to a .partial name, then fs.move
    ("iakd/search/storage.py", "sweep_lock", "open(a)"),  # an empty lock file, never written: flock only
    ("iakd/analysis/export.py", "write_tables", ".write_table"),  # to checkpoint.atomic_path, then os.replace
    ("iakd/analysis/plots/style.py", "save", ".savefig"),  # to checkpoint.atomic_path, then os.replace
    ("iakd/analysis/controlled.py", "run", "open(a)"),  # runs.jsonl: append-only, a whole line per finished run
    ("iakd/analysis/controlled.py", "plot_curves", ".savefig"),  # to checkpoint.atomic_path, then os.replace
    ("iakd/analysis/controlled.py", "plot_summary", ".savefig"),  # to checkpoint.atomic_path, then os.replace
}


class _WriteSites(ast.NodeVisitor):
    """(module, innermost named function, call) -> line numbers, for every call that writes a file."""

    def __init__(self, module: str):
        self.module, self.function, self.sites = module, "<module>", {}

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name = ast.unparse(node.func)
        call = None
        if name in ("open", "os.fdopen") or name.endswith(".open"):
            positional = node.args[1] if len(node.args) > 1 else None
            mode = next((k.value for k in node.keywords if k.arg == "mode"), positional)
            values = [mode.body, mode.orelse] if isinstance(mode, ast.IfExp) else [mode]
            modes = sorted({v.value.replace("b", "") for v in values if isinstance(v, ast.Constant)})
            if any(set(m) & set("wax+") for m in modes):
                call = f"open({'|'.join(modes)})"
        elif name in WRITING_FUNCTIONS or (isinstance(node.func, ast.Attribute) and node.func.attr in WRITING_METHODS):
            if not (name in ("yaml.dump", "yaml.safe_dump") and len(node.args) < 2):  # to a string: no file
                call = name if name in WRITING_FUNCTIONS else f".{node.func.attr}"
        if call:
            self.sites.setdefault((self.module, self.function, call), []).append(node.lineno)
        self.generic_visit(node)


def _write_sites() -> dict[tuple[str, str, str], list[int]]:
    sites = {}
    for source in sorted(IAKD.rglob("*.py")):
        visitor = _WriteSites(source.relative_to(IAKD.parent).as_posix())
        visitor.visit(ast.parse(source.read_text(), filename=str(source)))
        sites.update(visitor.sites)
    return sites


def test_the_write_site_scan_finds_the_atomic_writers():
    """The scan below is only as good as what it sees: it must find the known atomic write sites."""
    assert ATOMIC_OR_EXEMPT <= set(_write_sites())


def test_every_file_the_package_writes_is_written_atomically():
    sites = _write_sites()
    plain = {f"{module}:{','.join(map(str, sites[module, function, call]))} {function}: {call}"
             for module, function, call in set(sites) - ATOMIC_OR_EXEMPT}
    assert sorted(plain) == []
