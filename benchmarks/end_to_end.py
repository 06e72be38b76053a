"""Whole commands, as users wait for them: `medtransfer-train experiment=pneumonia` against a bare PyTorch
script doing the same work, each run as its own process, alternating, several rounds; then one more
medtransfer run with timers around its stages, for the breakdown.

The same work on both sides: ResNet-18 from scratch with a 1-channel stem, PneumoniaMNIST at 28 px, batch
128 (eval 512), the same augmentation (rotation 10°, translation 0.1), normalization, class-weighted
cross-entropy, AdamW (lr 2e-3, weight decay 0.05, none on biases and norm weights), warmup + cosine per
step, validation AUROC each epoch, the best epoch's weights saved to disk and tested. What only medtransfer
does on top (threshold fit on validation, test report with bootstrap intervals and plots, Grad-CAM, sample
images, TensorBoard, run files, resumable last.ckpt) is inside its time: that is the product.

    python benchmarks/end_to_end.py                        # 3 epochs, 3 rounds, CPU
    python benchmarks/end_to_end.py --epochs 1 --rounds 1  # a quick look
    python benchmarks/end_to_end.py --accelerator gpu --json out.json
    python benchmarks/end_to_end.py --before ../old-checkout/src  # before/after a change, same rounds

The child modes (`--child bare`, `--child breakdown`) are what the rounds run.
"""

from __future__ import annotations

import time

LAUNCHED = time.time()  # the breakdown's origin: before anything is imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist.npz"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="PneumoniaMNIST .npz")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs (bare, medtransfer)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout's src/ (the code before a change), timed in every round too: "
        "python -m medtransfer.train with PYTHONPATH=BEFORE",
    )
    parser.add_argument("--child", choices=["bare", "breakdown"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra medtransfer-train overrides")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ bare side
def bare(args: argparse.Namespace) -> dict:
    """The script anyone would write for the same work. Returns its test AUROC and accuracy."""
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader, Dataset
    from torchmetrics.functional.classification import binary_auroc
    from torchvision.transforms import v2

    torch.manual_seed(42)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    npz = np.load(args.data)
    mean, std = [sum((0.485, 0.456, 0.406)) / 3], [sum((0.229, 0.224, 0.225)) / 3]
    to_float = [v2.ToDtype(torch.float32, scale=True)]
    train_tf = v2.Compose(
        [*to_float, v2.RandomAffine(degrees=10, translate=(0.1, 0.1)), v2.Normalize(mean, std)]
    )
    eval_tf = v2.Compose([*to_float, v2.Normalize(mean, std)])

    class Images(Dataset):
        def __init__(self, split, transform):
            self.x = torch.from_numpy(npz[f"{split}_images"]).unsqueeze(1)
            self.y = torch.from_numpy(npz[f"{split}_labels"].reshape(-1)).long()
            self.transform = transform

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.transform(self.x[i]), self.y[i]

    train = Images("train", train_tf)
    loaders = {
        "train": DataLoader(train, batch_size=128, shuffle=True),
        "val": DataLoader(Images("val", eval_tf), batch_size=512),
        "test": DataLoader(Images("test", eval_tf), batch_size=512),
    }
    model = torchvision.models.resnet18(num_classes=2)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model.to(device)
    counts = torch.bincount(train.y, minlength=2).float()
    class_weights = (counts.sum() / (2 * counts)).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=2e-3
    )
    total = args.epochs * len(loaders["train"])
    warmup = max(1, round(0.05 * total))

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    def predict(split):
        model.eval()
        scores, targets = [], []
        with torch.no_grad():
            for x, y in loaders[split]:
                scores.append(model(x.to(device)).softmax(1)[:, 1].cpu())
                targets.append(y)
        return torch.cat(scores), torch.cat(targets)

    best, best_path = -1.0, args.out / "best.pt"
    for _ in range(args.epochs):
        model.train()
        for x, y in loaders["train"]:
            loss = F.cross_entropy(model(x.to(device)), y.to(device), weight=class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        auroc = binary_auroc(*predict("val")).item()
        print(f"val/auroc {auroc:.4f}", flush=True)
        if auroc > best:
            best = auroc
            torch.save(model.state_dict(), best_path)
    model.load_state_dict(torch.load(best_path, weights_only=True))
    scores, targets = predict("test")
    return {
        "test/auroc": binary_auroc(scores, targets).item(),
        "test/acc": ((scores > 0.5).long() == targets).float().mean().item(),
    }


# ----------------------------------------------------------------------------- medtransfer breakdown
CALLBACK_HOOKS = (
    "setup", "on_fit_start", "on_sanity_check_start", "on_sanity_check_end", "on_train_start",
    "on_train_epoch_start", "on_train_batch_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_end", "on_train_epoch_end", "on_train_end", "on_fit_end", "on_test_start",
    "on_test_epoch_end", "on_test_end", "on_exception", "teardown",
)  # fmt: skip


def evaluation_kind(loop, *args, **kwargs) -> str:
    trainer = loop.trainer
    return "test loop" if trainer.testing else "sanity check" if trainer.sanity_checking else "validation"


class StageTimer:
    """Wraps functions and methods with timers. `spent[key]`: seconds inside the calls, less the timed
    calls nested in them (so the keys add up); `total[key]`: with them."""

    def __init__(self):
        self.spent: dict[str, float] = defaultdict(float)
        self.total: dict[str, float] = defaultdict(float)
        self.stack: list[list[float]] = []  # [start, seconds of nested timed calls]

    def wrap(self, owner, name: str, key):
        """key: a name, or a function of the call's arguments that returns one."""
        original = getattr(owner, name)

        def wrapper(*a, **k):
            self.stack.append([time.time(), 0.0])
            try:
                return original(*a, **k)
            finally:
                start, nested = self.stack.pop()
                duration = time.time() - start
                name = key(*a, **k) if callable(key) else key
                self.spent[name] += duration - nested
                self.total[name] += duration
                if self.stack:
                    self.stack[-1][1] += duration

        setattr(owner, name, wrapper)

    def instrument(self, train_module, stamps: dict[str, float]) -> None:
        """Timers around medtransfer-train's stages: data set-up, every callback hook (by class), checkpoint
        writes, fit, test and Lightning's evaluation loops (validation, sanity check, test)."""
        import lightning as L
        from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop

        self.wrap(train_module, "build_data", "data set-up")
        build = train_module.build_trainer

        def build_trainer(cfg, model):
            stamps.setdefault("set-up done", time.time() - LAUNCHED)
            trainer = build(cfg, model)
            for callback in trainer.callbacks:
                for hook in CALLBACK_HOOKS:
                    self.wrap(callback, hook, f"callback {type(callback).__name__}")
            return trainer

        train_module.build_trainer = build_trainer
        self.wrap(L.Trainer, "save_checkpoint", "checkpoint writes")
        self.wrap(L.Trainer, "fit", "fit")
        self.wrap(L.Trainer, "test", "test")
        self.wrap(_EvaluationLoop, "run", evaluation_kind)


def run_main(train_module, overrides: list[str]) -> None:
    sys.argv = ["medtransfer-train", *overrides]
    try:
        train_module.main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise


def breakdown(args: argparse.Namespace) -> dict:
    """One medtransfer-train run with timers around its stages (seconds since the process started), started
    as the console script starts it (utils/command_process.py)."""
    from medtransfer.utils.command_process import imports_uncollected, skip_final_collection

    with imports_uncollected():
        import medtransfer.train as train_module

    stamps = {"import": time.time() - LAUNCHED}
    timer = StageTimer()
    timer.instrument(train_module, stamps)
    skip_final_collection()
    run_main(train_module, args.overrides)
    stamps["end"] = time.time() - LAUNCHED
    return {"stamps": stamps, "spent": dict(timer.spent), "total": dict(timer.total)}


# --------------------------------------------------------------------------------------- the rounds
def run(command: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - start
    if done.returncode:
        sys.exit(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return wall, done.stdout


def medtransfer_overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [
        "experiment=pneumonia",
        f"data.path={args.data}",
        "model.weights=null",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.accelerator={args.accelerator}",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]


def main() -> None:
    args = parse_args()
    if args.child == "bare":
        print(json.dumps(bare(args)))
        return
    if args.child == "breakdown":
        result = breakdown(args)
        args.out.write_text(json.dumps(result))
        return
    if not args.data.is_file():
        sys.exit(f"{args.data}: no PneumoniaMNIST .npz there; give --data /path/to/pneumoniamnist.npz")
    # the console script installed with this Python (not a version manager's shim in front of it)
    beside = Path(sys.executable).with_name("medtransfer-train")
    medtransfer = str(beside) if beside.is_file() else shutil.which("medtransfer-train")
    if medtransfer is None:
        sys.exit("medtransfer-train is not installed (pip install -e .)")
    me = [sys.executable, str(Path(__file__).resolve())]
    sides = ["bare", "medtransfer", *(["before"] if args.before else [])]
    walls: dict[str, list[float]] = {side: [] for side in sides}
    aurocs: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            out = tmp / f"bare{r}"
            out.mkdir()
            wall, stdout = run(
                [
                    *me,
                    "--child",
                    "bare",
                    "--out",
                    str(out),
                    "--data",
                    str(args.data),
                    "--epochs",
                    str(args.epochs),
                    "--accelerator",
                    args.accelerator,
                ]
            )
            walls["bare"].append(wall)
            aurocs["bare"].append(json.loads(stdout.strip().splitlines()[-1])["test/auroc"])
            run_dir = tmp / f"medtransfer{r}"
            wall, _ = run([medtransfer, *medtransfer_overrides(args, run_dir)])
            walls["medtransfer"].append(wall)
            aurocs["medtransfer"].append(json.loads((run_dir / "metrics.json").read_text())["test/auroc"])
            if args.before:
                run_dir = tmp / f"before{r}"
                env = {**os.environ, "PYTHONPATH": str(args.before.resolve())}
                command = [sys.executable, "-m", "medtransfer.train", *medtransfer_overrides(args, run_dir)]
                walls["before"].append(run(command, env)[0])
                aurocs["before"].append(json.loads((run_dir / "metrics.json").read_text())["test/auroc"])
            print(f"round {r + 1}: " + ", ".join(f"{s} {walls[s][-1]:.1f} s" for s in sides), flush=True)
        run_dir, out = tmp / "breakdown", tmp / "breakdown.json"
        wall, _ = run([*me, "--child", "breakdown", "--out", str(out), *medtransfer_overrides(args, run_dir)])
        parts = json.loads(out.read_text())
    median = {side: statistics.median(w) for side, w in walls.items()}
    ratio = median["medtransfer"] / median["bare"]
    print(f"\nwhole command, {args.epochs} epochs, median of {args.rounds} alternating pairs:")
    print(f"  bare PyTorch script   {median['bare']:7.1f} s   test AUROC {aurocs['bare'][-1]:.4f}")
    print(
        f"  medtransfer-train     {median['medtransfer']:7.1f} s   test AUROC {aurocs['medtransfer'][-1]:.4f}"
    )
    print(f"  ratio                 {ratio:7.3f}")
    if args.before:
        print(
            f"  before ({args.before})  {median['before']:7.1f} s   test AUROC {aurocs['before'][-1]:.4f}"
            f"   ratio {median['before'] / median['bare']:.3f}"
        )
    rows = breakdown_rows(parts, wall)
    print(f"\nmedtransfer-train, one run with timers ({wall:.1f} s of wall time):")
    for name, seconds in rows:
        print(f"  {name:<52} {seconds:6.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps({"walls": walls, "aurocs": aurocs, "ratio": ratio, "breakdown": rows}, indent=1)
        )


def breakdown_rows(parts: dict, wall: float) -> list[tuple[str, float]]:
    """The stages of one run: import, set-up, the fit's epochs split into training, evaluation loops,
    checkpoint writes and callbacks, the test pass, and what is left after the command returns."""
    stamps, spent, total = parts["stamps"], parts["spent"], parts["total"]
    callbacks = {k: v for k, v in spent.items() if k.startswith("callback ")}
    rows = [
        ("import medtransfer and its libraries", stamps["import"]),
        ("config, console, model", stamps["set-up done"] - stamps["import"] - total.get("data set-up", 0.0)),
        ("data set-up (read, check, split)", spent.get("data set-up", 0.0)),
        ("training epochs (fit, less the rows below)", spent.get("fit", 0.0)),
        ("validation (each epoch)", spent.get("validation", 0.0)),
        ("sanity check", spent.get("sanity check", 0.0)),
        ("test loop", spent.get("test loop", 0.0)),
        ("checkpoint writes", spent.get("checkpoint writes", 0.0)),
        ("test set-up (loading best.ckpt)", spent.get("test", 0.0)),
    ]
    rows += sorted(((k, v) for k, v in callbacks.items()), key=lambda kv: -kv[1])
    rows.append(
        (
            "after the fit and test: metrics.json, HPARAMS, tables",
            stamps["end"] - stamps["set-up done"] - total.get("fit", 0.0) - total.get("test", 0.0),
        )
    )
    rows.append(("process exit and interpreter start", wall - stamps["end"]))
    return rows


if __name__ == "__main__":
    main()
