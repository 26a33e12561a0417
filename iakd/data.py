"""Datasets for image classification: loading, train/val/test splits and batching with augmentation.

Small datasets (digits, CIFAR) live entirely on the training device as uint8 tensors and are augmented a whole
batch at a time with tensor ops; this avoids a DataLoader and keeps the GPU fed. Large ImageFolder datasets
(ImageNet, Tiny-ImageNet) are read from disk through a DataLoader with workers. Every random choice (shuffle
order, crop offsets, flips) is drawn from a caller-supplied ``torch.Generator`` so that a run can be repeated
and resumed exactly.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from iakd.errors import ConfigError, DataError
from iakd.idx import read_idx

if TYPE_CHECKING:  # torchvision is imported where it is used (ImageFolder, the CIFAR download): it takes seconds
    import torchvision
    from torchvision import transforms

DATASETS: tuple[str, ...] = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder")


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of pixel values scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10_NORMALIZATION = Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
CIFAR100_NORMALIZATION = Normalization(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))
IMAGENET_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# The grayscale sets' one channel, repeated for the three input channels every zoo network takes.
FASHION_MNIST_NORMALIZATION = Normalization(mean=(0.2860,) * 3, std=(0.3530,) * 3)
MNIST_NORMALIZATION = Normalization(mean=(0.1307,) * 3, std=(0.3081,) * 3)

# Digits has no official test split; this seed fixes the held-out test images for every run and every
# split_seed, so that test scores stay comparable.
_DIGITS_TEST_SEED = 20_240_601
_DIGITS_TEST_FRACTION = 0.2
# Offsets split_seed for the draw of a smaller training set, so it is not the validation split's permutation.
_TRAIN_SUBSET_SALT = 7_919


def _check_batching(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")


class TensorSplit:
    """A split held in memory: images uint8 (N, C, H, W) and labels int64 (N,), both on one device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalization: Normalization, *,
                 flip: bool = True) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be int64 ({images.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
        if labels.device != images.device:
            raise ValueError(f"images on {images.device} but labels on {labels.device}")
        self.images = images
        self.labels = labels
        self.normalization = normalization
        self.flip = flip  # whether augmentation mirrors images (not for MNIST: a mirrored 2 is no 2)
        # Shaped for broadcasting over (B, C, H, W); built once instead of per batch.
        self._mean = torch.tensor(normalization.mean, device=images.device).view(1, -1, 1, 1)
        self._std = torch.tensor(normalization.std, device=images.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        """The device holding the images and labels (and receiving the batches)."""
        return self.images.device

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None = None,
        augment_generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (float32 normalised images, int64 labels) batches on the split's device.

        The shuffle order is drawn on the CPU from ``generator``, crop offsets and flips from
        ``augment_generator`` (``generator`` when None; torch's default generator when both are None), so
        generators in a known state reproduce the same batches exactly.
        Augmentation is a random crop with zero padding of image_size // 8 plus, where the split allows it
        (``flip``), a random horizontal flip.
        """
        _check_batching(batch_size)
        augment_generator = generator if augment_generator is None else augment_generator
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            images = self.images[index]
            if augment:
                images = crop_and_flip(images, augment_generator, flip=self.flip)
            yield self._normalize(images), self.labels[index]

    def subset(self, positions: torch.Tensor) -> TensorSplit:
        """The split restricted to the images at ``positions`` (in that order)."""
        index = positions.to(self.device)
        return TensorSplit(self.images[index], self.labels[index], self.normalization, flip=self.flip)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self._mean) / self._std


def crop_and_flip(images: torch.Tensor, generator: torch.Generator | None = None, *,
                  flip: bool = True) -> torch.Tensor:
    """Randomly crop (after zero padding by H // 8) and, with ``flip``, horizontally flip each image of a uint8
    batch. The flips are drawn either way, so the generator advances alike.

    The whole batch is done by one gather; offsets and flips are drawn on the CPU from ``generator`` and sent
    to a GPU in one copy from pinned memory that does not wait for the GPU (a plain copy would synchronise).
    """
    b, _, h, w = images.shape
    pad = h // 8
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    flips = (torch.rand(b, 1, generator=generator) < 0.5) & flip
    draws = torch.cat([dy, dx, flips.long()], dim=1)
    if images.device.type == "cuda":
        draws = draws.pin_memory().to(images.device, non_blocking=True)
    dy, dx, flips = draws[:, :1], draws[:, 1:2], draws[:, 2:].bool()
    rows = dy + torch.arange(h, device=images.device)
    columns = torch.arange(w, device=images.device)
    # A flip reads the crop's columns right to left, so cropping and flipping is a single index computation.
    cols = dx + torch.where(flips, columns.flip(0), columns)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    channels_last = padded.permute(0, 2, 3, 1)
    return channels_last[batch, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2).contiguous()


class _Indexed(TorchDataset):
    """Images of an ImageFolder at given indices, each transformed under its own seed.

    Seeding per sample (epoch seed + position) makes augmentation independent of the number of workers and of
    which worker reads which image.
    """

    def __init__(self, folder: torchvision.datasets.ImageFolder, indices: list[int],
                 transform: transforms.Compose, seed: int | None) -> None:
        self.folder = folder
        self.indices = indices
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        path, label = self.folder.samples[self.indices[position]]
        try:
            image = self.folder.loader(path)
        except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"imagefolder: {path} is not a readable image ({type(error).__name__}); remove or "
                            "replace it") from None
        if self.seed is None:
            return self.transform(image), label
        # torchvision transforms draw from the global RNG; fork it so the caller's RNG state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed + position) % 2**63)
            return self.transform(image), label


class FolderSplit:
    """An ImageFolder split read from disk through a DataLoader with workers (ImageNet / Tiny-ImageNet layout)."""

    def __init__(
        self,
        folder: torchvision.datasets.ImageFolder,
        indices: list[int],
        *,
        image_size: int,
        normalization: Normalization,
        device: str | torch.device = "cpu",
        num_workers: int = 4,
    ) -> None:
        self.folder = folder
        self.indices = list(indices)
        self.image_size = image_size
        self.normalization = normalization
        self.device = torch.device(device)
        self.num_workers = num_workers
        from torchvision import transforms

        normalize = transforms.Normalize(normalization.mean, normalization.std)
        self.train_transform = transforms.Compose([
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ])
        self.eval_transform = transforms.Compose([
            transforms.Resize(int(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ])

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: torch.Tensor) -> FolderSplit:
        """The split restricted to the images at ``positions`` (in that order)."""
        return FolderSplit(self.folder, [self.indices[i] for i in positions.tolist()], image_size=self.image_size,
                           normalization=self.normalization, device=self.device, num_workers=self.num_workers)

    @property
    def labels(self) -> torch.Tensor:
        """Labels of the split in index order, int64 on the CPU (read from file names, no image decoding)."""
        return torch.tensor([self.folder.targets[i] for i in self.indices], dtype=torch.int64)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None = None,
        augment_generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (float32 normalised images, int64 labels) batches on the split's device.

        Training augmentation is RandomResizedCrop + horizontal flip, evaluation is Resize + CenterCrop. The
        shuffle order is drawn from ``generator``, a per-epoch augmentation seed from ``augment_generator``
        (``generator`` when None).
        """
        _check_batching(batch_size)
        augment_generator = generator if augment_generator is None else augment_generator
        order = torch.randperm(len(self), generator=generator).tolist() if shuffle else list(range(len(self)))
        seed = int(torch.randint(0, 2**62, (1,), generator=augment_generator)) if augment else None
        dataset = _Indexed(self.folder, self.indices, self.train_transform if augment else self.eval_transform, seed)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=order,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        try:
            for images, labels in loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, torch.int64,
                                                                            non_blocking=True)
        except DataError as error:  # from a worker it comes back wrapped in the worker's traceback: keep its line
            line = str(error).strip().splitlines()[-1].removeprefix(f"{DataError.__module__}.DataError: ")
            raise DataError(line) from None



@dataclass
class Dataset:
    """A dataset with its train, validation (carved from the official training set) and test splits."""

    name: str
    num_classes: int
    image_size: int
    normalization: Normalization
    train: TensorSplit | FolderSplit
    val: TensorSplit | FolderSplit
    test: TensorSplit | FolderSplit


def split_indices(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split range(n) into disjoint (train, val) index tensors, val being round(n * val_fraction) of them.

    The permutation comes from ``torch.Generator().manual_seed(split_seed)``; each part is sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = round(n * val_fraction)
    return permutation[n_val:].sort().values, permutation[:n_val].sort().values


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = False,
    image_size: int | None = None,
    num_workers: int = 4,
    train_size: int | None = None,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) with train/val/test splits.

    ``data_dir`` is the folder holding the CIFAR folders, or the ``train``/``val`` folders for ``imagefolder``.
    The validation split is ``val_fraction`` of the official training set, chosen by ``split_seed``.
    In-memory datasets are placed on ``device``; batches always arrive on ``device``. ``train_size`` keeps
    that many images of the training split (a subset fixed by ``split_seed``; validation and test unchanged).
    """
    dataset = _load(name, Path(data_dir), val_fraction, split_seed, device, download, image_size, num_workers)
    if train_size is None:
        return dataset
    if not 0 < train_size <= len(dataset.train):
        raise ConfigError(f"data.train_size: {train_size} is not in [1, {len(dataset.train)}], the images of the "
                          f"{name} training split")
    generator = torch.Generator().manual_seed(split_seed + _TRAIN_SUBSET_SALT)
    keep = torch.randperm(len(dataset.train), generator=generator)[:train_size].sort().values
    return dataclasses.replace(dataset, train=dataset.train.subset(keep))


def _load(name: str, data_dir: Path, val_fraction: float, split_seed: int, device: str | torch.device,
          download: bool, image_size: int | None, num_workers: int) -> Dataset:
    if name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits(val_fraction, split_seed, device, image_size or 32)
    if name in IDX_DATASETS:
        if image_size not in (None, 28):
            raise ConfigError(f"data.image_size: {name} images are 28x28, got {image_size}")
        return _load_idx_dataset(name, data_dir, val_fraction, split_seed, device)
    if name in ("cifar10", "cifar100"):
        if image_size not in (None, 32):
            raise ConfigError(f"data.image_size: {name} images are 32x32, got {image_size}")
        return _load_cifar(name, data_dir, val_fraction, split_seed, device, download)
    return _load_imagefolder(data_dir, val_fraction, split_seed, device, image_size or 224, num_workers)


def _tensor_dataset(name: str, num_classes: int, normalization: Normalization, train_images: torch.Tensor,
                    train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                    val_fraction: float, split_seed: int, device: str | torch.device, *, flip: bool = True) -> Dataset:
    train_index, val_index = split_indices(len(train_labels), val_fraction, split_seed)

    def split(images: torch.Tensor, labels: torch.Tensor) -> TensorSplit:
        return TensorSplit(images.to(device), labels.to(device), normalization, flip=flip)

    return Dataset(
        name=name,
        num_classes=num_classes,
        image_size=int(train_images.shape[-1]),
        normalization=normalization,
        train=split(train_images[train_index], train_labels[train_index]),
        val=split(train_images[val_index], train_labels[val_index]),
        test=split(test_images, test_labels),
    )


def _load_digits(val_fraction: float, split_seed: int, device: str | torch.device, image_size: int) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    resized = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = resized.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)

    rest, test = split_indices(len(labels), _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    train_index, _ = split_indices(len(rest), val_fraction, split_seed)
    # Statistics of the training images only, so nothing about val/test leaks into the inputs.
    train_pixels = images[rest[train_index]].float() / 255.0
    normalization = Normalization(
        mean=tuple(train_pixels.mean(dim=(0, 2, 3)).tolist()),
        std=tuple(train_pixels.std(dim=(0, 2, 3)).tolist()),
    )
    return _tensor_dataset("digits", 10, normalization, images[rest], labels[rest], images[test], labels[test],
                           val_fraction, split_seed, device)


@dataclass(frozen=True)
class IdxDataset:
    """One of the MNIST-format datasets: its four official IDX files (gzipped or not), classes and preparation."""

    title: str
    normalization: Normalization
    # Fashion-MNIST's classes survive a mirror (a left shoe is a shoe); MNIST's digits do not (a mirrored 2, 3...)
    flip: bool
    how: str  # how to get the files, for every message about a missing or bad one
    torchvision_folder: str  # where torchvision's own class keeps the same files: <data.dir>/<this>/raw
    num_classes: int = 10
    image_size: int = 28


IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IDX_DATASETS: dict[str, IdxDataset] = {
    "fashion_mnist": IdxDataset(
        "Fashion-MNIST", FASHION_MNIST_NORMALIZATION, flip=True, torchvision_folder="FashionMNIST",
        how="install them with `apt-get install dataset-fashion-mnist` (data.dir: /usr/share/datasets/fashion-mnist)"
            " or put the four official files (Zalando's fashion-mnist repository, data/fashion) in data.dir"),
    "mnist": IdxDataset(
        "MNIST", MNIST_NORMALIZATION, flip=False, torchvision_folder="MNIST",
        how="put the four official MNIST IDX files (train-images-idx3-ubyte.gz, ...) in data.dir"),
}


def idx_files(name: str, data_dir: str | Path) -> dict[str, Path]:
    """The four IDX files of dataset ``name`` in ``data_dir`` (or in torchvision's ``<name>/raw`` below it), each
    as found, gzipped or not; a DataError naming the folder and saying how to get the files when one is missing."""
    spec, data_dir = IDX_DATASETS[name], Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data.dir: {data_dir} not found; {name} needs its four IDX files there: {spec.how}")
    for folder in (data_dir, data_dir / spec.torchvision_folder / "raw"):
        found = {}
        for part, stem in IDX_FILES.items():
            found[part] = next((folder / f for f in (stem, stem + ".gz") if (folder / f).is_file()), None)
        if all(found.values()):
            return found
    missing = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values()
                        if not any((data_dir / f).is_file() for f in (stem, f"{stem}.gz")))
    raise DataError(f"data.dir: {data_dir} lacks the {spec.title} file(s) {missing}; {spec.how}")


def read_idx_split(images_path: Path, labels_path: Path, spec: IdxDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """One split from its images and labels files: (uint8 (N, 3, 28, 28), int64 (N,)), checked to agree."""
    images = read_idx(images_path, ndim=3, how=spec.how)
    labels = read_idx(labels_path, ndim=1, how=spec.how)
    if images.shape[1:] != (spec.image_size, spec.image_size):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, {spec.title} has "
                        f"{spec.image_size}x{spec.image_size}; {spec.how}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path.name}; "
                        f"{spec.how}")
    if len(labels) and labels.max() >= spec.num_classes:
        raise DataError(f"{labels_path}: labels must be in [0, {spec.num_classes}), found {labels.max()}; {spec.how}")
    pixels = torch.from_numpy(images.copy()).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return pixels, torch.from_numpy(labels.astype(np.int64))


def _load_idx_dataset(name: str, data_dir: Path, val_fraction: float, split_seed: int,
                      device: str | torch.device) -> Dataset:
    spec, files = IDX_DATASETS[name], idx_files(name, data_dir)
    train_images, train_labels = read_idx_split(files["train_images"], files["train_labels"], spec)
    test_images, test_labels = read_idx_split(files["test_images"], files["test_labels"], spec)
    return _tensor_dataset(name, spec.num_classes, spec.normalization, train_images, train_labels, test_images,
                           test_labels, val_fraction, split_seed, device, flip=spec.flip)


# Globals a CIFAR pickle may name: numpy's array reconstruction, plus _codecs.encode, which Python 3 uses to
# store bytes in protocol-2 pickles. Anything else (os.system, ...) could run code while unpickling.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays in protocol-5 pickles
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"{self.path}: refusing to unpickle global {module}.{name}; only numpy arrays, "
                            "lists and numbers are allowed in a CIFAR batch file")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one official CIFAR python-version batch file as (uint8 (N, 3, 32, 32), int64 (N,)) tensors.

    The file is unpickled with only numpy array globals allowed; anything missing or malformed raises
    :class:`DataError` naming the file.
    """
    how = "re-download it with data.download=true (after deleting the folder) or replace it with the official file"
    if not path.is_file():
        raise DataError(f"{path}: CIFAR batch file not found; {how}")
    try:
        with path.open("rb") as file:
            batch = _ArrayUnpickler(file, path).load()
    except DataError:
        raise
    except Exception as error:  # a truncated or corrupt pickle can fail in many ways; all mean a bad file
        raise DataError(f"{path}: cannot read CIFAR batch ({type(error).__name__}: {error}); {how}") from error
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: not a CIFAR batch (needs keys b'data' and {label_key!r}); {how}")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {shape}; {how}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: {label_key!r} is not a list of integers; {how}") from error
    if label_array.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {label_key!r} has shape {label_array.shape}; {how}")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= num_classes):
        raise DataError(f"{path}: labels must be in [0, {num_classes}), got [{label_array.min()}, "
                        f"{label_array.max()}]; {how}")
    # Rows are the red, green and blue planes of 32x32 images, one after another.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(label_array)


@dataclass(frozen=True)
class CifarLayout:
    """One CIFAR variant's official python-version files: where they lie under ``data.dir`` and how they read."""

    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str  # the label names: not read here, but part of the official archive
    label_key: bytes
    num_classes: int
    downloader: str  # attribute of torchvision.datasets; looked up late so tests can replace it

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


# The one home of the CIFAR file layout (iakd.prepare_data fetches into it).
CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                           "batches.meta", b"labels", 10, "CIFAR10"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), "test", "meta", b"fine_labels", 100, "CIFAR100"),
}


def check_data_folder(name: str, data_dir: str | Path, *, download: bool = False) -> None:
    """The folders a dataset is read from exist (a CIFAR folder may be missing when it will be downloaded);
    a ConfigError naming ``data.dir`` otherwise. Cheap: nothing is read."""
    data_dir = Path(data_dir)
    if name in IDX_DATASETS:
        idx_files(name, data_dir)
    elif name in CIFAR_LAYOUTS:
        folder = data_dir / CIFAR_LAYOUTS[name].folder
        if not folder.is_dir() and not download:
            raise DataError(f"data.dir: {folder} not found; put the official {name} python-version files there "
                            "(python -m iakd.prepare_data) or set data.download=true")
    elif name == "imagefolder":
        for part in ("train", "val"):
            if not (data_dir / part).is_dir():
                raise DataError(f"data.dir: {data_dir / part} not found; imagefolder needs train/ and val/ with one "
                                "folder per class")


def _load_cifar(name: str, data_dir: Path, val_fraction: float, split_seed: int, device: str | torch.device,
                download: bool) -> Dataset:
    import torchvision

    layout = CIFAR_LAYOUTS[name]
    folder = data_dir / layout.folder
    normalization = CIFAR10_NORMALIZATION if name == "cifar10" else CIFAR100_NORMALIZATION
    if not folder.is_dir() and download:
        # torchvision only fetches and unpacks the archive here; reading goes through our own checked reader.
        getattr(torchvision.datasets, layout.downloader)(root=str(data_dir), train=True, download=True)
    check_data_folder(name, data_dir)  # the door's own message, for library callers too
    parts = [read_cifar_batch(folder / file, layout.label_key, layout.num_classes) for file in layout.train_files]
    train_images = torch.cat([images for images, _ in parts])
    train_labels = torch.cat([labels for _, labels in parts])
    test_images, test_labels = read_cifar_batch(folder / layout.test_file, layout.label_key, layout.num_classes)
    return _tensor_dataset(name, layout.num_classes, normalization, train_images, train_labels, test_images,
                           test_labels, val_fraction, split_seed, device)


def _image_folder(path: Path) -> torchvision.datasets.ImageFolder:
    how = "arrange the images as <class>/<image>.png|jpg (ImageNet layout)"
    if not path.is_dir():
        raise DataError(f"imagefolder: folder {path} not found; {how}")
    import torchvision

    try:
        return torchvision.datasets.ImageFolder(str(path))
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"imagefolder: cannot use {path}: {error}; {how}") from error


def _load_imagefolder(data_dir: Path, val_fraction: float, split_seed: int, device: str | torch.device,
                      image_size: int, num_workers: int) -> Dataset:
    train_folder = _image_folder(data_dir / "train")
    test_folder = _image_folder(data_dir / "val")
    if test_folder.classes != train_folder.classes:
        # ImageFolder numbers classes by sorted folder name; different folders would silently mislabel.
        only = sorted(set(test_folder.classes) ^ set(train_folder.classes))
        raise DataError(f"imagefolder: {data_dir / 'val'} must have the same class folders as "
                        f"{data_dir / 'train'} (in one only: {', '.join(only[:5])}{' ...' if len(only) > 5 else ''})")
    train_index, val_index = split_indices(len(train_folder), val_fraction, split_seed)

    def split(folder: torchvision.datasets.ImageFolder, indices: list[int]) -> FolderSplit:
        return FolderSplit(folder, indices, image_size=image_size, normalization=IMAGENET_NORMALIZATION,
                           device=device, num_workers=num_workers)

    return Dataset(
        name="imagefolder",
        num_classes=len(train_folder.classes),
        image_size=image_size,
        normalization=IMAGENET_NORMALIZATION,
        train=split(train_folder, train_index.tolist()),
        val=split(train_folder, val_index.tolist()),
        test=split(test_folder, list(range(len(test_folder)))),
    )
