"""Timing, memory and device facts: what every measurement of profile and bench rests on.

Timing follows timm's benchmark method (`benchmark.py`): warm-up runs excluded, the device synchronised before
each clock read, the median of the repeats reported.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vtlab.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# quantised inference dtypes -> the dtype of activations and unquantised weights (task=bench only; vtlab.models.fp8)
QUANTIZED = {"fp8": torch.bfloat16}


def on_gpu(accelerator: str) -> bool:
    """Whether a Lightning `trainer.accelerator` setting runs on a GPU here."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"task.device={name} is not a device; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"task.device={name} but no CUDA device is available; use task.device=cpu or auto")
    return device


def resolve_dtype(name: Any, device: torch.device, quantized: bool = False) -> torch.dtype:
    """The torch dtype of `task.dtype`; a QUANTIZED name (only where `quantized`) gives its activation dtype."""
    name = str(getattr(name, "value", name))
    if name in QUANTIZED:
        if not quantized:
            raise ConfigError(f"task.dtype={name} is for task=bench and task=eval (inference) only; valid here: auto, "
                              f"{', '.join(DTYPES)}")
        return QUANTIZED[name]
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"task.dtype={name} is unknown; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def over_budget(times_ms: Sequence[float], budget_s: float | None) -> bool:
    """Whether the timed repeats so far have used up `budget_s` (None: no budget). The caller stops there, after
    at least one timed repeat, and reports how many ran (`len(times)`): fewer repeats, never an estimate."""
    return budget_s is not None and sum(times_ms) >= budget_s * 1e3


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, iters: int = 1,
            budget_s: float | None = None) -> list[float]:
    """Milliseconds per call of `fn` for each repeat (each repeat = `iters` calls), after `warmup` calls; at most
    `repeats` repeats, fewer once they have taken `budget_s` seconds (`task.time_budget_s`; at least one)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3 / iters)
        if over_budget([t * iters for t in times], budget_s):
            break
    return times


def time_stages(stages: Sequence[tuple[str, Callable[[Any], Any]]], x: Any, device: torch.device, warmup: int,
                repeats: int, budget_s: float | None = None) -> dict[str, list[float]]:
    """Milliseconds per repeat of each stage of ONE pipeline call (stage i takes stage i-1's output; the device is
    synchronised between stages) and of the whole call (`total`), so the stage rows and the total come from the
    same calls and add up. Warm-up, repeats and budget as `time_ms`."""

    def run(clock: dict[str, list[float]] | None) -> None:
        out = x
        synchronize(device)
        start = last = time.perf_counter()
        for name, fn in stages:
            out = fn(out)
            if clock is not None:
                synchronize(device)
                now = time.perf_counter()
                clock[name].append((now - last) * 1e3)
                last = now
        synchronize(device)
        if clock is not None:
            clock["total"].append((time.perf_counter() - start) * 1e3)

    for _ in range(warmup):
        run(None)
    clock: dict[str, list[float]] = {name: [] for name, _ in stages} | {"total": []}
    for _ in range(repeats):
        run(clock)
        if over_budget(clock["total"], budget_s):
            break
    return clock


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


UNSTABLE_SPREAD = 0.5  # (p90 - p10) / p50 above this: the repeats disagree too much to trust the median


def spread(values: list[float]) -> dict[str, Any]:
    """The spread of repeated timings: min, p10, p50, p90, max, the relative spread (p90 - p10) / p50, and
    `unstable` when that exceeds UNSTABLE_SPREAD (a loaded machine, throttling: the median is not a number)."""
    p10, p50, p90 = (percentile(values, q) for q in (10, 50, 90))
    rel = (p90 - p10) / p50 if p50 > 0 else 0.0
    return {"min": min(values), "p10": p10, "p50": p50, "p90": p90, "max": max(values), "rel_spread": rel,
            "unstable": rel > UNSTABLE_SPREAD, "n": len(values)}


def stage_sum_warning(total_ms: float, parts_ms: dict[str, float], slack: float = 1.1) -> str | None:
    """A message when stages timed on their own add up to more than the whole call (beyond `slack`): each was
    timed separately, so on a loaded machine one of them caught a slow patch and the numbers do not add up."""
    summed = sum(parts_ms.values())
    if total_ms <= 0 or summed <= slack * total_ms:
        return None
    listed = " + ".join(f"{name} {ms:.4g} ms" for name, ms in parts_ms.items())
    return (f"stage latencies do not add up: {listed} = {summed:.4g} ms > the whole call's {total_ms:.4g} ms "
            f"(timed separately; the machine was probably busy: rerun, or raise task.repeats)")


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
