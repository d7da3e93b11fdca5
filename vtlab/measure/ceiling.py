"""The device's matmul ceiling, measured in the same process as the benchmark it normalises.

On CUDA: a square bf16 matmul (8192^3 by default; performance.md section 1c measured 680-798 TFLOP/s on
an H100), whatever dtype the stack runs in, so that `mfu` is the share of the bf16 tensor-core rate.
On CPU the ceiling is a matmul at the dtype the stack runs in (fp32 by default), and the result says so
in `note`.
"""

from __future__ import annotations

from typing import Any

import torch

from vtlab.measure.timing import median, time_ms


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> dict[str, Any]:
    """TFLOP/s of `size`^3 matmuls (randn inputs, median of `repeats` timed calls after warm-up)."""
    on_cuda = device.type == "cuda"
    mm_dtype = torch.bfloat16 if on_cuda else dtype
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=mm_dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=mm_dtype, generator=gen)
    out = torch.empty(size, size, device=device, dtype=mm_dtype)
    iters = 10 if on_cuda else 1
    with torch.inference_mode():
        times = time_ms(lambda: torch.mm(a, b, out=out), device, warmup=3 if on_cuda else 1, repeats=repeats,
                        iters=iters)
    ms = median(times)
    tflops = 2 * size**3 / (ms * 1e-3) / 1e12
    note = (
        f"bf16 {size}^3 matmul on {device}"
        if on_cuda
        else f"CPU: {str(mm_dtype).removeprefix('torch.')} {size}^3 matmul, at the dtype the stack runs in"
    )
    return {
        "tflops": tflops,
        "dtype": str(mm_dtype).removeprefix("torch."),
        "size": size,
        "ms": ms,
        "note": note,
    }
