"""Does an SDPA backend return non-finite gradients at the attention shapes of a vtlab training step?

The attention-pool head runs SDPA with one query per image (Sq=1) over the visual tokens; the tower runs
self-attention over the patches. Upstream reports cuDNN's bf16 SDPA backward returning NaN when every logit of
a query row is strongly negative (logsumexp below about -88: NVIDIA/cudnn-frontend#1072 for Sq=1,
pytorch/pytorch#196678 with masks). This builds such inputs (logits shifted by `shift`, finite everywhere),
runs forward + backward with each backend pinned, and counts non-finite elements of dQ, dK, dV.

    python experiments/training/sdpa_nan_check.py --out results/sdpa_nan_check.json     # a CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vtlab.models.sdpa import BACKENDS, pinned

# (name, batch, heads, query length, key length, head dim): smolvlm at 128 px (8x8 patches), factors 1..8
SHAPES = [("head_f1", 64, 8, 1, 64, 72), ("head_f2", 64, 8, 1, 16, 72), ("head_f4", 64, 8, 1, 4, 72),
          ("head_f8", 64, 8, 1, 1, 72), ("tower_128px", 64, 12, 64, 64, 64), ("tower_512px", 8, 12, 1024, 1024, 64)]
# --grid: self-attention at every key length the shipped towers and frame sizes give (SigLIP-B/16 at 224 px: 196;
# so400m/14 at 384 px: 729, head dim 72; SmolVLM at 128-512 px: 64-1024) and at the multiples of 64 around them,
# which is where upstream places the bug (pytorch/pytorch#196678: key length % 128 == 64)
GRID = [(f"self_s{s}_d{d}", 4, h, s, s, d) for d, h in ((64, 12), (72, 16))
        for s in (16, 49, 64, 128, 192, 196, 256, 320, 384, 448, 512, 576, 640, 729, 768, 1024, 1088, 2048)]


def check(backend: str, b: int, h: int, sq: int, sk: int, d: int, shift: float) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, sq, d, device="cuda", generator=g) * 0.1
    k = torch.randn(b, h, sk, d, device="cuda", generator=g) * 0.1
    q[..., 0], k[..., 0] = 1.0, shift * math.sqrt(d)  # every logit ~ shift
    q, k = q.bfloat16().requires_grad_(), k.bfloat16().requires_grad_()
    v = torch.randn(b, h, sk, d, device="cuda", generator=g).bfloat16().requires_grad_()
    try:
        with pinned(backend):
            out = F.scaled_dot_product_attention(q, k, v)
            out.backward(torch.randn(out.shape, device="cuda", generator=g).bfloat16())
    except RuntimeError as exc:
        return {"error": str(exc).splitlines()[0][:120]}
    bad = {n: int((~torch.isfinite(t.grad)).sum()) for n, t in (("dq", q), ("dk", k), ("dv", v))}
    return {**bad, "out_nonfinite": int((~torch.isfinite(out)).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shifts", default="0,-50,-100,-150")
    ap.add_argument("--grid", action="store_true", help="the key-length grid (GRID) instead of SHAPES")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma list (default: every backend)")
    a = ap.parse_args()
    rows = []
    for name, *shape in GRID if a.grid else SHAPES:
        for shift in (float(s) for s in a.shifts.split(",")):
            for backend in a.backends.split(","):
                r = check(backend, *shape, shift)
                rows.append({"shape": name, "bhqkd": shape, "shift": shift, "backend": backend, **r})
                print(rows[-1], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                                 "device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
