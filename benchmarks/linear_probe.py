"""A linear-probe learning-rate sweep, uncached vs cached backbone features, through the real command line.

Both sides run the same `medtransfer-train -m` sweep (5 learning rates, ResNet-18, PneumoniaMNIST at 64 px,
no augmentation); they differ only in feature_cache.enabled=false|true. The cached sweep starts with an
empty cache, so it pays for computing the features once (in its first job). Prints the wall time of each
sweep, their ratio, and the largest difference between the two sweeps' per-job results.

    python benchmarks/linear_probe.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pneumoniamnist/pneumoniamnist.npz"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument(
        "--weights", default="null", help="model.weights: null (random) or a state dict / checkpoint file"
    )
    parser.add_argument("--keep", type=Path, help="keep the sweep dirs here (default: a temporary dir)")
    return parser.parse_args()


def sweep(args: argparse.Namespace, root: Path, cached: bool) -> tuple[float, dict[str, dict]]:
    """Wall seconds of the whole sweep command, and each job's metrics.json by job number."""
    name = "cached" if cached else "uncached"
    command = [
        sys.executable,
        "-m",
        "medtransfer.train",
        "-m",
        "data=medmnist",
        f"data.path={args.data.resolve()}",
        f"data.image_size={args.size}",
        "data.augment=null",
        "finetune=linear_probe",
        f"model.backbone={args.backbone}",
        f"model.weights={args.weights}",
        f"optimizer.lr={args.lrs}",
        f"trainer.max_epochs={args.epochs}",
        f"feature_cache.enabled={str(cached).lower()}",
        f"paths.data_dir={root / name / 'data'}",  # an empty feature cache
        f"hydra.sweep.dir={root / name / 'sweep'}",
        "print_config=false",
    ]
    log = root / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"NO_COLOR": "1"}
        )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"The {name} sweep failed (exit {result.returncode}); see {log}")
    jobs = sorted((root / name / "sweep").glob("[0-9]*/metrics.json"))
    return seconds, {path.parent.name: json.loads(path.read_text()) for path in jobs}


def main() -> None:
    args = parse_args()
    if not args.data.is_file():
        raise SystemExit(
            f"--data {args.data}: no such file (PneumoniaMNIST .npz; see ../shared/data/README.md)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        uncached_s, uncached = sweep(args, root, cached=False)
        cached_s, cached = sweep(args, root, cached=True)
    jobs = len(args.lrs.split(","))
    print(
        f"linear-probe sweep: {jobs} learning rates x {args.epochs} epochs, {args.backbone} "
        f"(weights={args.weights}), {args.data.name} at {args.size} px, {os.cpu_count()} CPUs"
    )
    print(f"  uncached (backbone on every image, every epoch)  {uncached_s:8.1f} s")
    print(f"  cached (features computed once, then read back)  {cached_s:8.1f} s")
    print(f"cached speed-up: {uncached_s / cached_s:.1f}x  (target >= 10x)")
    keys = ("val/auroc_best", "test/auroc", "test/acc")
    worst = max(abs(uncached[j][k] - cached[j][k]) for j in uncached for k in keys)
    print(f"largest difference in {', '.join(keys)} between the sweeps' jobs: {worst:.2e}")
    for job in sorted(uncached, key=int):
        print(
            f"  job {job}: " + ", ".join(f"{k} {uncached[job][k]:.4f} / {cached[job][k]:.4f}" for k in keys)
        )


if __name__ == "__main__":
    main()
