"""Per-stage costs of a `VisionStack` for one image: parameters and FLOPs (counted and closed form).

Shared by `task=profile` and `task=bench`; also the LM-side prefill cost of the visual tokens for the
text target named in the `text` group (a Llama-style decoder of that width, depth and MLP width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vtlab.measure import count_flops, count_params, decoder_prefill_flops
from vtlab.report import closed_form_flops
from vtlab.stack import VisionStack


@dataclass
class StageCosts:
    stages: list[dict[str, Any]]  # the stack's stage rows, tower and connector rows with params and FLOPs
    tower_flops: int  # per image, counted by torch.utils.flop_counter
    connector_flops: int
    closed_form: dict[str, int]  # performance.md section 2 formulas, per image
    features: torch.Tensor  # the tower output for `pixels` (reused to time the connector alone)

    @property
    def flops(self) -> int:
        return self.tower_flops + self.connector_flops

    @property
    def flops_closed_form(self) -> int:
        return self.closed_form["tower"] + self.closed_form["connector"]


def stage_costs(stack: VisionStack, pixels: torch.Tensor) -> StageCosts:
    """Count parameters and FLOPs per image of the tower and the connector on `pixels` (any batch)."""
    batch = pixels.shape[0]
    with torch.inference_mode():
        tower_flops = count_flops(stack.tower, pixels) // batch
        feats = stack.tower(pixels)
        connector_flops = count_flops(stack.connector, feats, stack.grid) // batch
    closed = closed_form_flops(stack)
    stages = [s.as_dict() for s in stack.stages()]
    stages[2].update(params=count_params(stack.tower), flops=tower_flops, flops_closed_form=closed["tower"])
    stages[3].update(params=count_params(stack.connector), flops=connector_flops, flops_closed_form=closed["connector"])
    return StageCosts(stages, tower_flops, connector_flops, closed, feats)


def lm_prefill(text: Any, tokens: int, width: int) -> dict[str, Any]:
    """Prefill FLOPs of `tokens` visual tokens in a decoder `width` wide with the named text model's depth,
    MLP width and head layout (`text` is the TextConfig). Per image."""
    heads = text.num_heads if width % text.num_heads == 0 else 1
    kv_heads = text.num_kv_heads if heads == text.num_heads else 1
    flops = decoder_prefill_flops(tokens, width, text.num_layers, text.intermediate_size, heads, kv_heads)
    return {
        "name": text.name,
        "hidden_size": width,
        "num_layers": text.num_layers,
        "intermediate_size": text.intermediate_size,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "tokens": tokens,
        "flops": flops,
    }
