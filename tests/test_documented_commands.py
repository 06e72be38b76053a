"""Every command the docs show runs as written: each `medtransfer-*` line of a ```bash block in README.md
and docs/*.md, and each command in a comment of the shipped configs, is run on tiny generated data.

Only data paths are substituted (data.root, data.path, data.manifest, ckpt_path, input, model.weights
files, resume and report folders: each becomes a generated file of the same kind, keeping the command's own
quoting) and tiny limits appended (TINY below; a value the command sets for one of those keys gives way).
Single runs go through the real command line as far as it matters (medtransfer's check of the overrides,
Hydra's composition of the config) and then run in this process; a sweep has every job composed and its
first job run, and one documented sweep runs for real in a subprocess, which `medtransfer-report` then
reads. A command that needs a GPU, SLURM or the network is skipped with its reason, listed in SKIPS, and the
test fails when a skip no longer matches any command, so the list stays true."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import TRAIN_COMMAND, make_folder_tree, make_npz
from medtransfer.evaluate import evaluate, partial_data_overrides
from medtransfer.predict import predict
from medtransfer.report import report
from medtransfer.train import resume_arguments, train
from medtransfer.utils.command_line import check_overrides
from medtransfer.utils.compose import compose_config
from medtransfer.utils.paths import CONFIG_DIR

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

TINY = {
    "model.weights": "null",
    "trainer.accelerator": "cpu",
    "trainer.max_epochs": "1",
    "trainer.num_sanity_val_steps": "0",
    "trainer.enable_progress_bar": "false",
    "++callbacks.rich_progress_bar": "null",
    "data.image_size": "16",
    "data.batch_size": "8",
    "data.num_workers": "0",
    "print_config": "false",
    "++callbacks.explanations.images": "0",
    # experiment=medmnist raises the epochs to reach 1,000 optimizer steps (tested on its own in
    # test_compare_runs.py); here every run trains its one epoch
    "train_length.min_steps": "null",
}
EVAL_TINY = {"trainer.accelerator": "cpu"}
PREDICT_TINY = {"num_workers": "0"}

# (a piece of the command, why it is not run here)
SKIPS = [
    ("trainer=gpu", "needs a CUDA GPU"),
    ("hydra/launcher=slurm", "needs SLURM"),
    ("trainer=ddp data=folder data.root=my_images", "DDP over all visible GPUs"),
    (
        "trainer=ddp trainer.accelerator=cpu trainer.devices=2",
        "starts a second process by re-running the command line: run as written in "
        "test_sweeps_and_small_batches.py::test_trainer_ddp_on_the_cpu_as_its_config_comment_says",
    ),
]


@dataclass
class Command:
    source: str  # file:line
    program: str  # train, eval, predict, report
    args: list[str]
    text: str

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


def _command(source: str, text: str) -> Command | None:
    text = re.sub(r"\[([^\]=]*=[^\]]*)\]", r"\1", text)  # optional [key=value] parts: included
    tokens = shlex.split(text, comments=True)
    if not tokens or not tokens[0].startswith("medtransfer-"):
        return None
    return Command(source, tokens[0].removeprefix("medtransfer-"), tokens[1:], text.split(" #")[0].strip())


def documented_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        lines, in_bash = doc.read_text().splitlines(), False
        joined: list[tuple[int, str]] = []
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                in_bash = line.strip() == "```bash"
                continue
            if not in_bash:
                continue
            if joined and joined[-1][1].endswith("\\"):
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
            else:
                joined.append((number, line.strip()))
        for number, line in joined:
            if command := _command(f"{doc.relative_to(ROOT)}:{number}", line):
                commands.append(command)
    for config in sorted(Path(CONFIG_DIR).rglob("*.yaml")):
        for number, line in enumerate(config.read_text().splitlines(), 1):
            match = re.match(r"#\s+(medtransfer-(train|eval|predict|report) [^:]*)$", line)
            # a synopsis (ckpt_path=PATH [split=test|val]) is not a command
            if match and "PATH" not in match.group(1) and "DIR_OR_FILE" not in match.group(1):
                commands.append(_command(f"conf/{config.relative_to(CONFIG_DIR)}:{number}", match.group(1)))
    return commands


def skip_reason(command: Command) -> str | None:
    return next((why for piece, why in SKIPS if piece in command.text), None)


class Fixtures:
    """The generated stand-ins for the data paths of the docs, made once."""

    def __init__(self, base: Path):
        self.base = base
        self.tree = make_folder_tree(base / "images", per_class=12, size=16)
        self.npz = make_npz(base / "tiny.npz", sizes=(32, 12, 12))
        rows = [
            "path,diagnosis",
            *(f"{p.relative_to(self.tree)},{p.parent.name}" for p in self.tree.rglob("*.*")),
        ]
        self.manifest = base / "labels.csv"
        self.manifest.write_text("\n".join(rows) + "\n")
        # NIH ChestX-ray14's table: findings joined by |, "No Finding" for none, a patient per image
        findings = ("Effusion", "Effusion|Atelectasis", "Atelectasis")
        nih = ["Image Index,Finding Labels,Patient ID"]
        for i, path in enumerate(sorted(self.tree.rglob("*.*"))):
            label = findings[i % 3] if path.parent.name == "malignant" else "No Finding"
            nih.append(f"{path.relative_to(self.tree)},{label},{i}")
        self.nih_manifest = base / "Data_Entry_2017_v2020.csv"
        self.nih_manifest.write_text("\n".join(nih) + "\n")
        self.scans = base / "new_scans"
        shutil.copytree(self.tree / "benign", self.scans)
        self.run_dir: Path | None = None  # a finished training run (best.ckpt, last.ckpt)
        self.sweep_dir: Path | None = None
        self.count = itertools.count()

    def folder(self, value: str) -> str:
        """The generated tree under the documented folder's own name (so quoting still matters)."""
        name = Path(value.strip("\"'")).name or "images"
        if name in ("images", "my_images"):
            return str(self.tree)
        link = self.base / name
        if not link.exists():
            link.symlink_to(self.tree, target_is_directory=True)
        return str(link)

    def checkpoint(self, value: str) -> str:
        best = self.run_dir / "checkpoints" / "best.ckpt"
        name = Path(value.strip("\"'")).name
        if name.endswith(".ckpt") and name not in ("best.ckpt", "last.ckpt"):
            copy = self.base / "lightning" / name
            copy.parent.mkdir(exist_ok=True)
            shutil.copy(best, copy)
            return str(copy)
        return str(best)

    def substitute(self, args: list[str]) -> list[str]:
        out = []
        for arg in args:
            key, sep, value = arg.partition("=")
            quote = value[:1] if value[:1] in "\"'" and value[-1:] == value[:1] else ""
            new = {
                "data.root": lambda v: self.folder(v),
                "data.path": lambda v: str(self.npz),
                "data.manifest": lambda v: str(
                    self.nih_manifest if v.endswith("Data_Entry_2017_v2020.csv") else self.manifest
                ),
                "ckpt_path": lambda v: self.checkpoint(v),
                "model.weights": lambda v: ",".join(
                    self.checkpoint(w) if w.strip("\"'").endswith(".ckpt") else w for w in v.split(",")
                ),
                "input": lambda v: str(self.scans),
                "resume": lambda v: str(self.run_dir),
            }.get(key)
            if arg == "…":  # "add your data"
                out += ["data=folder", f"data.root={self.tree}"]
            elif sep and new:
                out.append(f"{key}={quote}{new(value)}{quote}")
            else:
                out.append(arg)
        if any(a.startswith("experiment=") for a in out) and not any(a.startswith("data.") for a in out):
            out.append(f"data.path={self.npz}")  # the experiment's MedMNIST file, not a download
        return out


def with_tiny(args: list[str], tiny: dict[str, str]) -> list[str]:
    """`args` with the tiny limits: a key of `tiny` the command sets gives way, except model.weights
    naming a checkpoint (a transfer the docs show)."""
    weights_file = any(a.startswith("model.weights=") and ".ckpt" in a for a in args)
    keep = [
        a for a in args if a.split("=", 1)[0] not in tiny or (weights_file and a.startswith("model.weights="))
    ]
    extra = [f"{k}={v}" for k, v in tiny.items() if not (k == "model.weights" and weights_file)]
    return [*keep, *extra]


def jobs(args: list[str]) -> list[list[str]]:
    """The overrides of each job of a basic sweep (a,b,c values expanded), in Hydra's order."""
    parsed = OverridesParser.create().parse_overrides(args)
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [a]
        for o, a in zip(parsed, args, strict=True)
    ]
    return [list(c) for c in itertools.product(*choices)]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return Fixtures(tmp_path_factory.mktemp("docs"))


def run_in_process(command: Command, fx: Fixtures, ran: set) -> bool:
    """Run `command`; False when the same run (after substitution) ran already for another command."""
    args = fx.substitute([a for a in command.args if a != "-m"])
    if command.program == "report":
        report(fx.sweep_dir, fx.base / f"report_{next(fx.count)}")
        return True
    check_overrides(args)  # as the console entry point does before Hydra starts
    out = fx.base / "runs" / str(next(fx.count))
    if command.program == "train":
        resume = [a for a in args if a.startswith("resume=")]
        if resume:
            args = [*resume_arguments(resume[0].split("=", 1)[1]), *[a for a in args if a not in resume]]
        all_jobs = jobs(with_tiny(args, TINY)) if "-m" in command.args else [with_tiny(args, TINY)]
        all_jobs = [[a for a in job if not a.startswith("hydra.")] for job in all_jobs]
        for job in all_jobs:  # every job of a sweep composes
            compose_config("train", out, job)
        if tuple(sorted(all_jobs[0])) in ran:
            return False
        ran.add(tuple(sorted(all_jobs[0])))
        train(compose_config("train", out, all_jobs[0]))
    elif command.program == "eval":
        evaluate(compose_config("eval", out, partial_data_overrides(with_tiny(args, EVAL_TINY))))
    elif command.program == "predict":
        cfg = compose_config("predict", out, with_tiny(args, PREDICT_TINY))
        predict(
            cfg.ckpt_path,
            cfg.input,
            cfg.output or out / "predictions.csv",
            cfg.batch_size,
            cfg.num_workers,
            explain=bool(cfg.explain),
            explain_method=cfg.explain_method,
        )
    else:
        raise AssertionError(f"unknown command medtransfer-{command.program}")
    return True


SUBPROCESS_SWEEP = "hydra/launcher=local_processes"  # the documented sweep run for real (2 jobs)


def test_every_documented_command_runs(fixtures, capsys):
    commands = documented_commands()
    assert len(commands) > 20, [str(c) for c in commands]
    skipped = {str(c): skip_reason(c) for c in commands if skip_reason(c)}
    unused = [piece for piece, _ in SKIPS if not any(piece in c.text for c in commands)]
    assert not unused, f"SKIPS entries that match no documented command any more: {unused}"
    with capsys.disabled():
        print("\nskipped documented commands:\n" + "\n".join(f"  {c}  ({why})" for c, why in skipped.items()))

    # README's first training command runs first: its checkpoint and run dir are what eval, predict,
    # resume and model.weights use
    [first] = [
        c for c in commands if c.program == "train" and c.args == ["data=folder", "data.root=my_images"]
    ]
    first_args = with_tiny(fixtures.substitute(first.args), TINY)
    fixtures.run_dir = fixtures.base / "first"
    torch.manual_seed(0)
    train(compose_config("train", fixtures.run_dir, first_args))
    (fixtures.run_dir / ".hydra").mkdir()  # what Hydra writes, for resume=
    (fixtures.run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in first_args))
    ran = {tuple(sorted(first_args))}

    # the documented sweep that runs for real; its multirun dir is what medtransfer-report reads
    [sweep] = [c for c in commands if SUBPROCESS_SWEEP in c.text]
    args = with_tiny(fixtures.substitute(sweep.args), TINY)
    if not any(a.startswith("data") for a in sweep.args):
        args += ["data=folder", f"data.root={fixtures.tree}"]  # the command sweeps over the default data
    fixtures.sweep_dir = fixtures.base / "sweep"
    result = subprocess.run(
        [*TRAIN_COMMAND, *args, f"hydra.sweep.dir={fixtures.sweep_dir}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=fixtures.base,
        env={**os.environ},
    )
    assert result.returncode == 0, f"{sweep}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"

    failures, timings = [], []
    for command in commands:
        if str(command) in skipped or command in (sweep, first):
            continue
        start = time.perf_counter()
        try:
            if run_in_process(command, fixtures, ran):
                timings.append(f"  {time.perf_counter() - start:5.1f} s  {command}")
        except BaseException as err:  # SystemExit too: a command that stops is broken
            failures.append(f"{command}\n    {err.__class__.__name__}: {str(err)[:500]}")
    with capsys.disabled():
        print("documented commands run in this process (same run as an earlier one: not repeated):")
        print("\n".join(timings))
    assert not failures, "documented commands that fail:\n" + "\n".join(failures)
