"""Two levers on the LayerNorm + residual share of the native call (issue 16), measured by run_levers.py.

The kernel tables (levers_h200_2026-12-01*/) have the add + LayerNorm kernels at 12-14 % of the compiled call, and
on llavanext (width 1152) Inductor makes them looped reductions (`triton_red_fused_add_native_layer_norm_*`, 12.6 of
90.5 ms at batch 64) that read each row twice, where siglip's and smolvlm's (width 768) are persistent ones
(`triton_per_*`) that read it once. Two levers:

1. `wide_persistent()`: Inductor's choice of a persistent reduction extended from rows of <= 1024 to <= 4096
   elements (an `InductorChoices` subclass set with `V.set_choices_handler`, the hook Inductor provides for its
   heuristics; torch/_inductor/choices.py `should_use_persistent_reduction`). Same math, one read per row.
2. `install_residual_gemm(tower)`: the residual add in the GEMM that makes the branch. Each block's out-projection
   and fc2 accumulate into the residual stream in place (`r.addmm_(a, W^T)`, cuBLAS beta = 1), and their biases go
   into a running (D,) vector `acc` that each LayerNorm adds to its input (a broadcast, free inside the LN kernel):
   the stream carried between blocks is r = x - acc. Per residual add, the traffic goes from five (B N D) tensors
   (GEMM writes the branch; the LN reads x and the branch and writes x and LN(x)) to four (the GEMM reads and writes
   r; the LN reads r and writes LN(r + acc)). The op is a mutable custom op (`vtlab_exp::residual_addmm_`), so
   Inductor keeps the GEMM in place (its reinplacing pass, since the old r has no later use) instead of copying r
   into a new output first.

Inference only (no grad: the in-place stream would be needed by the backward). Error against the fp32 reference
is recorded next to the plain levers' by run_levers.py.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from vtlab.models.layers import Block
from vtlab.models.sdpa import layer_kernels

WIDE_LIMIT = 4096


@contextmanager
def wide_persistent(limit: int = WIDE_LIMIT) -> Iterator[None]:
    """Inside: Inductor compiles inner reductions of up to `limit` elements as persistent reductions."""
    from torch._inductor import config
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    class WideChoices(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features: Any, cooperative_reduction: bool) -> bool:
            if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction):
                return True
            if not config.triton.persistent_reductions or cooperative_reduction:
                return False
            strict = getattr(features, "strict_sum_rblock", None)
            if strict is not None and strict() is not None:
                return False
            if features.get_reduction_hint() != ReductionHint.INNER:
                return False
            return bool(V.graph.sizevars.statically_known_leq(features.reduction_numel, limit))

    old = V.choices
    V.set_choices_handler(WideChoices())
    try:
        yield
    finally:
        V.set_choices_handler(old)


@torch.library.custom_op("vtlab_exp::residual_addmm_", mutates_args=("r",))
def residual_addmm_(r: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> None:
    """r (B, N, D) += a (B*N, K) @ weight (D, K)^T, in place (cuBLAS beta = 1)."""
    r.view(-1, r.shape[-1]).addmm_(a, weight.t())


@residual_addmm_.register_fake
def _(r: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> None:
    return None


def attention_core(blk: Block, h: torch.Tensor) -> torch.Tensor:
    """The block's attention before the output projection, (B*N, D): the same ops as layers.Attention."""
    attn = blk.attn
    b, n, d = h.shape
    qkv = attn.qkv(h).view(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    kernels = layer_kernels(attn.sdpa_backends, n, n)
    with sdpa_kernel(kernels) if kernels else nullcontext():
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b * n, d)


def mlp_hidden(blk: Block, h: torch.Tensor) -> torch.Tensor:
    """gelu(fc1(h)) as (B*N, hidden): the cuBLASLt epilogue where the block uses it, else fc1 + GELU."""
    mlp = blk.mlp
    flat = h.reshape(-1, h.shape[-1])
    if mlp.fused_gelu and mlp.tanh_gelu and h.is_cuda:
        return torch._addmm_activation(mlp.fc1.bias, flat, mlp.fc1.weight.t(), use_gelu=True)
    return mlp.act(mlp.fc1(flat))


def block_step(blk: Block, r: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """One block on the stream r = x - acc (r updated in place); returns the new acc."""
    residual_addmm_(r, attention_core(blk, blk.norm1(r + acc)), blk.attn.proj.weight)
    acc = acc + blk.attn.proj.bias
    residual_addmm_(r, mlp_hidden(blk, blk.norm2(r + acc)), blk.mlp.fc2.weight)
    return acc + blk.mlp.fc2.bias


def install_residual_gemm(tower: torch.nn.Module) -> None:
    """Replace the tower's `run_stack` (no taps, no mask) by the in-place residual stream; `uninstall` undoes it."""
    if getattr(tower, "feature_layers", None) is not None:
        raise ValueError("residual_gemm: towers with feature taps are not handled here")

    def run_stack(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None or torch.is_grad_enabled():
            raise RuntimeError("residual_gemm: inference without a mask only")
        r = x.contiguous().clone()
        acc = torch.zeros(r.shape[-1], device=r.device, dtype=r.dtype)
        for blk in tower.blocks:
            acc = block_step(blk, r, acc)
        out = r + acc
        norm = tower.output_norm()
        return out if norm is None else norm(out)

    tower.run_stack = run_stack  # type: ignore[method-assign]


def uninstall(tower: torch.nn.Module) -> None:
    tower.__dict__.pop("run_stack", None)
