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
    assert set(sections) == {"numerics", "throughput", "training", "grad_numerics", "latency_bs1", "levers", "tiled",
                             "max_batch"}
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


@pytest.mark.slow
def test_training_section_by_sdpa_setting_with_a_lever_sweep(tmp_path: Path) -> None:
    """`--train-attention a,b`: every variant under each setting (keys `name@setting`), the ratios per setting,
    one-lever-off variants from `--train-sweep` (`a+b`: both off), `--train-fused-norm`, the `--train-variants` filter, a kernel
    breakdown by kind, finite gradients, and the gradient error vs fp32 per setting (fp32 on CPU: ~0)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    wanted = ("native_levers_full@auto,hf_full@auto,native_no_fused_gelu_train+patch_gemm_full@cudnn_safe,"
              "hf_full@cudnn_safe,native_fused_norm_full@auto,native_fused_norm_gelu_kernel_full@auto")
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_speed" / "run_levers.py"), "--smoke",
                           "--presets", "smolvlm", "--sections", "training,grad_numerics", "--train-attention",
                           "auto,cudnn_safe", "--train-sweep", "fused_gelu_train+patch_gemm", "--train-variants", wanted,
                           "--train-fused-norm",
                           "--train-profile", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = json.loads((tmp_path / "smolvlm.json").read_text())["sections"]
    tr, gn = sections["training"], sections["grad_numerics"]
    assert set(tr["img_s"]) == set(wanted.split(",")) and all(isinstance(v, float) for v in tr["img_s"].values())
    assert list(tr["img_s"]) == sorted(wanted.split(","), key=lambda k: k.split("@")[1] != "auto")  # given order
    assert set(tr["kernels"]) == set(wanted.split(","))  # every full-FT variant profiled (CPU: keys only)
    assert set(tr["vs_hf"]) == {k for k in wanted.split(",") if k.startswith("native")}
    assert all(tr["grads_finite"].values())
    assert {"ratio_full@auto", "ratio_full@auto_vs_fastest_hf"} <= set(tr)
    assert set(gn) == {"images", "native_levers@auto", "native_levers@cudnn_safe", "hf@auto"}  # HF: no layer policy
    assert all(v["rel_err"] < 1e-4 and v["finite"] for k, v in gn.items() if k != "images")
    assert "GPU time of one step" in (tmp_path / "levers.md").read_text()


def test_sdpa_copy_probe_smoke(tmp_path: Path) -> None:
    """experiments/gpu_speed/sdpa_copy_probe.py runs on CPU (`--smoke`) and reports ATen ops with input shapes and
    kernels per preset and backend."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_speed" / "sdpa_copy_probe.py"), "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"llavanext_math_eager", "siglip_math_eager"} <= set(res)
    ops = res["llavanext_math_eager"]["ops"]
    assert any(r["op"] == "aten::linear" and "[2, 9, 32]" in r["shapes"] for r in ops)
