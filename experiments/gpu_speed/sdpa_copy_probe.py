"""Which ATen op makes the strided copies in llavanext's training step (issue 16, eighth session's lead).

The eighth session's profile of the native llavanext full-fine-tuning step (`levers_h200_2026-12-02b/call2`) had
`at::native::elementwise_kernel<..., gpu_kernel_impl_nocast<...>>` at 11.3 ms in 30 calls (~0.38 ms each, a strided
same-dtype copy at ~0.6 TB/s), which the siglip and smolvlm steps do not have. This probe runs one native attention
layer (vtlab.models.layers.Attention: fused qkv, SDPA pinned per backend) forward + backward at the presets' training
shapes, compiled and eager, under the profiler with shapes recorded, and reports the CUDA time of every ATen op with
its input shapes: where a `aten::copy_` / `aten::contiguous` sits, and at which shape (head dim 72, 729 keys) it
appears.

The ninth session's call 1 ran it (`levers_h200_2026-12-02c/call1`): the compiled layer alone makes no such copy.
`--step PRESET` therefore profiles one whole training step of the preset (run_levers.py's full fine-tuning step
with `task.fused_norm`, batch `--step-batch`) and reports, for every kernel whose name holds `--kernel` (default
the same-dtype copy), the CPU-side op that launched it, that op's input shapes and the chain of its parents
(e.g. `aten::copy_ <- aten::clone <- AccumulateGrad`).

    python experiments/gpu_speed/sdpa_copy_probe.py --out probe.json [--smoke]
    python experiments/gpu_speed/sdpa_copy_probe.py --step llavanext --out step.json [--smoke]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from vtlab.models.layers import Attention
from vtlab.models.sdpa import pinned

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
    grad = torch.randn(b, n, d, device=device)  # a dense upstream gradient: sum()'s would be a stride-0 broadcast

    def step() -> None:
        with sdpa_kernel([BACKENDS[backend]]), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = fn(x)
        out.float().backward(grad)

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


def launchers(prof: Any, needle: str, top: int) -> list[dict[str, Any]]:
    """The CPU ops that launched kernels whose name holds `needle`: op, input shapes, parent chain, device ms."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in prof.events():
        hits = [k for k in getattr(e, "kernels", []) if needle in k.name]
        if not hits:
            continue
        chain, parent = [], e.cpu_parent
        while parent is not None and len(chain) < 8:
            chain.append(parent.name)
            parent = parent.cpu_parent
        key = (e.name, str(e.input_shapes)[:200], " <- ".join(chain))
        row = rows.setdefault(key, {"op": key[0], "shapes": key[1], "parents": key[2], "calls": 0, "device_ms": 0.0})
        row["calls"] += 1
        row["device_ms"] += sum(k.duration for k in hits) / 1e3
    return sorted(rows.values(), key=lambda r: -r["device_ms"])[:top]


def step_probe(preset: str, batch: int, needle: str, smoke: bool, top: int) -> dict[str, Any]:
    """One full-fine-tuning step of `preset` (run_levers.py's, `task.fused_norm` on) under the profiler."""
    import run_levers as RL  # here: the layer probe needs none of transformers / timm

    args = argparse.Namespace(device="cpu" if smoke else "cuda", budget_s=1e9, smoke=smoke, out=Path("."),
                        backend="eager" if smoke else "inductor", train_attention="cudnn_safe")
    run = RL.Run(preset, args)
    with pinned("auto" if smoke else "cudnn_safe"):
        lit, opt = RL.train_setup(run, "native", "none", True, attention="auto" if smoke else "cudnn_safe",
                                  off=("fused_gelu_train",), fused_norm=True)
        size = lit.stack.input_size
        x = torch.randn(batch, 3, size, size, device=run.device)
        y = torch.randint(0, 4, (batch,), device=run.device)
        step = RL.train_step_fn(run, lit, opt, x, y)
        for _ in range(2):
            step()
        if run.cuda:
            torch.cuda.synchronize()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.cuda else [])
        with profile(activities=acts, record_shapes=True) as prof:
            step()
            if run.cuda:
                torch.cuda.synchronize()
    copies = launchers(prof, needle, top)
    return {"preset": preset, "batch": batch, "kernel": needle, "launchers": copies,
            "ops": [{"op": r.key, "shapes": str(r.input_shapes)[:200], "calls": r.count,
                     "device_ms": (getattr(r, "device_time_total", 0) or 0) / 1e3}
                    for r in sorted(prof.key_averages(group_by_input_shape=True),
                                    key=lambda r: -(getattr(r, "device_time_total", 0) or 0))
                    if r.key.startswith("aten::copy_") or r.key.startswith("aten::clone")
                    or r.key.startswith("aten::contiguous")][:top]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", default="llavanext,siglip")
    ap.add_argument("--backends", default="cudnn,flash")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, math backend, eager")
    ap.add_argument("--step", default="", help="profile one whole training step of this preset instead")
    ap.add_argument("--step-batch", type=int, default=64)
    ap.add_argument("--kernel", default="gpu_kernel_impl_nocast", help="--step: the kernels to trace to their ops")
    a = ap.parse_args()
    if a.step:
        res = step_probe(a.step, 2 if a.smoke else a.step_batch, a.kernel, a.smoke, a.top)
        a.out.write_text(json.dumps(res, indent=1))
        return
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
