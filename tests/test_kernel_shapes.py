"""experiments/gpu_speed/kernel_shapes.py runs end to end on CPU (`--smoke`: tiny shapes, fp32, one iteration):
every attention variant computes the attention of the fp32 reference, forward and backward; every GEMM variant
records a time; a variant that refuses a shape is recorded as an error, not a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kernel_shapes_smoke(tmp_path: Path) -> None:
    out = tmp_path / "ks.json"
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_speed" / "kernel_shapes.py"), "--smoke",
                           "--sections", "attention,gemm,bs1_graphs", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["attention"]["tiny_bs2"]
    measured = {k: v for k, v in rows.items() if isinstance(v, dict) and "fwd_ms" in v}
    assert {"flash_views", "math_views", "flash_pad80", "math_bf16", "math_fn"} <= set(measured)
    for name, row in measured.items():
        assert row["rel_err_vs_fp32"] < 1e-5, name  # fp32 on CPU: the same function, padded head dims included
        if "ms" in row["fwd_bwd"]:
            assert row["fwd_bwd"]["grad_rel_err_vs_fp32"] < 1e-5 and row["fwd_bwd"]["grad_finite"], name
    assert "error" in rows["flex_views"]["fwd_bwd"]  # FlexAttention has no CPU backward: recorded, not raised
    gemm = result["gemm"]["tiny_bs2_n72"]
    assert all(gemm[k]["ms"] > 0 for k in ("bias_only", "gelu_epilogue", "addmm_gelu_compiled", "fc2_bias"))
    assert set(result["gemm"]) >= {"tiny_bs2_n128", "tiny_bs2_n192", "tiny_bs1_n72"}  # 72 padded to 128 and 192
    bs1 = result["bs1_graphs"]["tiny"]
    assert bs1["attention"]["flash_views"]["rel_err_vs_fp32"] < 1e-5 and bs1["gemm"]["fc2_k72_bias"]["us"] > 0


TRITON_CHECK = r"""
import json, sys, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
import triton_gemm as TG
torch.manual_seed(0)
m, k, n = 150, 96, 200  # not multiples of the tiles: partial tiles in M, N (and K = 1.5 tiles of 64)
x, w, b = torch.randn(m, k), torch.randn(n, k) * k**-0.5, torch.randn(n) * 0.1
out = {}
for name, gelu in (("gelu", True), ("bias", False)):
    ref = F.linear(x, w, b)
    ref = F.gelu(ref, approximate="tanh") if gelu else ref
    for cfg in ((64, 64, 64, 4, 2, 4, False, False), (32, 64, 32, 2, 3, 4, True, False), (64, 32, 32, 8, 2, 4, False, True)):
        for dt in (torch.float32, torch.float16):
            y = TG.linear_gelu(x.to(dt), w.to(dt), b.to(dt), cfg, gelu=gelu)
            out[f"{name}_{dt}_{cfg}"] = ((y.float() - ref).norm() / ref.norm()).item()
print(json.dumps(out))
"""


def test_triton_persistent_gemm_is_linear_gelu_under_the_interpreter() -> None:
    """triton_gemm.py's kernel (bias + tanh GELU in a persistent TMA GEMM) is F.gelu(F.linear(x, w, b), "tanh"), with
    partial tiles, subtiled stores and the warp-specialise flag, run by Triton's CPU interpreter (bf16 is left out:
    the interpreter has no bf16; the device run checks bf16 against fp32 per config)."""
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK, str(REPO / "experiments" / "gpu_speed")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errs) == 12
    for key, err in errs.items():
        assert err < (1e-6 if "float32" in key else 2e-3), (key, err)
