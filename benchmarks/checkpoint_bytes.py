"""Checkpoint bytes written per epoch, before and after lean best checkpoints (issue 13).

Trains the real train config (`build_data`, `build_model`, `build_trainer` from medtransfer.train) for a
few epochs on tiny random 16 px images and sums the bytes of every checkpoint the Trainer writes, as
recorded by the AtomicCheckpointIO plugin. "before": best.ckpt written with the optimizer state (as
last.ckpt), the setting before issue 13; "after": the shipped setting (best.ckpt weights-only). The bytes
are dominated by the weights and AdamW's two moment buffers, so the image size does not matter. The fit
of the threshold into best.ckpt at the end of fit (add_to_checkpoint, not through the plugin) is not
counted.

    python benchmarks/checkpoint_bytes.py                       # resnet18 and resnet50, 2 epochs, CPU
    python benchmarks/checkpoint_bytes.py --backbones resnet18 --epochs 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from medtransfer.train import build_data, build_model, build_trainer
from medtransfer.utils.checkpoint_io import AtomicCheckpointIO
from medtransfer.utils.compose import compose_config


def tiny_npz(path: Path, sizes=(48, 16, 16), size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def measure(backbone: str, epochs: int, lean_best: bool, workdir: Path) -> dict:
    out = workdir / f"{backbone}-{'after' if lean_best else 'before'}"
    cfg = compose_config(
        "train",
        out,
        [
            "data=medmnist",
            f"data.path={tiny_npz(workdir / 'tiny.npz')}",
            "data.image_size=16",
            "data.batch_size=16",
            "data.num_workers=0",
            f"model.backbone={backbone}",
            "model.weights=null",
            "trainer.accelerator=cpu",
            f"trainer.max_epochs={epochs}",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "callbacks=minimal",
            "logger=csv",
        ],
    )
    datamodule = build_data(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, model)
    trainer.checkpoint_callback.save_weights_only = lean_best  # the best.ckpt callback (the first one)
    [plugin] = [trainer.strategy.checkpoint_io]
    assert isinstance(plugin, AtomicCheckpointIO)
    trainer.fit(model, datamodule=datamodule)
    per_file: dict[str, list[int]] = defaultdict(list)
    for path, size in plugin.writes:
        per_file[Path(path).name].append(size)
    total = sum(size for _, size in plugin.writes)
    return {
        "backbone": backbone,
        "setting": "after (best weights-only)" if lean_best else "before (best with optimizer)",
        "epochs": trainer.current_epoch,
        "writes": {name: len(sizes) for name, sizes in per_file.items()},
        "bytes_per_write": {name: max(sizes) for name, sizes in per_file.items()},
        "bytes_total": total,
        "bytes_per_epoch": total / max(trainer.current_epoch, 1),
        "bytes_per_epoch_when_best_improves": sum(max(s) for s in per_file.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            for lean in (False, True):
                results.append(measure(backbone, args.epochs, lean, Path(tmp)))
    mb = 1e6
    print(
        "| backbone | setting | best.ckpt MB | last.ckpt MB | written over the run MB (writes) "
        "| MB per epoch | MB per epoch when best improves |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        writes = ", ".join(f"{n} ×{c}" for n, c in sorted(r["writes"].items()))
        print(
            f"| {r['backbone']} | {r['setting']} | {r['bytes_per_write'].get('best.ckpt', 0) / mb:.1f} "
            f"| {r['bytes_per_write'].get('last.ckpt', 0) / mb:.1f} | {r['bytes_total'] / mb:.1f} ({writes}) "
            f"| {r['bytes_per_epoch'] / mb:.1f} | {r['bytes_per_epoch_when_best_improves'] / mb:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
