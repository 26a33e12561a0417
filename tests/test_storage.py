"""Sharing the sweep's teacher through the storage path: a folder (local, NFS) or a URI (here file://, which
pyarrow serves through the same code path as s3:// or gs://)."""

from pathlib import Path

import torch

from iakd import models
from iakd.config import load_config
from iakd.search import storage
from iakd.search.teacher import share_teacher
from iakd.teacher_cache import teacher_file
from iakd.teachers import save_teacher

ROOT = Path(__file__).resolve().parents[1]


def _teacher(path: Path) -> Path:
    return save_teacher(path, models.build("resnet20", 10), arch="resnet20", dataset="digits", num_classes=10,
                        accuracy=None)


def _base(tmp_path: Path, *overrides: str):
    return load_config(ROOT / "configs" / "digits_iakd.yaml",
                       ["teacher.arch=resnet20", f"teacher.cache_dir={tmp_path / 'driver'}", *overrides])


def test_upload_download_and_exists_round_trip_through_a_uri(tmp_path):
    local = tmp_path / "a.bin"
    local.write_bytes(b"teacher bytes")
    remote = storage.join(f"file://{tmp_path}/store/", "teachers", "a.bin")
    assert remote == f"file://{tmp_path}/store/teachers/a.bin"
    assert not storage.exists(remote)
    storage.upload(local, remote)
    assert storage.exists(remote) and (tmp_path / "store" / "teachers" / "a.bin").read_bytes() == b"teacher bytes"
    back = storage.download(remote, tmp_path / "copy" / "a.bin")
    assert back.read_bytes() == b"teacher bytes"
    assert [p.name for p in back.parent.iterdir()] == ["a.bin"]  # no partial file left beside it


def test_fetch_reads_a_path_in_place_and_a_uri_through_one_node_local_copy(tmp_path, monkeypatch):
    assert storage.fetch(str(tmp_path / "x.pth")) == tmp_path / "x.pth"
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "t.pth").write_bytes(b"v1")
    uri = f"file://{tmp_path}/store/t.pth"
    first = storage.fetch(uri, tmp_path / "cache")
    assert first.parent == tmp_path / "cache" and first.name.endswith("-t.pth") and first.read_bytes() == b"v1"

    def no_download(*args):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(storage, "download", no_download)
    assert storage.fetch(uri, tmp_path / "cache") == first  # the second trial on the node reuses it


def test_on_a_folder_the_teacher_is_cached_under_the_storage_path(tmp_path):
    base = _base(tmp_path)
    cached = teacher_file(_base(tmp_path, f"teacher.cache_dir={tmp_path / 'store' / 'teachers'}"))
    _teacher(cached)  # trained by an earlier sweep: reused, not trained again
    lines = []
    assert share_teacher(base, str(tmp_path / "store"), log=lines.append) == str(cached)
    assert lines == [f"teacher resnet20: reusing {cached}"]


def test_behind_a_uri_the_teacher_is_published_and_a_new_head_node_fetches_it_instead_of_training(tmp_path):
    base = _base(tmp_path)
    local = _teacher(teacher_file(base))  # the driver's cache holds it
    store = f"file://{tmp_path}/store"
    lines = []
    shared = share_teacher(base, store, log=lines.append)
    assert shared == f"{store}/teachers/{local.name}" and storage.exists(shared)
    assert lines[-1] == f"teacher resnet20: publishing {local} -> {shared}"

    local.unlink()  # --resume on another head node: its cache is empty
    lines.clear()
    assert share_teacher(_base(tmp_path), store, log=lines.append) == shared
    assert lines == [f"teacher resnet20: fetching {shared}", f"teacher resnet20: reusing {local}"]
    assert torch.load(local, weights_only=True)["arch"] == "resnet20"


def test_a_given_teacher_file_is_published_under_a_name_that_includes_its_content(tmp_path):
    for folder in ("a", "b"):  # two different files with the same name
        path = _teacher(tmp_path / folder / "ckpt_epoch_240.pth")
        shared = share_teacher(_base(tmp_path, f"teacher.checkpoint={path}"), f"file://{tmp_path}/store")
        assert shared.startswith(f"file://{tmp_path}/store/teachers/ckpt_epoch_240-") and storage.exists(shared)
        assert storage.fetch(shared, tmp_path / "node").read_bytes() == path.read_bytes()
    assert len(list((tmp_path / "store" / "teachers").iterdir())) == 2


def test_resume_refuses_a_tune_folder_others_could_have_written(tmp_path):
    """Tuner.restore unpickles tuner.pkl and the searcher's state: the folder and those files must be the user's."""
    import os
    import pickle

    import pytest

    from iakd.errors import ConfigError
    from iakd.search.storage import check_restorable

    stage = tmp_path / "iakd-digits"
    stage.mkdir()
    pickle_file = stage / "tuner.pkl"
    pickle_file.write_bytes(pickle.dumps({"state": list(range(100))}))
    (stage / "notes.txt").write_text("not read by Tune")
    os.chmod(stage / "notes.txt", 0o666)
    check_restorable(str(stage))  # the user's own, other files ignored
    os.chmod(pickle_file, 0o666)
    with pytest.raises(ConfigError, match=rf"^--resume: {pickle_file} is writable by every user; Tune unpickles"):
        check_restorable(str(stage))
    os.chmod(pickle_file, 0o644)
    if os.getuid() == 0:  # only root can give a file away
        os.chown(pickle_file, 12345, -1)
        with pytest.raises(ConfigError, match=rf"^--resume: {pickle_file} is owned by user id 12345, not by you"):
            check_restorable(str(stage))
    check_restorable("s3://bucket/iakd-digits")  # nothing to check behind a URI


def test_resume_refuses_a_tune_folder_whose_state_is_cut_short_without_unpickling_it(tmp_path):
    """A tuner.pkl or searcher state cut short (a full disk, a copy interrupted), or JSON state that does not parse:
    one line naming the file before anything runs, instead of Tune's UnpicklingError after the earlier stages were
    restored. The pickle is parsed, never loaded: a file that would run code is not run by the check."""
    import os
    import pickle

    import pytest

    from iakd.errors import ConfigError
    from iakd.search.storage import check_restorable

    stage = tmp_path / "iakd-digits"
    stage.mkdir()
    whole = pickle.dumps({"trials": [{"id": i, "config": {"p0": i / 10}} for i in range(50)]})
    (stage / "tuner.pkl").write_bytes(whole)
    (stage / "experiment_state-2026.json").write_text('{"trial_data": []}')

    class Marker:  # unpickling it would create a file
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))

    (stage / "searcher-state.pkl").write_bytes(pickle.dumps(Marker()))
    (stage / "search_gen_state-2026.json").write_bytes(pickle.dumps({"counter": 3}))  # Tune's: a pickle named .json
    check_restorable(str(stage))
    assert not (tmp_path / "ran").exists()
    (stage / "tuner.pkl").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match=rf"^--resume: {stage / 'tuner.pkl'} is damaged \(.+\), so Tune cannot "
                                          rf"restore {stage}: put the folder back from a copy"):
        check_restorable(str(stage))
    (stage / "tuner.pkl").write_bytes(whole)
    (stage / "experiment_state-2026.json").write_text('{"trial_data": [')
    with pytest.raises(ConfigError, match=rf"^--resume: {stage / 'experiment_state-2026.json'} is damaged"):
        check_restorable(str(stage))
