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

`add_layer_norm(x, branch, norm)` is the training form (`task.fused_norm`): (h, norm(h)) for h = x + branch, the
residual add and the LayerNorm after it as one Triton pass forward and one backward, under autograd (custom ops with
`register_autograd`, so torch.compile keeps both kernels whole). The forward saves h (the next block reads it anyway)
and the per-row mean and rstd; the backward reads dy, h and the residual's own gradient once, writes the gradient of
x (and of the branch where its dtype differs: the fp32 residual + bf16 branch of bf16 autocast) and per-program
partial sums of dweight / dbias that one `sum(0)` finishes: the dgrad of torch's layer_norm backward
(`aten/src/ATen/native/cuda/layer_norm_kernel.cu`: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w) fused with
the residual's gradient. Why: the same width-1152 looped reductions as above, in the forward and in the backward
of a fine-tuning step (`TowerBase.fused_norm_states` carries the loop).

`linear_bias_gelu(x, fc)` (`task.gelu_kernel`, training) runs fc1's GEMM without its bias, then one kernel for
bias + tanh GELU (the GELU of transformers' `gelu_pytorch_tanh`, in fp32): its backward writes the pre-activation's
gradient and reduces the bias gradient in the same pass over the (tokens x MLP width) tensors, where Inductor's
compiled backward reads them twice (`triton_poi_fused_gelu_gelu_backward_*`, then
`triton_red_fused_gelu_gelu_backward_sum_*` for the bias: 2.9 + 1.5 ms of siglip's 68 ms batch-256 step,
experiments/gpu_speed/levers_h200_2026-12-02b/call2).

The CPU tests run the kernels under Triton's interpreter (`TRITON_INTERPRET=1`) against `F.layer_norm` and autograd.
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
    """The jitted LayerNorm forward, or None where Triton is missing: `residual_ln` normalises r + a, where a is a
    (D,) shift (inference: `shifted_layer_norm`, ROW_ADD false) or a tensor like r (training: `add_layer_norm`,
    ROW_ADD true, which also stores the rounded sum h and the rows' mean and rstd). The flag is constexpr: each use
    compiles to its own kernel with nothing of the other's."""
    try:
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - torch's CUDA wheels ship triton
        return None

    @triton.jit
    def residual_ln(r_ptr, a_ptr, w_ptr, b_ptr, h_ptr, y_ptr, mean_ptr, rstd_ptr, rows, width, eps,
                    ROW_ADD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        col = tl.arange(0, BLOCK)
        cmask = col < width
        rmask = row < rows
        mask = rmask[:, None] & cmask[None, :]
        offs = row.to(tl.int64)[:, None] * width + col[None, :]
        x = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if ROW_ADD:
            x = x + tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x = x.to(h_ptr.dtype.element_ty)  # rounded as torch's add rounds it: the LayerNorm reads the stored h
            tl.store(h_ptr + offs, x, mask=mask)
            x = x.to(tl.float32)
        else:
            x = x + tl.load(a_ptr + col, mask=cmask, other=0.0).to(tl.float32)[None, :]
        mean = tl.sum(x, axis=1) / width
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / width + eps)
        w = tl.load(w_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        if ROW_ADD:
            tl.store(mean_ptr + row, mean, mask=rmask)
            tl.store(rstd_ptr + row, rstd, mask=rmask)

    return residual_ln


@functools.cache
def _training_kernels() -> Any:
    """The jitted backward of `add_layer_norm` and the forward and backward of `bias_gelu`, or None where Triton is
    missing (`add_layer_norm`'s forward is `_triton_kernel`'s)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - torch's CUDA wheels ship triton
        return None

    @triton.jit
    def add_ln_bwd(dy_ptr, dh_ptr, h_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dbr_ptr, dw_ptr, db_ptr, rows, width,
                   HAS_DH: tl.constexpr, HAS_DBR: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        programs = tl.num_programs(0)
        col = tl.arange(0, BLOCK)
        cmask = col < width
        w = tl.load(w_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK,), dtype=tl.float32)
        db = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(pid * ROWS, rows, programs * ROWS):
            row = start + tl.arange(0, ROWS)
            rmask = row < rows
            mask = rmask[:, None] & cmask[None, :]
            offs = row.to(tl.int64)[:, None] * width + col[None, :]
            h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + row, mask=rmask, other=0.0)
            rstd = tl.load(rstd_ptr + row, mask=rmask, other=0.0)
            xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
            g = dy * w[None, :]
            c1 = tl.sum(xhat * g, axis=1) / width
            c2 = tl.sum(g, axis=1) / width
            dx = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            if HAS_DH:
                dx += tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if HAS_DBR:
                tl.store(dbr_ptr + offs, dx.to(dbr_ptr.dtype.element_ty), mask=mask)
            dw += tl.sum(dy * xhat, axis=0)
            db += tl.sum(dy, axis=0)
        tl.store(dw_ptr + pid * width + col, dw, mask=cmask)
        tl.store(db_ptr + pid * width + col, db, mask=cmask)

    @triton.jit
    def bias_gelu_fwd(u_ptr, b_ptr, y_ptr, rows, width, u_stride, BM: tl.constexpr, BN: tl.constexpr):
        row = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
        col = tl.program_id(1) * BN + tl.arange(0, BN)
        cmask = col < width
        mask = (row < rows)[:, None] & cmask[None, :]
        h = tl.load(u_ptr + row[:, None] * u_stride + col[None, :], mask=mask, other=0.0).to(tl.float32) \
            + tl.load(b_ptr + col, mask=cmask, other=0.0).to(tl.float32)[None, :]
        t = 2.0 * tl.sigmoid(2.0 * 0.7978845608028654 * (h + 0.044715 * h * h * h)) - 1.0  # tanh
        tl.store(y_ptr + row[:, None] * width + col[None, :], (0.5 * h * (1.0 + t)).to(y_ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def bias_gelu_bwd(dy_ptr, u_ptr, b_ptr, du_ptr, db_ptr, rows, width, dy_stride, u_stride, BM: tl.constexpr,
                      BN: tl.constexpr):
        col = tl.program_id(0) * BN + tl.arange(0, BN)
        cmask = col < width
        bias = tl.load(b_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        db = tl.zeros((BN,), dtype=tl.float32)
        groups = tl.num_programs(1)
        for start in range(tl.program_id(1) * BM, rows, groups * BM):
            row = (start + tl.arange(0, BM)).to(tl.int64)
            mask = (row < rows)[:, None] & cmask[None, :]
            h = tl.load(u_ptr + row[:, None] * u_stride + col[None, :], mask=mask, other=0.0).to(tl.float32) \
                + bias[None, :]
            dy = tl.load(dy_ptr + row[:, None] * dy_stride + col[None, :], mask=mask, other=0.0).to(tl.float32)
            inner = 0.7978845608028654 * (h + 0.044715 * h * h * h)
            t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0
            grad = 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * h * h)
            du = tl.where(mask, dy * grad, 0.0)
            tl.store(du_ptr + row[:, None] * width + col[None, :], du.to(du_ptr.dtype.element_ty), mask=mask)
            db += tl.sum(du, axis=0)
        tl.store(db_ptr + tl.program_id(1) * width + col, db, mask=cmask)

    return {"add_ln_bwd": add_ln_bwd, "bias_gelu_fwd": bias_gelu_fwd, "bias_gelu_bwd": bias_gelu_bwd}


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
    _triton_kernel()[grid](r, shift.contiguous(), weight.contiguous(), bias.contiguous(), out, out, out, out, rows,
                           width, eps, ROW_ADD=False, ROWS=per_program, BLOCK=block, num_warps=warps)
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


# ------------------------------------------------------------------------------------------- training: add + LayerNorm
# programs of add_ln_bwd per SM (each loops over rows and keeps its dweight / dbias partials) and its rows per loop
# step up to width 1024 (wider: launch_config's): the fastest of 5 x 4 launches at siglip's (width 768) and
# llavanext's (1152) training shapes on the H200 (levers_h200_2026-12-02c/call3/train_kernels.json): 0.193 / 0.292 ms
# per call, where 4 programs per SM and launch_config's 4 rows took 0.220 / 0.306 and Inductor's kernel 0.196 / 0.548
BACKWARD_PROGRAMS_PER_SM = 8
BACKWARD_ROWS_NARROW = 2
# (width, rows) -> (ROWS per program, num_warps, programs per SM) of add_ln_bwd, measured to beat launch_config's
# rule and BACKWARD_PROGRAMS_PER_SM at a training shape (experiments/gpu_speed/training_kernel_sweep.py)
LN_BACKWARD_TABLE: dict[tuple[int, int], tuple[int, int, int]] = {}


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _backward_programs(device: torch.device, row_blocks: int, per_sm: int, column_tiles: int = 1) -> int:
    """Row groups of a backward that loops over rows and keeps per-program column partials: `per_sm` programs per
    multiprocessor in all (over the `column_tiles`), at most one per block of rows."""
    return max(1, min(row_blocks, _multiprocessors(device) * per_sm // column_tiles))


def ln_backward_launch(width: int, rows: int) -> tuple[int, int, int]:
    """(ROWS per loop step, num_warps, programs per SM) of add_ln_bwd: LN_BACKWARD_TABLE's entry for (width, rows)
    where there is one, else launch_config's rows and warps (BACKWARD_ROWS_NARROW rows where it takes several and
    the row fits 1024 lanes) and BACKWARD_PROGRAMS_PER_SM."""
    if (width, rows) in LN_BACKWARD_TABLE:
        return LN_BACKWARD_TABLE[(width, rows)]
    block, per_program, warps = launch_config(width, rows)
    if block <= 1024 and per_program > 1:
        per_program = BACKWARD_ROWS_NARROW
    return per_program, warps, BACKWARD_PROGRAMS_PER_SM


def add_layer_norm_reference(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             eps: float, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """What the forward kernel computes, in PyTorch: h = x + branch (torch's promotion and rounding), the LayerNorm
    of h in fp32, cast to `out_dtype`."""
    h = x + branch
    return h, F.layer_norm(h.float(), (h.shape[-1],), weight.float(), bias.float(), eps).to(out_dtype)


@torch.library.custom_op("vtlab::add_layer_norm_fwd", mutates_args=())
def _add_ln_fwd_op(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = x.shape[-1]
    rows = x.numel() // width
    if not triton_usable(x) or _triton_kernel() is None:
        h, y = add_layer_norm_reference(x, branch, weight, bias, eps, out_dtype)
        flat = h.float().reshape(rows, width)
        var, mean = torch.var_mean(flat, dim=1, correction=0)
        return h, y, mean, torch.rsqrt(var + eps)
    x, branch = x.contiguous(), branch.contiguous()
    h = torch.empty(x.shape, dtype=torch.result_type(x, branch), device=x.device)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    block, per_program, warps = launch_config(width, rows)
    grid = ((rows + per_program - 1) // per_program,)
    _triton_kernel()[grid](x, branch, weight.contiguous(), bias.contiguous(), h, y, mean, rstd, rows, width, eps,
                           ROW_ADD=True, ROWS=per_program, BLOCK=block, num_warps=warps)
    return h, y, mean, rstd


@_add_ln_fwd_op.register_fake
def _(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
      out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = x.numel() // x.shape[-1]
    h = x.new_empty(x.shape, dtype=torch.result_type(x, branch))
    return h, x.new_empty(x.shape, dtype=out_dtype), x.new_empty(rows, dtype=torch.float32), \
        x.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op("vtlab::add_layer_norm_bwd", mutates_args=())
def _add_ln_bwd_op(dy: torch.Tensor, dh: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor,
                   mean: torch.Tensor, rstd: torch.Tensor, x_dtype: torch.dtype, branch_dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dbranch, dweight, dbias); dbranch is empty where the branch has x's dtype (its gradient is dx)."""
    width = h.shape[-1]
    rows = h.numel() // width
    if not triton_usable(h) or _training_kernels() is None:
        xhat = (h.float().reshape(rows, width) - mean[:, None]) * rstd[:, None]
        g = dy.float().reshape(rows, width) * weight.float()
        dx = (g - xhat * (xhat * g).mean(1, keepdim=True) - g.mean(1, keepdim=True)) * rstd[:, None]
        if dh is not None:
            dx = dx + dh.float().reshape(rows, width)
        dyf = dy.float().reshape(rows, width)
        dbr = dx.to(branch_dtype).view(h.shape) if branch_dtype != x_dtype else h.new_empty(0, dtype=branch_dtype)
        return dx.to(x_dtype).view(h.shape), dbr, (dyf * xhat).sum(0).to(weight.dtype), dyf.sum(0).to(weight.dtype)
    dy, h = dy.contiguous(), h.contiguous()
    dx = torch.empty(h.shape, dtype=x_dtype, device=h.device)
    two = branch_dtype != x_dtype
    dbr = torch.empty(h.shape if two else (0,), dtype=branch_dtype, device=h.device)
    block = launch_config(width, rows)[0]
    per_program, warps, per_sm = ln_backward_launch(width, rows)
    programs = _backward_programs(h.device, (rows + per_program - 1) // per_program, per_sm)
    dw = torch.empty(programs, width, dtype=torch.float32, device=h.device)
    db = torch.empty_like(dw)
    kernel = _training_kernels()["add_ln_bwd"]
    kernel[(programs,)](dy, dy if dh is None else dh.contiguous(), h, weight.contiguous(), mean, rstd, dx,
                        dbr if two else dx, dw, db, rows, width, HAS_DH=dh is not None, HAS_DBR=two, ROWS=per_program,
                        BLOCK=block, num_warps=warps)
    return dx, dbr, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)


@_add_ln_bwd_op.register_fake
def _(dy: torch.Tensor, dh: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
      rstd: torch.Tensor, x_dtype: torch.dtype, branch_dtype: torch.dtype
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dbr = h.new_empty(h.shape if branch_dtype != x_dtype else (0,), dtype=branch_dtype)
    return h.new_empty(h.shape, dtype=x_dtype), dbr, weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _add_ln_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, branch, weight, _bias, _eps, _out_dtype = inputs
    h, _y, mean, rstd = output
    ctx.save_for_backward(h, weight, mean, rstd)
    ctx.x_dtype, ctx.branch_dtype = x.dtype, branch.dtype


def _add_ln_backward(ctx: Any, dh: torch.Tensor | None, dy: torch.Tensor | None, _dmean: Any, _drstd: Any
                     ) -> tuple[Any, ...]:
    h, weight, mean, rstd = ctx.saved_tensors
    if dy is None:  # the LayerNorm's output unused: h's gradient passes to both addends
        dh = torch.zeros_like(h) if dh is None else dh
        return dh.to(ctx.x_dtype), dh.to(ctx.branch_dtype), torch.zeros_like(weight), torch.zeros_like(weight), \
            None, None
    dx, dbr, dw, db = _add_ln_bwd_op(dy, dh, h, weight, mean, rstd, ctx.x_dtype, ctx.branch_dtype)
    return dx, (dx if ctx.branch_dtype == ctx.x_dtype else dbr), dw, db, None, None


_add_ln_fwd_op.register_autograd(_add_ln_backward, setup_context=_add_ln_setup)


def add_layer_norm(x: torch.Tensor, branch: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, norm(h)) for h = x + branch: one Triton pass forward and backward where it can run (CUDA, or Triton's
    interpreter; an affine nn.LayerNorm), else torch's ops (any norm module). Under autocast the LayerNorm's output comes in the
    autocast dtype, the dtype the next Linear casts it to (torch's layer_norm runs in fp32 under autocast)."""
    if not (triton_usable(x) and isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None
            and x.shape == branch.shape):
        h = x + branch
        return h, norm(h)
    kind = x.device.type
    out_dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else \
        torch.promote_types(x.dtype, branch.dtype)
    with torch.autocast(kind, enabled=False):
        h, y, _, _ = _add_ln_fwd_op(x, branch, norm.weight, norm.bias, norm.eps, out_dtype)
    return h, y


# ------------------------------------------------------------------------------------------- training: bias + GELU
# bias_gelu's launches (experiments/gpu_speed/training_kernel_sweep.py times the alternatives at the presets' shapes):
# fastest of 6 tiles x 4 program counts at siglip's and llavanext's training shapes on the H200 (2026-12-02,
# levers_h200_2026-12-02c/call3/train_kernels.json): forward 0.159 / 0.237 ms per call (was 0.166 / 0.247 with
# 32 x 128 x 4), backward 0.342 / 0.462 ms (was 0.402 / 0.564 with 4 programs per SM)
GELU_FWD_LAUNCH = (8, 512, 4)  # (rows, columns, num_warps) of a forward program
GELU_BWD_LAUNCH = (32, 128, 4, 32)  # (rows, columns, num_warps) of a backward program's loop step, programs per SM


def bias_gelu_reference(u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What the forward kernel computes, in PyTorch: the tanh GELU of u + bias in fp32, in u's dtype."""
    return F.gelu(u.float() + bias.float(), approximate="tanh").to(u.dtype)


# The bias_gelu ops take their inputs in any layout (Inductor pads the row stride of a (tokens x 4304) GEMM output to
# 4352 elements: 128-byte rows), so that Inductor does not copy them into the eager layout first: the kernels read
# rows at their own stride. On the H200 those copies took 15.3 ms of llavanext's 314 ms fine-tuning step
# (experiments/gpu_speed/levers_h200_2026-12-02c/call3). Outputs are contiguous.
_ANY_LAYOUT = (torch.Tag.flexible_layout,) if hasattr(torch.Tag, "flexible_layout") else ()


def _as_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """t as (rows, width) with unit column stride and one row stride: a view where t's leading dims merge (padded
    rows too), else a contiguous copy."""
    rows = t.reshape(-1, width)
    return rows if rows.stride(1) == 1 or rows.shape[0] <= 1 else rows.contiguous()


@torch.library.custom_op("vtlab::bias_gelu_fwd", mutates_args=(), tags=_ANY_LAYOUT)
def _bias_gelu_fwd_op(u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if not triton_usable(u) or _training_kernels() is None:
        return bias_gelu_reference(u, bias).contiguous()
    width = u.shape[-1]
    u2 = _as_rows(u, width)
    rows = u2.shape[0]
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    bm, bn, warps = GELU_FWD_LAUNCH
    grid = ((rows + bm - 1) // bm, (width + bn - 1) // bn)
    _training_kernels()["bias_gelu_fwd"][grid](u2, bias.contiguous(), y, rows, width, u2.stride(0), BM=bm, BN=bn,
                                               num_warps=warps)
    return y


@_bias_gelu_fwd_op.register_fake
def _(u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("vtlab::bias_gelu_bwd", mutates_args=(), tags=_ANY_LAYOUT)
def _bias_gelu_bwd_op(dy: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(du, dbias): the GELU's derivative at u + bias times dy, and its sum over rows, in one pass."""
    width = u.shape[-1]
    rows = u.numel() // width
    if not triton_usable(u) or _training_kernels() is None:
        h = (u.float() + bias.float()).requires_grad_()
        with torch.enable_grad():
            (du,) = torch.autograd.grad(F.gelu(h, approximate="tanh"), h, dy.float())
        return du.to(u.dtype).contiguous(), du.reshape(rows, width).sum(0).to(bias.dtype)
    dy2, u2 = _as_rows(dy, width), _as_rows(u, width)
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    bm, bn, warps, per_sm = GELU_BWD_LAUNCH
    tiles = (width + bn - 1) // bn
    groups = _backward_programs(u.device, (rows + bm - 1) // bm, per_sm, tiles)
    db = torch.empty(groups, width, dtype=torch.float32, device=u.device)
    _training_kernels()["bias_gelu_bwd"][(tiles, groups)](dy2, u2, bias.contiguous(), du, db, rows, width,
                                                          dy2.stride(0), u2.stride(0), BM=bm, BN=bn, num_warps=warps)
    return du, db.sum(0).to(bias.dtype)


@_bias_gelu_bwd_op.register_fake
def _(dy: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(u, memory_format=torch.contiguous_format), torch.empty_like(bias)


def _bias_gelu_setup(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _bias_gelu_backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, bias = ctx.saved_tensors
    return _bias_gelu_bwd_op(dy, u, bias)


_bias_gelu_fwd_op.register_autograd(_bias_gelu_backward, setup_context=_bias_gelu_setup)


def linear_bias_gelu(x: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """tanh-GELU(fc(x)) as fc's GEMM without its bias, then the bias + GELU kernel (`task.gelu_kernel`): its backward
    writes the pre-activation's gradient and reduces fc's bias gradient in the same pass (where torch's backward
    runs the GELU derivative and the bias-gradient reduction as two passes over the (tokens x width) gradient).
    The GEMM runs under autocast as fc would; the kernel in the GEMM output's dtype."""
    u = F.linear(x, fc.weight)
    with torch.autocast(x.device.type, enabled=False):
        return _bias_gelu_fwd_op(u, fc.bias)
