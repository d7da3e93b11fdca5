"""The device's matmul ceiling, measured in the same process as the benchmark it normalises.

On CUDA: a square bf16 matmul (8192^3 by default; performance.md section 1c measured 680-798 TFLOP/s on
an H100), whatever dtype the stack runs in, so that `mfu` is the share of the bf16 tensor-core rate.
On CPU the ceiling is the best of several square matmuls (half, once and twice `size`) at the dtype the
stack runs in, each at the full and at half the thread count: one 1024^3 matmul on a loaded 2-core machine
was slower than the model it normalised (MFU 156 %). If a run still beats the ceiling, `raise_to_run`
lifts the ceiling to the run's rate and flags it, so that `mfu` never exceeds 1.
"""

from __future__ import annotations

from typing import Any

import torch

from vtlab.measure.timing import median, spread, time_ms


def _rate(size: int, device: torch.device, dtype: torch.dtype, repeats: int) -> tuple[float, list[float]]:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    out = torch.empty(size, size, device=device, dtype=dtype)
    on_cuda = device.type == "cuda"
    with torch.inference_mode():
        times = time_ms(lambda: torch.mm(a, b, out=out), device, warmup=3 if on_cuda else 1, repeats=repeats,
                        iters=10 if on_cuda else 1)
    return 2 * size**3 / (median(times) * 1e-3) / 1e12, times


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> dict[str, Any]:
    """TFLOP/s of the fastest square matmul tried (randn inputs, median of `repeats` timed calls each)."""
    if device.type == "cuda":
        tflops, times = _rate(size, device, torch.bfloat16, repeats)
        return {"tflops": tflops, "dtype": "bfloat16", "size": size, "ms": median(times), "spread": spread(times),
                "note": f"bf16 {size}^3 matmul on {device}"}
    threads = torch.get_num_threads()
    tried = []
    for n in sorted({threads, max(1, threads // 2)}, reverse=True):
        torch.set_num_threads(n)
        try:
            for side in sorted({max(64, size // 2), size, 2 * size}):
                tflops, times = _rate(side, device, dtype, max(2, repeats // 2))
                tried.append({"size": side, "threads": n, "tflops": tflops, "ms": median(times)})
        finally:
            torch.set_num_threads(threads)
    best = max(tried, key=lambda t: t["tflops"])
    name = str(dtype).removeprefix("torch.")
    return {"tflops": best["tflops"], "dtype": name, "size": best["size"], "threads": best["threads"],
            "ms": best["ms"], "tried": tried,
            "note": f"CPU: best {name} matmul of {len(tried)} tried (sizes x threads), at the dtype the stack runs in"}


def raise_to_run(ceiling: dict[str, Any], run_tflops: list[float]) -> dict[str, Any]:
    """A ceiling no measured run exceeds: if one does, the ceiling becomes the run's rate, flagged
    (`exceeded: true`, `measured_tflops` keeps the matmul's own rate)."""
    best = max(run_tflops, default=0.0)
    if best <= ceiling["tflops"]:
        return {**ceiling, "exceeded": False}
    return {**ceiling, "tflops": best, "measured_tflops": ceiling["tflops"], "exceeded": True,
            "note": ceiling["note"] + f"; a run reached {best:.4g} TFLOP/s, above the matmul's "
                                      f"{ceiling['tflops']:.4g}: the ceiling is that run's rate"}
