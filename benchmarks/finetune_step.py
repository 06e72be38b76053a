"""Time of one training step (forward, backward, optimizer step) of ResNet-18 at 64 px: linear probing vs
full fine-tuning, measured alternately in one process, same batch and optimizer.

    python benchmarks/finetune_step.py [--size 64] [--batch 32] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medtransfer.finetune.strategies import Full, LinearProbe
from medtransfer.models.classifier import Classifier

STRATEGIES = {"full": Full, "linear_probe": LinearProbe}


def make(strategy: str, channels: int) -> tuple[Classifier, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Classifier(
        backbone="resnet18",
        weights=None,
        num_classes=2,
        in_channels=channels,
        finetune=STRATEGIES[strategy](),
    ).train()
    return model, model.configure_optimizers()


def step(model: Classifier, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = model.loss(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    y = torch.randint(0, 2, (args.batch,))
    setups = {name: make(name, args.channels) for name in STRATEGIES}
    for model, optimizer in setups.values():  # warm up
        step(model, optimizer, x, y)
    times: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    for _ in range(args.rounds):  # alternate, so that both see the same machine state
        for name, (model, optimizer) in setups.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, x, y)
            times[name].append((time.perf_counter() - start) / args.steps)
    print(
        f"ResNet-18, {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:13s} {med * 1000:8.1f} ms/step  {args.batch / med:8.1f} img/s")
    ratio = statistics.median(times["linear_probe"]) / statistics.median(times["full"])
    print(f"linear_probe / full step time: {ratio:.3f}  (target <= 0.5)")


if __name__ == "__main__":
    main()
