"""Our in-memory batched loader against torchvision's DataLoader pipeline, on the same CIFAR-shaped data.

Ours: ``iakd.data.TensorSplit.batches(batch, shuffle=True, augment=True)``: uint8 images held on the device,
random crop (zero padding 4) and horizontal flip done for the whole batch by one gather, normalised on the device.
DataLoader: the usual CIFAR pipeline, each image a uint8 HWC array turned into a PIL image, then
RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize, 2 workers, batches moved to the device.
Both are timed for whole epochs (images/s = images / epoch seconds), interleaved, after one warm-up epoch each,
medians. The DataLoader is timed as a training loop usually makes it (workers started each epoch) and with
``persistent_workers=True``; the ratio to beat is against the faster of the two.

    python benchmarks/data.py [--quick] [--device auto|cpu|cuda] [--images 10000] [--batch-size 64] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from iakd.data import CIFAR100_NORMALIZATION, TensorSplit
from iakd.devices import resolve_device


class HWCImages(Dataset):
    """A torchvision-CIFAR-like dataset: uint8 (N, 32, 32, 3) images and int labels, per-image transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _epoch_seconds(batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], device: torch.device) -> float:
    started = time.perf_counter()
    checksum = torch.zeros((), device=device)
    for images, labels in batches():
        checksum += images[:, 0, 0, 0].sum() + labels.sum()  # touch each batch on the device, no host sync
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA where available), cpu or cuda")
    parser.add_argument("--images", type=int, default=None, help="training images (default 10000, quick 5000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per loader (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = args.images or (5000 if args.quick else 10000)
    repeats = args.repeats or (3 if args.quick else 5)

    rng = np.random.default_rng(0)
    images_hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, n)
    norm = CIFAR100_NORMALIZATION

    split = TensorSplit(torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous().to(device),
                        torch.from_numpy(labels).to(device), norm)
    generator = torch.Generator().manual_seed(0)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(norm.mean, norm.std),
    ])
    dataset = HWCImages(images_hwc, labels, transform)
    pin = device.type == "cuda"

    def ours():
        return split.batches(args.batch_size, shuffle=True, augment=True, generator=generator)

    def loader(persistent: bool) -> Callable[[], Iterable]:
        dl = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        pin_memory=pin, persistent_workers=persistent)

        def batches():
            for x, y in dl:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        return batches

    contenders = {
        "ours (TensorSplit.batches)": ours,
        f"DataLoader, {args.workers} workers": loader(False),
        f"DataLoader, {args.workers} workers, persistent": loader(True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    print(f"# data: torch {torch.__version__}, device {device}, {n} images 32x32x3, batch {args.batch_size}, "
          f"{repeats} epochs each after 1 warm-up, interleaved, {torch.get_num_threads()} torch threads")
    for round_index in range(repeats + 1):
        for name, batches in contenders.items():
            elapsed = _epoch_seconds(batches, device)
            if round_index:
                seconds[name].append(elapsed)
    rate = {name: n / statistics.median(s) for name, s in seconds.items()}
    for name, r in rate.items():
        print(f"{name:<40} {r:>10.0f} images/s")
    ours_rate = rate["ours (TensorSplit.batches)"]
    best_loader = max(v for k, v in rate.items() if k.startswith("DataLoader"))
    for name in [k for k in rate if k.startswith("DataLoader")]:
        print(f"ratio ours / {name}: {ours_rate / rate[name]:.1f}x")
    print(f"ratio ours / best DataLoader: {ours_rate / best_loader:.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
