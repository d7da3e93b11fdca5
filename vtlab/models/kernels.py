"""Triton kernels of the native towers' fast paths (issue 16), each behind a custom op so torch.compile keeps it
whole and CUDA graphs capture it, each with a plain-PyTorch path that computes the same function.

`shifted_layer_norm(r, shift, norm)` is `norm(r + shift)` for r (..., D) and a (D,) shift: the LayerNorm of the
residual stream that `vtlab.models.layers.Block.stream_step` carries (r = x - the biases of the out-projections and
fc2s so far, the shift). Why a kernel of our own: on an H200 Inductor compiles the add + LayerNorm at width 1152
(so400m, llavanext) as a looped reduction (`triton_red_fused_add_native_layer_norm_*`, ~0.22 ms per call, ~12 of
~90 ms of the batch-64 call, experiments/gpu_speed/levers_h200_2026-12-01f/call2), and the residual stream halves
what a LayerNorm reads. On smolvlm (batch 64, width 768) this kernel took 0.056 ms per call (2 x 100 MB moved:
~3.6 TB/s) where Inductor's add + LayerNorm kernels of the plain levers took ~0.11 (2.70 ms over 25 calls, same
process, call 3). This kernel is one persistent pass for any width up to 16384: each program loads whole rows
once (the row padded to a power of two and masked), adds the shift, takes mean and variance in fp32 (two-pass
over registers, as torch's LayerNorm: var = mean((x - mean)^2), biased), and writes
(x - mean) * rsqrt(var + eps) * weight + bias in r's dtype: the math of `torch.nn.functional.layer_norm` on the fp32
sum. Triton is imported lazily (it ships with torch's CUDA wheels); without it, or off CUDA, the op is the
PyTorch expression.

The launch (`launch_config`): 4 rows per program and 4 warps from 8192 rows up, 1 row below. Of 16 launches timed
at each of the presets' six shapes on the H200 (experiments/gpu_speed/ln_launch_sweep.py, 2026-12-02 call 3) it is
the fastest at five and within 0.03 us of the fastest at llavanext's batch 1; it took llavanext's batch-64
LayerNorms from 0.078 to 0.065 ms per call (~3.3 TB/s).

The CPU tests run the kernel under Triton's interpreter (`TRITON_INTERPRET=1`) against `F.layer_norm`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MAX_TRITON_WIDTH = 16384
# decided at import, not while torch.compile traces (a lazy import there would break the graph)
TRITON_FOUND = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_kernel() -> Any:
    """The jitted kernel, or None where Triton is missing."""
    try:
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - torch's CUDA wheels ship triton
        return None

    @triton.jit
    def shifted_ln(r_ptr, shift_ptr, w_ptr, b_ptr, out_ptr, rows, width, eps,
                   ROWS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        col = tl.arange(0, BLOCK)
        cmask = col < width
        mask = (row < rows)[:, None] & cmask[None, :]
        offs = row.to(tl.int64)[:, None] * width + col[None, :]
        x = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = x + tl.load(shift_ptr + col, mask=cmask, other=0.0).to(tl.float32)[None, :]
        mean = tl.sum(x, axis=1) / width
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / width + eps)
        w = tl.load(w_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    return shifted_ln


# (width, rows) -> (ROWS per program, num_warps) measured to beat the rule of `launch_config` on a device;
# experiments/gpu_speed/ln_launch_sweep.py times the candidates and run_levers.py `--ln-table` loads its choice
LAUNCH_TABLE: dict[tuple[int, int], tuple[int, int]] = {}


def launch_config(width: int, rows: int = 0) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps) for `rows` rows of a width: the row padded to a power of two; LAUNCH_TABLE's entry
    for (width, rows) where there is one. Else, up to 2048 lanes (measured: widths 768 and 1152 on the H200), 4 rows
    per program and 4 warps from 8192 rows up and 1 row below (batch 1: more programs than SMs); wider rows (not
    measured) one row per program, 8 or 16 warps."""
    block = 1 << max(4, (width - 1).bit_length())
    if (width, rows) in LAUNCH_TABLE:
        per_program, warps = LAUNCH_TABLE[(width, rows)]
        return block, per_program, warps
    if block <= 2048:
        return block, 4 if rows >= 8192 else 1, 4
    return block, 1, 8 if block <= 4096 else 16


def triton_usable(t: torch.Tensor) -> bool:
    """Whether the kernel runs for t: CUDA (or Triton's CPU interpreter), Triton importable, width <= 16384."""
    return (t.is_cuda or INTERPRET) and t.shape[-1] <= MAX_TRITON_WIDTH and TRITON_FOUND


def shifted_layer_norm_reference(r: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                 eps: float) -> torch.Tensor:
    """What the kernel computes, in PyTorch: LayerNorm of the fp32 sum, cast back to r's dtype."""
    x = r.float() + shift.float()
    return F.layer_norm(x, (r.shape[-1],), weight.float(), bias.float(), eps).to(r.dtype)


@torch.library.custom_op("vtlab::shifted_layer_norm", mutates_args=())
def _shifted_layer_norm_op(r: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float) -> torch.Tensor:
    if not triton_usable(r) or _triton_kernel() is None:
        return shifted_layer_norm_reference(r, shift, weight, bias, eps)
    r = r.contiguous()
    out = torch.empty_like(r)
    width = r.shape[-1]
    rows = r.numel() // width
    block, per_program, warps = launch_config(width, rows)
    grid = ((rows + per_program - 1) // per_program,)
    _triton_kernel()[grid](r, shift.contiguous(), weight.contiguous(), bias.contiguous(), out, rows, width, eps,
                           ROWS=per_program, BLOCK=block, num_warps=warps)
    return out


@_shifted_layer_norm_op.register_fake
def _(r: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(r, memory_format=torch.contiguous_format)


def shifted_layer_norm(r: torch.Tensor, shift: torch.Tensor, norm: nn.LayerNorm, kernel: bool = True) -> torch.Tensor:
    """norm(r + shift) for r (..., D), shift (D,): the kernel where `kernel` and it can run (inference), else
    torch's ops (which Inductor fuses into its own LayerNorm kernel)."""
    if kernel and triton_usable(r) and not torch.is_grad_enabled() and norm.weight is not None \
            and norm.bias is not None:
        return _shifted_layer_norm_op(r, shift, norm.weight, norm.bias, norm.eps)
    return norm(r + shift)
