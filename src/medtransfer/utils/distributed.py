"""Multi-process training with Hydra.

Lightning's DDP launcher starts ranks 1..N-1 by re-running the command line. Inside a Hydra multirun that
command is the whole sweep, so each extra rank would walk every job itself (and a sampler such as Optuna
would hand it other trials). `job_subprocess_command` starts each extra rank on exactly the current job
instead: its overrides, in its run dir, in run mode. Installed by the entry point."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager

from medtransfer.utils.errors import ConfigError


def job_subprocess_command(local_rank: int) -> tuple[Sequence[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, "-m", "medtransfer.train", *hydra_cfg.overrides.task]
    command += [
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def install_job_subprocess_command() -> None:
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher

    fabric_launcher._hydra_subprocess_cmd = job_subprocess_command
    trainer_launcher._hydra_subprocess_cmd = job_subprocess_command


def per_process_batch_size(global_batch_size: int, world_size: int) -> int:
    """data.batch_size is global: each of `world_size` processes takes an equal share."""
    if global_batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={global_batch_size} is the global batch size and must divide evenly over "
            f"{world_size} processes; use e.g. data.batch_size={global_batch_size // world_size * world_size or world_size}."
        )
    return global_batch_size // world_size


def cpu_sync_batchnorm(trainer_cfg) -> dict:
    """Trainer arguments that make `trainer.sync_batchnorm=true` runnable without a GPU: torch's
    SyncBatchNorm only runs on CUDA ("SyncBatchNorm layers only work with GPU modules"), so on the CPU it is
    turned off, loudly (each process then normalises with its own batch statistics, as plain DDP does).
    Returns {} when nothing needs changing, else {"sync_batchnorm": False}."""
    import torch

    from medtransfer.utils.console import console

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator in ("auto", "None") and not torch.cuda.is_available())
    if not (trainer_cfg.get("sync_batchnorm") and on_cpu):
        return {}
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        console.print(
            "[bold yellow]trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm runs on CUDA only); "
            "training on the CPU with it off: each process normalises over its own share of the batch. "
            "Add trainer.sync_batchnorm=false to silence this.[/bold yellow]"
        )
    return {"sync_batchnorm": False}


DDP_ENV = (
    "LOCAL_RANK",
    "NODE_RANK",
    "GLOBAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PL_GLOBAL_SEED",
)


@contextmanager
def process_group_per_job():
    """Each job of a multirun (same process, maybe another number of devices) gets its own process
    group: afterwards the group is destroyed and the variables Lightning set for it (LOCAL_RANK, ports…)
    are restored, otherwise the next job would silently reuse them and start no ranks of its own."""
    import torch.distributed as dist

    saved = {k: os.environ.get(k) for k in DDP_ENV}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
