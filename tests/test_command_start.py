"""How a command starts and ends (medtransfer/__main__.py, utils/garbage_collection.py): its imports without
cyclic garbage collection, then frozen; a sweep's first job's leftovers frozen once; `python -m
medtransfer COMMAND` as `medtransfer-COMMAND`. Each case runs in its own interpreter, since a frozen
object stays frozen for the life of the process."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from medtransfer.utils.garbage_collection import imports_uncollected

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
from medtransfer.utils.garbage_collection import settle_after_first_job

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


def test_python_m_medtransfer_runs_the_named_command():
    done = python("-m", "medtransfer", "report", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: medtransfer-report")  # report's own parser, named as the script


def test_python_m_medtransfer_without_a_command_says_which_there_are():
    done = python("-m", "medtransfer", "fit")
    assert done.returncode == 1
    assert "usage: python -m medtransfer {train,eval,predict,report}" in done.stderr
    asked = python("-m", "medtransfer", "--help")
    assert asked.returncode == 0 and asked.stdout.startswith("usage: python -m medtransfer {train,")
