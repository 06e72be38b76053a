"""The train loader's img/s as a GPU run gets it: data=folder on generated JPEGs, the default augmentation,
data.cache=ram and data.num_workers=auto (workers = cores - 1, up to 8, when a GPU trains). benchmarks/gpu.sh
sets it against the model's img/s; benchmarks/dataloader.py compares loader settings on the CPU.

    python benchmarks/loader_rate.py [--images 2048] [--size 224] [--batch 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataloader import datamodule, loader_rate, make_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "images", args.images, args.size + 32)
        dm = datamodule(root, args, "ram", "auto")
        rates = [loader_rate(dm) for _ in range(2)]
        workers = dm.train_dataloader().num_workers
    print(f"train loader: {max(rates):.0f} img/s at {args.size} px with {workers} workers")
    if args.json:
        args.json.write_text(json.dumps({"img_s": max(rates), "workers": workers, "size": args.size}))


if __name__ == "__main__":
    main()
