"""Helpers shared by the train/eval/data tests: compose a config and run a task in-process or via the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vtlab.api import compose_config, to_config
from vtlab.results.record import RunContext

REPO = Path(__file__).resolve().parents[1]

# Tiny models train faster on one intra-op thread, and far faster when other jobs share the two cores
# (two spinning OpenMP threads on a busy machine were measured 50x slower per step).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

# A tiny, fast training setup: smolvlm_debug (64 px, 8x8 patches), the coarse synthetic task.
TINY = [
    "task=train",
    "logger=none",
    "data.task=count",
    "data.train_size=64",
    "data.val_size=32",
    "task.batch_size=16",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


def make_ctx(out_dir: Path, overrides: list[str], model: str = "smolvlm_debug") -> RunContext:
    raw = compose_config(model, overrides)
    return RunContext(cfg=to_config(raw), raw=raw, out_dir=out_dir, model_choice=model, overrides=overrides)


def run_inproc(out_dir: Path, overrides: list[str], model: str = "smolvlm_debug") -> dict[str, Any]:
    from vtlab.tasks import run_task

    with one_thread():
        return run_task(make_ctx(out_dir, overrides, model))


def cli(args: list[str], timeout: float = 240, **popen: Any) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **ONE_THREAD}
    if not any(a.startswith(("out_dir=", "hydra.run.dir=")) for a in args):  # never a run folder in the checkout
        args = [*args, f"hydra.run.dir={tempfile.mkdtemp(prefix='vtlab-test-')}"]
    return subprocess.run([sys.executable, "-m", "vtlab", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def kill_after_first_epoch(args: list[str], out_dir: Path) -> Path:
    """Run `python -m vtlab *args out_dir=...` and SIGKILL it as soon as its second epoch's checkpoint appears, so
    that epoch0.ckpt is complete; returns that checkpoint (the resume point)."""
    env = os.environ | {"WANDB_MODE": "disabled", **ONE_THREAD}
    child = subprocess.Popen([sys.executable, "-m", "vtlab", *args, f"out_dir={out_dir}"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out_dir / "checkpoints" / "epoch1.ckpt"  # epoch0.ckpt is complete once this one appears
    deadline = time.time() + 180
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "training ended before it could be killed"
    return out_dir / "checkpoints" / "epoch0.ckpt"
