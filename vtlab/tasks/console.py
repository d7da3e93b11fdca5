"""What a person reads on the console: the per-stage table of `task=profile`, the per-mode table of `task=bench`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def print_stage_table(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=140)
    table = Table(title=f"vtlab profile: {result['run_name']} ({result['device_info']['device']}, {result['dtype']})")
    for col in ("stage", "output shape", "detail", "params", "FLOPs/img", "latency ms"):
        table.add_column(col, justify="right" if col in ("params", "FLOPs/img", "latency ms") else "left")
    for s in result["stages"]:
        table.add_row(
            s["name"],
            " x ".join(str(v) for v in s["shape"]),
            s["detail"],
            _fmt(s["params"]) if "params" in s else "",
            _fmt(s["flops"]) if "flops" in s else "",
            f"{s['latency_ms']:.2f}" if "latency_ms" in s else "",
        )
    table.add_row(
        "total", f"{result['tokens']} tokens x {result['text_hidden']}", f"batch {result['batch_size']}",
        _fmt(result["params"]), _fmt(result["flops"]), f"{result['latency_ms']:.2f}",
    )
    console.print(table)
    console.print(f"weights: {result.get('weights', 'random init')}")
    console.print(
        f"latency p50 {result['latency_ms']:.2f} ms, p90 {result['latency_ms_p90']:.2f} ms{_repeats(result)}; "
        f"peak memory {result['peak_memory_mb']:.0f} MiB ({result['peak_memory_kind']})"
        + ("; UNSTABLE: the repeats spread too widely to trust" if result.get("unstable") else "")
    )
    _print_lm_side(result, console)


def _repeats(result: dict[str, Any]) -> str:
    """How many timed calls each latency is the median of, when the time budget cut any loop short."""
    asked = result.get("repeats_asked")
    runs = {"vision": result.get("repeats_run"), **(result.get("lm_repeats_run") or {})}
    if asked is None or all(n is None or n >= asked for n in runs.values()):
        return ""
    listed = ", ".join(f"{name} {n}" for name, n in runs.items() if n is not None)
    return (f" (timed calls of {asked} asked: {listed}; task.time_budget_s={result['time_budget_s']:g} s per loop "
            f"reached)")


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else ""


def print_bench_table(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=140)
    info = result["device_info"]
    table = Table(
        title=f"vtlab bench: {result['run_name']} ({info['device_name']}, {result['dtype']}, "
              f"attention {result['attention_backend']}, torch {result['torch_version']})"
    )
    cols = ("mode", "status", "latency p50 ms", "p90 ms", "batch", "images/s", "tokens/s", "TFLOP/s", "of ceiling",
            "peak MiB", "compile s")
    for col in cols:
        table.add_column(col, justify="left" if col in ("mode", "status") else "right")
    for name, m in result["modes"].items():
        if m["status"] != "ok":
            table.add_row(name, m["status"], m.get("reason") or m.get("error", "")[:60])
            continue
        table.add_row(
            name, "ok, unstable" if m.get("unstable") else "ok", _num(m["latency_ms"], ".3f"), _num(m["latency_ms_p90"], ".3f"),
            str(m["throughput_batch_size"]), _num(m["throughput_img_s"], ",.1f"), _num(m["throughput_tokens_s"], ",.0f"),
            _num(m["tflops"], ".3f"), _num(100 * m["mfu"], ".1f") + " %" if m["mfu"] is not None else "",
            _num(m["peak_memory_mb"], ".0f"), _num(m["first_call_s"] + m["first_call_batch_s"], ".1f"),
        )
    console.print(table)
    ceiling = result["ceiling"]
    console.print(
        f"{result['tokens']} tokens x {result['text_hidden']} to the LM; vision {_fmt(result['flops'])}FLOP/img "
        f"({_fmt(result['params'])} params); LM prefill of the visual tokens ({result['lm_prefill']['name']}): "
        f"{_fmt(result['lm_prefill_flops'])}FLOP/img; ceiling {ceiling['tflops']:.3f} TFLOP/s ({ceiling['note']}); "
        f"weights: {result.get('weights', 'random init')}"
    )
    _print_lm_side(result, console)


def _print_lm_side(result: dict[str, Any], console: Console) -> None:
    """The LM side (text.lm=true): prefill, KV cache and time to first token."""
    if "ttft_ms" not in result:
        return
    console.print(
        f"LM {result['lm_name']}: prefill of {result['prompt_tokens']} tokens ({result['visual_tokens']} visual) "
        f"{result['lm_prefill_ms']:.2f} ms; KV cache {result['kv_cache_bytes_per_token'] / 1024:.1f} KiB/token, "
        f"{result['kv_cache_mb']:.2f} MiB for the prompt; time to first token {result['ttft_ms']:.2f} ms"
    )
