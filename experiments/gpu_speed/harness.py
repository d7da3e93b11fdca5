"""GPU speed harness: the native vtlab tower against transformers and timm, side by side, in one process.

For each preset (siglip, smolvlm, llavanext) it builds, with the same random weights copied across:
- HF   `transformers.SiglipVisionModel` (sdpa attention, no head), output `last_hidden_state`;
- timm `VisionTransformer` with the same trunk (class_token=False, global_pool="", gelu_tanh), `forward_features`;
- vtlab's native tower (post-LN last hidden state, the same output), with its kernel choices
  (SDPA backend pinned, fc1+GELU fused in the GEMM epilogue for inference);
checks that they compute the same function (relative error in bf16), then measures
- throughput at a large batch (images/s), bf16 weights and inputs, `torch.inference_mode()`, compiled
  (`torch.compile`, default mode) and, for reference, eager;
- batch-1 latency with `torch.compile(mode="reduce-overhead")` (CUDA graphs) for HF and native;
with the method of performance.md section 6: randn inputs, CUDA-event timing, median of `--repeats`
repeats of `--iters` iterations after warm-up; plus an 8192^3 bf16 matmul in the same process.

Usage (GPU):  python experiments/gpu_speed/harness.py --presets smolvlm --out OUT
CPU smoke:    python experiments/gpu_speed/harness.py --device cpu --quick --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import vtlab
from vtlab.families.siglip import hf_vision_config
from vtlab.measure.flops import tower_flops_closed_form
from vtlab.models.sdpa import configure as configure_kernels

BATCH = {"siglip": 256, "smolvlm": 64, "llavanext": 64}
BASELINE_2026_11_27 = {  # performance.md section 6: best of HF/timm compiled (img/s), HF reduce-overhead (ms)
    "siglip": (11117, 0.79),
    "smolvlm": (1838, 1.04),
    "llavanext": (591, 3.18),
}


TOWER_ONLY = ["model.feature_layers=null", "model.use_head=false"]  # the output HF/timm give: post-LN last layer


def tower_config(preset: str, quick: bool):
    cfg = vtlab.to_config(vtlab.compose_config(preset + ("_debug" if quick else ""), TOWER_ONLY))
    return cfg.model


def build_hf(m) -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    fields = {k: v for k, v in hf_vision_config(m).items() if k != "model_type"}
    config = SiglipVisionConfig(**fields, vision_use_head=False)
    config._attn_implementation = "sdpa"
    return SiglipVisionModel(config)


def build_timm(m) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=m.image_size, patch_size=m.patch_size, embed_dim=m.hidden_size, depth=m.num_layers,
        num_heads=m.num_heads, mlp_ratio=m.intermediate_size / m.hidden_size, class_token=False,
        global_pool="", num_classes=0, act_layer="gelu_tanh",
    )


def hf_to_native(hf: torch.nn.Module, tower: torch.nn.Module) -> None:
    """Copy SiglipVisionModel weights into the native tower (q/k/v fused on the way)."""
    sd = {k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()}
    out = {
        "patch_embed.weight": sd["embeddings.patch_embedding.weight"],
        "patch_embed.bias": sd["embeddings.patch_embedding.bias"],
        "pos_embed": sd["embeddings.position_embedding.weight"],
        "post_norm.weight": sd["post_layernorm.weight"],
        "post_norm.bias": sd["post_layernorm.bias"],
    }
    for i in range(len(tower.blocks)):
        p = f"encoder.layers.{i}."
        for t in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{t}"] = torch.cat([sd[f"{p}self_attn.{n}_proj.{t}"] for n in "qkv"])
            out[f"blocks.{i}.attn.proj.{t}"] = sd[f"{p}self_attn.out_proj.{t}"]
            out[f"blocks.{i}.norm1.{t}"] = sd[f"{p}layer_norm1.{t}"]
            out[f"blocks.{i}.norm2.{t}"] = sd[f"{p}layer_norm2.{t}"]
            out[f"blocks.{i}.mlp.fc1.{t}"] = sd[f"{p}mlp.fc1.{t}"]
            out[f"blocks.{i}.mlp.fc2.{t}"] = sd[f"{p}mlp.fc2.{t}"]
    tower.load_state_dict(out, strict=True)


def native_to_timm(tower: torch.nn.Module, model: torch.nn.Module) -> None:
    sd = tower.state_dict()
    out = {
        "patch_embed.proj.weight": sd["patch_embed.weight"],
        "patch_embed.proj.bias": sd["patch_embed.bias"],
        "pos_embed": sd["pos_embed"][None],
        "norm.weight": sd["post_norm.weight"],
        "norm.bias": sd["post_norm.bias"],
    }
    out.update({k: v for k, v in sd.items() if k.startswith("blocks.")})  # block names match timm's
    missing, unexpected = model.load_state_dict(out, strict=False)
    assert not unexpected, unexpected
    assert all("attn_pool" in k or "head" in k for k in missing), missing


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call_ms(fn: Callable[[], object], device: torch.device, warmup: int, iters: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / iters)
        else:
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            out.append((time.perf_counter() - t) * 1e3 / iters)
    return out


def matmul_tflops(device: torch.device, n: int = 8192) -> float:
    if device.type != "cuda":
        n = 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = statistics.median(time_per_call_ms(lambda: a @ b, device, 3, 10, 5))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def sdpa_backend_ran(fn: Callable[[], object]) -> list[str]:
    """Names of the attention kernels the profiler saw during one call."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "attention" in n.lower() and n.startswith("aten::_"))


def gpu_kernel_times(fn: Callable[[], object]) -> list[tuple[str, float, int]]:
    """(kernel name, total ms, calls) of every GPU kernel of one call of `fn` (after one unprofiled call),
    longest first."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    sync(device)
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0 and e.device_type.name == "CUDA"]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    return [(e.key, e.device_time_total / 1e3, e.count) for e in events]


def kernel_breakdown(fn: Callable[[], object], top: int = 12,
                     times: list[tuple[str, float, int]] | None = None) -> list[dict]:
    """The GPU kernels of one call, by total time: where the time goes (name, ms, share)."""
    times = gpu_kernel_times(fn) if times is None else times
    total = sum(ms for _, ms, _ in times) or 1e-3
    return [{"kernel": name[:120], "ms": ms, "share": ms / total, "calls": calls} for name, ms, calls in times[:top]]


def bench_preset(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    m = tower_config(preset, args.quick)
    batch = args.batch or (4 if args.quick else BATCH[preset])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    hf = build_hf(m)
    native = vtlab.build_stack(vtlab.compose_config(preset + ("_debug" if args.quick else ""), TOWER_ONLY)).tower
    hf_to_native(hf, native)
    tim = build_timm(m)
    native_to_timm(native, tim)
    for mod in (hf, native, tim):
        mod.to(device=device, dtype=dtype).eval()
    x = torch.randn(batch, m.num_channels, m.image_size, m.image_size, device=device, dtype=dtype)
    x1 = x[:1].clone()

    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "hf": lambda t: hf(pixel_values=t).last_hidden_state,
        "timm": tim.forward_features,
        "native": native,
    }
    row: dict = {"preset": preset, "batch": batch, "tokens": (m.image_size // m.patch_size) ** 2,
                 "model": m.name, "check": {}, "throughput": {}, "latency_ms": {}, "backends": {}}
    n = row["tokens"]
    tower_flops = tower_flops_closed_form(n, m.hidden_size, m.intermediate_size, m.num_layers, m.patch_size)
    row["flops_per_image"] = tower_flops

    with torch.inference_mode():
        ref = fns["hf"](x[:2]).float()
        row["check"]["timm_vs_hf"] = rel_err(fns["timm"](x[:2]), ref)
        row["check"]["native_vs_hf"] = rel_err(native(x[:2]), ref)
        hf32 = build_hf(m)
        hf32.load_state_dict(hf.state_dict())
        ref32 = hf32.to(device=device, dtype=torch.float32).eval()(pixel_values=x[:2].float()).last_hidden_state
        del hf32
        row["check"]["hf_bf16_vs_fp32"] = rel_err(ref, ref32)
        row["check"]["timm_bf16_vs_fp32"] = rel_err(fns["timm"](x[:2]), ref32)
        configure_kernels(native, args.attention, fused_gelu=args.fused_gelu)
        row["check"]["native_fast_vs_hf"] = rel_err(native(x[:2]), ref)
        row["check"]["native_fast_bf16_vs_fp32"] = rel_err(native(x[:2]), ref32)
        row["backends"]["native"] = sdpa_backend_ran(lambda: native(x[:2]))
        row["backends"]["hf"] = sdpa_backend_ran(lambda: fns["hf"](x[:2]))
        row["backends"]["timm"] = sdpa_backend_ran(lambda: fns["timm"](x[:2]))

        def measure(label: str, fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor, iters: int) -> list[float]:
            t0 = time.perf_counter()
            ms = time_per_call_ms(lambda: fn(inp), device, args.warmup, iters, args.repeats)
            print(f"  {preset:9s} {label:28s} {statistics.median(ms):9.3f} ms/call  "
                  f"({time.perf_counter() - t0:.0f}s incl. warm-up/compile)", flush=True)
            return ms

        modes = ["compile"] if not args.eager else ["eager", "compile"]
        for mode in modes:
            for name, fn in fns.items():
                f = fn if mode == "eager" else torch.compile(fn, dynamic=False)
                ms = measure(f"{name} {mode} bs{batch}", f, x, args.iters)
                row["throughput"][f"{name}_{mode}"] = batch / (statistics.median(ms) * 1e-3)
                if args.profile and mode == "compile" and name in ("hf", "native"):
                    row.setdefault("kernels", {})[name] = kernel_breakdown(lambda f=f: f(x))
                if device.type == "cuda":
                    torch._dynamo.reset()
        if args.autotune:
            f = torch.compile(native, mode="max-autotune-no-cudagraphs", dynamic=False)
            ms = measure(f"native max-autotune bs{batch}", f, x, args.iters)
            row["throughput"]["native_autotune"] = batch / (statistics.median(ms) * 1e-3)
            if args.profile:
                row.setdefault("kernels", {})["native_autotune"] = kernel_breakdown(lambda: f(x))
            torch._dynamo.reset()
        if device.type == "cuda":
            ro = [("hf", "reduce-overhead"), ("native", "reduce-overhead")]
            ro += [("native", "max-autotune")] if args.autotune else []
            for name, mode in ro:
                f = torch.compile(fns[name], mode=mode, dynamic=False)
                ms = measure(f"{name} {mode} bs1", f, x1, args.iters * 5)
                row["latency_ms"][f"{name}_{mode.replace('-', '_')}"] = statistics.median(ms)
                torch._dynamo.reset()
    best = max(row["throughput"]["hf_compile"], row["throughput"]["timm_compile"])
    row["ratio_throughput"] = row["throughput"]["native_compile"] / best
    if "native_autotune" in row["throughput"]:
        row["ratio_throughput_autotune"] = row["throughput"]["native_autotune"] / best
    if row["latency_ms"]:
        row["ratio_latency"] = row["latency_ms"]["native_reduce_overhead"] / row["latency_ms"]["hf_reduce_overhead"]
    row["native_tflops"] = row["throughput"]["native_compile"] * tower_flops / 1e12
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Card: {meta['device_name']}; torch {meta['torch']}, transformers {meta['transformers']}, "
        f"timm {meta['timm']}; bf16 matmul 8192^3 in the same process: {meta['matmul_tflops']:.0f} TFLOP/s; "
        f"native kernels: attention={meta['attention']}, fused_gelu={meta['fused_gelu']}.",
        "",
        "| preset | batch | HF compile img/s | timm compile img/s | native compile img/s | native / best | "
        "native TFLOP/s | HF RO bs1 ms | native RO bs1 ms | native / HF | rel err native vs HF |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, lat = r["throughput"], r["latency_ms"]
        lines.append(
            f"| {r['preset']} | {r['batch']} | {t['hf_compile']:.0f} | {t['timm_compile']:.0f} | "
            f"{t['native_compile']:.0f} | **{r['ratio_throughput']:.2f}x** | {r['native_tflops']:.0f} | "
            f"{lat.get('hf_reduce_overhead', float('nan')):.3f} | {lat.get('native_reduce_overhead', float('nan')):.3f} | "
            f"**{r.get('ratio_latency', float('nan')):.2f}x** | {r['check']['native_fast_vs_hf']:.1e} |"
        )
    tuned = [r for r in rows if "native_autotune" in r["throughput"]]
    if tuned:
        lines += ["", "Native with `max-autotune` (Triton GEMM templates, epilogue fusion):", "",
                  "| preset | native max-autotune img/s | / best baseline | native max-autotune bs1 ms | / HF RO |",
                  "|---|---|---|---|---|"]
        for r in tuned:
            lat = r["latency_ms"].get("native_max_autotune", float("nan"))
            lines.append(f"| {r['preset']} | {r['throughput']['native_autotune']:.0f} | "
                         f"{r['ratio_throughput_autotune']:.2f}x | {lat:.3f} | "
                         f"{lat / r['latency_ms']['hf_reduce_overhead']:.2f}x |")
    lines += ["", "Numerics (relative L2 error on 2 images, random weights):", "",
              "| preset | HF bf16 vs HF fp32 | timm bf16 vs fp32 | native (fast kernels) bf16 vs fp32 | native vs HF bf16 |",
              "|---|---|---|---|---|"]
    for r in rows:
        c = r["check"]
        lines.append(f"| {r['preset']} | {c.get('hf_bf16_vs_fp32', float('nan')):.1e} | "
                     f"{c.get('timm_bf16_vs_fp32', float('nan')):.1e} | {c.get('native_fast_bf16_vs_fp32', float('nan')):.1e} | "
                     f"{c['native_fast_vs_hf']:.1e} |")
    for r in rows:
        for name, kernels in r.get("kernels", {}).items():
            lines += ["", f"Top GPU kernels, {r['preset']} {name} (batch {r['batch']}, one call):", "",
                      "| kernel | ms | share | calls |", "|---|---|---|---|"]
            lines += [f"| `{k['kernel'][:90]}` | {k['ms']:.3f} | {k['share']:.1%} | {k['calls']} |" for k in kernels]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="siglip,smolvlm,llavanext")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=0, help="override the large batch (default: 256/64/64)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--attention", default="cudnn", help="native SDPA backend: auto|cudnn|flash|efficient|math")
    ap.add_argument("--fused-gelu", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--eager", action="store_true", help="also time eager mode")
    ap.add_argument("--quick", action="store_true", help="tiny debug presets (CPU smoke test)")
    ap.add_argument("--autotune", action="store_true", help="also native with max-autotune (Triton GEMM templates)")
    ap.add_argument("--profile", action="store_true", help="record the top GPU kernels of each compiled call")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        args.attention = "auto"
    import timm
    import transformers

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "transformers": transformers.__version__, "timm": timm.__version__,
        "attention": args.attention, "fused_gelu": args.fused_gelu,
        "method": "bf16 weights+inputs, inference_mode, randn, CUDA events, median of repeats x iters after warm-up",
    }
    meta["matmul_tflops"] = matmul_tflops(device)
    print(f"{meta['device_name']}: matmul {meta['matmul_tflops']:.2f} TFLOP/s", flush=True)
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for preset in args.presets.split(","):
        rows.append(bench_preset(preset, args, device))
        (args.out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = markdown(rows, meta)
    (args.out / "speed.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
