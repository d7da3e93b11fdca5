"""Human-readable reporting shared by tasks: the per-stage table and the closed-form FLOPs of a stack."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vtlab.measure import connector_flops_closed_form, tower_flops_closed_form
from vtlab.stack import VisionStack


def closed_form_flops(stack: VisionStack) -> dict[str, int]:
    """performance.md section 2 formulas for the layers the stack actually runs, per image."""
    t, c = stack.tower, stack.connector
    d = t.hidden_size
    f = t.blocks[0].mlp.fc1.out_features if len(t.blocks) else 0
    tower = tower_flops_closed_form(stack.num_patches, d, f, t.depth_used, t.patch_size, t.patch_embed.in_channels)
    linears = [m for m in c.modules() if isinstance(m, __import__("torch").nn.Linear)]
    dims = [m.out_features for m in linears]
    conn = connector_flops_closed_form(stack.num_tokens, stack.feature_dim * c.factor**2, dims)
    return {"tower": tower, "connector": conn}


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
    console.print(
        f"latency p50 {result['latency_ms']:.2f} ms, p90 {result['latency_ms_p90']:.2f} ms; "
        f"peak memory {result['peak_memory_mb']:.0f} MiB ({result['peak_memory_kind']})"
    )
