"""Tests for the IDX format (iakd.idx) and the MNIST-format datasets built on it (fashion_mnist, mnist).

The tests write small IDX files themselves, in both encodings (raw and gzipped) and broken in every way the
reader checks; one test reads the real Fashion-MNIST files where Debian's dataset-fashion-mnist put them.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from idx_files import N_TEST, N_TRAIN, idx_bytes, write_idx, write_idx_dataset

from iakd.config import load_config
from iakd.data import (
    FASHION_MNIST_NORMALIZATION,
    IDX_FILES,
    MNIST_NORMALIZATION,
    TensorSplit,
    check_data_folder,
    load_dataset,
)
from iakd.errors import ConfigError, DataError
from iakd.idx import read_idx

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_returns_the_array_written_in_either_encoding(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, gz=gz)
    read = read_idx(path, ndim=3)
    assert read.dtype == np.uint8 and read.shape == (2, 3, 4)
    np.testing.assert_array_equal(read, array)


def test_read_idx_decodes_big_endian_types(tmp_path):
    array = np.array([[1, -2], [300, 40_000]], dtype=">i4")
    (tmp_path / "ints").write_bytes(idx_bytes(array, type_code=0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "ints", dtype=np.int32), array.astype(np.int32))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not an IDX file (magic number missing)"),
    (b"\x89PNG\r\n\x1a\n", "not an IDX file (magic number 89504e47)"),
    (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\0", "not an IDX file (magic number 00000701)"),
    (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2), "truncated in its header (8 bytes)"),
    (idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-1], "truncated (39 bytes, the header (2, 3, 4) needs 40)"),
    (idx_bytes(np.zeros((2, 3, 4), np.uint8)) + b"\0", "longer than its header says (41 bytes, the header"),
    (idx_bytes(np.zeros((2, 12), np.uint8)), "has 2 dimensions, expected 3"),
    (idx_bytes(np.zeros((2, 3, 4), ">i4"), type_code=0x0C), "holds int32 values, expected uint8"),
], ids=["empty", "png", "unknown-type", "short-header", "truncated", "trailing-bytes", "wrong-ndim", "wrong-type"])
def test_read_idx_refuses_a_broken_file_naming_it(tmp_path, content, message):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_idx(path, ndim=3, how="get the official file")
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert str(error.value).endswith("; get the official file") and "\n" not in str(error.value)


def test_read_idx_refuses_a_truncated_gzip_archive(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: not a readable gzip file"):
        read_idx(path, ndim=3)


def test_read_idx_refuses_a_truncated_file_inside_a_valid_gzip(tmp_path):
    data = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match=r"ubyte.gz: truncated \(3836 bytes, the header \(5, 28, 28\) needs 3936\)"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_fashion_mnist_loads_the_official_files_with_a_held_out_split(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path, gz=gz)
    dataset = load_dataset("fashion_mnist", tmp_path, val_fraction=0.2, split_seed=3)
    assert (dataset.name, dataset.num_classes, dataset.image_size) == ("fashion_mnist", 10, 28)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (40, 10, N_TEST)
    assert dataset.normalization == FASHION_MNIST_NORMALIZATION
    # The one grayscale channel, repeated for the zoo's three input channels; the split keeps the images intact.
    assert dataset.train.images.shape == (40, 3, 28, 28) and dataset.train.images.dtype == torch.uint8
    assert torch.equal(dataset.train.images[:, 0], dataset.train.images[:, 2])
    train_and_val = torch.cat([dataset.train.images[:, 0], dataset.val.images[:, 0]]).flatten(1)
    written = torch.from_numpy(arrays["train_images"]).flatten(1)
    assert sorted(map(tuple, train_and_val.tolist())) == sorted(map(tuple, written.tolist()))
    np.testing.assert_array_equal(dataset.test.images[:, 1].numpy(), arrays["test_images"])
    np.testing.assert_array_equal(dataset.test.labels.numpy(), arrays["test_labels"])


def test_fashion_mnist_train_size_keeps_validation_and_test(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    full = load_dataset("fashion_mnist", tmp_path, val_fraction=0.2)
    small = load_dataset("fashion_mnist", tmp_path, val_fraction=0.2, train_size=15)
    assert len(small.train) == 15 and torch.equal(small.val.images, full.val.images)
    assert torch.equal(small.test.labels, full.test.labels)


def test_fashion_mnist_is_read_from_torchvisions_raw_folder_too(tmp_path):
    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert len(load_dataset("fashion_mnist", tmp_path, val_fraction=0.0).train) == N_TRAIN


def _row_directions(split: TensorSplit, seed: int) -> set[str]:
    """How the columns run in each row of one augmented batch: 'right' (as stored) or 'left' (mirrored)."""
    images, _ = next(split.batches(len(split), shuffle=False, augment=True, generator=torch.Generator().manual_seed(
        seed)))
    directions = set()
    for row in images[:, 0].flatten(0, 1):
        pixels = row[row > row.min()]  # the crop's zero padding is the row's minimum; every pixel is above it
        directions.add("right" if bool((pixels.diff() > 0).all()) else "left" if bool((pixels.diff() < 0).all())
                       else "mixed")
    return directions


def test_fashion_mnist_mirrors_in_augmentation_but_mnist_does_not(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    fashion = load_dataset("fashion_mnist", tmp_path, val_fraction=0.0)
    mnist = load_dataset("mnist", tmp_path, val_fraction=0.0)
    assert fashion.train.flip and not mnist.train.flip
    # Pixel (y, x) holds x + 1: a row's values rise left to right unless the row was mirrored.
    columns = torch.arange(1, 29, dtype=torch.uint8).expand(16, 3, 28, 28).contiguous()
    labels = torch.zeros(16, dtype=torch.int64)
    for split, expected in ((TensorSplit(columns, labels, FASHION_MNIST_NORMALIZATION, flip=True), {"right", "left"}),
                            (TensorSplit(columns, labels, MNIST_NORMALIZATION, flip=False), {"right"})):
        assert set().union(*(_row_directions(split, seed) for seed in range(3))) == expected


def test_a_missing_folder_says_how_to_get_the_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", tmp_path / "nowhere")
    message = str(error.value)
    assert message.startswith(f"data.dir: {tmp_path / 'nowhere'} not found")
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message


def test_a_missing_file_is_named(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"lacks the Fashion-MNIST file\(s\) t10k-labels-idx1-ubyte\[\.gz\]; install"):
        check_data_folder("fashion_mnist", tmp_path)


@pytest.mark.parametrize(("part", "array", "message"), [
    ("train_labels", np.zeros(N_TRAIN - 1, np.uint8), f"{N_TRAIN - 1} labels for the {N_TRAIN} images of "
                                                      "train-images-idx3-ubyte.gz"),
    ("test_labels", np.full(N_TEST, 10, np.uint8), "labels must be in [0, 10), found 10"),
    ("test_images", np.zeros((N_TEST, 32, 32), np.uint8), "images are 32x32, Fashion-MNIST has 28x28"),
    ("train_images", np.zeros((N_TRAIN, 784), np.uint8), "has 2 dimensions, expected 3"),
], ids=["count-mismatch", "label-range", "image-size", "flat-images"])
def test_files_that_disagree_are_refused_naming_the_file(tmp_path, part, array, message):
    write_idx_dataset(tmp_path, gz=True)
    path = write_idx(tmp_path / IDX_FILES[part], array, gz=True)
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", tmp_path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_the_run_config_takes_fashion_mnist_and_refuses_another_size(tmp_path):
    assert load_config(None, ["data.name=fashion_mnist"]).data.name == "fashion_mnist"
    write_idx_dataset(tmp_path, gz=True)
    with pytest.raises(ConfigError, match=r"data.image_size: fashion_mnist images are 28x28, got 32"):
        load_dataset("fashion_mnist", tmp_path, image_size=32)


@pytest.mark.skipif(not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"the real Fashion-MNIST files are not installed in {REAL_FASHION_MNIST} "
                           "(apt-get install dataset-fashion-mnist)")
def test_the_real_fashion_mnist_files():
    dataset = load_dataset("fashion_mnist", REAL_FASHION_MNIST, val_fraction=0.1, split_seed=0)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (54_000, 6_000, 10_000)
    # Balanced: 6,000 training and 1,000 test images per class.
    labels = torch.cat([dataset.train.labels, dataset.val.labels])
    assert torch.bincount(labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(dataset.test.labels, minlength=10).tolist() == [1000] * 10
    # The published statistics, which the normalisation uses, are those of these training images.
    pixels = torch.cat([dataset.train.images[:, 0], dataset.val.images[:, 0]]).double() / 255
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_NORMALIZATION.mean[0], abs=5e-5)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_NORMALIZATION.std[0], abs=5e-5)
