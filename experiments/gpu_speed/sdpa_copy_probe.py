"""Which ATen op makes the strided copies in llavanext's training step (issue 16, eighth session's lead).

The eighth session's profile of the native llavanext full-fine-tuning step (`levers_h200_2026-12-02b/call2`) had
`at::native::elementwise_kernel<..., gpu_kernel_impl_nocast<...>>` at 11.3 ms in 30 calls (~0.38 ms each, a strided
same-dtype copy at ~0.6 TB/s), which the siglip and smolvlm steps do not have. This probe runs one native attention
layer (vtlab.models.layers.Attention: fused qkv, SDPA pinned per backend) forward + backward at the presets' training
shapes, compiled and eager, under the profiler with shapes recorded, and reports the CUDA time of every ATen op with
its input shapes: where a `aten::copy_` / `aten::contiguous` sits, and at which shape (head dim 72, 729 keys) it
appears.

    python experiments/gpu_speed/sdpa_copy_probe.py --out probe.json [--smoke]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from vtlab.models.layers import Attention

SHAPES = {  # preset: (batch, tokens, width, heads) of its training step
    "llavanext": (64, 729, 1152, 16),
    "siglip": (256, 196, 768, 12),
    "smolvlm": (64, 1024, 768, 12),
}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def probe(shape: tuple[int, int, int, int], backend: str, compiled: bool, device: str, top: int) -> dict:
    b, n, d, h = shape
    torch.manual_seed(0)
    layer = Attention(d, h).to(device)
    x = torch.randn(b, n, d, device=device, requires_grad=True)
    fn = torch.compile(layer) if compiled else layer

    def step() -> None:
        with sdpa_kernel([BACKENDS[backend]]), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = fn(x)
        out.float().sum().backward()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        ms = (getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)) / 1e3
        if e.key.startswith("aten::") or "elementwise" in e.key:
            rows.append({"op": e.key, "shapes": str(e.input_shapes)[:300], "device_ms": ms, "calls": e.count})
    rows.sort(key=lambda r: -r["device_ms"])
    kernels = sorted(((e.key[:120], (getattr(e, "device_time_total", 0) or 0) / 1e3, e.count)
                      for e in prof.key_averages() if not e.key.startswith("aten::")), key=lambda t: -t[1])
    return {"ops": rows[:top], "kernels": kernels[:top]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", default="llavanext,siglip")
    ap.add_argument("--backends", default="cudnn,flash")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, math backend, eager")
    a = ap.parse_args()
    device = "cpu" if a.smoke else "cuda"
    res: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    for preset in a.presets.split(","):
        shape = (2, 9, 32, 4) if a.smoke else SHAPES[preset]
        for backend in (["math"] if a.smoke else a.backends.split(",")):
            for compiled in ([False] if a.smoke else [True, False]):
                key = f"{preset}_{backend}_{'compiled' if compiled else 'eager'}"
                try:
                    res[key] = probe(shape, backend, compiled, device, a.top)
                except Exception as exc:  # one backend refusing a shape must not lose the others
                    res[key] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                print(key, "done", flush=True)
                torch._dynamo.reset()
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
