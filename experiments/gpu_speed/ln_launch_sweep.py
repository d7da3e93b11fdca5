"""Launch-configuration sweep of the Triton shifted LayerNorm (vtlab.models.kernels.shifted_layer_norm) at the
presets' shapes (issue 16).

The kernel's rule (`launch_config`: ~4096 elements per program, 4 / 8 warps) ran llavanext's width-1152 LayerNorms
at ~0.09 ms per call (64 x 729 rows, 2 x 107 MB moved: ~2.4 TB/s) where smolvlm's width-768 ones ran at ~3.5 TB/s
(experiments/gpu_speed/levers_h200_2026-12-02/call2). Here every (rows per program, num_warps) candidate is timed
per (width, rows) of the presets, at the throughput batch and at batch 1, each as 20 launches captured in one CUDA
graph (Triton's Python launch costs more than a batch-1 kernel runs, so back-to-back eager launches would time the
host), median of 5 replays. (The `tb_s` of the first record, levers_h200_2026-12-02/call3, is 1000x too small: MB / ms / 1e6; fixed.)
The output's `table` is what `run_levers.py --ln-table` loads into
`vtlab.models.kernels.LAUNCH_TABLE`: the fastest candidate per shape. torch's own add + LayerNorm (eager and
Inductor-compiled) is timed alongside for scale.

    python experiments/gpu_speed/ln_launch_sweep.py --out ln_sweep.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from vtlab.models import kernels

# (preset, width, rows): tokens x batch of the throughput batch (256 / 64 / 64) and of batch 1
SHAPES = (("siglip", 768, 256 * 196), ("siglip_bs1", 768, 196), ("smolvlm", 768, 64 * 1024),
          ("smolvlm_bs1", 768, 1024), ("llavanext", 1152, 64 * 729), ("llavanext_bs1", 1152, 729))
ROWS = (1, 2, 4, 8)
WARPS = (2, 4, 8, 16)
LAUNCHES = 20


def graphed_ms(fn) -> float:
    """ms per call of `fn`: LAUNCHES calls captured in one CUDA graph, median of 5 replays."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(LAUNCHES):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / LAUNCHES)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    dev = torch.device("cuda")
    result: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "shapes": {}, "table": []}
    for name, width, rows in SHAPES:
        g = torch.Generator(dev).manual_seed(0)
        r = torch.randn(rows, width, device=dev, generator=g).bfloat16()
        shift = torch.randn(width, device=dev, generator=g).bfloat16()
        norm = torch.nn.LayerNorm(width, eps=1e-6, device=dev, dtype=torch.bfloat16)
        mb = 2 * r.numel() * r.element_size() / 1e6  # read r, write the output
        ref = F.layer_norm(r.float() + shift.float(), (width,), norm.weight.float(), norm.bias.float(), 1e-6)
        entry: dict = {"width": width, "rows": rows, "mb_moved": mb, "ms": {}}
        default = kernels.launch_config(width, rows)
        entry["rule"] = list(default[1:])
        with torch.inference_mode():
            for per_program in ROWS:
                if per_program * default[0] > 16384:
                    continue
                for warps in WARPS:
                    kernels.LAUNCH_TABLE[(width, rows)] = (per_program, warps)
                    try:
                        got = kernels._shifted_layer_norm_op(r, shift, norm.weight, norm.bias, 1e-6)
                        err = ((got.float() - ref).norm() / ref.norm()).item()
                        ms = graphed_ms(lambda: kernels._shifted_layer_norm_op(r, shift, norm.weight, norm.bias, 1e-6))
                        entry["ms"][f"{per_program}x{warps}"] = {"ms": ms, "tb_s": mb / ms / 1e3, "rel_err": err}
                    except Exception as exc:  # a candidate that does not compile (registers) is a result
                        entry["ms"][f"{per_program}x{warps}"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            kernels.LAUNCH_TABLE.pop((width, rows), None)
            entry["torch_eager_ms"] = graphed_ms(lambda: norm(r + shift))
            compiled = torch.compile(lambda a: norm(a + shift))
            entry["torch_inductor_ms"] = graphed_ms(lambda: compiled(r))
        timed = {k: v for k, v in entry["ms"].items() if isinstance(v, dict)}
        best = min(timed, key=lambda k: timed[k]["ms"])
        rule = f"{default[1]}x{default[2]}"
        entry["best"], entry["best_ms"], entry["rule_ms"] = best, timed[best]["ms"], timed.get(rule, {}).get("ms")
        per_program, warps = (int(v) for v in best.split("x"))
        result["table"].append([width, rows, per_program, warps])
        result["shapes"][name] = entry
        print(f"{name}: rule {rule} {entry['rule_ms']:.4f} ms, best {best} {entry['best_ms']:.4f} ms "
              f"({timed[best]['tb_s']:.2f} TB/s), torch eager {entry['torch_eager_ms']:.4f}, "
              f"inductor {entry['torch_inductor_ms']:.4f}", flush=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
