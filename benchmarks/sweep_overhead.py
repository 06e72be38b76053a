"""What a sweep of short jobs pays besides training: a cached linear-probe learning-rate sweep
(`medtransfer-train -m`, ResNet-18, PneumoniaMNIST at 64 px, backbone features cached), each job timed.

A first single run fills the feature cache (not timed), so every job of the sweep reads its features back,
as the jobs of a real sweep after the first do. The sweep then runs in one process with timers
(benchmarks/end_to_end.py `StageTimer`): a job's time is from its start to the next job's start (Hydra's
per-job work included), its training time the fit's epochs (training steps and validation), and the rest
is what the job pays outside training: start-up, data, model, checkpoint writes, end-of-run extras, test.

    python benchmarks/sweep_overhead.py                    # 10 jobs x 10 epochs
    python benchmarks/sweep_overhead.py --jobs 4 --epochs 3
    python benchmarks/sweep_overhead.py --folder ../shared/data/brain_mri --jobs 4  # image files
"""

from __future__ import annotations

import time

LAUNCHED = time.time()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import DATA, StageTimer, run_main  # noqa: E402

PARTS = ("fit", "validation", "sanity check", "test loop", "test", "checkpoint writes", "data set-up")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="PneumoniaMNIST .npz")
    parser.add_argument("--jobs", type=int, default=10, help="learning rates in the sweep")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--folder",
        type=Path,
        help="a folder of class folders of image files instead of the .npz (data=folder)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra medtransfer-train overrides")
    return parser.parse_args()


def overrides(args: argparse.Namespace, root: Path) -> list[str]:
    return [
        *(
            ["data=folder", f"data.root={args.folder.resolve()}"]
            if args.folder
            else ["data=medmnist", f"data.path={args.data.resolve()}"]
        ),
        f"data.image_size={args.size}",
        "data.augment=null",
        "finetune=linear_probe",
        "model.weights=null",
        f"trainer.max_epochs={args.epochs}",
        "trainer.accelerator=cpu",
        "feature_cache.enabled=true",
        f"paths.data_dir={root / 'data'}",
        "print_config=false",
        *args.overrides,
    ]


def child(args: argparse.Namespace, out: Path) -> None:
    """The sweep in this process, started as the console script starts it (utils/command_process.py), with a
    snapshot of the timers at the start of every job."""
    from medtransfer.utils.command_process import imports_uncollected, skip_final_collection

    with imports_uncollected():
        import medtransfer.train as train_module

    timer = StageTimer()
    timer.instrument(train_module, {})
    jobs: list[dict] = []
    train = train_module.train

    def timed_train(cfg):
        jobs.append({"start": time.time(), "before": dict(timer.spent)})
        return train(cfg)

    train_module.train = timed_train
    lrs = ",".join(
        f"{lr:.2e}" for lr in (1e-4 * 10 ** (3 * i / max(1, args.jobs - 1)) for i in range(args.jobs))
    )
    skip_final_collection()
    run_main(train_module, ["-m", f"optimizer.lr={lrs}", *args.overrides])
    end = time.time()
    for job, after in zip(jobs, [*(j["before"] for j in jobs[1:]), dict(timer.spent)], strict=True):
        job["parts"] = {
            k: after.get(k, 0.0) - job["before"].get(k, 0.0) for k in set(after) | set(job["before"])
        }
    walls = [b["start"] - a["start"] for a, b in itertools.pairwise(jobs)]
    out.write_text(
        json.dumps(
            {
                "before_first_job": jobs[0]["start"] - LAUNCHED,
                "job_walls": walls,  # the last job's ends with the sweep report: not comparable
                "last_job_to_exit": end - jobs[-1]["start"],
                "parts": [j["parts"] for j in jobs],
            }
        )
    )


def main() -> None:
    args = parse_args()
    if args.child:
        child(args, args.child)
        return
    if not args.folder and not args.data.is_file():
        sys.exit(f"{args.data}: no PneumoniaMNIST .npz there; give --data /path/to/pneumoniamnist.npz")
    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common = overrides(args, root)
        warm = [sys.executable, "-m", "medtransfer.train", *common, f"hydra.run.dir={root / 'warm'}"]
        subprocess.run(warm, check=True, capture_output=True)  # fills the feature cache
        result = root / "sweep.json"
        start = time.time()
        done = subprocess.run(
            [
                *me,
                "--child",
                str(result),
                "--jobs",
                str(args.jobs),
                "--",
                *common,
                f"hydra.sweep.dir={root / 'sweep'}",
            ],
            capture_output=True,
            text=True,
        )
        wall = time.time() - start
        if done.returncode:
            sys.exit(f"the sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        timings = json.loads(result.read_text())
    parts = timings["parts"]
    training = [p.get("fit", 0.0) + p.get("validation", 0.0) for p in parts]
    outside = [w - t for w, t in zip(timings["job_walls"], training, strict=False)]
    print(
        f"cached linear-probe sweep: {args.jobs} jobs x {args.epochs} epochs, ResNet-18, "
        f"{(args.folder or args.data).name} "
        f"at {args.size} px"
    )
    print(f"  whole sweep command                      {wall:7.1f} s")
    print(
        f"  {args.jobs} x one job's training (median)       {args.jobs * statistics.median(training):7.1f} s"
    )
    print(f"  before the first job (import, compose)   {timings['before_first_job']:7.1f} s")
    print(f"  per job, outside training: median {statistics.median(outside):.2f} s, max {max(outside):.2f} s")
    setups = [p.get("data set-up", 0.0) for p in parts]
    print(
        f"  data set-up: first job {setups[0]:.2f} s, the others median {statistics.median(setups[1:]):.2f} s"
    )
    print(
        "  per job (median s): "
        + ", ".join(f"{k} {statistics.median(p.get(k, 0.0) for p in parts):.2f}" for k in PARTS)
    )
    callbacks = sorted({k for p in parts for k in p if k.startswith("callback ")})
    print("  callbacks per job (median s): " + ", ".join(
        f"{k.removeprefix('callback ')} {statistics.median(p.get(k, 0.0) for p in parts):.2f}" for k in callbacks
    ))  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"wall": wall, "training": training, "outside": outside, **timings}, indent=1)
        )


if __name__ == "__main__":
    main()
