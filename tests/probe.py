"""A test-only callback that records, per epoch and rank, which layer groups were set to train and which
actually changed (parameters and BatchNorm buffers, compared bit for bit), plus each param group's lr.
Importable by DDP child processes through PYTHONPATH."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


def _snapshot(pl_module) -> dict[str, dict[str, list[torch.Tensor]]]:
    return {
        name: {
            "params": [p.detach().clone() for m in modules for p in m.parameters()],
            "buffers": [b.detach().clone() for m in modules for b in m.buffers() if b.is_floating_point()],
        }
        for name, modules in pl_module.groups.items()
    }


class GroupProbe(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.before = None

    def on_train_epoch_start(self, trainer, pl_module):
        self.before = _snapshot(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        after = _snapshot(pl_module)
        record = {
            "epoch": trainer.current_epoch,
            "rank": trainer.global_rank,
            "trainable": sorted(pl_module.trainable_groups),
            "params_changed": {
                g: any(
                    not torch.equal(a, b)
                    for a, b in zip(self.before[g]["params"], after[g]["params"], strict=True)
                )
                for g in after
            },
            "buffers_changed": {
                g: any(
                    not torch.equal(a, b)
                    for a, b in zip(self.before[g]["buffers"], after[g]["buffers"], strict=True)
                )
                for g in after
            },
            "checksum": {g: float(sum(p.double().sum() for p in after[g]["params"])) for g in after},
            "lr": {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"probe_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def read_probe(out_dir: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in open(Path(out_dir) / f"probe_rank{rank}.jsonl")]


class SlowBatches(L.Callback):
    """Sleeps after every training batch, and marks in `out_dir/started` that training began: gives a test
    time to interrupt a run mid-epoch."""

    def __init__(self, seconds: float, out_dir: str):
        self.seconds = seconds
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"epoch{trainer.current_epoch}_batch{batch_idx}").touch()
        time.sleep(self.seconds)


class HoldUntilReleased(L.Callback):
    """After the first training batch, marks `out_dir/held` and waits until the file `release` exists (at
    most `timeout` seconds): keeps a run busy for exactly as long as a test needs it running."""

    def __init__(self, out_dir: str, release: str, timeout: float = 300):
        self.out_dir = Path(out_dir)
        self.release = Path(release)
        self.timeout = timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        if trainer.current_epoch or batch_idx:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "held").touch()
        deadline = time.monotonic() + self.timeout
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class InterruptJobOnce(L.Callback):
    """Ctrl-C (KeyboardInterrupt) after the first training batch of sweep job `job`, once: the marker file
    `out_dir/interrupted` records that it happened, so a re-run of the same sweep goes through."""

    def __init__(self, job: int, out_dir: str):
        self.job = job
        self.marker = Path(out_dir) / "interrupted"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().job.num == self.job and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
            raise KeyboardInterrupt
