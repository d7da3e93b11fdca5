"""Opt-in fp8 inference (`task.dtype=fp8`): the tower blocks' Linear layers as e4m3 GEMMs with per-tensor scales.

What it mirrors: torchao's float8 inference recipe (`Float8DynamicActivationFloat8WeightConfig` with per-tensor
granularity): weights quantised once to `float8_e4m3fn` with scale amax/448, activations quantised per call
with their own amax (on the device, no host sync), one `torch._scaled_mm` (Hopper fp8 tensor cores, output in
bf16, bias in the epilogue). torchao itself is not used: it is not installable from this project's package
index, and the device machine has no network; `_scaled_mm` is the op torchao lowers to.

Why it exists: an fp8 GEMM has twice the bf16 tensor-core rate on H100/H200, so the tower's GEMMs (>95 % of its
FLOPs) can trade accuracy for speed: a cost/quality axis, never the default. Its relative error against the bf16
tower is recorded with every bench result (`fp8.rel_err_vs_bf16`). Only Linears whose in and out widths are
multiples of 16 (a `_scaled_mm` requirement) inside the tower's blocks are converted; the patch embedding,
norms, attention and the heads stay bf16, and a converted MLP leaves the bf16 GELU epilogue (it reads fc1's weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vtlab.errors import ConfigError

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


def quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3 quantisation: (q, scale) with t ~= q.float() * scale; scale is a 0-d fp32 tensor."""
    amax = t.detach().abs().amax().float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    q = (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


class Fp8Linear(nn.Module):
    """y = x W^T + b with x and W in e4m3 (per-tensor scales) through `torch._scaled_mm`; inference only."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize(linear.weight)
        self.register_buffer("weight_fp8", q)  # (out, in) row-major: .t() is the column-major operand _scaled_mm wants
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    @classmethod
    def supports(cls, linear: nn.Linear) -> bool:
        return linear.in_features % 16 == 0 and linear.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        qx, sx = quantize(flat)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = torch._scaled_mm(qx, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=bias,
                               out_dtype=x.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same function in fp32 from the dequantised operands (what the fp8 GEMM should compute)."""
        qx, sx = quantize(x.reshape(-1, self.in_features))
        w = self.weight_fp8.float() * self.weight_scale
        b = None if self.bias is None else self.bias.float()
        return F.linear(qx.float() * sx, w, b).view(*x.shape[:-1], self.out_features)


def check_fp8(device: torch.device) -> None:
    """Raise ConfigError unless `device` has fp8 tensor cores (CUDA, compute capability >= 8.9)."""
    if device.type != "cuda":
        raise ConfigError(f"task.dtype=fp8 needs a CUDA GPU with fp8 tensor cores (sm89+); this run is on "
                          f"{device.type}. Use task.dtype=auto|bfloat16|float32 here")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ConfigError(f"task.dtype=fp8 needs compute capability >= 8.9 (Ada/Hopper); {device} is {major}.{minor}")


def convert_to_fp8(tower: nn.Module) -> int:
    """Replace every supported nn.Linear inside `tower.blocks` by an Fp8Linear (in place); returns how many."""
    count = 0
    for block in tower.blocks:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and Fp8Linear.supports(child):
                    setattr(parent, name, Fp8Linear(child))
                    count += 1
            if hasattr(parent, "fused_gelu") and isinstance(getattr(parent, "fc1", None), Fp8Linear):
                parent.fused_gelu = False
                parent.fused_gelu_train = False
    return count
