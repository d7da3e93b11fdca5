"""FLOPs: counted with `torch.utils.flop_counter`, and the closed forms they must equal, per stage of a stack.

A well-kept counter beats our own tracing: `FlopCounterMode` sees every aten matmul, convolution and SDPA
kernel (2 FLOPs per multiply-add; LayerNorm, GELU, softmax and biases are not counted, exactly like the closed
forms). Counted FLOPs must not depend on which kernel ran, so the kernels it does not count (or refuses) get the
formula of the op they replace: every fused SDPA kernel, CPU flash included and grouped-query shapes too
(= 2 b h s_q s_k (d + d_v)), and the fused fc1 + GELU epilogue `aten._addmm_activation` (= addmm, 2 m k n). A custom
op is opaque to the counter: the one that holds a GEMM, `vtlab::residual_addmm_` (the residual stream's out-projection
and fc2), registers its formula where it is defined (vtlab.models.fastpaths). The closed forms belong to the modules
(`tower.flops_closed_form(gh, gw)`, `connector.flops_closed_form(grid)`); `stage_costs` puts both in the
tower and connector rows, looked up by name, and the LM-side prefill of the visual tokens is a Llama-style
decoder's closed form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, addmm_flop

from vtlab.measure.timing import count_params


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Scores and values of attention, 2 b h s_q s_k (d + d_v), for any SDPA kernel, also when keys and values
    have fewer heads than the queries (grouped-query attention, which torch's own formula refuses)."""
    b, h, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def _addmm_activation_flops(self_shape, a_shape, b_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """bias + a @ b with the GELU in the epilogue: the matmul of addmm, 2 m k n (activations are not counted)."""
    return addmm_flop(self_shape, a_shape, b_shape)


EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {torch.ops.aten._addmm_activation: _addmm_activation_flops}
for _kernel in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
    if hasattr(torch.ops.aten, _kernel):
        EXTRA_FLOP_FORMULAS[getattr(torch.ops.aten, _kernel)] = _sdpa_flops


def counted(fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """(forward FLOPs of `fn(*args)` counted by torch.utils.flop_counter (2 per multiply-add), its output): one
    pass that both counts and computes, so a caller never runs a large module twice to get both."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """Forward FLOPs of `fn(*args)` counted by torch.utils.flop_counter (2 per multiply-add)."""
    return counted(fn, *args)[0]


def tower_flops_closed_form(n: int, d: int, f: int, layers: int, patch: int, channels: int = 3) -> int:
    """Per image: L * (8Nd^2 + 4Ndf + 4N^2 d) + 2N * (C p^2) * d (the SigLIP-style ViT)."""
    return layers * (8 * n * d * d + 4 * n * d * f + 4 * n * n * d) + 2 * n * channels * patch * patch * d


def decoder_prefill_flops(tokens: int, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> int:
    """FLOPs for a Llama-style decoder (GQA attention, SwiGLU MLP) to prefill `tokens` visual tokens.

    Per layer: q/o projections 2 * 2Td^2, k/v projections 2 * 2Td*d_kv, SwiGLU 3 * 2TdI, causal attention
    scores and values 2 * 2T^2 d / 2 (half the pairs are masked); the LM head is not run for image tokens.
    """
    d_kv = hidden // heads * kv_heads
    per_layer = 4 * tokens * hidden * hidden + 4 * tokens * hidden * d_kv + 6 * tokens * hidden * intermediate
    per_layer += 2 * tokens * tokens * hidden
    return layers * per_layer


def closed_form_flops(stack: Any, grid: tuple[int, int] | None = None) -> dict[str, int]:
    """The closed forms of the tower and the connector for one frame of the stack's input size (or `grid`)."""
    grid = grid or stack.grid
    return {"tower": stack.tower_flops_closed_form(grid),
            "connector": stack.connector.flops_closed_form(stack.connector_grid_for(grid))}


@dataclass
class StageCosts:
    stages: Any  # the stack's Stages as dicts, tower and connector rows with params and FLOPs
    tower_flops: int  # per frame, counted by torch.utils.flop_counter
    connector_flops: int
    closed_form: dict[str, int]  # the modules' closed forms, per frame
    features: torch.Tensor  # the tower output for `pixels` (reused to time the connector alone)

    @property
    def flops(self) -> int:
        return self.tower_flops + self.connector_flops

    @property
    def flops_closed_form(self) -> int:
        return self.closed_form["tower"] + self.closed_form["connector"]

    def row(self, name: str) -> dict[str, Any]:
        """The stage row called `name` (image, patch grid, tower, connector)."""
        return next(s for s in self.stages if s["name"] == name)


def stage_costs(stack: Any, pixels: torch.Tensor) -> StageCosts:
    """Count parameters and FLOPs per frame of the tower and the connector on `pixels` (any batch)."""
    batch = pixels.shape[0]
    # no_grad, not inference_mode: the FLOP counter's module tracker hooks views of parameters (learned latents)
    with torch.no_grad():
        tower_flops, feats = counted(stack.features, pixels)  # one tower pass: counted, its features kept
        tower_flops //= batch
        grid = stack.tower.grid_for(pixels.shape[-2], pixels.shape[-1])  # the frames' own grid (naflex)
        connector_flops = count_flops(stack.connector, feats, stack.connector_grid_for(grid)) // batch
    closed = closed_form_flops(stack, grid)
    costs = StageCosts([s.as_dict() for s in stack.stages()], tower_flops, connector_flops, closed, feats)
    costs.row("tower").update(params=count_params(stack.tower), flops=tower_flops, flops_closed_form=closed["tower"])
    costs.row("connector").update(params=count_params(stack.connector), flops=connector_flops,
                                  flops_closed_form=closed["connector"])
    parts = stack.tower.parts() if hasattr(stack.tower, "parts") else {}
    with torch.inference_mode():
        for name, part in parts.items():  # fused towers: a row per sub-tower
            costs.row(f"tower.{name}").update(params=count_params(part), flops=count_flops(part, pixels) // batch,
                                              flops_closed_form=part.tower.flops_closed_form(*grid))
    return costs


def lm_prefill(text: Any, tokens: int, width: int) -> dict[str, Any]:
    """Prefill FLOPs of `tokens` visual tokens in a decoder `width` wide with the named text model's depth,
    MLP width and head layout (`text` is the TextConfig). Per image."""
    heads = text.num_heads if width % text.num_heads == 0 else 1
    kv_heads = text.num_kv_heads if heads == text.num_heads else 1
    flops = decoder_prefill_flops(tokens, width, text.num_layers, text.intermediate_size, heads, kv_heads)
    return {"name": text.name, "hidden_size": width, "num_layers": text.num_layers,
            "intermediate_size": text.intermediate_size, "num_heads": heads, "num_kv_heads": kv_heads,
            "tokens": tokens, "flops": flops}
