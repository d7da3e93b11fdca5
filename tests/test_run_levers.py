"""experiments/gpu_speed/run_levers.py runs end to end on CPU (`--smoke`: debug presets, dynamo's eager backend,
one iteration) and writes every section, the merged JSON and the markdown table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtlab.models import kernels

REPO = Path(__file__).resolve().parents[1]


def _smoke(script: str, tmp_path: Path, *args: str) -> dict:
    """experiments/gpu_speed/<script> --smoke --out tmp_path/out.json *args, in a subprocess: its JSON."""
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_speed" / script), "--smoke", *args,
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


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
    res = _smoke("sdpa_copy_probe.py", tmp_path)
    assert {"llavanext_math_eager", "siglip_math_eager"} <= set(res)
    ops = res["llavanext_math_eager"]["ops"]
    assert any(r["op"] == "aten::linear" and "[2, 9, 32]" in r["shapes"] for r in ops)


def test_busy_probe_smoke(tmp_path: Path) -> None:
    """experiments/gpu_speed/busy_probe.py runs on CPU (`--smoke`) and times each side."""
    res = _smoke("busy_probe.py", tmp_path)["siglip"]
    for side in ("hf_compile", "timm_compile", "native_residual_gemm"):
        assert res[side]["ms_per_call"] > 0, res[side]


def test_busy_probe_timeline_counts_gaps_once() -> None:
    """Overlapping intervals are busy once; idle gaps are measured between the merged intervals, with the kernel
    that ends the merged interval before each gap."""
    sys.path.insert(0, str(REPO / "experiments" / "gpu_speed"))
    import busy_probe

    t = busy_probe.timeline([(0.0, 10.0, "a"), (5.0, 20.0, "b"), (30.0, 40.0, "c"), (41.0, 42.0, "d")], calls=2)
    assert t["busy_ms_per_call"] == pytest.approx(31.0 / 2 / 1e3)
    assert t["span_ms_per_call"] == pytest.approx(42.0 / 2 / 1e3)
    assert t["idle_ms_per_call"] == pytest.approx(11.0 / 2 / 1e3)
    assert t["kernel_sum_ms_per_call"] == pytest.approx(36.0 / 2 / 1e3)
    assert t["largest_gaps"][0] == {"us": 10.0, "after": "b", "before": "c"}
    assert t["gaps_over_5us"] == 0.5


def test_sdpa_copy_probe_step_smoke(tmp_path: Path) -> None:
    """`sdpa_copy_probe.py --step` profiles one whole training step (CPU smoke: debug preset, eager) and reports
    the copy ops with their shapes."""
    res = _smoke("sdpa_copy_probe.py", tmp_path, "--step", "siglip")
    assert res["preset"] == "siglip" and res["batch"] == 2
    assert any(r["op"].startswith("aten::copy_") for r in res["ops"]), res["ops"]


def test_sdpa_copy_probe_launchers_groups_by_op_shape_and_parents() -> None:
    """`launchers` sums the matching kernels' time per (op, shapes, parent chain), longest first."""
    from types import SimpleNamespace as NS

    sys.path.insert(0, str(REPO / "experiments" / "gpu_speed"))
    import sdpa_copy_probe

    acc = NS(name="AccumulateGrad", cpu_parent=None)
    clone = NS(name="aten::clone", cpu_parent=acc)
    copy = lambda us: NS(name="aten::copy_", input_shapes=[[4, 8]], cpu_parent=clone,  # noqa: E731
                         kernels=[NS(name="elementwise_kernel<gpu_kernel_impl_nocast<copy>>", duration=us),
                                  NS(name="other_kernel", duration=99.0)])
    other = NS(name="aten::mm", input_shapes=[[4, 8], [8, 2]], cpu_parent=None, kernels=[NS(name="nvjet", duration=5.0)])
    prof = NS(events=lambda: [copy(300.0), other, copy(200.0)])
    rows = sdpa_copy_probe.launchers(prof, "gpu_kernel_impl_nocast", top=5)
    assert rows == [{"op": "aten::copy_", "shapes": "[[4, 8]]", "parents": "aten::clone <- AccumulateGrad", "calls": 2,
                     "device_ms": 0.5}]


def test_training_kernel_sweep_smoke(tmp_path: Path) -> None:
    """experiments/gpu_speed/training_kernel_sweep.py runs under Triton's interpreter (`--smoke`): every launch of
    the three training kernels and Inductor's counterpart timed, each launch computing what Inductor computes."""
    res = _smoke("training_kernel_sweep.py", tmp_path, "--presets", "siglip")["siglip"]
    assert set(res["gelu_fwd"]) == {"inductor", "8x512x4", "32x128x4"}
    assert len(res["gelu_bwd"]) == 1 + 2 * 2 and len(res["ln_bwd"]) == 1 + 2 * 2
    for part in ("gelu_fwd", "gelu_bwd", "ln_bwd"):
        for key, row in res[part].items():
            assert row["ms"] > 0
            if key != "inductor":  # the interpreter truncates fp32 -> bf16 where the GPU rounds: ~4e-3
                assert row["rel_err_vs_inductor"] < 1e-2, (part, key, row)
        assert res[part + "_best"]["launch"] in res[part]


def test_training_kernel_sweep_choice_sets_the_launches(tmp_path: Path) -> None:
    """`load_choice` (run_levers.py --train-kernel-launch) sets the sweep's fastest launches in
    vtlab.models.kernels for the preset's shapes; `parse` reads the sweep's keys."""
    sys.path.insert(0, str(REPO / "experiments" / "gpu_speed"))
    import training_kernel_sweep as TK

    assert TK.parse("16x256x4_pps8") == [16, 256, 4, 8] and TK.parse("r2w8_pps16") == [2, 8, 16]
    defaults = TK.default_keys(1152, 46656)
    assert TK.parse(defaults["gelu_bwd"]) == list(kernels.GELU_BWD_LAUNCH)
    assert TK.parse(defaults["gelu_fwd"]) == list(kernels.GELU_FWD_LAUNCH)
    assert TK.parse(defaults["ln_bwd"]) == list(kernels.ln_backward_launch(1152, 46656))
    path = tmp_path / "tk.json"
    path.write_text(json.dumps({"llavanext": {"choice": {"gelu_fwd": [8, 512, 4], "gelu_bwd": [16, 256, 8, 16],
                                                         "ln_bwd": [1152, 46656, 2, 8, 16]}}}))
    saved = kernels.GELU_FWD_LAUNCH, kernels.GELU_BWD_LAUNCH, dict(kernels.LN_BACKWARD_TABLE)
    try:
        TK.load_choice(path, "llavanext")
        assert kernels.GELU_FWD_LAUNCH == (8, 512, 4) and kernels.GELU_BWD_LAUNCH == (16, 256, 8, 16)
        assert kernels.LN_BACKWARD_TABLE[(1152, 46656)] == (2, 8, 16)
    finally:
        kernels.GELU_FWD_LAUNCH, kernels.GELU_BWD_LAUNCH = saved[:2]
        kernels.LN_BACKWARD_TABLE.clear()
        kernels.LN_BACKWARD_TABLE.update(saved[2])


def test_graph_break_probe_smoke(tmp_path: Path) -> None:
    """experiments/gpu_speed/graph_break_probe.py explains the native tower on CPU (`--smoke`): one graph."""
    res = _smoke("graph_break_probe.py", tmp_path, "--presets", "siglip")["siglip"]
    assert res["graph_count"] == 1 and res["break_reasons"] == [], res


def test_mlp_layout_probe_smoke(tmp_path: Path) -> None:
    """experiments/gpu_speed/mlp_layout_probe.py times the MLP with and without the GELU kernel (CPU smoke)."""
    res = _smoke("mlp_layout_probe.py", tmp_path)
    assert res["gelu_kernel"]["ms_per_step"] > 0 and res["inductor_gelu"]["ms_per_step"] > 0, res
