"""A fresh `task=train` into an `out_dir` that already holds checkpoints must not overwrite them."""

from __future__ import annotations

import pytest
from train_helpers import TINY, run_inproc

from vtlab.errors import ConfigError


def test_fresh_train_refuses_out_dir_with_checkpoints(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    last = ckpt_dir / "last.ckpt"
    last.write_bytes(b"the user's earlier run")
    with pytest.raises(ConfigError, match=r"already holds checkpoints.*task.ckpt_path=last"):
        run_inproc(tmp_path, [*TINY, "trainer.fast_dev_run=true"])
    assert last.read_bytes() == b"the user's earlier run"
    assert not (tmp_path / "results.json").exists()


def test_eval_refuses_to_overwrite_a_training_runs_results(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "last.ckpt").write_bytes(b"x")
    results = tmp_path / "results.json"
    results.write_text('{\n  "task": "train",\n  "val_acc": 0.9\n}\n')
    with pytest.raises(ConfigError, match="holds another task's results.json"):
        run_inproc(tmp_path, [*TINY, "task=eval", "task.ckpt_path=last"])
    assert '"val_acc": 0.9' in results.read_text()


def test_resume_with_csv_logger_keeps_earlier_metrics(tmp_path):
    common = [o for o in TINY if o != "logger=none"] + ["logger=csv", "trainer.max_epochs=1"]
    run_inproc(tmp_path, common)
    first = (tmp_path / "csv" / "metrics.csv").read_text()
    run_inproc(tmp_path, [*common[:-1], "trainer.max_epochs=2", "task.ckpt_path=last"])
    assert (tmp_path / "csv" / "metrics.1.csv").read_text() == first
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_profile_refuses_to_overwrite_results_in_out_dir(tmp_path):
    import os
    import subprocess
    import sys

    from train_helpers import REPO

    results = tmp_path / "results.json"
    results.write_text('{"task": "profile", "latency_ms": 1.0}\n')
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, "-m", "vtlab", "+model=smolvlm_debug", "logger=none", f"out_dir={tmp_path}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already holds results.json" in proc.stderr, proc.stderr
    assert results.read_text() == '{"task": "profile", "latency_ms": 1.0}\n'


def test_refused_train_run_opens_no_wandb_run(tmp_path, monkeypatch):
    """The refusal happens before the tracker opens: no empty W&B run is left behind."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    overrides = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb", "trainer.fast_dev_run=true"]
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run_inproc(tmp_path, overrides)
    assert not any((tmp_path / "wb").rglob("*.wandb"))
