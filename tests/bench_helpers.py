"""Helpers for the bench / sweep / tracking tests: run the CLI in a subprocess, read offline W&B run files."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_vtlab(args: list[str], cwd: Path, wandb_mode: str = "disabled", timeout: float = 240,
              **env: str) -> subprocess.CompletedProcess:
    """`python -m vtlab ARGS` in `cwd` with WANDB_MODE set explicitly (plus `env`); output captured."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    full_env.update(WANDB_MODE=wandb_mode, WANDB_SILENT="true", HYDRA_FULL_ERROR="1", **env)
    return subprocess.run([sys.executable, "-m", "vtlab", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline `run-*.wandb` file (W&B's leveldb-log framing of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def wandb_run_info(run_dir: Path) -> dict[str, Any]:
    """name, group, job_type and the summary keys -> JSON values of one offline run directory."""
    (path,) = run_dir.glob("run-*.wandb")
    info: dict[str, Any] = {"summary": {}}
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(name=rec.run.display_name, group=rec.run.run_group, job_type=rec.run.job_type)
        elif kind == "summary":
            for item in rec.summary.update:
                info["summary"][item.key or "/".join(item.nested_key)] = item.value_json
    return info
