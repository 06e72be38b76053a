"""How a command starts and ends (utils/command_process.py): its imports without cyclic garbage collection,
then frozen; a sweep's first job's leftovers frozen once; the console scripts start there. Each case runs
in its own interpreter, since a frozen object stays frozen for the life of the process."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from medtransfer.utils.command_process import imports_uncollected

frozen_before = gc.get_freeze_count()
with imports_uncollected():
    paused = not gc.isenabled()
    made = [[] for _ in range(50_000)]
    for a in made:
        a.append(a)  # reference cycles, made while importing
print(paused, gc.isenabled(), gc.get_freeze_count() - frozen_before >= 50_000)
del made
print(gc.collect() == 0)  # the frozen cycles are left alone
"""


SETTLE = """
import gc
from medtransfer.utils.command_process import settle_after_first_job

settle_after_first_job()
alone = gc.get_freeze_count()  # a process that froze nothing (a test, a notebook) is left alone
gc.freeze()
lazily_imported = [[] for _ in range(20_000)]  # what the first job leaves: alive, made after the freeze
before = gc.get_freeze_count()
settle_after_first_job()
first = gc.get_freeze_count() - before
later = [[] for _ in range(20_000)]
settle_after_first_job()  # once per process: a later job's objects stay collectable
print(alone == 0, first >= 20_000, gc.get_freeze_count() - before == first)
"""


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_imports_run_without_the_collector_and_are_frozen_after():
    done = python("-c", PROBE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "True"]


def test_after_the_first_job_of_a_sweep_what_it_left_is_frozen_once():
    done = python("-c", SETTLE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


def test_a_console_script_runs_its_commands_main():
    code = (
        "import sys; from medtransfer.utils.command_process import report; "
        "sys.argv = ['medtransfer-report', '--help']; report()"
    )
    done = python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: medtransfer-report")  # report's own parser, named as the script


def test_the_installed_console_scripts_start_in_command_process():
    from importlib.metadata import entry_points

    scripts = {
        e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("medtransfer-")
    }
    assert scripts == {
        f"medtransfer-{name}": f"medtransfer.utils.command_process:{function}"
        for name, function in [
            ("train", "train"),
            ("eval", "evaluate"),
            ("predict", "predict"),
            ("report", "report"),
        ]
    }
