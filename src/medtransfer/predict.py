"""`medtransfer-predict ckpt_path=PATH input=DIR_OR_FILE`: classify new images with a checkpoint (which
carries the class names and preprocessing) and write predictions.csv: path, predicted class, one
probability column per class."""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medtransfer.checkpoint import load_classifier
from medtransfer.console import console
from medtransfer.data.datamodule import default_num_workers
from medtransfer.data.datasets import FileDataset
from medtransfer.data.decode import is_image_file
from medtransfer.data.transforms import eval_transform
from medtransfer.errors import DataError
from medtransfer.job import run_job
from medtransfer.paths import CONFIG_DIR


def find_images(input_path: str | Path) -> list[str]:
    path = Path(input_path).expanduser()
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise DataError(f"input={path}: no such file or folder.")
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"input={path}: no image files (.png .jpg .jpeg .bmp .tif .tiff, DICOM) in it.")
    return files


@torch.inference_mode()
def predict(
    ckpt_path: str | Path,
    input_path: str | Path,
    output: str | Path,
    batch_size: int = 64,
    num_workers="auto",
) -> Path:
    model = load_classifier(ckpt_path)
    prep = model.preprocessing
    paths = find_images(input_path)
    dataset = FileDataset(
        paths,
        np.zeros(len(paths), dtype=np.int64),
        prep["in_channels"],
        eval_transform(prep["image_size"], prep["mean"], prep["std"]),
    )
    workers = default_num_workers(False) if num_workers == "auto" else int(num_workers)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=min(workers, max(0, len(paths) // batch_size))
    )
    probs = torch.cat([model(x).float().softmax(dim=1) for x, _ in loader]).numpy()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", *[f"prob_{c}" for c in model.class_names]])
        for path, p in zip(paths, probs, strict=True):
            writer.writerow([path, model.class_names[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    return output


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    output = cfg.output or Path(cfg.paths.output_dir) / "predictions.csv"

    def job():
        written = predict(cfg.ckpt_path, cfg.input, output, cfg.batch_size, cfg.num_workers)
        console.print(f"predictions: {written}")

    run_job(job, cfg.paths.output_dir)


if __name__ == "__main__":
    main()
