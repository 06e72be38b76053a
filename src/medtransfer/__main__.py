"""How a command starts and ends: the console scripts `medtransfer-train`, `-eval`, `-predict` and `-report`
(pyproject.toml) and `python -m medtransfer COMMAND [ARGS]` run the command's `main` through here.

A command imports torch, torchvision, Lightning and Hydra: millions of objects that live until the process
ends. Python's cyclic garbage collector walks all of them in each full collection: seven times while they
are imported and once more when the interpreter shuts down, about 2 s of a command's start and exit on a
2-core CPU, finding nothing to free (docs/benchmarks.md). So the command's modules are imported with the
collector paused, then moved to the permanent generation (`gc.freeze`: "ignored in future collections",
Python's gc docs), and at exit what is left is frozen the same way before the interpreter's last
collection. Objects are still freed by reference counting, files closed by their owners and atexit
handlers run; only reference cycles left at exit go uncollected, as the operating system takes the whole
process's memory back anyway.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_uncollected() -> Iterator[None]:
    """Import inside: no cyclic garbage collection while inside; what exists on leaving is frozen and the
    collector, enabled again, looks only at objects made after it."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def skip_final_collection() -> None:
    """At the process's exit, freeze what is left before the interpreter's final collection."""
    atexit.register(gc.freeze)


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
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m medtransfer {{{','.join(COMMANDS)}}} [ARGS]  (as medtransfer-COMMAND)")
    command = sys.argv.pop(1)
    sys.argv[0] = f"medtransfer-{command}"
    COMMANDS[command]()


if __name__ == "__main__":
    main()
