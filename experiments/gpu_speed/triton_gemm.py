"""fc1 + bias + tanh GELU as one persistent Triton GEMM (issue 16): the one lever with a measured gap left.

kernel_shapes.py measured cuBLASLt's GELU epilogue (`torch._addmm_activation(use_gelu=True)`, what the native tower
runs) at 0.438 ms for siglip's fc1 (50176 x 768 x 3072) where the same GEMM with only the bias takes 0.341 ms: with
K = 768 the main loop is 12 k-steps of 64, so an epilogue that does not overlap the next tile's main loop is ~1/4
of the kernel. Inductor's Triton templates (max-autotune) were slower still (0.519 ms). This file writes the GEMM
for that shape class from the Triton persistent-matmul recipe (the 09-persistent-matmul tutorial's structure, our
own code):

- one program per SM, looping over output tiles in grouped (L2-friendly) order;
- TMA loads and stores through host-side tensor descriptors (Hopper), the K loop pipelined `num_stages` deep;
- the epilogue in registers: bias, then GELU as x * sigmoid(2u) = 0.5 x (1 + tanh u), u = sqrt(2/pi)(x + 0.044715
  x^3), with tanh by the SFU's `tanh.approx.f32` on CUDA (max rel. error ~2^-11, under bf16's 2^-9 rounding);
- optional epilogue subtiling (the tile stored in two halves, so the first store overlaps the second half's math)
  and `warp_specialize` (producer / consumer warps, so the epilogue overlaps the next tile's loads) where the
  Triton version supports it on the card.

`tune(m, k, n)` times every config in `CONFIGS` on the device and returns the fastest (config errors are recorded,
not raised); `linear_gelu(x, w, b, config)` runs one. CPU: the same kernel runs under `TRITON_INTERPRET=1` without
the inline-asm tanh (tests/test_kernel_shapes.py checks it against F.gelu(F.linear(...)) on a tiny shape).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_stages, num_warps, subtile, warp_specialize)
CONFIGS: list[tuple[int, int, int, int, int, int, bool, bool]] = [
    (bm, bn, 64, 8, st, nw, sub, ws)
    for bm, bn, nw in ((128, 256, 8), (128, 128, 8), (128, 128, 4), (256, 128, 8))
    for st in (3, 4)
    for sub in (False, True)
    for ws in (False, True)
]

if triton is not None:

    @triton.jit
    def _gelu_tanh(x, USE_ASM: tl.constexpr):
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        if USE_ASM:
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [u], dtype=tl.float32, is_pure=True, pack=1)
            return 0.5 * x * (1.0 + t)
        return x * tl.sigmoid(2.0 * u)

    @triton.jit
    def _tile_of(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        group = GROUP_M * num_pid_n
        first_m = (tile_id // group) * GROUP_M
        size_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile_id % group) % size_m
        pid_n = (tile_id % group) // size_m
        return pid_m, pid_n

    @triton.jit
    def _linear_gelu_kernel(a_desc, b_desc, c_desc, bias_ptr, M, N, K,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, NUM_STAGES: tl.constexpr,
                            SUBTILE: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, GELU: tl.constexpr,
                            USE_ASM: tl.constexpr):
        start = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        num_tiles = num_pid_m * num_pid_n
        for tile_id in tl.range(start, num_tiles, NUM_SMS, flatten=True, warp_specialize=WARP_SPECIALIZE):
            pid_m, pid_n = _tile_of(tile_id, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in tl.range(k_tiles, num_stages=NUM_STAGES):
                a = a_desc.load([off_m, ki * BLOCK_K])
                b = b_desc.load([off_n, ki * BLOCK_K])
                acc = tl.dot(a, b.T, acc)
            cols = off_n + tl.arange(0, BLOCK_N)
            bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
            acc = acc + bias[None, :]
            if GELU:
                acc = _gelu_tanh(acc, USE_ASM)
            if SUBTILE:
                halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
                first, second = tl.split(halves)
                c_desc.store([off_m, off_n], first.to(c_desc.dtype))
                c_desc.store([off_m, off_n + BLOCK_N // 2], second.to(c_desc.dtype))
            else:
                c_desc.store([off_m, off_n], acc.to(c_desc.dtype))


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                config: tuple[int, int, int, int, int, int, bool, bool] = CONFIGS[0], gelu: bool = True) -> torch.Tensor:
    """gelu_tanh(x @ weight^T + bias) for x (M, K), weight (N, K), bias (N,), all one dtype (bf16 / fp16)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    bm, bn, bk, gm, stages, warps, sub, ws = config
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    a_desc = TensorDescriptor.from_tensor(x, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(weight, [bn, bk])
    c_desc = TensorDescriptor.from_tensor(out, [bm, bn // 2 if sub else bn])
    sms = num_sms(x.device)
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    grid = (min(sms, tiles),)
    _linear_gelu_kernel[grid](a_desc, b_desc, c_desc, bias, m, n, k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                              GROUP_M=gm, NUM_SMS=sms, NUM_STAGES=stages, SUBTILE=sub, WARP_SPECIALIZE=ws,
                              GELU=gelu, USE_ASM=x.is_cuda and not INTERPRET, num_warps=warps,
                              num_stages=stages)
    return out


def _cuda_ms(fn: Any, reps: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(3):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return sorted(times)[1]


def tune(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ref: torch.Tensor, gelu: bool = True,
         seconds: float = 60.0) -> dict[str, Any]:
    """Time every config of CONFIGS at this shape (CUDA); each row has ms and the rel. error vs `ref`, or the error."""
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for cfg in CONFIGS:
        if time.monotonic() - t0 > seconds:
            rows.append({"config": list(cfg), "skipped": "budget"})
            continue
        try:
            out = linear_gelu(x, weight, bias, cfg, gelu)
            err = ((out.float() - ref).norm() / ref.norm()).item()
            ms = _cuda_ms(lambda cfg=cfg: linear_gelu(x, weight, bias, cfg, gelu))
            rows.append({"config": list(cfg), "ms": ms, "rel_err_vs_fp32": err})
        except Exception as exc:  # a config the card / Triton version cannot build
            rows.append({"config": list(cfg), "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    timed = [r for r in rows if "ms" in r and r["rel_err_vs_fp32"] < 2e-2]
    best = min(timed, key=lambda r: r["ms"]) if timed else None
    return {"best": best, "configs": rows, "triton": triton.__version__ if triton else None}


# ------------------------------------------------------------------------------------------- in the tower
# the tuned config per (M, K, N), filled by `tune_for` (CONFIGS[0] where a shape was not tuned)
TUNED: dict[tuple[int, int, int], tuple[int, int, int, int, int, int, bool, bool]] = {}


@torch.library.custom_op("vtlab_exp::linear_gelu_tanh", mutates_args=())
def linear_gelu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The kernel as an op torch.compile keeps whole (one extern call in the graph, CUDA graphs capture it)."""
    return linear_gelu(x, weight, bias, TUNED.get((x.shape[0], x.shape[1], weight.shape[0]), CONFIGS[0]))


@linear_gelu_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


def tune_for(fc1: torch.nn.Linear, m: int, dtype: torch.dtype, seconds: float = 60.0) -> dict[str, Any]:
    """Tune the kernel for M = m rows on fc1's weights (random inputs) and remember the best config for the op."""
    x = torch.randn(m, fc1.in_features, device=fc1.weight.device, dtype=dtype)
    w, b = fc1.weight.detach().to(dtype), fc1.bias.detach().to(dtype)
    ref = torch.nn.functional.gelu(torch.nn.functional.linear(x.float(), w.float(), b.float()), approximate="tanh")
    res = tune(x, w, b, ref, seconds=seconds)
    if res["best"] is not None:
        TUNED[(m, fc1.in_features, fc1.out_features)] = tuple(res["best"]["config"])  # type: ignore[assignment]
    res["cublaslt_epilogue_ms"] = _cuda_ms(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True))
    res["cublas_bias_only_ms"] = _cuda_ms(lambda: torch.addmm(b, x, w.t()))
    return res


def install(module: torch.nn.Module) -> int:
    """Route every tanh-GELU Mlp of `module` (vtlab.models.layers.Mlp) through the kernel in no-grad CUDA calls;
    returns how many. An instance attribute, so `uninstall` (or a new module) restores the shipped path."""
    from vtlab.models.fastpaths import autocast_operands
    from vtlab.models.layers import Mlp

    count = 0
    for mlp in module.modules():
        if isinstance(mlp, Mlp) and mlp.tanh_gelu:
            def forward(x: torch.Tensor, mlp: Mlp = mlp) -> torch.Tensor:
                flat, w, b = autocast_operands(x.reshape(-1, x.shape[-1]), mlp.fc1)
                h = linear_gelu_op(flat, w, b)
                return mlp.fc2(h.view(*x.shape[:-1], h.shape[-1]))
            mlp.forward = forward  # type: ignore[method-assign]
            count += 1
    return count


def uninstall(module: torch.nn.Module) -> None:
    for mlp in module.modules():
        mlp.__dict__.pop("forward", None)
