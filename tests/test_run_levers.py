"""experiments/gpu_speed/run_levers.py runs end to end on CPU (`--smoke`: debug presets, dynamo's eager backend,
one iteration) and writes every section, the merged JSON and the markdown table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_levers_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_speed" / "run_levers.py"), "--smoke",
                           "--presets", "smolvlm", "--lever-presets", "smolvlm", "--train-extra", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "smolvlm.json").read_text())
    sections = row["sections"]
    assert set(sections) == {"numerics", "throughput", "training", "latency_bs1", "levers", "tiled", "max_batch"}
    assert not [k for k, v in sections.items() if isinstance(v, dict) and "error" in v], sections
    assert set(sections["throughput"]["img_s"]) == {"hf_compile", "timm_compile", "native_default", "native_levers"}
    assert sections["throughput"]["fast_paths_native_levers"]["patch_gemm"] is True
    assert all(isinstance(v, float) for v in sections["training"]["img_s"].values()), sections["training"]
    assert sections["numerics"]["native_levers_bf16_vs_fp32"] < 1e-4  # fp32 on CPU: the same function
    assert sections["tiled"]["rel_err_native_vs_hf"] < 1e-4
    assert sections["tiled"]["resize_check"]["bicubic"]["mean_abs_uint8"] < 1
    assert set(sections["max_batch"]["largest"]) == {"native_levers", "hf", "native_levers_checkpointing"}
    assert all(v >= 2 for v in sections["max_batch"]["largest"].values())
    assert json.loads((tmp_path / "levers.json").read_text())[0]["preset"] == "smolvlm"
    md = (tmp_path / "levers.md").read_text()
    assert "| smolvlm |" in md and "Training step" in md and "Tiled image 1536x2048" in md


@pytest.mark.slow
def test_autotune_section_measures_every_side(tmp_path: Path) -> None:
    """`--sections throughput,autotune`: transformers, timm and native (with and without CUDA graphs) all under
    max-autotune (on CPU: dynamo's eager backend, so only the bookkeeping is checked), with the tuning time."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_speed" / "run_levers.py"), "--smoke",
                           "--presets", "siglip", "--sections", "throughput,autotune", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    at = json.loads((tmp_path / "siglip.json").read_text())["sections"]["autotune"]
    sides = {"hf", "timm", "native_levers", "native_levers_cudagraphs"}
    assert set(at["img_s"]) == sides and all(isinstance(v, float) and v > 0 for v in at["img_s"].values()), at
    assert set(at["compile_s"]) == sides and set(at["ratio"]) == {"native_levers", "native_levers_cudagraphs"}
    assert "max-autotune on every side" in (tmp_path / "levers.md").read_text()
