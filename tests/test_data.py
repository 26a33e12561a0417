"""Tests for iakd.data: dataset files on disk, splits, batching and augmentation."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from iakd.data import (
    CIFAR10_NORMALIZATION,
    CIFAR100_NORMALIZATION,
    DATASETS,
    IMAGENET_NORMALIZATION,
    FolderSplit,
    Normalization,
    TensorSplit,
    load_dataset,
)
from iakd.errors import ConfigError, DataError

PER_BATCH = 20  # images per CIFAR batch file written by the tests


def _write_batch(path: Path, data: np.ndarray, labels: list[int], label_key: bytes, extra: dict) -> None:
    batch = {
        b"batch_label": f"batch {path.name}".encode(),
        label_key: labels,
        b"data": data,
        b"filenames": [f"image_{i}.png".encode() for i in range(len(labels))],
        **extra,
    }
    with path.open("wb") as file:
        pickle.dump(batch, file, protocol=2)  # the official files are protocol-2 pickles


def _images(seed: int, n: int) -> np.ndarray:
    """n random uint8 images as (n, 3072) rows; random enough that every image is unique."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for seed, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = _images(seed, PER_BATCH)
        labels = [(seed + i) % 10 for i in range(PER_BATCH)]
        _write_batch(folder / name, data, labels, b"labels", {})
        written[name] = (data, labels)
    return written


def write_cifar100(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for seed, (name, n) in enumerate([("train", 5 * PER_BATCH), ("test", PER_BATCH)]):
        data = _images(100 + seed, n)
        # Structured test images: value = position in the row mod 256, to check the (C, H, W) layout.
        if name == "test":
            data[0] = np.arange(3072) % 256
        labels = [(7 * i + seed) % 100 for i in range(n)]
        _write_batch(folder / name, data, labels, b"fine_labels", {b"coarse_labels": [x // 5 for x in labels]})
        written[name] = (data, labels)
    return written


def _rows(split: TensorSplit) -> list[bytes]:
    return [image.reshape(-1).numpy().tobytes() for image in split.images]


def test_cifar10_loads_with_shapes_dtypes_and_pixels_round_tripping(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    dataset = load_dataset("cifar10", tmp_path, val_fraction=0.1, split_seed=3)

    assert (dataset.name, dataset.num_classes, dataset.image_size) == ("cifar10", 10, 32)
    assert dataset.normalization == CIFAR10_NORMALIZATION
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (90, 10, 20)
    assert dataset.train.images.shape == (90, 3, 32, 32) and dataset.train.images.dtype == torch.uint8
    assert dataset.train.labels.dtype == torch.int64

    # Every training image comes back once, with its own label, across train and val.
    expected = {
        row.tobytes(): label for name, (data, labels) in written.items() if name != "test_batch"
        for row, label in zip(data, labels)
    }
    loaded = list(zip(_rows(dataset.train) + _rows(dataset.val),
                      dataset.train.labels.tolist() + dataset.val.labels.tolist()))
    assert len(loaded) == len(expected) == 100
    assert {row: label for row, label in loaded} == expected
    # The test split keeps the file's order.
    test_data, test_labels = written["test_batch"]
    assert _rows(dataset.test) == [row.tobytes() for row in test_data]
    assert dataset.test.labels.tolist() == test_labels


def test_cifar100_reads_fine_labels_and_rgb_planes(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    dataset = load_dataset("cifar100", tmp_path, val_fraction=0.2)

    assert dataset.num_classes == 100
    assert dataset.normalization == CIFAR100_NORMALIZATION
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (80, 20, 20)
    assert dataset.test.labels.tolist() == written["test"][1]
    # Row layout: 1024 red values, then green, then blue, each plane row-major.
    c, h, w = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    assert torch.equal(dataset.test.images[0], ((c * 1024 + h * 32 + w) % 256).to(torch.uint8))


def test_validation_split_is_disjoint_from_train_and_follows_the_split_seed(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path, val_fraction=0.25, split_seed=0)
    again = load_dataset("cifar10", tmp_path, val_fraction=0.25, split_seed=0)
    other = load_dataset("cifar10", tmp_path, val_fraction=0.25, split_seed=1)

    train, val = set(_rows(first.train)), set(_rows(first.val))
    assert (len(train), len(val)) == (75, 25) and not train & val
    assert _rows(again.val) == _rows(first.val)
    assert set(_rows(other.val)) != val


def test_zero_val_fraction_gives_an_empty_working_val_split(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dataset = load_dataset("cifar10", tmp_path, val_fraction=0.0)

    assert (len(dataset.train), len(dataset.val)) == (100, 0)
    assert list(dataset.val.batches(8, shuffle=True, augment=True, generator=torch.Generator())) == []


def test_missing_cifar_folder_raises_data_error_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^data\.dir: .* not found; .*or set data\.download=true$") as error:
        load_dataset("cifar100", tmp_path)
    assert str(tmp_path / "cifar-100-python") in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_batch_file_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    missing.unlink()
    with pytest.raises(DataError, match=str(missing)):
        load_dataset("cifar10", tmp_path)


def test_truncated_batch_file_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=str(path)):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        ({b"data": np.zeros((20, 3072), np.uint8)}, "b'fine_labels'"),
        ({b"data": np.zeros((20, 1024), np.uint8), b"fine_labels": [0] * 20}, r"\(N, 3072\)"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"fine_labels": [0] * 19}, "20 images"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"fine_labels": [100] * 20}, r"\[0, 100\)"),
    ],
    ids=["missing-labels", "wrong-shape", "label-count", "label-range"],
)
def test_malformed_batch_file_raises_data_error(tmp_path: Path, batch: dict, problem: str) -> None:
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=str(path)) as error:
        load_dataset("cifar100", tmp_path)
    assert error.match(problem)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_naming_a_forbidden_global_is_refused_without_running_it(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    marker = tmp_path / "exploited"
    path.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))

    with pytest.raises(DataError, match=f"{path}.*system"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_batch_files_pickled_with_protocol_5_load(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = _images(7, 4)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3, 4]}, protocol=5))

    dataset = load_dataset("cifar10", tmp_path)
    assert _rows(dataset.test) == [row.tobytes() for row in data]


def test_download_fetches_a_missing_folder_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    dataset = load_dataset("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]
    assert len(dataset.test) == PER_BATCH


def test_unknown_dataset_name_raises_config_error_listing_known_names() -> None:
    with pytest.raises(ConfigError, match=r"^data\.name: unknown dataset 'svhn'") as error:
        load_dataset("svhn")
    assert all(name in str(error.value) for name in DATASETS)


def test_digits_splits_cover_all_1797_images_once() -> None:
    full = load_dataset("digits", val_fraction=0.0)
    dataset = load_dataset("digits", val_fraction=0.1, split_seed=5)

    assert dataset.num_classes == 10
    assert dataset.train.images.shape[1:] == (3, 32, 32) and dataset.train.images.dtype == torch.uint8
    sizes = (len(dataset.train), len(dataset.val), len(dataset.test))
    assert sum(sizes) == 1797 and sizes[2] == 359 and sizes[1] == round(0.1 * (1797 - 359))
    # As multisets (some digits are duplicates), train + val is exactly the full training part.
    assert Counter(_rows(dataset.train)) + Counter(_rows(dataset.val)) == Counter(_rows(full.train))


def test_digits_test_split_does_not_depend_on_split_seed() -> None:
    one = load_dataset("digits", split_seed=0)
    two = load_dataset("digits", split_seed=1)
    assert torch.equal(one.test.images, two.test.images) and torch.equal(one.test.labels, two.test.labels)
    assert not torch.equal(one.val.images, two.val.images)


def test_digits_images_are_three_equal_channels_normalised_by_train_statistics() -> None:
    dataset = load_dataset("digits", image_size=16)
    images = dataset.train.images
    assert images.shape[1:] == (3, 16, 16)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert images.max() == 255 and images.min() == 0
    batch = torch.cat([x for x, _ in dataset.train.batches(512, shuffle=False, augment=False)])
    assert batch.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert batch.std().item() == pytest.approx(1.0, abs=1e-3)


def _split(n: int, size: int = 32) -> TensorSplit:
    images = torch.arange(n * 3 * size * size).reshape(n, 3, size, size).remainder(251).add(1).to(torch.uint8)
    return TensorSplit(images, torch.arange(n), Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))


def test_batches_without_shuffle_cover_the_split_once_in_order() -> None:
    split = _split(10)
    batches = list(split.batches(4, shuffle=False, augment=False))

    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    images = torch.cat([x for x, _ in batches])
    assert images.dtype == torch.float32
    assert torch.allclose(images, (split.images.float() / 255 - 0.5) / 0.25)


def test_order_and_augmentation_draw_from_their_own_generators() -> None:
    """The shuffle order does not depend on how many draws augmentation made, and vice versa."""
    split = _split(20)

    def run(order_seed, augment_seed, augment):
        batches = split.batches(8, shuffle=True, augment=augment, generator=torch.Generator().manual_seed(order_seed),
                                augment_generator=torch.Generator().manual_seed(augment_seed))
        return [(x, y) for x, y in batches]

    plain, augmented = run(1, 2, False), run(1, 2, True)
    assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in augmented]  # same order, with or without crops
    other_order = run(3, 2, True)
    assert [y.tolist() for _, y in other_order] != [y.tolist() for _, y in augmented]
    again = run(1, 2, True)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again, augmented))


def test_shuffled_batches_are_a_permutation_reproducible_from_the_generator() -> None:
    split = _split(50)

    def labels(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in split.batches(8, shuffle=True, augment=False, generator=generator)]).tolist()

    assert sorted(labels(0)) == list(range(50))
    assert labels(0) == labels(0) != labels(1)
    assert labels(0) != list(range(50))


def test_augmented_batches_keep_shape_and_are_reproducible_from_the_generator() -> None:
    split = _split(16)

    def epoch(seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [x for x, _ in split.batches(6, shuffle=True, augment=True, generator=generator)]

    first = epoch(0)
    assert [x.shape for x in first] == [(6, 3, 32, 32), (6, 3, 32, 32), (4, 3, 32, 32)]
    assert all(x.dtype == torch.float32 for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0)))
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch(1)))


def test_saved_generator_state_resumes_the_same_batches() -> None:
    split = _split(16)
    generator = torch.Generator().manual_seed(3)
    list(split.batches(4, shuffle=True, augment=True, generator=generator))
    state = generator.get_state()
    second = [x for x, _ in split.batches(4, shuffle=True, augment=True, generator=generator)]
    generator.set_state(state)
    resumed = [x for x, _ in split.batches(4, shuffle=True, augment=True, generator=generator)]
    assert all(torch.equal(a, b) for a, b in zip(second, resumed))


def test_augmentation_crops_with_zero_padding_and_flips_horizontally() -> None:
    # One image whose pixels are all non-zero and whose rows are not symmetric, so each augmented copy is
    # exactly one shifted and maybe mirrored crop of the zero-padded original.
    original = _split(1).images[0]
    split = TensorSplit(original.expand(200, -1, -1, -1).contiguous(), torch.zeros(200, dtype=torch.int64),
                        Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    (images, _), = split.batches(200, shuffle=False, augment=True, generator=torch.Generator().manual_seed(0))
    pixels = (images * 0.25 + 0.5).mul(255).round().to(torch.uint8)

    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    candidates = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy : dy + 32, dx : dx + 32]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop.flip(-1)
    found = []
    for image in pixels:
        matches = [key for key, crop in candidates.items() if torch.equal(image, crop)]
        assert len(matches) == 1
        found.append(matches[0])

    flips = Counter(flip for _, _, flip in found)
    assert 60 < flips[True] < 140
    assert len({(dy, dx) for dy, dx, _ in found}) > 40
    # Padding is pixel value 0, which normalises to (0 - 0.5) / 0.25.
    assert (images == -2.0).any()


def _write_image_tree(root: Path, per_class: dict[str, int], size: int = 20) -> None:
    for index, (name, count) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.full((size, size + 4, 3), 40 * index + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_imagefolder_tree_loads_and_batches(tmp_path: Path) -> None:
    _write_image_tree(tmp_path / "train", {"cat": 5, "dog": 5, "owl": 5})
    _write_image_tree(tmp_path / "val", {"cat": 2, "dog": 2, "owl": 2})
    dataset = load_dataset("imagefolder", tmp_path, val_fraction=0.2, image_size=16, num_workers=0)

    assert (dataset.num_classes, dataset.image_size) == (3, 16)
    assert dataset.normalization == IMAGENET_NORMALIZATION
    assert isinstance(dataset.train, FolderSplit)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (12, 3, 6)
    assert sorted(dataset.train.indices + dataset.val.indices) == list(range(15))

    batches = list(dataset.test.batches(4, shuffle=False, augment=False))
    assert [(x.shape, x.dtype, y.dtype) for x, y in batches] == [
        ((4, 3, 16, 16), torch.float32, torch.int64), ((2, 3, 16, 16), torch.float32, torch.int64)
    ]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 1, 1, 2, 2]
    # Uniform images: the first "dog" image has value 40 in every channel before normalisation.
    mean, std = torch.tensor(IMAGENET_NORMALIZATION.mean), torch.tensor(IMAGENET_NORMALIZATION.std)
    assert torch.allclose(batches[0][0][2], ((40 / 255 - mean) / std).view(3, 1, 1).expand(3, 16, 16), atol=1e-5)


def test_imagefolder_augmentation_is_reproducible_whatever_the_worker_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")

    def epoch(num_workers: int, seed: int) -> torch.Tensor:
        dataset = load_dataset("imagefolder", tmp_path, val_fraction=0.0, image_size=16, num_workers=num_workers)
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([x for x, _ in dataset.train.batches(4, shuffle=True, augment=True, generator=generator)])

    first = epoch(0, seed=0)
    assert first.shape == (6, 3, 16, 16)
    assert torch.equal(first, epoch(0, seed=0))
    assert torch.equal(first, epoch(2, seed=0))
    assert not torch.equal(first, epoch(0, seed=1))


def test_imagefolder_with_other_class_folders_in_val_names_them(tmp_path: Path) -> None:
    _write_image_tree(tmp_path / "train", {"cat": 1, "dog": 1})
    _write_image_tree(tmp_path / "val", {"cat": 1, "owl": 1})
    with pytest.raises(DataError, match=r"must have the same class folders as .*train \(in one only: dog, owl\)$"):
        load_dataset("imagefolder", tmp_path, num_workers=0)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_corrupt_image_in_an_imagefolder_is_one_line_naming_it(tmp_path: Path, num_workers: int) -> None:
    _write_image_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    _write_image_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    (tmp_path / "val" / "dog" / "0.png").write_bytes(b"not a png")
    dataset = load_dataset("imagefolder", tmp_path, val_fraction=0.0, image_size=16, num_workers=num_workers)
    with pytest.raises(DataError) as info:
        list(dataset.test.batches(2, shuffle=False, augment=False))
    assert str(info.value) == (f"imagefolder: {tmp_path / 'val' / 'dog' / '0.png'} is not a readable image "
                               "(UnidentifiedImageError); remove or replace it")


@pytest.mark.parametrize("missing", ["train", "val"])
def test_imagefolder_missing_folder_raises_data_error_naming_it(tmp_path: Path, missing: str) -> None:
    present = "val" if missing == "train" else "train"
    _write_image_tree(tmp_path / present, {"cat": 1})
    with pytest.raises(DataError, match=str(tmp_path / missing)):
        load_dataset("imagefolder", tmp_path, num_workers=0)


def test_val_fraction_outside_zero_to_one_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^data\.val_fraction must be in \[0, 1\), got 1\.0"):
        load_dataset("digits", val_fraction=1.0)


def test_batch_files_naming_numpy_1_modules_load(tmp_path: Path) -> None:
    # The official files were written by numpy 1, whose array reconstructor lives in numpy.core.multiarray.
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = _images(8, 3)
    payload = pickle.dumps({b"data": data, b"labels": [0, 1, 2]}, protocol=2)
    assert b"numpy._core.multiarray" in payload
    path.write_bytes(payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))

    dataset = load_dataset("cifar10", tmp_path)
    assert _rows(dataset.test) == [row.tobytes() for row in data]


def test_train_size_keeps_a_seeded_subset_of_the_training_split_only() -> None:
    full = load_dataset("digits", image_size=8)
    small = load_dataset("digits", image_size=8, train_size=100)
    again = load_dataset("digits", image_size=8, train_size=100)
    assert len(small.train) == 100 and torch.equal(small.train.images, again.train.images)
    assert Counter(_rows(small.train)) - Counter(_rows(full.train)) == Counter()  # drawn from the training split
    assert _rows(small.val) == _rows(full.val) and _rows(small.test) == _rows(full.test)
    other = load_dataset("digits", image_size=8, train_size=100, split_seed=1)
    assert not torch.equal(other.train.images, small.train.images)
    with pytest.raises(ConfigError, match=rf"^data\.train_size: 5000 is not in \[1, {len(full.train)}\]"):
        load_dataset("digits", image_size=8, train_size=5000)
