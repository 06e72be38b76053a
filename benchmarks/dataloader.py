"""Does the input pipeline keep up with the model? The train loader's img/s (decode + default augmentation)
against the model's training img/s at the same size, on a generated folder of 224 px JPEGs.

Loader settings compared side by side: decoded-image cache (data.cache=ram|none), worker processes
(data.num_workers), and where augmentation converts to float (medtransfer: crop and flip on uint8, the
rest on float; vs all on uint8, vs all on float). Then the default loader, and loaders reading the files,
feed real training steps, against the same steps fed by tensors already in memory.

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

from medtransfer.data.datamodule import MedicalImageDataModule, default_num_workers
from medtransfer.data.transforms import train_transform
from medtransfer.models.classifier import Classifier
from medtransfer.train import build_data
from medtransfer.utils.compose import compose_config

THREADS = torch.get_num_threads()
AUGMENT = {
    "scale": [0.8, 1.0],
    "hflip": 0.5,
    "rotation": 10,
    "brightness": 0.1,
    "contrast": 0.1,
}  # data=folder's


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--steps", type=int, default=4, help="training steps per model measurement")
    parser.add_argument("--rounds", type=int, default=5)
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


def convert_at(transform: v2.Compose, where: str) -> v2.Compose:
    """The same steps with the conversion to float moved to the front ("float": every augmentation on
    float) or just before Normalize ("uint8": every augmentation on uint8)."""
    to_float = [t for t in transform.transforms if isinstance(t, v2.ToDtype)]
    rest = [t for t in transform.transforms if not isinstance(t, v2.ToDtype)]
    return v2.Compose(to_float + rest if where == "float" else rest[:-1] + to_float + rest[-1:])


def augmentation_times(size: int) -> list[tuple[int, int, int, dict[str, float]]]:
    """ms per image of the default train augmentation, by where it converts to float, on decoded images
    of two sizes (as the RAM cache keeps them), gray and RGB, with 1 thread (a loader worker) and 2."""
    transform = train_transform(size, [0.5], [0.25], AUGMENT)
    variants = {name: convert_at(transform, name) for name in ("uint8", "float")} | {"mixed": transform}
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for side in (256, 1024):
            for channels in (1, 3):
                image = torch.randint(0, 256, (channels, side, side), dtype=torch.uint8)
                times = {}
                for name in ("mixed", "uint8", "float"):
                    rounds = []
                    for _ in range(5):
                        start = time.perf_counter()
                        for _ in range(20):
                            variants[name](image)
                        rounds.append((time.perf_counter() - start) / 20 * 1000)
                    times[name] = statistics.median(rounds)
                rows.append((threads, side, channels, times))
    torch.set_num_threads(THREADS)
    return rows


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
    torch.manual_seed(0)
    augmentation = augmentation_times(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "images", args.images, args.size)
        x = torch.randn(args.batch, 1, args.size, args.size)
        y = torch.randint(0, 2, (args.batch,))
        settings = {  # (data.cache, data.num_workers, augmentation on)
            ("ram", "auto", "mixed"): None,  # medtransfer's order: crop and flip on uint8, the rest on float
            ("ram", "auto", "uint8"): None,
            ("ram", "auto", "float"): None,
            ("ram", 1, "mixed"): None,
            ("none", "auto", "mixed"): None,
            ("none", 1, "mixed"): None,
        }
        setup = {}
        for cache, workers, dtype in settings:
            start = time.perf_counter()
            dm = datamodule(root, args, cache, workers)
            setup[cache] = time.perf_counter() - start  # listing, inspection, and decoding into RAM
            if dtype != "mixed":
                dataset = dm.dataset("train")
                dataset.transform = convert_at(dataset.transform, dtype)
            settings[cache, workers, dtype] = dm
        rates: dict[tuple, list[float]] = {key: [] for key in settings}
        for _ in range(args.rounds):  # alternately, so that every setting sees the same machine
            for key, dm in settings.items():
                rates[key].append(loader_rate(dm))
        # training steps fed by tensors, by the default loader (RAM) and by file loaders, alternately
        feeds = {
            "tensors in memory": [(x, y)],
            "data.cache=ram, num_workers=auto": settings["ram", "auto", "mixed"],
            "data.cache=ram, num_workers=1": settings["ram", 1, "mixed"],
            "data.cache=none, num_workers=auto": settings["none", "auto", "mixed"],
            "data.cache=none, num_workers=1": settings["none", 1, "mixed"],
        }
        fed: dict[str, list[float]] = {name: [] for name in feeds}
        for _ in range(2):
            for name, feed in feeds.items():
                batches = forever(feed if isinstance(feed, list) else feed.train_dataloader())
                fed[name].append(model_rate(args, batches))

    print(f"ms per image of the default augmentation to {args.size} px, by where it converts to float:")
    print("  threads  decoded size  channels     mixed (default)   all on uint8   all on float")
    for threads, side, channels, times in augmentation:
        print(
            f"  {threads:7d}  {side:12d}  {channels:8d}  {times['mixed']:16.2f}  {times['uint8']:13.2f}"
            f"  {times['float']:13.2f}"
        )
    model = base = statistics.median(fed["tensors in memory"])
    auto = default_num_workers(on_gpu=False)
    print(
        f"{args.images} JPEGs {args.size} px (grayscale), batch {args.batch}, default augmentation; "
        f"{torch.get_num_threads()} torch threads; median of {args.rounds} rounds; num_workers=auto is "
        f"{auto} here (the CPU trains)"
    )
    print(f"model ({args.backbone}, full fine-tuning) from tensors in memory: {model:.1f} img/s")
    header = ("data.cache", "num_workers", "augment on", "loader img/s", "loader/model", "set-up s")
    print("  ".join(f"{h:>12}" for h in header))
    for (cache, workers, dtype), values in rates.items():
        rate = statistics.median(values)
        cells = (cache, str(workers), dtype, f"{rate:.1f}", f"{rate / model:.1f}", f"{setup[cache]:.1f}")
        print("  ".join(f"{c:>12}" for c in cells))
    ratio = statistics.median(rates["ram", "auto", "mixed"]) / model
    print(f"default loader / model: {ratio:.1f}  (target >= 2)")
    print("training img/s by what feeds it (steps alternate between the feeds, median of 2 rounds):")
    for name, values in fed.items():
        print(f"  {name:36s} {statistics.median(values):6.2f} img/s  {statistics.median(values) / base:.3f}")


if __name__ == "__main__":
    main()
