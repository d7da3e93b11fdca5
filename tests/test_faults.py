"""Issue 17: fault injection. Kills at several points of a tiny training run, then resume: the same final
weights and metrics as one uninterrupted run; a full disk; a second run into a held folder.

The tiny run: smolvlm_debug, 64 train images in batches of 16 (4 steps an epoch), 2 epochs, validation every
2 steps (so last.ckpt is rewritten mid-epoch), deterministic.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from train_helpers import ONE_THREAD, REPO, TINY, run_inproc

import vtlab.train.trainer as trainer_mod
from vtlab.errors import WriteError
from vtlab.results.rundir import LOCK

RUN = [*TINY, "trainer.max_epochs=2", "trainer.val_check_interval=2", "trainer.deterministic=true",
       "task.warmup_steps=2", "task.freeze=none"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _same_run(a: Path, b: Path) -> None:
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["global_step"] == rb["global_step"] == 8
    assert ra["val_acc"] == rb["val_acc"]
    assert rb["val_loss"] == pytest.approx(ra["val_loss"], abs=1e-6)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0, msg=key)


class _StopAt(Callback):
    """Raise before the training step after `step` (its mid-epoch last.ckpt is then on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("stopped on purpose")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    run_inproc(out, RUN)
    return out


def test_mid_epoch_stop_and_resume_continues_the_sampler(full_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    original = trainer_mod.checkpoint_callbacks  # looked up by vtlab.train.trainer.fit_run
    monkeypatch.setattr(trainer_mod, "checkpoint_callbacks", lambda *a: [*original(*a), _StopAt(6)])
    with pytest.raises(RuntimeError, match="stopped on purpose"):
        run_inproc(tmp_path, RUN)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6  # mid epoch 1
    assert not (tmp_path / LOCK).exists()
    monkeypatch.setattr(trainer_mod, "checkpoint_callbacks", original)
    run_inproc(tmp_path, [*RUN, "task.ckpt_path=last"])
    _same_run(full_run, tmp_path)


def test_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    saves: list[str] = []
    real_save = torch.save

    def full_disk(obj: Any, fh: Any, *a: Any, **k: Any) -> None:
        saves.append(str(getattr(fh, "name", fh)))
        if len(saves) > 2:  # the first checkpoints are written, then the disk is full mid-write
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, fh, *a, **k)

    monkeypatch.setattr(trainer_mod.torch, "save", full_disk)
    with pytest.raises(WriteError, match=r"disk full.*previous checkpoint files are unchanged"):
        run_inproc(tmp_path, RUN)
    monkeypatch.setattr(trainer_mod.torch, "save", real_save)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert not [f for f in files if f.endswith(".tmp")], files
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_full_disk_writing_results_json_keeps_the_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vtlab.results.record as record

    path = tmp_path / "results.json"
    record.write_json_atomic(path, {"a": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import vtlab.atomic as atomic  # the one atomic writer (record re-uses it)

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteError, match="No space left on device"):
        record.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# ---- SIGKILL at several points of a CLI run (subprocesses), then `task.ckpt_path=last`

_PAUSE = """
import os, sys, time
from pathlib import Path
import vtlab.train.trainer as t
real_replace, real_save = t.os.replace, t.torch.save
n = {{"save": 0}}
def pause(marker):
    Path(marker).write_text("x")
    time.sleep(120)
def save(obj, fh, *a, **k):
    n["save"] += 1
    if n["save"] == {at} and "{where}" == "before_last":  # best was written at this step, last not yet
        pause("{marker}")
    real_save(obj, fh, *a, **k)
def replace(src, dst):
    if n["save"] == {at} and "{where}" == "mid_write":  # the new last.ckpt is written, not yet renamed
        pause("{marker}")
    real_replace(src, dst)
t.torch.save, t.os.replace = save, replace
from vtlab.cli import main
sys.argv = ["vtlab", *{args!r}]
main()
"""


def _env() -> dict[str, str]:
    return os.environ | {"WANDB_MODE": "disabled", **ONE_THREAD}


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtlab", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _killed_at(out: Path, where: str, at: int) -> None:
    marker = out.parent / f"{out.name}.paused"
    script = _PAUSE.format(at=at, where=where, marker=marker,
                           args=["+model=smolvlm_debug", *RUN, f"out_dir={out}"])
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), child.communicate()[1][-2000:] if child.poll() is not None else "never paused"
    child.send_signal(signal.SIGKILL)
    child.wait()


@pytest.fixture(scope="module")
def full_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full_cli") / "run"
    proc = _cli(["+model=smolvlm_debug", *RUN, f"out_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


# saves: step 2 best+last (2 files), step 4 best? + last ... `at` counts torch.save calls
@pytest.mark.slow
@pytest.mark.parametrize("where,at", [("mid_write", 5), ("before_last", 5), ("mid_write", 3)])
def test_sigkill_then_resume_matches_the_uninterrupted_run(full_cli: Path, tmp_path: Path, where: str, at: int) -> None:
    out = tmp_path / "run"
    _killed_at(out, where, at)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)  # the previous good one, whole
    assert 0 < last["global_step"] < 8
    holder = json.loads((out / LOCK).read_text())  # the killed run's lock: stale, recovered by the resume
    proc = _cli(["+model=smolvlm_debug", *RUN, f"out_dir={out}", "task.ckpt_path=last"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert holder["pid"] != os.getpid() and not (out / LOCK).exists()
    _same_run(full_cli, out)


@pytest.mark.slow
def test_concurrent_second_run_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _killed_at_start = out.parent / "run.paused"
    script = _PAUSE.format(at=1, where="before_last", marker=_killed_at_start,
                           args=["+model=smolvlm_debug", *RUN, f"out_dir={out}"])
    first = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not _killed_at_start.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert _killed_at_start.exists()
        second = _cli(["+model=smolvlm_debug", *RUN, f"out_dir={out}"])
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1].startswith(f"vtlab: error: out_dir={out} is in use by run pid")
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
