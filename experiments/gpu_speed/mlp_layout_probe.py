"""llavanext's MLP alone, forward + backward compiled: does `task.gelu_kernel` still copy its inputs (issue 16)?

The ninth session's call 3 (`levers_h200_2026-12-02c/call3/llavanext.json`) found Inductor copying fc1's output and
fc2's input gradient before each bias_gelu op (`triton_poi_fused__unsafe_view_bias_gelu_fwd_*` 5.1 ms,
`triton_poi_fused_bias_gelu_bwd_view_*` 10.2 ms per step): it pads the rows of a (tokens x 4304) GEMM output to 4352
elements, and a custom op gets its inputs in the eager layout unless it is tagged `flexible_layout`. Without the
kernel, the same padding makes ATen's addmm copy the broadcast bias into the padded output before the GEMM (cuBLASLt's
bias epilogue needs a contiguous output): `direct_copy_kernel` 9.3 ms in 27 calls
(`levers_h200_2026-12-02c/call4/step_copies.json`). This probe times vtlab.models.layers.Mlp(1152, 4304, tanh GELU) at
llavanext's training batch (64 x 729 tokens), bf16 autocast, compiled forward + backward, with and without
`gelu_kernel`, and lists each step's kernels by GPU time.

    python experiments/gpu_speed/mlp_layout_probe.py --out $OUT/mlp_layout.json [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import harness as H
import torch

from vtlab.models.layers import Mlp


def probe(gelu_kernel: bool, tokens: int, width: int, hidden: int, device: torch.device, iters: int) -> dict[str, Any]:
    torch.manual_seed(0)
    mlp = Mlp(width, hidden, "gelu_tanh").to(device)
    mlp.gelu_kernel = gelu_kernel
    assert mlp.tanh_gelu, "the GELU kernel computes the tanh GELU only"
    x = torch.randn(tokens // 729 if tokens >= 729 else 1, min(tokens, 729), width, device=device, requires_grad=True)
    g = torch.randn(*x.shape[:-1], width, device=device)
    fn = torch.compile(mlp) if device.type == "cuda" else mlp

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            y = fn(x)
        y.float().backward(g)

    ms = statistics.median(H.time_per_call_ms(step, device, 3, iters, 3))
    kernels = [{"kernel": name[:110], "ms": t, "calls": n} for name, t, n in H.gpu_kernel_times(step)]
    ours = sum(k["calls"] for k in kernels if k["kernel"].startswith("bias_gelu_"))
    if device.type == "cuda" and gelu_kernel and not ours:  # the tenth session's first run timed erf GELU twice
        raise RuntimeError("gelu_kernel was set but no bias_gelu kernel ran")
    return {"ms_per_step": ms, "bias_gelu_kernel_calls": ours, "kernels": kernels[:14]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, eager")
    a = ap.parse_args()
    device = torch.device("cpu" if a.smoke else "cuda")
    tokens, width, hidden = (18, 16, 40) if a.smoke else (64 * 729, 1152, 4304)
    res: dict[str, Any] = {"torch": torch.__version__, "shape": [tokens, width, hidden]}
    for on in (True, False):
        key = "gelu_kernel" if on else "inductor_gelu"
        try:
            res[key] = probe(on, tokens, width, hidden, device, 1 if a.smoke else 10)
        except Exception as exc:  # one side failing must not lose the other
            res[key] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
        print(key, json.dumps(res[key])[:600], flush=True)
        torch._dynamo.reset()
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
