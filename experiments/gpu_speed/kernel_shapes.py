"""Kernel choices at the towers' own shapes (issue 16): attention and the fc1 + GELU GEMM, op by op.

The compiled native call spends 19 % of its time in attention on llavanext (so400m/14-384: 729 tokens, head dim 72)
at ~60 TFLOP/s, where siglip's 196 tokens at head dim 64 run at ~170 and smolvlm's 1024 at ~360; and its
fc1 GEMM with the GELU epilogue runs at 490-580 TFLOP/s against 640-710 for the bias-only GEMMs next to it
(kernel breakdowns in levers_h200_2026-12-01*/). This script times the alternatives of each op alone, at each
preset's throughput batch and at batch 1, so that a lever is built only where an op is measurably faster:

attention (SDPA on the strided q/k/v views of one fused qkv output, as `vtlab.models.layers.Attention` makes them):
- each backend pinned (cuDNN, flash, efficient), on the views and on contiguous (B, H, N, hd) copies;
- the head dim padded with zeros to 80 / 96 / 128 in the qkv output (what zero rows in the qkv weight would give,
  so no copy) with the scale kept at hd^-0.5: the same function, on a kernel tile that may fit better;
- FlexAttention (compiled), without a mask;
forward, and forward + backward, each with its relative error against fp32 math attention.

fc1 + GELU (x (M, K) @ W^T (K, N) + b, tanh GELU), M = batch x tokens:
- the bias-only GEMM (the speed the GELU epilogue would have if it cost nothing), `_addmm_activation` (cuBLASLt GELU
  epilogue, what `task.fused_gelu` runs), addmm + GELU compiled (Inductor: cuBLAS + one pointwise kernel),
  Inductor max-autotune (Triton templates with the GELU fused in their epilogue), and the same with Inductor's
  persistent TMA template (`triton.enable_persistent_tma_matmul`, off by default; built 2026-12-01 after the last
  device call of the fifth session, not yet measured);
- triton_gemm.py's persistent TMA kernel with the bias and GELU in its epilogue, every config timed
  (`triton_persistent`; built in the sixth session);
- llavanext's MLP width 4304 padded with zero columns to 4352 and 4608 (fc1 and fc2), which computes the same MLP.

Usage (GPU):  python experiments/gpu_speed/kernel_shapes.py --out OUT/kernel_shapes.json
CPU smoke:    python experiments/gpu_speed/kernel_shapes.py --smoke --out /tmp/ks.json   (tests/test_kernel_shapes.py)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import rel_err, time_per_call_ms  # noqa: E402

# (batch, heads, tokens, head dim) per preset at the throughput batch; batch 1 is added per shape
ATTENTION = {"siglip": (256, 12, 196, 64), "smolvlm": (64, 12, 1024, 64), "llavanext": (64, 16, 729, 72)}
# (tokens per image, width, MLP width) per preset
MLP = {"siglip": (196, 768, 3072), "smolvlm": (1024, 768, 3072), "llavanext": (729, 1152, 4304)}
THROUGHPUT_BATCH = {"siglip": 256, "smolvlm": 64, "llavanext": 64}
SMOKE_ATTENTION = {"tiny": (2, 2, 20, 24)}
SMOKE_MLP = {"tiny": (20, 32, 72)}
BACKEND = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
           "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def ms_of(fn: Callable[[], Any], device: torch.device, args: argparse.Namespace) -> float:
    return statistics.median(time_per_call_ms(fn, device, args.warmup, args.iters, args.repeats))


def graph_ms(fn: Callable[[], Any], device: torch.device, args: argparse.Namespace, reps: int = 20) -> float:
    """GPU time per call of `fn` with launch overhead removed: `reps` calls captured in one CUDA graph, the graph
    replayed (median of --repeats); plain timing on CPU. What batch-1 latency under CUDA graphs sees."""
    if device.type != "cuda":
        return ms_of(fn, device, args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return statistics.median(time_per_call_ms(graph.replay, device, 2, 5, args.repeats)) / reps


def guarded(results: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement; an error is recorded under its key instead of stopping the script."""
    try:
        results[key] = fn()
    except Exception as e:  # noqa: BLE001 - a kernel that refuses a shape is a result, not a crash
        results[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}" if str(e) else type(e).__name__}
        traceback.print_exc(limit=2)


# ------------------------------------------------------------------------------------------- attention
def qkv_views(qkv: torch.Tensor, hd: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3, H, hd_stored) -> q, k, v as strided (B, H, N, hd_stored) views, like layers.Attention."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


class MathAttention(torch.autograd.Function):
    """softmax(q k^T scale) v with the probabilities saved in the input dtype and a hand-written backward:
    dV = P^T dO, dS = P (dO V^T - rowsum(dO O)) scale, dQ = dS K, dK = dS^T Q (the softmax in fp32)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        p = torch.softmax((torch.matmul(q, k.transpose(-2, -1)) * scale).float(), dim=-1).to(q.dtype)
        o = torch.matmul(p, v)
        ctx.save_for_backward(q, k, v, p, o)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, p, o = ctx.saved_tensors
        dv = torch.matmul(p.transpose(-2, -1), do)
        dp = torch.matmul(do, v.transpose(-2, -1)).float()
        delta = (do.float() * o.float()).sum(-1, keepdim=True)
        ds = (p.float() * (dp - delta) * ctx.scale).to(q.dtype)
        return torch.matmul(ds, k), torch.matmul(ds.transpose(-2, -1), q), dv, None


def attention_variants(b: int, h: int, n: int, hd: int, device: torch.device, dtype: torch.dtype,
                       cuda: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> fn(qkv (B, N, 3, H, hd_pad)) -> (B, H, N, hd); the stored head dim of each is in PADDED below."""
    scale = hd**-0.5
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    backends = ["cudnn", "flash", "efficient"] if cuda else ["flash", "math"]
    for name in backends:
        def pinned(qkv: torch.Tensor, name: str = name) -> torch.Tensor:
            with sdpa_kernel([BACKEND[name]]):
                q, k, v = qkv_views(qkv, hd)
                return F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :hd]
        out[f"{name}_views"] = pinned

        def contiguous(qkv: torch.Tensor, name: str = name) -> torch.Tensor:
            with sdpa_kernel([BACKEND[name]]):
                q, k, v = (t.contiguous() for t in qkv_views(qkv, hd))
                return F.scaled_dot_product_attention(q, k, v, scale=scale)
        out[f"{name}_contiguous"] = contiguous
    for pad in (80, 96, 128):
        if pad <= hd:
            continue
        for name in backends[:2]:
            out[f"{name}_pad{pad}"] = out[f"{name}_views"]
    def math(qkv: torch.Tensor) -> torch.Tensor:  # transformers' eager attention: bf16 GEMMs, softmax in fp32
        q, k, v = qkv_views(qkv, hd)
        s = torch.matmul(q, k.transpose(-2, -1)) * scale
        return torch.matmul(torch.softmax(s.float(), dim=-1).to(q.dtype), v)
    out["math_bf16"] = math
    if cuda:
        out["math_bf16_compiled"] = torch.compile(math, dynamic=False)
    out["math_fn"] = lambda qkv: MathAttention.apply(*qkv_views(qkv, hd), scale)
    if cuda:
        out["math_fn_compiled"] = torch.compile(out["math_fn"], dynamic=False)
    try:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False) if cuda else flex_attention

        def flexed(qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = qkv_views(qkv, hd)
            return flex(q, k, v, scale=scale)
        out["flex_views"] = flexed
    except ImportError:
        pass
    return out


def stored_head_dim(name: str, hd: int) -> int:
    return int(name.split("_pad")[1]) if "_pad" in name else hd


def time_attention(shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype,
                   args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    b, h, n, hd = shape
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    base = torch.randn(b, n, 3, h, hd, device=device, dtype=torch.float32)
    q, k, v = qkv_views(base, hd)
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(q, k, v)
    flops = 4 * b * h * n * n * hd
    grads: dict[str, torch.Tensor] = {}
    upstream = torch.randn(b, h, n, hd, device=device)

    def ref_grad(grad: torch.Tensor) -> torch.Tensor:  # d(sum(out * grad)) / d qkv in fp32 (one per shape)
        if "g" not in grads:
            leaf = base.clone().requires_grad_(True)
            with sdpa_kernel([SDPBackend.MATH]):
                o = F.scaled_dot_product_attention(*qkv_views(leaf, hd))
            grads["g"] = torch.autograd.grad(o, leaf, grad.float())[0][..., :hd]
        return grads["g"]
    res: dict[str, Any] = {"shape": {"batch": b, "heads": h, "tokens": n, "head_dim": hd}, "gflop_fwd": flops / 1e9}
    for name, fn in attention_variants(b, h, n, hd, device, dtype, cuda).items():
        if args.attention_variants and name not in args.attention_variants.split(","):
            continue
        if budget.left() < 5:
            res[name] = {"skipped": "budget"}
            continue
        stored = stored_head_dim(name, hd)

        def one(name: str = name, fn: Callable = fn, stored: int = stored) -> dict[str, Any]:
            qkv = torch.zeros(b, n, 3, h, stored, device=device, dtype=dtype)
            qkv[..., :hd] = base.to(dtype)
            out = fn(qkv)[..., :hd]
            row: dict[str, Any] = {"rel_err_vs_fp32": rel_err(out, ref)}
            with torch.inference_mode():
                row["fwd_ms"] = ms_of(lambda: fn(qkv), device, args)
            row["fwd_tflops"] = flops / (row["fwd_ms"] * 1e-3) / 1e12
            if not args.backward:
                return row
            leaf = qkv.clone().requires_grad_(True)
            grad = upstream.to(dtype)

            def fwd_bwd() -> torch.Tensor:
                return torch.autograd.grad(fn(leaf)[..., :hd], leaf, grad)[0]

            def backward() -> dict[str, Any]:
                g = fwd_bwd()[..., :hd]
                ms = ms_of(fwd_bwd, device, args)  # bwd = 2.5x the forward's matmul FLOPs
                return {"grad_finite": bool(torch.isfinite(g).all()), "grad_rel_err_vs_fp32": rel_err(g, ref_grad(grad)),
                        "ms": ms, "tflops": 3.5 * flops / (ms * 1e-3) / 1e12}
            guarded(row, "fwd_bwd", backward)
            return row
        guarded(res, name, one)
    return res


# ------------------------------------------------------------------------------------------- fc1 + GELU
def gemm_variants(cuda: bool) -> dict[str, Callable[..., torch.Tensor]]:
    def bias(x: torch.Tensor, w: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
        return torch.addmm(bb, x, w.t())

    def epilogue(x: torch.Tensor, w: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
        return torch._addmm_activation(bb, x, w.t(), use_gelu=True)

    def split(x: torch.Tensor, w: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.linear(x, w, bb), approximate="tanh")

    out: dict[str, Callable[..., torch.Tensor]] = {"bias_only": bias, "gelu_epilogue": epilogue}
    out["addmm_gelu_compiled"] = torch.compile(split, dynamic=False) if cuda else split
    if cuda:
        out["max_autotune"] = torch.compile(split, dynamic=False, mode="max-autotune-no-cudagraphs")
        # Inductor's persistent TMA Triton template (off by default), the GELU fused into its epilogue; Triton only,
        # so the template's own speed is what is timed
        out["max_autotune_tma"] = torch.compile(split, dynamic=False, options=TMA_AUTOTUNE)
    return out


TMA_AUTOTUNE = {"max_autotune": True, "max_autotune_gemm_backends": "TRITON", "triton.enable_persistent_tma_matmul": True,
                "triton.enable_template_tma_store": True}


def time_gemm(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
              budget: Budget, names: list[str] | None = None, fc2: bool = True) -> dict[str, Any]:
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    x = torch.randn(m, k, device=device, dtype=dtype)
    w = (torch.randn(n, k, device=device) * k**-0.5).to(dtype)
    bb = torch.randn(n, device=device, dtype=dtype) * 0.1
    ref = F.gelu(F.linear(x.float(), w.float(), bb.float()), approximate="tanh")
    flops = 2 * m * k * n
    res: dict[str, Any] = {"shape": {"m": m, "k": k, "n": n}, "gflop": flops / 1e9}
    for name, fn in gemm_variants(cuda).items():
        if names is not None and name not in names:
            continue
        if budget.left() < (40 if name.startswith("max_autotune") else 5):
            res[name] = {"skipped": "budget"}
            continue

        def one(fn: Callable = fn, name: str = name) -> dict[str, Any]:
            with torch.inference_mode():
                out = fn(x, w, bb)
                row: dict[str, Any] = {} if name == "bias_only" else {"rel_err_vs_fp32": rel_err(out, ref)}
                row["ms"] = ms_of(lambda: fn(x, w, bb), device, args)
            row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
            return row
        guarded(res, name, one)
    if cuda and (names is None or "triton_persistent" in names) and budget.left() > 60:
        def persistent() -> dict[str, Any]:  # triton_gemm.py's kernel, every config timed, the best kept
            import triton_gemm as TG

            with torch.inference_mode():
                tuned = TG.tune(x, w, bb, ref, seconds=min(120.0, budget.left() / 2))
                best = tuned["best"]
                row: dict[str, Any] = {"configs": tuned["configs"], "triton": tuned["triton"]}
                if best is not None:
                    cfg = tuple(best["config"])
                    row.update(ms=best["ms"], rel_err_vs_fp32=best["rel_err_vs_fp32"], config=best["config"],
                               tflops=flops / (best["ms"] * 1e-3) / 1e12,
                               bias_only_ms=TG._cuda_ms(lambda: TG.linear_gelu(x, w, bb, cfg, gelu=False)))
            return row
        guarded(res, "triton_persistent", persistent)
    if fc2:  # the MLP's second GEMM at this width: (M, N) @ (N, K) + b
        h = torch.randn(m, n, device=device, dtype=dtype)
        w2 = (torch.randn(k, n, device=device) * n**-0.5).to(dtype)
        b2 = torch.zeros(k, device=device, dtype=dtype)

        def second() -> dict[str, Any]:
            with torch.inference_mode():
                ms = ms_of(lambda: torch.addmm(b2, h, w2.t()), device, args)
            return {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
        guarded(res, "fc2_bias", second)
    return res


# ------------------------------------------------------------------------------------------- batch 1, CUDA graphs
BS1_ATTENTION = ("cudnn_views", "flash_views", "efficient_views", "cudnn_pad80", "flash_pad80", "cudnn_pad128",
                 "math_bf16", "math_bf16_compiled")


def bs1_graphs(preset: str, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
               budget: Budget) -> dict[str, Any]:
    """One image's attention (each kernel) and GEMMs (qkv, proj, fc1 + GELU at each MLP width, fc2) timed inside
    CUDA graphs: the per-layer pieces of the batch-1 latency."""
    cuda = device.type == "cuda"
    _, h, n, hd = (SMOKE_ATTENTION["tiny"] if args.smoke else ATTENTION[preset])
    tokens, width, hidden = SMOKE_MLP["tiny"] if args.smoke else MLP[preset]
    torch.manual_seed(0)
    base = torch.randn(1, n, 3, h, hd, device=device)
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(*qkv_views(base, hd))
    res: dict[str, Any] = {"attention": {}, "gemm": {}}
    variants = attention_variants(1, h, n, hd, device, dtype, cuda)
    for name in BS1_ATTENTION:
        if name not in variants or budget.left() < 5:
            continue
        stored = stored_head_dim(name, hd)

        def one(fn: Callable = variants[name], stored: int = stored) -> dict[str, Any]:
            qkv = torch.zeros(1, n, 3, h, stored, device=device, dtype=dtype)
            qkv[..., :hd] = base.to(dtype)
            with torch.inference_mode():
                err = rel_err(fn(qkv)[..., :hd], ref)
                return {"us": 1e3 * graph_ms(lambda: fn(qkv), device, args), "rel_err_vs_fp32": err}
        guarded(res["attention"], name, one)
    x = torch.randn(tokens, width, device=device, dtype=dtype)
    shapes = {"qkv": (width, 3 * width), "proj": (width, width)}
    widths = [hidden] + ([math.ceil(hidden / 128) * 128, math.ceil(hidden / 192) * 192] if hidden % 128 else [])
    for w in dict.fromkeys(widths):
        shapes[f"fc1_gelu_n{w}"] = (width, w)
        shapes[f"fc2_k{w}"] = (w, width)
    for name, (k, n_out) in shapes.items():
        a = x if k == width else torch.randn(tokens, k, device=device, dtype=dtype)
        wt = (torch.randn(n_out, k, device=device) * k**-0.5).to(dtype)
        bb = torch.zeros(n_out, device=device, dtype=dtype)
        ops = {"bias": lambda a=a, wt=wt, bb=bb: torch.addmm(bb, a, wt.t())}
        if name.startswith("fc1"):
            ops["gelu_epilogue"] = lambda a=a, wt=wt, bb=bb: torch._addmm_activation(bb, a, wt.t(), use_gelu=True)
        for op, fn in ops.items():
            def timed(fn: Callable = fn) -> dict[str, Any]:
                with torch.inference_mode():
                    return {"us": 1e3 * graph_ms(fn, device, args)}
            guarded(res["gemm"], f"{name}_{op}", timed)
    return res


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", default="llavanext,smolvlm,siglip")
    ap.add_argument("--sections", default="attention,gemm", help="of attention, gemm, bs1_graphs (in that order)")
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--autotune-presets", default="siglip,llavanext")
    ap.add_argument("--attention-variants", default="", help="only these attention variants (default: all)")
    ap.add_argument("--gemm-variants", default="", help="only these fc1 + GELU variants (default: all on the "
                    "--autotune-presets, the untuned ones elsewhere), e.g. gelu_epilogue,max_autotune_tma")
    ap.add_argument("--no-backward", dest="backward", action="store_false", help="attention forward only")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, fp32")
    args = ap.parse_args()
    if args.smoke:
        args.iters, args.repeats, args.warmup = 1, 1, 1
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    budget = Budget(args.budget_s)
    att_shapes = SMOKE_ATTENTION if args.smoke else {p: ATTENTION[p] for p in args.presets.split(",")}
    mlp_shapes = SMOKE_MLP if args.smoke else {p: MLP[p] for p in args.presets.split(",")}
    result: dict[str, Any] = {"meta": {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype), "iters": args.iters, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")},
        "attention": {}, "gemm": {}}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    sections = args.sections.split(",")
    for preset, shape in att_shapes.items():
        if "attention" not in sections:
            break
        for batch in (shape[0], 1):
            result["attention"][f"{preset}_bs{batch}"] = time_attention((batch, *shape[1:]), device, dtype, args, budget)
            save()
            print(f"attention {preset} bs{batch} done, {budget.left():.0f}s left", flush=True)
    for preset in att_shapes:
        if "bs1_graphs" not in sections:
            break
        result.setdefault("bs1_graphs", {})[preset] = bs1_graphs(preset, device, dtype, args, budget)
        save()
        print(f"bs1_graphs {preset} done, {budget.left():.0f}s left", flush=True)
    for preset, (tokens, width, hidden) in mlp_shapes.items():
        if "gemm" not in sections:
            break
        batch = 2 if args.smoke else THROUGHPUT_BATCH[preset]
        tune = None if preset in args.autotune_presets.split(",") or args.smoke else ["bias_only", "gelu_epilogue", "addmm_gelu_compiled"]
        if args.gemm_variants:
            tune = args.gemm_variants.split(",")
        widths = [hidden] + ([math.ceil(hidden / 128) * 128, math.ceil(hidden / 192) * 192] if hidden % 128 else [])
        for w in dict.fromkeys(widths):
            names = tune if w == hidden else ["bias_only", "gelu_epilogue"]
            result["gemm"][f"{preset}_bs{batch}_n{w}"] = time_gemm(batch * tokens, width, w, device, dtype, args, budget, names)
            save()
        result["gemm"][f"{preset}_bs1_n{hidden}"] = time_gemm(tokens, width, hidden, device, dtype, args, budget,
                                                                ["bias_only", "gelu_epilogue", "addmm_gelu_compiled"])
        save()
        print(f"gemm {preset} done, {budget.left():.0f}s left", flush=True)
    save()


if __name__ == "__main__":
    main()
