"""Measurement helpers: FLOPs (torch.utils.flop_counter), closed-form FLOPs, timing, memory, device facts.

Timing follows timm's benchmark method (performance.md 1b): warm-up runs excluded, the device synchronised
before each clock read, the median of the repeats reported. FLOPs count multiply-adds as 2 and ignore
LayerNorm, GELU, softmax and biases, exactly like the closed form of performance.md section 2.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from vtlab.errors import ConfigError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"task.device={name} is not a device; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"task.device={name} but no CUDA device is available; use task.device=cpu or auto")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        from vtlab.errors import ConfigError

        raise ConfigError(f"task.dtype={name} is unknown; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """torch's flop counter knows the CUDA SDPA kernels but not the CPU flash kernel: same count (4 N^2 d)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FLOP_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """Forward FLOPs of `fn(*args)` counted by torch.utils.flop_counter (2 per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def tower_flops_closed_form(n: int, d: int, f: int, layers: int, patch: int, channels: int = 3) -> int:
    """Per image: L * (8Nd^2 + 4Ndf + 4N^2 d) + 2N * (C p^2) * d (performance.md section 2)."""
    return layers * (8 * n * d * d + 4 * n * d * f + 4 * n * n * d) + 2 * n * channels * patch * patch * d


def connector_flops_closed_form(tokens: int, in_dim: int, linear_dims: list[int]) -> int:
    """Per image: 2 * tokens * (sum of Linear in*out) after the unshuffle."""
    total, prev = 0, in_dim
    for out in linear_dims:
        total += 2 * tokens * prev * out
        prev = out
    return total


def decoder_prefill_flops(tokens: int, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> int:
    """FLOPs for a Llama-style decoder (GQA attention, SwiGLU MLP) to prefill `tokens` visual tokens.

    Per layer: q/o projections 2 * 2Td^2, k/v projections 2 * 2Td*d_kv, SwiGLU 3 * 2TdI, causal attention
    scores and values 2 * 2T^2 d / 2 (half the pairs are masked); the LM head is not run for image tokens.
    """
    d_kv = hidden // heads * kv_heads
    per_layer = 4 * tokens * hidden * hidden + 4 * tokens * hidden * d_kv + 6 * tokens * hidden * intermediate
    per_layer += 2 * tokens * tokens * hidden
    return layers * per_layer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, iters: int = 1) -> list[float]:
    """Milliseconds per call of `fn` for each repeat (each repeat = `iters` calls), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3 / iters)
    return times


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(MiB, what was measured): CUDA allocator peak, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "process_max_rss"


def cpu_name() -> str:
    """The CPU model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """Name and versions of what ran: recorded with every result."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
    else:
        info.update(device_name=cpu_name(), threads=torch.get_num_threads())
    return info


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
