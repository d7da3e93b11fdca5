"""Fast paths of the native towers (issue 16): patch embedding as one GEMM, fc1+GELU fused for training,
per-block activation checkpointing; one `configure_fast_paths` that sets them and one `fast_paths` that
reports which are active (recorded by `task=bench` under `fast_paths`).

Each path computes the same function as the plain one within rounding, forward and backward
(tests/test_fastpaths.py), and each sits behind a setting whose default is the plain path until an H200
run (experiments/gpu_speed/run_levers.py) shows it pays:

- `PatchEmbed` IS the valid-padding, stride = kernel `nn.Conv2d` of transformers' `SiglipVisionEmbeddings`
  (same state-dict names: `patch_embed.weight` stays (D, C, p, p)). With `as_gemm` it crops the remainder
  the conv drops (384/14 -> 27 patches), views the image as (B*N, C*p*p) patches and multiplies by
  W^T (D, C*p*p) in ONE GEMM whose output is already (B, N, D). Reason: a 2026-12-01 H200 profile of the
  compiled siglip call at batch 256 had the cuDNN patch conv at ~2.0 ms of 21 ms for 0.7 % of the FLOPs
  (issue 16); as a GEMM it is a plain cuBLAS / Triton matmul after one permute copy.
- `linear_gelu` / `_LinearGelu` is the training path of `Mlp.fused_gelu`: forward is fc1's bias + GELU in
  the cuBLASLt GEMM epilogue (`torch._addmm_activation(use_gelu=True)`), which saves one write and one
  read of the (tokens x MLP width) pre-activation (8-14 % img/s in inference on an H100, 2026-11-28,
  experiments/gpu_speed/README.md). The epilogue has no backward and its output cannot be inverted, so the
  backward recomputes the pre-activation (one extra fc1 GEMM, +1/3 of fc1's backward FLOPs) and applies
  the GELU derivative, then the two GEMM grads and the bias grad; nothing but the inputs is saved, so it
  also lowers activation memory by one (tokens x MLP width) tensor per block.
  The epilogue's GELU differs by device: cuBLASLt's is the tanh approximation, the CPU kernel's is exact erf
  GELU (`EPILOGUE_GELU`; checked on CPU with torch 2.14 by the tests, and it is what torch's own
  decomposition of `_addmm_activation` says); where the epilogue does not compute the requested GELU the
  forward falls back to addmm + `F.gelu` and keeps the same backward. Inductor keeps `_addmm_activation` as
  an extern kernel (`make_fallback`), so the epilogue survives `torch.compile`.
- `residual_gemm` (CUDA inference, SigLIP-style blocks without a mask): the residual stream carried as
  r = x - acc, where acc (D,) sums the out-projection and fc2 biases so far. Each out-projection and fc2 adds into r
  in place (`residual_addmm_`, BLAS beta = 1), and each LayerNorm reads r + acc
  (vtlab.models.kernels.shifted_layer_norm). Per residual add the traffic drops from five (tokens x D) tensors
  (the GEMM writes the branch; the LayerNorm reads x and the branch, writes x and its output) to four (the GEMM
  reads and writes r; the LayerNorm reads r, writes its output). Same function within bf16 rounding
  (tests/test_fastpaths.py). `task.residual_gemm`, on by default (it acts on CUDA inference only): on an H200 with
  CUDA graphs, on top of every other lever, siglip 14,227 -> 14,733 img/s, smolvlm 2,372 -> 2,455, llavanext
  706 -> 769, llavanext batch 1 2.43 -> 2.11 ms, the error against fp32 unchanged
  (experiments/gpu_speed/README.md, seventh session). `residual_addmm_` registers its FLOP formula with
  torch.utils.flop_counter, which cannot see the GEMM inside a custom op.
- `fused_norm` (`task.fused_norm`, training; on by default in task=train since 2026-12-02): each residual add and
  the LayerNorm that reads it as one Triton kernel, forward and backward (vtlab.models.kernels.add_layer_norm; `Block.fused_step` carries the MLP's branch to
  the next block's first LayerNorm, the last one into the post-LayerNorm). Same function and gradients within
  rounding (tests/test_fused_norm.py).
- `gelu_kernel` (`task.gelu_kernel`, training; on by default in task=train since 2026-12-02): fc1's GEMM without its
  bias, then one Triton kernel for bias + tanh GELU whose backward also reduces the bias gradient
  (vtlab.models.kernels.linear_bias_gelu; tests/test_fused_norm.py).
- `VisionTower.activation_checkpointing` (set here) recomputes each block in the backward
  (`torch.utils.checkpoint`, non-reentrant): memory for a larger batch, at ~1/3 more compute.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import mm_flop, register_flop_formula

# what torch._addmm_activation(use_gelu=True) computes per device type (checked by tests/test_fastpaths.py on CPU
# and by the gpu-marked test on CUDA)
EPILOGUE_GELU = {"cuda": "tanh", "cpu": "none"}

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ------------------------------------------------------------------------------------------- patch embedding
class PatchEmbed(nn.Conv2d):
    """Non-overlapping patch embedding; `tokens(x)` -> ((B, N, D), (grid_h, grid_w)), rows in (h, w) order."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.patch = patch_size
        # configure_fast_paths(patch_gemm=...): True / False, or None = the GEMM on CUDA and the conv elsewhere
        # (H200, experiments/gpu_speed/levers_h200_2026-12-01: +10.6 % siglip img/s; on CPU the conv is the faster)
        self.as_gemm: bool | None = None

    def uses_gemm(self, device: torch.device) -> bool:
        return self.as_gemm if self.as_gemm is not None else device.type == "cuda"

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        if not self.uses_gemm(x.device):
            return self(x).flatten(2).transpose(1, 2), (gh, gw)
        b, c = x.shape[0], x.shape[1]
        patches = x[..., : gh * p, : gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b * gh * gw, c * p * p)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.view(b, gh * gw, self.out_channels), (gh, gw)


# ------------------------------------------------------------------------------------------- fc1 + GELU
def gelu_grad(pre: torch.Tensor, approximate: str) -> torch.Tensor:
    """d GELU / d pre, in the dtype of `pre` (computed in fp32, or fp64 for fp64)."""
    x = pre if pre.dtype == torch.float64 else pre.float()
    if approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
        t = torch.tanh(inner)
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    else:
        d = 0.5 * (1 + torch.erf(x * _INV_SQRT_2)) + x * _INV_SQRT_2PI * torch.exp(-0.5 * x * x)
    return d.to(pre.dtype)


def _epilogue_matches(device: torch.device, approximate: str) -> bool:
    return EPILOGUE_GELU.get(device.type) == approximate


class _LinearGelu(torch.autograd.Function):
    """gelu(x @ W^T + b) for 2-D x; forward in the GEMM epilogue where it computes this GELU, backward by
    recomputing the pre-activation."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.approximate = approximate
        if _epilogue_matches(x.device, approximate):
            return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)
        return F.gelu(torch.addmm(bias, x, weight.t()), approximate=approximate)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        pre = torch.addmm(bias, x, weight.t())
        g = grad * gelu_grad(pre, ctx.approximate)
        gx = g @ weight if ctx.needs_input_grad[0] else None
        gw = g.t() @ x if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def linear_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear on `x` computes in here: the autocast dtype where autocast is on (as F.linear), else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def autocast_operands(x: torch.Tensor, fc: nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, weight, bias) in the autocast dtype where autocast is on (as F.linear would run), else as they are:
    `_addmm_activation` is not on autocast's cast list, so under bf16-mixed it would run in fp32."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = linear_dtype(x)
        return x.to(dtype), fc.weight.to(dtype), fc.bias.to(dtype)
    return x, fc.weight, fc.bias


def linear_gelu(x: torch.Tensor, fc: nn.Linear, approximate: str = "tanh") -> torch.Tensor:
    """gelu(fc(x)) for x (..., in) through `_LinearGelu`, under autocast in the autocast dtype."""
    x, weight, bias = autocast_operands(x, fc)
    with torch.autocast(x.device.type, enabled=False):
        out = _LinearGelu.apply(x.reshape(-1, x.shape[-1]), weight, bias, approximate)
    return out.view(*x.shape[:-1], out.shape[-1])


# ------------------------------------------------------------------------------------------- residual in the GEMM
@torch.library.custom_op("vtlab::residual_addmm_", mutates_args=("r",))
def residual_addmm_(r: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> None:
    """r (..., D) += a (rows, K) @ weight (D, K)^T in place: the residual add in the GEMM (BLAS beta = 1).
    A mutable custom op, so that Inductor calls it on r's buffer (its re-inplacing pass, r having no later use)
    rather than functionalising it into an addmm that first copies r into a new output."""
    r.view(-1, r.shape[-1]).addmm_(a, weight.t())


@residual_addmm_.register_fake
def _(r: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> None:
    return None


@register_flop_formula(torch.ops.vtlab.residual_addmm_)
def _residual_addmm_flops(r_shape: Any, a_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None,
                          **kwargs: Any) -> int:
    """The addmm's 2 m k n: torch.utils.flop_counter sees a custom op, not the GEMM inside it, so without this
    formula task=bench and task=profile would count no FLOPs for the out-projections and fc2s it carries."""
    return mm_flop(a_shape, (w_shape[1], w_shape[0]))  # a @ weight^T


# ------------------------------------------------------------------------------------------- settings
def configure_fast_paths(module: nn.Module, *, patch_gemm: bool | str | None = None,
                         fused_gelu_train: bool | None = None, activation_checkpointing: bool | None = None,
                         residual_gemm: bool | None = None, fused_gelu: bool | None = None,
                         fused_norm: bool | None = None, gelu_kernel: bool | None = None) -> nn.Module:
    """Set the fast paths of every layer of `module` that has them (in place); None leaves a setting as is;
    `patch_gemm="auto"` is the GEMM on CUDA and the conv elsewhere (the default of `task.patch_gemm`);
    `fused_gelu` is the inference epilogue (`task.fused_gelu`). (The SDPA backend is set by vtlab.models.sdpa.)"""
    for m in module.modules():
        if fused_gelu is not None and hasattr(m, "fused_gelu"):
            m.fused_gelu = fused_gelu
        if residual_gemm is not None and hasattr(m, "residual_gemm"):
            m.residual_gemm = residual_gemm
        if fused_norm is not None and hasattr(m, "fused_norm"):
            m.fused_norm = fused_norm
        if gelu_kernel is not None and hasattr(m, "gelu_kernel"):
            m.gelu_kernel = gelu_kernel
        if patch_gemm is not None and isinstance(m, PatchEmbed):
            m.as_gemm = None if patch_gemm == "auto" else bool(patch_gemm)
        if fused_gelu_train is not None and hasattr(m, "fused_gelu_train"):
            m.fused_gelu_train = fused_gelu_train
        if activation_checkpointing is not None and hasattr(m, "activation_checkpointing"):
            m.activation_checkpointing = activation_checkpointing
    return module


def fast_paths(module: nn.Module, device: torch.device) -> dict[str, Any]:
    """Which fast paths are active in `module` on `device` (what `task=bench` records as `fast_paths`)."""
    mods = list(module.modules())
    cuda = device.type == "cuda"

    def share(attr: str, need_cuda: bool) -> bool:
        flags = [bool(getattr(m, attr)) for m in mods if hasattr(m, attr)]
        return bool(flags) and all(flags) and (cuda or not need_cuda)

    fp8 = sum(1 for m in mods if type(m).__name__ == "Fp8Linear")
    return {
        "patch_gemm": any(isinstance(m, PatchEmbed) and m.uses_gemm(device) for m in mods),
        "fused_gelu_inference": share("fused_gelu", need_cuda=True),
        "fused_gelu_train": share("fused_gelu_train", need_cuda=True),
        "activation_checkpointing": share("activation_checkpointing", need_cuda=False),
        "residual_gemm": share("residual_gemm", need_cuda=True),
        "fused_norm": share("fused_norm", need_cuda=True),
        "gelu_kernel": share("gelu_kernel", need_cuda=True),
        "fp8_linears": fp8,
    }
