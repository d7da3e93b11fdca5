"""Atomic file writes: every results.json, checkpoint and export goes through `atomic_write`.

The bytes go to a temporary `.<name>.<pid>.tmp` in the target's own folder (so the rename never crosses a
filesystem), are flushed and fsynced, and the file is renamed over the target, then the folder is fsynced so the
rename itself survives a power cut. A kill mid-write leaves the previous file whole; a full or read-only disk is
one `WriteError` line and the previous file stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from vtlab.errors import WriteError


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any], what: str = "file") -> Path:
    """Write `path` atomically with `write(fh)` into a binary file handle; returns the path."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        full = " (disk full)" if exc.errno == errno.ENOSPC else ""
        earlier = "the previous checkpoint files are unchanged" if what == "checkpoint" else \
            "the earlier file, if any, is unchanged"
        raise WriteError(f"cannot write {what} {target}{full}: {exc.strerror or exc}; {earlier}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_json_atomic(path: Path | str, payload: dict[str, Any]) -> Path:
    """`payload` as indented JSON, written atomically."""
    data = (json.dumps(payload, indent=2, default=str) + "\n").encode()
    return atomic_write(path, lambda fh: fh.write(data), "file")
