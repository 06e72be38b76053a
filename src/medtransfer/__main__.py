"""How a command starts and ends: the console scripts `medtransfer-train`, `-eval`, `-predict` and `-report`
(pyproject.toml) and `python -m medtransfer COMMAND [ARGS]` run the command's `main` through here, its
imports made without cyclic garbage collection and then frozen, and the interpreter's final collection
skipped at exit (utils/garbage_collection.py: about 2 s less per command)."""

from __future__ import annotations

import importlib
import sys

from medtransfer.utils.garbage_collection import imports_uncollected, skip_final_collection


def run(module: str) -> None:
    """Import the command's module (`medtransfer.train`, …) with `imports_uncollected`, and run its `main`;
    the interpreter's final collection is skipped when the process exits (also by SystemExit or an
    error)."""
    with imports_uncollected():
        command_main = importlib.import_module(module).main
    skip_final_collection()
    command_main()


def train() -> None:
    run("medtransfer.train")


def evaluate() -> None:
    run("medtransfer.evaluate")


def predict() -> None:
    run("medtransfer.predict")


def report() -> None:
    run("medtransfer.report")


COMMANDS = {"train": train, "eval": evaluate, "predict": predict, "report": report}


def main() -> None:
    """`python -m medtransfer COMMAND [ARGS]`: the same as `medtransfer-COMMAND [ARGS]`."""
    usage = f"usage: python -m medtransfer {{{','.join(COMMANDS)}}} [ARGS]  (as medtransfer-COMMAND)"
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(usage)
        return
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(usage)
    command = sys.argv.pop(1)
    sys.argv[0] = f"medtransfer-{command}"
    COMMANDS[command]()


if __name__ == "__main__":
    main()
