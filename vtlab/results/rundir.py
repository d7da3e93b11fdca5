"""A run folder belongs to one run: claiming it, and the refusals that keep what another run wrote.

Mirrors what build tools do with a lock file (Cargo's `.cargo-lock`, Git's `index.lock`): the run creates
`<out_dir>/.vtlab.lock` with O_CREAT | O_EXCL (atomic on every local filesystem), holding its pid, host and
start time; a second run into that folder is refused with one line naming the holder. A lock whose pid is
dead on this host (a SIGKILLed run) is stale: it is moved aside and retaken. `check_out_dir` runs before any
work: a file, /dev/null, a read-only or uncreatable folder is one line. `check_foreign` refuses a folder that
holds another task's results.json or a whole `-m` sweep (its summary.csv), unless `overwrite=true`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vtlab.errors import ConfigError

LOCK = ".vtlab.lock"
RESULTS = "results.json"
# what only a -m sweep folder holds (Hydra's multirun.yaml, the sweep's summary.md; a csv-logged run has its
# own summary.csv, so that one is no marker)
SWEEP_MARKERS = ("multirun.yaml", "summary.md")


def check_out_dir(out_dir: Path) -> Path:
    """Create `out_dir` if needed and make sure files can be created in it; one line otherwise."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir={out_dir} is not a folder (it is a file or a device); give a folder path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out_dir={out_dir} cannot be created ({exc.strerror}); give a writable folder") from None
    probe = out_dir / f".vtlab.probe.{os.getpid()}"
    try:
        with open(probe, "w") as fh:
            fh.write("")
    except OSError as exc:
        raise ConfigError(f"out_dir={out_dir} is not writable ({exc.strerror}); give a writable folder") from None
    finally:
        if probe.exists():
            probe.unlink()
    return out_dir


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_stale(holder: dict[str, Any] | None) -> bool:
    """A lock is stale when its pid is dead on this host (a lock from another host is never presumed stale)."""
    if holder is None:  # unreadable / half-written: its writer died between create and write
        return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return not (isinstance(pid, int) and _pid_alive(pid))


def _held_message(out_dir: Path, holder: dict[str, Any] | None) -> str:
    who = "another run" if holder is None else (
        f"run pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})")
    return (f"out_dir={out_dir} is in use by {who}: {out_dir / LOCK} exists; a second run into one folder would mix "
            f"their files. Choose another out_dir, or wait for that run (delete the lock only if it is not running)")


def acquire(out_dir: Path) -> Path:
    """Create the lock atomically; recover a stale one; refuse a live one. Returns the lock path."""
    lock = out_dir / LOCK
    payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(lock)
            if not is_stale(holder):
                raise ConfigError(_held_message(out_dir, holder)) from None
            aside = lock.with_name(f"{LOCK}.stale.{os.getpid()}")
            try:
                os.replace(lock, aside)  # only one recoverer moves a given file
            except FileNotFoundError:
                continue
            if read_lock(aside) != holder:  # another run retook the lock between our read and move: give it back
                os.replace(aside, lock)
                raise ConfigError(_held_message(out_dir, read_lock(lock))) from None
            aside.unlink()
            continue
        except OSError as exc:
            raise ConfigError(f"out_dir={out_dir}: cannot create {LOCK} ({exc.strerror}); give a writable folder") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        return lock
    raise ConfigError(_held_message(out_dir, read_lock(lock)))


def release(lock: Path) -> None:
    holder = read_lock(lock)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


@contextmanager
def claimed(out_dir: Path, enabled: bool = True) -> Iterator[Path | None]:
    """Hold `out_dir` for the body (ranks > 0 of a DDP job pass enabled=False: rank 0 holds it for them)."""
    if not enabled:
        yield None
        return
    lock = acquire(out_dir)
    try:
        yield lock
    finally:
        release(lock)


def check_not_held(out_dir: Path) -> None:
    """Refuse a folder a live run holds (before anything is written into it, e.g. by Hydra's run-dir setup)."""
    holder = read_lock(out_dir / LOCK)
    if holder is not None and not is_stale(holder):
        raise ConfigError(_held_message(out_dir, holder))


def held_by_other(out_dir: Path) -> bool:
    """True when a live run other than this process holds `out_dir` (a refused cell then writes nothing there)."""
    holder = read_lock(out_dir / LOCK)
    if holder is None or is_stale(holder):
        return False
    return not (holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname())


def results_task(out_dir: Path) -> str | None:
    try:
        data = json.loads((out_dir / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    return data.get("task") if isinstance(data, dict) else None


def check_foreign(out_dir: Path, task: str, overwrite: bool) -> None:
    """Refuse a folder holding a whole sweep, or another task's results.json (overwrite=true allows it)."""
    if overwrite:
        return
    markers = [m for m in SWEEP_MARKERS if (out_dir / m).exists()]
    if markers:
        raise ConfigError(f"out_dir={out_dir} holds a -m sweep ({markers[0]}); a run there would replace the sweep's "
                          f"files. Choose another out_dir (or overwrite=true to allow it)")
    previous = results_task(out_dir)
    if (out_dir / RESULTS).is_file() and previous != task:
        raise ConfigError(f"out_dir={out_dir} holds another task's results.json (task={previous}), which this "
                          f"task={task} run would overwrite; choose another out_dir (or overwrite=true to replace it)")
