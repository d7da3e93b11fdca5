"""Opt-in fp8 inference (`task.dtype=fp8`): the tower blocks' Linear layers as e4m3 GEMMs.

What it mirrors: torchao's float8 inference recipes (`Float8DynamicActivationFloat8WeightConfig` with `PerTensor()`
or `PerRow()`, and static activation scales as in `Float8StaticActivationFloat8WeightConfig`): weights quantised
once to `float8_e4m3fn`, one `torch._scaled_mm` per Linear (Hopper fp8 tensor cores, output in bf16, bias in the
epilogue). The activation scales (`task.fp8_scaling`) are where the time goes:
- `static` (the default): one scale per activation, fixed by `calibrate_fp8` from the largest amax over a few
  calibration batches (bench: random images of another seed than the error check; eval: the first validation
  batch). The cast is then pointwise and fuses into the kernel that makes the activation, so nothing is read twice.
- `tensor`: the activation's own amax on every call; the global reduction needs a pass of its own before the cast.
- `row`: one scale per activation row and per weight output channel, on every call; the row amax fuses with its
  producer, but Inductor's looped reduction over the MLP width reads that row twice.
Measured on an H200 (siglip / smolvlm / llavanext at the throughput batch, compiled with CUDA graphs, against the
bf16 tower with every lever in the same process; experiments/gpu_speed/levers_h200_2026-12-01e/): `static` 1.12x /
1.10x / 1.16x, `tensor` 0.93x / 0.92x / 1.01x, `row` 0.87x / 0.89x; relative error against bf16 6.8-8.0 % for all
three on random weights (the e4m3 rounding of both operands, through 12-27 blocks); the fp8 GEMMs themselves ran
1.7x faster than the bf16 ones.
torchao itself is not used: it is not installable from this project's package index, and the device machine has
no network; `_scaled_mm` is the op torchao lowers to.

Why it exists: an fp8 GEMM has twice the bf16 tensor-core rate on H100/H200 (measured: the tower's GEMMs 1.7x
faster), so the tower's GEMMs (>95 % of its FLOPs) can trade accuracy for speed: a cost/quality axis, never the
default. Its relative error against the bf16 tower is recorded with every bench result (`fp8.rel_err_vs_bf16`),
and `task=eval task.dtype=fp8` gives the accuracy of a trained checkpoint. Only Linears whose in and out widths are
multiples of 16 (a `_scaled_mm` requirement) inside the tower's blocks are converted; the patch embedding,
norms, attention and the heads stay bf16, and a converted MLP leaves the bf16 GELU epilogue (it reads fc1's weight).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vtlab.errors import ConfigError
from vtlab.models.fastpaths import linear_dtype

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


GRANULARITIES = ("static", "tensor", "row")  # task.fp8_scaling
SCALES = {
    "static": "per tensor; activation scales calibrated once (amax over the calibration batches / 448), weights static",
    "tensor": "per tensor (weights static, activations dynamic)",
    "row": "per row of the activation and per output channel of the weight (activations dynamic, weights static)",
}  # what results.json says under fp8.scales


def quantize(t: torch.Tensor, granularity: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 quantisation: (q, scale) with t ~= q.float() * scale; `tensor`: scale is a 0-d fp32 tensor, `row`: one
    fp32 scale per row (the last dim reduced, kept as size 1). Scale = amax / 448 (amax floored at 1e-12)."""
    x = t.detach()
    amax = x.abs().amax() if granularity == "tensor" else x.abs().amax(dim=-1, keepdim=True)
    scale = amax.float().clamp(min=1e-12) / E4M3_MAX
    return cast(t, scale), scale


def cast(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """t / scale in e4m3, saturated at +-448 (what a static scale does to a value beyond its calibrated amax)."""
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


class Fp8Linear(nn.Module):
    """y = x W^T + b with x and W in e4m3 through `torch._scaled_mm`; inference only. Scales (`granularity`):
    `static`: one per weight, one per activation fixed by `calibrate_fp8` (the cast is a pointwise op that fuses
    into the kernel making the activation); `tensor`: one per weight, one per activation from its amax on every
    call; `row`: one per weight output channel, one per activation row from its row amax on every call."""

    def __init__(self, linear: nn.Linear, granularity: str = "static") -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"Fp8Linear: granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.granularity = granularity
        q, scale = quantize(linear.weight.detach(), "row" if granularity == "row" else "tensor")
        self.register_buffer("weight_fp8", q)  # (out, in) row-major: .t() is the column-major operand _scaled_mm wants
        self.register_buffer("weight_scale", scale.t().contiguous() if granularity == "row" else scale)  # (1, out) or ()
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        # static: the activation scale calibrate_fp8 sets; `observed_amax` collects the amax while it observes
        self.register_buffer("input_scale", torch.ones(()) if granularity == "static" else None)
        self.calibrated = granularity != "static"
        self.observed_amax: torch.Tensor | None = None

    @classmethod
    def supports(cls, linear: nn.Linear) -> bool:
        return linear.in_features % 16 == 0 and linear.out_features % 16 == 0

    def _activation(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.granularity == "row":
            return quantize(flat, "row")
        if self.granularity == "tensor" or self.observed_amax is not None:  # observing: the dynamic per-tensor path
            q, scale = quantize(flat, "tensor")
            if self.observed_amax is not None:
                self.observed_amax = torch.maximum(self.observed_amax, scale * E4M3_MAX)
            return q, scale
        if not self.calibrated:
            raise RuntimeError("Fp8Linear(granularity='static') has no activation scale yet: run "
                               "vtlab.models.fp8.calibrate_fp8(tower, batches) first")
        return cast(flat, self.input_scale), self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        dtype = linear_dtype(x)
        qx, sx = self._activation(flat)
        mm_dtype = torch.bfloat16 if self.granularity == "row" else dtype  # the row-wise CUDA kernel writes bf16 only
        bias = None if self.bias is None else self.bias.to(mm_dtype)
        out = torch._scaled_mm(qx, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=bias,
                               out_dtype=mm_dtype)
        return out.to(dtype).view(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        scale = self.weight_scale.t() if self.granularity == "row" else self.weight_scale
        return self.weight_fp8.float() * scale

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same function in fp32 from the dequantised operands (what the fp8 GEMM should compute)."""
        qx, sx = self._activation(x.reshape(-1, self.in_features))
        b = None if self.bias is None else self.bias.float()
        return F.linear(qx.float() * sx, self.dequantized_weight(), b).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, granularity={self.granularity}"


def calibrate_fp8(module: nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any] | None = None) -> int:
    """Fix the activation scale of every static Fp8Linear in `module`: run `forward(batch)` (default `module(batch)`)
    on each batch under inference mode, and set scale = (largest amax seen) / 448. Returns how many were set.
    Values beyond the calibrated amax later saturate at +-448 x scale."""
    layers = [m for m in module.modules() if isinstance(m, Fp8Linear) and m.granularity == "static"]
    if not layers:  # dynamic scales: nothing to run the batches for
        return 0
    for m in layers:
        m.observed_amax = torch.zeros((), device=m.weight_fp8.device)
    try:
        with torch.inference_mode():
            for batch in batches:
                (forward or module)(batch)
        for m in layers:
            m.input_scale = (m.observed_amax.clamp(min=1e-12) / E4M3_MAX).clone()
            m.calibrated = True
    finally:
        for m in layers:
            m.observed_amax = None
    return len(layers)


def to_fp8(stack: nn.Module, scaling: str, calibration_batches: Iterable[Any], calibration: str) -> dict[str, Any]:
    """Convert `stack.tower`'s Linears to fp8 of `scaling` (in place), calibrate static scales on the batches (run
    through the whole stack; not iterated for dynamic scales); the facts results.json records under `fp8`."""
    linears = convert_to_fp8(stack.tower, scaling)
    calibrated = calibrate_fp8(stack, calibration_batches)
    return {"linears": linears, "scaling": scaling, "scales": SCALES[scaling], "kernel": "torch._scaled_mm e4m3",
            "calibration": f"{calibration}, {calibrated} activation scales" if calibrated else None}


def check_fp8(device: torch.device) -> None:
    """Raise ConfigError unless `device` has fp8 tensor cores (CUDA, compute capability >= 8.9)."""
    if device.type != "cuda":
        raise ConfigError(f"task.dtype=fp8 needs a CUDA GPU with fp8 tensor cores (sm89+); this run is on "
                          f"{device.type}; use task.dtype=auto")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ConfigError(f"task.dtype=fp8 needs compute capability >= 8.9 (Ada/Hopper); {device} is {major}.{minor}")


def convert_to_fp8(tower: nn.Module, granularity: str = "static") -> int:
    """Replace every supported nn.Linear inside `tower.blocks` by an Fp8Linear of `granularity` (in place);
    returns how many. A tower without `blocks` (the fused and pixel towers) is a ConfigError."""
    if not hasattr(tower, "blocks"):
        raise ConfigError(f"task.dtype=fp8 converts the transformer blocks of a native tower; {type(tower).__name__} has "
                          f"none (use a single tower: siglip, smolvlm, llavanext, clip, dinov2, siglip2 families)")
    count = 0
    for block in tower.blocks:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and Fp8Linear.supports(child):
                    setattr(parent, name, Fp8Linear(child, granularity))
                    count += 1
            if hasattr(parent, "fused_gelu") and isinstance(getattr(parent, "fc1", None), Fp8Linear):
                parent.fused_gelu = False
                parent.fused_gelu_train = False
        if hasattr(block, "residual_gemm"):  # its in-place GEMMs read the Linears' bf16 weights
            block.residual_gemm = False
    return count
