"""Framework overhead: a bare PyTorch training loop vs medtransfer's module + Trainer, same ResNet, same
data (already in memory), batch size, optimizer and precision, run alternately in one process.

The medtransfer side is the real thing: the composed train config (AdamW, warmup-cosine schedule, default
callbacks, checkpoints, TensorBoard logging; progress bar off), built by `build_model`/`build_trainer`
and timed over the whole `trainer.fit` call (set-up and the end-of-epoch checkpoint included). The bare
side is the loop anyone would write: forward, cross-entropy, backward, AdamW step.

    python benchmarks/overhead.py                        # ResNet-18, 64 px, batch 64, CPU
    python benchmarks/overhead.py --backbone resnet50 --size 224 --batch 128 --accelerator gpu \
        --precision bf16-mixed --channels-last --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medtransfer.config import compose_config
from medtransfer.data.datamodule import MedicalImageDataModule, Split, SplitData
from medtransfer.train import build_trainer

LR, WEIGHT_DECAY = 1e-3, 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args()


class InMemory(MedicalImageDataModule):
    """Random uint8 images held in RAM (as MedMNIST files and the decoded-image cache are), no
    augmentation: the loader both sides iterate."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(image_size=args.size, batch_size=args.batch, num_workers=0, augment=None)
        self.count, self.classes_ = args.batch * args.steps, args.classes

    def load_splits(self) -> SplitData:
        rng = np.random.default_rng(0)
        size = self.image_size

        def split(n: int) -> Split:
            images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            return Split(labels=rng.integers(0, self.classes_, n), images=images)

        splits = {"train": split(self.count), "val": split(self.batch_size), "test": split(self.batch_size)}
        return SplitData(classes=[str(c) for c in range(self.classes_)], splits=splits, channels=3)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bare:
    """The plain loop: a torchvision ResNet, AdamW, autocast for mixed precision."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        torch.manual_seed(0)
        self.model = torchvision.models.get_model(args.backbone, weights=None, num_classes=args.classes)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model.to(device, memory_format=self.memory_format).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
        self.device = device

    def epoch(self, data: InMemory) -> None:
        for x, y in data.train_dataloader():
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with self.autocast():
                loss = F.cross_entropy(self.model(x), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)


class Medtransfer:
    """The composed train config's model and Trainer, fitting one epoch per call."""

    def __init__(self, args: argparse.Namespace, run_dir: Path):
        overrides = [
            f"model.backbone={args.backbone}",
            "model.weights=null",
            f"optimizer.lr={LR}",
            f"optimizer.weight_decay={WEIGHT_DECAY}",
            f"trainer.accelerator={args.accelerator}",
            f"trainer.precision={args.precision}",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=0",  # the bare loop does not validate either
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "callbacks.rich_progress_bar=null",
            "print_config=false",
        ]
        if args.channels_last:
            overrides.append("model.channels_last=true")
        self.cfg = compose_config("train", run_dir, overrides)
        self.args, self.run_dir = args, run_dir

    def epoch(self, data: InMemory) -> None:
        torch.manual_seed(0)
        cfg = self.cfg
        model = instantiate(
            cfg.model,
            num_classes=self.args.classes,
            image_size=self.args.size,
            optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
            scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
            finetune=OmegaConf.to_container(cfg.finetune, resolve=True),
            _recursive_=False,
        )
        trainer = build_trainer(cfg, model, self.run_dir)
        trainer.fit(model, datamodule=data)
        synchronize(model.device)


def main() -> None:
    args = parse_args()
    L.seed_everything(0, verbose=False)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    data = InMemory(args)
    data.setup()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"bare": Bare(args, device), "medtransfer": Medtransfer(args, Path(tmp) / "run")}
        for side in sides.values():  # warm-up: allocator, cudnn autotuning, first checkpoint write
            side.epoch(data)
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, side in sides.items():
                start = time.perf_counter()
                side.epoch(data)
                seconds[name].append(time.perf_counter() - start)
    images = args.batch * args.steps
    rates = {name: images / statistics.median(values) for name, values in seconds.items()}
    ratio = rates["medtransfer"] / rates["bare"]
    print(
        f"{args.backbone}, {args.size} px, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
        f"{args.accelerator} ({torch.get_num_threads()} threads), {args.precision}"
        f"{', channels_last' if args.channels_last else ''}; median of the rounds"
    )
    for name, rate in rates.items():
        spread = ", ".join(f"{images / s:.1f}" for s in seconds[name])
        print(f"  {name:12s} {rate:8.1f} img/s   (rounds: {spread})")
    print(f"medtransfer / bare: {ratio:.3f}  (target >= 0.95)")
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(
            json.dumps(
                {
                    "bare_img_s": rates["bare"],
                    "medtransfer_img_s": rates["medtransfer"],
                    "ratio": ratio,
                    "config": config,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
