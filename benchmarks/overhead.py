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
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from medtransfer.data.datamodule import MedicalImageDataModule, Split, SplitData
from medtransfer.train import build_model, build_trainer
from medtransfer.utils.compose import compose_config

LR, WEIGHT_DECAY = 1e-3, 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round and side")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args()


class InMemory(MedicalImageDataModule):
    """Random images already in memory, on the training device, as normalized float batches: each
    batch is one index into the tensors (no per-image work, no copy), so the loop measures the training
    alone. The data module around them gives the callbacks their summary and sample images."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        super().__init__(image_size=args.size, batch_size=args.batch, num_workers=0, augment=None)
        self.count, self.classes_, self.device = args.batch * args.steps, args.classes, device
        self.tensors: TensorDataset | None = None

    def load_splits(self) -> SplitData:
        rng = np.random.default_rng(0)
        size = self.image_size

        def split(n: int) -> Split:
            images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            return Split(labels=rng.integers(0, self.classes_, n), images=images)

        splits = {"train": split(self.count), "val": split(self.batch_size), "test": split(self.batch_size)}
        return SplitData(classes=[str(c) for c in range(self.classes_)], splits=splits, channels=3)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            super().setup(stage)
            dataset = self.dataset("train")
            x = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(self.device)
            self.tensors = TensorDataset(x, dataset.labels.to(self.device))

    def train_dataloader(self) -> DataLoader:
        batches = BatchSampler(RandomSampler(range(self.count)), self.batch_size, drop_last=True)
        return DataLoader(self.tensors, batch_size=None, sampler=batches)


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

    def epoch(self, data: InMemory) -> tuple[float, float]:
        """(seconds in the training loop, seconds in all): the same here."""
        start = time.perf_counter()
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
        seconds = time.perf_counter() - start
        return seconds, seconds


class TrainingLoopTimer(L.Callback):
    """Seconds from the start of the training epoch to its end, before the checkpoints are written."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.start


class Medtransfer:
    """The composed train config's model and Trainer, fitting one epoch per call."""

    def __init__(self, args: argparse.Namespace, run_dir: Path):
        overrides = [
            f"model.backbone={args.backbone}",
            "model.weights=null",
            f"optimizer.lr={LR}",
            f"optimizer.weight_decay={WEIGHT_DECAY}",
            *(["trainer=gpu"] if args.accelerator == "gpu" else ["trainer.accelerator=cpu"]),
            f"trainer.precision={args.precision}",
            f"model.channels_last={args.channels_last}",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=0",  # the bare loop does not validate either
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "callbacks.rich_progress_bar=null",
            "print_config=false",
        ]
        self.cfg = compose_config("train", run_dir, overrides)
        self.args, self.run_dir = args, run_dir

    def epoch(self, data: InMemory) -> tuple[float, float]:
        """(seconds in the training loop, seconds of the whole `fit`)."""
        torch.manual_seed(0)
        cfg = self.cfg
        model = build_model(cfg, data)  # sized by the data module, as medtransfer-train does
        trainer = build_trainer(cfg, model)
        timer = TrainingLoopTimer()
        trainer.callbacks.insert(0, timer)  # before the checkpoint callbacks, which Lightning puts last
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        synchronize(model.device)
        return timer.seconds, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    L.seed_everything(0, verbose=False)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    torch.backends.cudnn.benchmark = args.accelerator == "gpu"  # as trainer=gpu sets it for medtransfer
    data = InMemory(args, device)
    data.setup()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"bare": Bare(args, device), "medtransfer": Medtransfer(args, Path(tmp) / "run")}
        for side in sides.values():  # warm-up: allocator, cudnn autotuning, first checkpoint write
            side.epoch(data)
        loop: dict[str, list[float]] = {name: [] for name in sides}
        whole: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):  # alternately, so both see the same machine; who goes first too
            for name, side in sorted(sides.items(), reverse=bool(round_ % 2)):
                seconds, total = side.epoch(data)
                loop[name].append(seconds)
                whole[name].append(total)
    images = args.batch * args.steps
    rates = {name: images / statistics.median(values) for name, values in loop.items()}
    ratio = rates["medtransfer"] / rates["bare"]
    fit_rate = images / statistics.median(whole["medtransfer"])
    print(
        f"{args.backbone}, {args.size} px, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
        f"{args.accelerator} ({torch.get_num_threads()} threads), {args.precision}"
        f"{', channels_last' if args.channels_last else ''}; median of the rounds"
    )
    for name, rate in rates.items():
        spread = ", ".join(f"{images / s:.1f}" for s in loop[name])
        print(f"  {name:12s} {rate:8.1f} img/s in the training loop   (rounds: {spread})")
    print(f"medtransfer / bare: {ratio:.3f}  (target >= 0.95)")
    fixed = statistics.median(whole["medtransfer"]) - statistics.median(loop["medtransfer"])
    print(
        f"whole medtransfer fit: {fit_rate:.1f} img/s; {fixed:.2f} s per fit outside the training loop "
        "(set-up, checkpoints, the end-of-fit validation pass for the threshold, Grad-CAM grid)"
    )
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        result = {
            "bare_img_s": rates["bare"],
            "medtransfer_img_s": rates["medtransfer"],
            "ratio": ratio,
            "medtransfer_fit_img_s": fit_rate,
            "fit_seconds_outside_loop": fixed,
            "config": config,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
