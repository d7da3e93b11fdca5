"""Execution modes of `task=bench`: eager, `torch.compile`, and compile + CUDA graphs.

`compile` is one region over tower + connector with `fullgraph=True, dynamic=False`;
`cudagraphs` is the same with `mode="reduce-overhead"` (CUDA only). Dynamo's caches are reset before each
compiled mode so that the cells of a sweep, which run in one process, never hit the recompile limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MODES = ("eager", "compile", "cudagraphs")  # the schema's `task.modes` enum is built from this table
COMPILED = ("compile", "cudagraphs")


def skip_reason(mode: str, device: torch.device) -> str | None:
    """Why `mode` cannot run on `device`, or None."""
    if mode == "cudagraphs" and device.type != "cuda":
        return f"CUDA graphs need a CUDA device; this run is on {device.type}"
    return None


def make_runner(mode: str, module: torch.nn.Module) -> Callable[[torch.Tensor], Any]:
    """A callable `pixels -> tokens` for `mode`. Compilation happens lazily on the first call per shape."""
    if mode == "eager":
        return module
    torch._dynamo.reset()
    if mode == "compile":
        return torch.compile(module, fullgraph=True, dynamic=False)
    compiled = torch.compile(module, mode="reduce-overhead", fullgraph=True, dynamic=False)

    def run_graph(pixels: torch.Tensor) -> Any:
        torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: the previous output may be reused
        return compiled(pixels)

    return run_graph


def extra_warmup(mode: str) -> int:
    """CUDA-graph trees record on the 2nd-3rd call of a shape: warm a couple more calls before timing."""
    return 2 if mode == "cudagraphs" else 0
