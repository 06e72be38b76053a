"""One run per directory: a run (or a sweep) holds a lock file in its directory while it runs, so a second
run or a resume into a directory in use stops at once, before it writes anything, and the first run's
files stay as they are.

The lock file `.medtransfer.lock` is created with O_EXCL and holds the owner's pid, host and start time.
A lock whose pid is dead on this host is stale (a run killed with SIGKILL, a power cut): it is taken over,
with a message. A lock from another host cannot be checked and is respected (delete it by hand if that
run is gone).

Re-entrant for one job: the owner identity (host:pid) is exported in MEDTRANSFER_LOCK_OWNER while a lock is
held, so the job's own children — DDP ranks > 0, which Lightning starts by re-running the command in the
same run dir — recognise the lock as theirs and go on without taking or releasing it."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from medtransfer.utils.console import console, print_error
from medtransfer.utils.errors import ConfigError

LOCK_NAME = ".medtransfer.lock"
OWNER_ENV = "MEDTRANSFER_LOCK_OWNER"


class RunDirInUseError(ConfigError):
    """The run directory is locked by another live run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_lock(directory: str | Path) -> dict | None:
    """The lock's owner record ({"owner", "pid", "host", "started", "command"}), or None when unlocked."""
    try:
        return json.loads((Path(directory) / LOCK_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"owner": "?", "pid": -1, "host": "?", "started": "?", "command": "(unreadable lock file)"}


def lock_is_live(record: dict | None) -> bool:
    """Whether a lock record belongs to a process that still runs (unknown hosts count as live)."""
    if not record:
        return False
    if record.get("host") != socket.gethostname():
        return True
    return _pid_alive(int(record.get("pid", -1)))


def _try_create(lock: Path, record: dict) -> bool:
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record))
        f.flush()
        os.fsync(f.fileno())
    return True


@contextlib.contextmanager
def run_dir_lock(directory: str | Path, what: str = "run") -> Iterator[None]:
    """Hold the lock of `directory` for the block (created if needed). Re-entrant within the process and
    for the children of the process that holds it (MEDTRANSFER_LOCK_OWNER).

    Raises RunDirInUseError (a ConfigError) at once when another live process holds it: the message
    names the directory, the owner (pid, host, start time, command) and the fix."""
    directory = Path(directory).expanduser().resolve()
    lock = directory / LOCK_NAME
    owner = os.environ.get(OWNER_ENV) or f"{socket.gethostname()}:{os.getpid()}"
    held = read_lock(directory)
    if held and held.get("owner") == owner:
        yield  # ours already: this process, or the job that started this one (a DDP rank)
        return
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "owner": owner,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(sys.argv),
    }
    while not _try_create(lock, record):
        held = read_lock(directory)
        if held is None:
            continue  # released in between
        if lock_is_live(held):
            raise RunDirInUseError(
                f"The {what} directory {directory} is in use by another run: pid {held.get('pid')} on "
                f"{held.get('host')}, started {held.get('started')} ({held.get('command')}). A second run "
                f"there would mix their files. Wait for it to finish, or give this one another directory; "
                f"if that run is gone (another machine), delete {lock}."
            )
        stale = lock.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(lock, stale)  # only one of two racing takers gets the stale file
            stale.unlink()
            console.print(
                f"[yellow]{directory}: took over the lock of run pid {held.get('pid')} (started "
                f"{held.get('started')}), which is no longer running.[/yellow]"
            )
    exported = OWNER_ENV not in os.environ
    if exported:
        os.environ[OWNER_ENV] = owner
    try:
        yield
    finally:
        if exported:
            os.environ.pop(OWNER_ENV, None)
        current = read_lock(directory)
        if current and current.get("owner") == owner and current.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                lock.unlink()


def _arg_value(args: Sequence[str], key: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=") or a.startswith(f"+{key}=")]
    if not values:
        return None
    value = values[-1].strip().strip("'\"")
    return None if "${" in value or not value else value


def command_line_dir(args: Sequence[str]) -> tuple[Path, str] | None:
    """The directory a medtransfer-train command line names explicitly, before Hydra writes into it:
    hydra.sweep.dir with -m/--multirun, hydra.run.dir otherwise (resume= expands to it); None when the
    directory comes from the config (a new timestamped directory)."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    value = _arg_value(args, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    if value is None:
        return None
    return Path(value).expanduser().resolve(), "sweep" if multirun else "run"


@contextlib.contextmanager
def command_line_lock(args: Sequence[str]) -> Iterator[None]:
    """Lock the run or sweep directory named on the command line for the whole command (see
    command_line_dir), so that Hydra does not write its .hydra/ files into a directory in use. A directory
    in use prints who holds it and exits with code 2."""
    target = command_line_dir(args)
    if target is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_dir_lock(*target))
        except RunDirInUseError as err:
            print_error(str(err))
            raise SystemExit(2) from None
        yield
