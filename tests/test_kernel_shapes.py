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
