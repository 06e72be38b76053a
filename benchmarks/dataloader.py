"""Does the input pipeline keep up with the model? The train loader's img/s (decode + default augmentation)
against the model's training img/s at the same size, on a generated folder of 224 px JPEGs.

Loader settings compared side by side: decoded-image cache (data.cache=ram|none), worker processes
(data.num_workers), and augmentation on uint8 (medtransfer's order) vs on float. Then the default loader
feeds real training steps, against the same steps fed by tensors already in memory.

    python benchmarks/dataloader.py [--images 600] [--size 224] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from medtransfer.config import compose_config
from medtransfer.data.datamodule import MedicalImageDataModule, default_num_workers
from medtransfer.models.classifier import Classifier
from medtransfer.train import build_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--steps", type=int, default=4, help="training steps per model measurement")
    return parser.parse_args()


def make_folder(root: Path, count: int, size: int) -> Path:
    """Two classes of grayscale JPEGs (quality 90): smooth anatomy-like blobs plus noise, like a scan."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        label = i % 2
        cx, cy, r = rng.uniform(0.3, 0.7, 3) * [1, 1, 0.5]
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
        image = 60 + 120 * blob + (40 if label else 0) * (xx > 0.5) + rng.normal(0, 12, (size, size))
        folder = root / ("finding" if label else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def datamodule(
    root: Path, args: argparse.Namespace, cache: str, workers: str | int
) -> MedicalImageDataModule:
    cfg = compose_config(
        "train",
        root.parent / "run",
        [
            f"data.root={root}",
            f"data.image_size={args.size}",
            f"data.batch_size={args.batch}",
            f"data.cache={cache}",
            f"data.num_workers={workers}",
            "model.weights=null",
        ],
    )
    return build_data(cfg)


def float_first(transform: v2.Compose) -> v2.Compose:
    """The same steps with the conversion to float moved before the augmentation."""
    to_float = [t for t in transform.transforms if isinstance(t, v2.ToDtype)]
    rest = [t for t in transform.transforms if not isinstance(t, v2.ToDtype)]
    return v2.Compose(to_float + rest)


def loader_rate(dm: MedicalImageDataModule) -> float:
    """img/s of the train loader over one epoch, after a first epoch that starts the workers."""
    loader = dm.train_dataloader()
    for _ in loader:
        pass
    start = time.perf_counter()
    count = sum(len(y) for _, y in loader)
    return count / (time.perf_counter() - start)


def model_rate(args: argparse.Namespace, batches) -> float:
    """img/s of full fine-tuning steps (forward, backward, AdamW) fed by `batches` (an iterator)."""
    torch.manual_seed(0)
    model = Classifier(backbone=args.backbone, weights=None, num_classes=2, in_channels=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(*next(batches))  # warm-up
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        x, y = next(batches)
        step(x, y)
        times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times)


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "images", args.images, args.size)
        x = torch.randn(args.batch, 1, args.size, args.size)
        y = torch.randint(0, 2, (args.batch,))
        model = model_rate(args, forever([(x, y)]))
        auto = default_num_workers(in_memory=True)
        settings = [("ram", "auto"), ("ram", 1), ("ram", 0), ("none", "auto"), ("none", 1), ("none", 0)]
        rows = []
        default = None
        for cache, workers in settings:
            start = time.perf_counter()
            dm = datamodule(root, args, cache, workers)
            setup = time.perf_counter() - start
            rate = loader_rate(dm)
            rows.append((cache, workers, "uint8", rate, setup))
            if (cache, workers) == ("ram", "auto"):
                default = dm
                dataset = dm.dataset("train")
                uint8_transform = dataset.transform
                dataset.transform = float_first(uint8_transform)
                rows.append((cache, workers, "float", loader_rate(dm), setup))
                dataset.transform = uint8_transform
        fed = model_rate(args, forever(default.train_dataloader()))

    print(
        f"{args.images} JPEGs {args.size} px (grayscale), batch {args.batch}, default augmentation; "
        f"{torch.get_num_threads()} torch threads; num_workers=auto -> {auto} here (data in RAM)"
    )
    print(f"model ({args.backbone}, full fine-tuning) from tensors in memory: {model:.1f} img/s")
    print(
        f"{'data.cache':>10} {'num_workers':>11} {'augment on':>10} {'loader img/s':>12} {'loader/model':>12} {'set-up s':>8}"
    )
    for cache, workers, dtype, rate, setup in rows:
        print(f"{cache:>10} {workers!s:>11} {dtype:>10} {rate:12.1f} {rate / model:12.1f} {setup:8.1f}")
    ratio = rows[0][3] / model
    print(f"default loader / model: {ratio:.1f}  (target >= 2)")
    print(
        f"training fed by the default loader: {fed:.1f} img/s, {fed / model:.3f} of training fed by tensors"
    )


if __name__ == "__main__":
    main()
