"""Graph breaks of the native tower's forward with the inference levers (issue 16).

The ninth session's busy_probe.py profile of siglip's throughput call (`levers_h200_2026-12-02c/call2`) showed the
kernels of two compiled graphs per call: the patch embedding (`triton_poi_fused_clone_permute_view_0`,
`triton_poi_fused_add_view_1`) and then the residual stream (`triton_poi_fused_shifted_layer_norm_zeros_0`, ...),
with a ~0.56 ms idle gap between them when the host has not run ahead. tests/test_fastpaths.py compiles the stream
alone with fullgraph=True; this probe runs `torch._dynamo.explain` on the whole tower as the harness configures it
(bf16, inference mode, patch GEMM, fused GELU epilogue, `task.residual_gemm`) and writes the graph count and every
break reason.

    python experiments/gpu_speed/graph_break_probe.py --presets siglip,llavanext --out $OUT/graph_breaks.json
    python experiments/gpu_speed/graph_break_probe.py --smoke --out /tmp/gb.json   # CPU, debug preset
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import harness as H
import run_levers as RL  # puts this checkout first on sys.path
import torch

import vtlab
from vtlab.models.fastpaths import configure_fast_paths, fast_paths


def explain(preset: str, smoke: bool) -> dict[str, Any]:
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    tower = vtlab.build_stack(vtlab.compose_config(preset + ("_debug" if smoke else ""), H.TOWER_ONLY)).tower
    tower.to(device=device, dtype=dtype).eval()
    RL.set_levers(tower, patch_gemm=True)
    configure_fast_paths(tower, residual_gemm=True)
    size = tower.image_size if hasattr(tower, "image_size") else 224
    x = torch.randn(2, 3, size, size, device=device, dtype=dtype)
    torch._dynamo.reset()
    with torch.inference_mode():
        uses_stream = tower.uses_stream(tower.embed(x), None)
        report = torch._dynamo.explain(tower)(x)
    return {"graph_count": report.graph_count, "graph_break_count": report.graph_break_count,
            "break_reasons": [{"reason": str(b.reason)[:400],
                               "where": [f"{f.filename.split('vtlab/')[-1]}:{f.lineno} {f.name}" for f in b.user_stack][-4:]}
                              for b in report.break_reasons],
            "ops_per_graph": [len(ops) for ops in report.ops_per_graph], "uses_stream": uses_stream,
            "fast_paths": fast_paths(tower, device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="siglip,llavanext")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="CPU, debug preset")
    a = ap.parse_args()
    res: dict[str, Any] = {"torch": torch.__version__}
    for preset in a.presets.split(","):
        try:
            res[preset] = explain(preset, a.smoke)
        except Exception as exc:  # one preset failing must not lose the others
            res[preset] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
        print(preset, json.dumps(res[preset])[:800], flush=True)
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
