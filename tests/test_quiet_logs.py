"""Quiet logs and files in the right place: one line per event, no adverts or noise warnings (vtlab.logs), the
log beside results.json under out_dir, nothing in ./outputs, and no folder left by a refused run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vtlab.cli import run_dir_follows_out_dir
from vtlab.logs import quiet_run
from vtlab.tasks.train import summary_line


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_quiet_run_filters_at_the_source_and_keeps_the_rest():
    keep = _Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    cpp = logging.getLogger("torch.utils.cpp_extension")  # torch's loggers do not propagate: watch it directly
    cpp.addHandler(keep)
    lightning = logging.getLogger("lightning.pytorch")
    before = (list(lightning.handlers), lightning.propagate)
    try:
        with quiet_run():
            logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("💡 Tip: try installing litlogger")
            logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("GPU available: False, used: False")
            logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
            logging.getLogger("torch.utils.cpp_extension").warning("a real problem")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1)
                warnings.warn("a warning that matters", UserWarning, stacklevel=1)
    finally:
        root.removeHandler(keep)
        cpp.removeHandler(keep)
    assert keep.lines == ["GPU available: False, used: False", "a real problem"]
    assert [str(w.message) for w in caught] == ["a warning that matters"]
    assert (list(lightning.handlers), lightning.propagate) == before  # restored after the run


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vtlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=400)


@pytest.mark.slow
def test_training_log_is_clean_and_lands_in_out_dir(tmp_path):
    out = tmp_path / "run"
    proc = _run(["+model=smolvlm_debug", "task=train", "trainer.fast_dev_run=true", "logger=wandb",
                 "trainer.enable_progress_bar=false", f"out_dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    for noise in ("💡", "litlogger", "LeafSpec", "_pytree", "Total FLOPs", "No CUDA runtime"):
        assert noise not in text, noise
    lines = [ln.split("] - ", 1)[-1] for ln in text.splitlines() if ln.strip()]
    events = [ln for ln in lines if ln[0].isalpha()]  # log lines (table borders and bars excluded)
    assert len(events) == len(set(events)), sorted({e for e in events if events.count(e) > 1})
    assert any("GPU available" in ln for ln in events)
    log = (out / "vtlab.log").read_text()
    assert (out / "results.json").is_file() and "GPU available" in log  # the log beside results.json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no ./outputs, ./wandb, ./multirun


def test_refused_run_leaves_no_folder(tmp_path):
    proc = _run(["+model=smolvlm_debug", "connector.factor=3", "logger=wandb", f"out_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("vtlab: error: connector.factor=3"), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_short_run_summary_line_keeps_every_field():
    short = {"global_step": 1, "val_acc": 0.25, "chance_acc": 0.25, "val_loss": 1.3863, "train_images_per_s": None}
    assert summary_line("smolvlm_debug-f4", short) == ("train smolvlm_debug-f4: 1 steps, val_acc 0.2500 (chance 0.250), "
                                                      "val_loss 1.3863, n/a train images/s")


def test_out_dir_sets_the_run_dir_and_keeps_an_earlier_runs_hydra_folder(tmp_path):
    run = tmp_path / "run"
    assert run_dir_follows_out_dir(["+model=x", f"out_dir={run}"]) == ["+model=x", f"out_dir={run}",
                                                                        f"hydra.run.dir={run}"]
    (run / ".hydra").mkdir(parents=True)
    assert run_dir_follows_out_dir([f"out_dir={run}"])[-1] == "hydra.output_subdir=.hydra.1"
    assert run_dir_follows_out_dir(["-m", f"out_dir={run}"]) == ["-m", f"out_dir={run}"]  # sweeps: per-cell dirs
    assert run_dir_follows_out_dir([f"out_dir={run}", "hydra.run.dir=elsewhere"])[-1] == "hydra.run.dir=elsewhere"
