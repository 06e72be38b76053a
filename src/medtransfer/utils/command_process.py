"""A command's process: the console scripts (`medtransfer-train`, `-eval`, `-predict`, `-report` in
pyproject.toml) start here, import their command module and run its `main`.

Python's cyclic garbage collector is the reason. A command imports torch, torchvision, Lightning
and Hydra: millions of objects that live until the process ends. The collector walks all of them in each
full collection: seven times while they are imported and once more when the interpreter shuts down, about
2 s of a command's start and exit on a 2-core CPU, finding nothing to free (docs/benchmarks.md). So
commands import with the collector paused and then move what exists to the
permanent generation (`gc.freeze`: "ignored in future collections", Python's gc docs); at exit what is
left is frozen the same way before the interpreter's last collection. Objects are still freed by
reference counting, files closed by their owners and atexit handlers run; only reference cycles left at
exit go uncollected, as the operating system takes the whole process's memory back anyway."""

from __future__ import annotations

import atexit
import gc
import importlib
from collections.abc import Iterator
from contextlib import contextmanager

_settled = False


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


def settle_after_first_job() -> None:
    """After the first job of a sweep, in a process whose imports were frozen: collect that job's garbage
    and freeze what is left, chiefly the modules its end of run imported when first needed (matplotlib,
    Grad-CAM, scikit-learn); otherwise the later jobs' full collections walk them again, about 0.1 s in
    each job. Once per process, so at most the first job's leftovers are kept from collection."""
    global _settled
    if _settled or not gc.get_freeze_count():
        return
    _settled = True
    gc.collect()
    gc.freeze()


def start(module: str) -> None:
    """Import the command's module (`medtransfer.train`, …) with `imports_uncollected`, and run its `main`;
    the interpreter's final collection is skipped when the process exits (also by SystemExit or an
    error). The module is named, not imported: commands sit above utils/."""
    with imports_uncollected():
        command_main = importlib.import_module(module).main
    skip_final_collection()
    command_main()


def train() -> None:
    start("medtransfer.train")


def evaluate() -> None:
    start("medtransfer.evaluate")


def predict() -> None:
    start("medtransfer.predict")


def report() -> None:
    start("medtransfer.report")
