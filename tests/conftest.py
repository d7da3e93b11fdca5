"""Shared pytest setup: W&B off, a clean Hydra global state around every test, `gpu` tests skipped on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_run_state(monkeypatch):
    """No test talks to W&B (subprocesses inherit WANDB_MODE unless a test sets it), and no test inherits
    or leaks an initialised Hydra (compose_config reuses an initialised GlobalHydra's search path).
    Subprocesses import this checkout's vtlab (not another checkout's editable install)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def _run_folders() -> set[Path]:
    return {p for name in ("outputs", "multirun") if (REPO / name).is_dir() for p in (REPO / name).glob("*/*")}


@pytest.fixture(autouse=True)
def _no_run_folders_in_checkout():
    """A test must give its runs an out_dir / hydra.run.dir under tmp_path: none may leave ./outputs or
    ./multirun folders in the checkout."""
    before = _run_folders()
    yield
    left = sorted(str(p.relative_to(REPO)) for p in _run_folders() - before)
    assert not left, f"the test left run folders in the checkout: {left}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
