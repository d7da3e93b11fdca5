"""experiments/gpu_towers/run.py: its architectures are the shipped presets, and it runs end to end on the CPU
with the debug twins (QUICK=1, no compile, tiny iteration counts) writing results.json + results.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vtlab

REPO = Path(vtlab.__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "gpu_towers" / "run.py"
TWINS = {"clip_l14_336": "clip_debug", "dinov2_l14": "dinov2_debug", "dinov2_l14_reg": "dinov2_reg_debug",
         "siglip2_so400m_naflex": "siglip2_debug"}


def script():
    spec = importlib.util.spec_from_file_location("gpu_towers_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("table", ["ARCH", "DEBUG"])
def test_script_architectures_are_the_presets(table):
    run = script()
    for name, arch in getattr(run, table).items():
        preset = name if table == "ARCH" else TWINS[name]
        m = vtlab.make_config(preset).model
        for key, value in arch.items():
            mine = getattr(m, key)
            assert getattr(mine, "value", mine) == value, (preset, key, mine, value)


@pytest.mark.slow
def test_script_runs_on_cpu_with_the_debug_twins(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "QUICK": "1", "DEVICE": "cpu", "COMPILE": "0", "BATCH": "2",
           "ITERS": "1", "REPEATS": "1", "LAT_ITERS": "2", "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["tower"] for r in res["rows"]] == list(TWINS)
    for r in res["rows"]:
        assert r["rel_err"] < 1e-5 and r["hf_img_s"] > 0 and r["native_img_s"] > 0 and r["native_bs1_ms"] > 0
    assert (tmp_path / "results.md").read_text().count("| ") > 4
