"""`task=bench`: what one configuration costs on the device at hand, in eager / compile / CUDA-graph modes.

For the stack of the composed config it records tokens handed to the LM, parameters and FLOPs per stage,
latency at batch 1 (p50, p90), throughput at a large batch (images/s, visual tokens/s), peak memory,
achieved TFLOP/s and its share (`mfu`) of a matmul ceiling measured in the same process, the attention
kernel that ran, and the LM-side prefill FLOPs of the visual tokens. Method: warm-up past compilation,
synchronise before each clock read, randn inputs, medians (timm's benchmark.py).

`results.json` holds one sub-dict per mode under `modes` plus flat top-level scalars for dashboards:
`latency_ms*` from the mode with the lowest batch-1 latency, `throughput_*`, `tflops`, `mfu` and
`peak_memory_mb` from the mode with the highest throughput (`latency_mode`, `throughput_mode` say which).
Settings left unset (None) get device defaults, CPU ones small enough for a tiny preset to take seconds.

With an input image size (`data.image_size=[H,W]`) one image is the frames of its tiling plan (SmolVLM
split, LlavaNext anyres): latency is per image (all its frames in one tower batch, then split and packed),
throughput counts images (and their packed tokens), FLOPs are per image.

`fast_paths` records the fast paths the stack ran with (vtlab.models.fastpaths.fast_paths, the SDPA kernel, and
whether the throughput batch of `cudagraphs` was graph-captured: Inductor's `cudagraph_skips` counter).
`task.dtype=fp8` (CUDA sm89+ only, never the default) converts the tower blocks' Linears to e4m3 GEMMs
(vtlab.models.fp8) and records their relative error against the bf16 stack on the same input under `fp8`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch._dynamo.utils import counters

from vtlab.api import build_stack, build_vlm_from_config
from vtlab.config.schema import image_size_of
from vtlab.measure.ceiling import matmul_ceiling, raise_to_run
from vtlab.measure.flops import lm_prefill, stage_costs
from vtlab.measure.lm_side import check_prompt, measure_lm_side
from vtlab.measure.modes import COMPILED, extra_warmup, make_runner, skip_reason
from vtlab.measure.progress import StepProgress
from vtlab.measure.stages import image_stages
from vtlab.measure.timing import (
    UNSTABLE_SPREAD,
    count_params,
    device_info,
    median,
    peak_memory_mb,
    percentile,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
    spread,
    synchronize,
    time_ms,
)
from vtlab.models.fastpaths import configure_fast_paths, fast_paths
from vtlab.models.fp8 import check_fp8, to_fp8
from vtlab.models.sdpa import configure_attention, detect_backend, pinned
from vtlab.results.record import RunContext
from vtlab.tasks import profile
from vtlab.tasks.common import lm_wanted, stack_facts
from vtlab.tasks.console import print_bench_table

check = profile.check  # the same refusal: an out_dir that already holds results.json

# device defaults for the settings left at None: (CUDA, CPU)
DEFAULTS = {
    "throughput_batch_size": (64, 8),
    "iters": (10, 2),
    "latency_iters": (100, 20),
    "matmul_size": (8192, 1024),
}


# `task.quick=true`: a look in seconds (eager only; the spread of so few repeats is rarely trustworthy)
QUICK = {"warmup": 1, "repeats": 3, "throughput_batch_size": 2, "iters": 1, "latency_iters": 5, "matmul_size": 512}


def bench_settings(task: Any, device: torch.device) -> dict[str, Any]:
    """The measurement settings actually used; `defaulted` lists those chosen for the device (or by
    `task.quick`, which replaces the defaults and caps the warm-up and repeats)."""
    cpu = device.type != "cuda"
    quick = bool(getattr(task, "quick", False))
    settings: dict[str, Any] = {"warmup": task.warmup, "repeats": task.repeats, "quick": quick}
    if quick:
        settings.update(warmup=min(task.warmup, QUICK["warmup"]), repeats=min(task.repeats, QUICK["repeats"]))
    defaulted = []
    for key, (on_cuda, on_cpu) in DEFAULTS.items():
        value = getattr(task, key)
        if value is None:
            value = QUICK[key] if quick else on_cpu if cpu else on_cuda
            defaulted.append(key)
        settings[key] = value
    settings["defaulted"] = defaulted
    settings["defaults_for"] = "quick" if quick else "cpu" if cpu else "cuda"
    settings["modes"] = ["eager"] if quick else list(dict.fromkeys(str(m) for m in task.modes))
    return settings


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _first_call_s(fn: Any, pixels: torch.Tensor, device: torch.device) -> float:
    start = time.perf_counter()
    fn(pixels)
    synchronize(device)
    return time.perf_counter() - start


def _timed(fn: Any, pixels: torch.Tensor, device: torch.device, warmup: int, repeats: int,
           iters: int = 1) -> list[float]:
    return time_ms(lambda: fn(pixels), device, warmup, repeats, iters)


def measure_mode(mode: str, stack: torch.nn.Module, shape1: tuple[int, ...], batch: int, flops_per_img: int,
                 tokens: int, ceiling_tflops: float, settings: dict[str, Any], device: torch.device,
                 dtype: torch.dtype, progress: StepProgress, pack: Any = None) -> dict[str, Any]:
    """Latency at batch 1 and throughput at `batch` (halved on out-of-memory) for one mode. An image is
    `shape1[0]` frames; `pack(tokens, images)` (tiled inputs) splits and packs them after the stack."""
    runner = make_runner(mode, stack)
    counters["inductor"].pop("cudagraph_skips", None)
    frames = shape1[0]
    fn = runner if pack is None else (lambda x: pack(runner(x), x.shape[0] // frames))
    warmup = settings["warmup"] + extra_warmup(mode)
    reset_peak_memory(device)
    out: dict[str, Any] = {"status": "ok"}
    x1 = torch.randn(shape1, device=device, dtype=dtype)
    progress.step(f"{mode}: first call, batch 1" + (" (compiling)" if mode in COMPILED else ""))
    out["first_call_s"] = _first_call_s(fn, x1, device)
    progress.step(f"{mode}: latency, {settings['latency_iters']} calls at batch 1")
    lat = _timed(fn, x1, device, warmup, settings["latency_iters"])
    out.update(latency_ms=median(lat), latency_ms_p90=percentile(lat, 90), latency_ms_all=lat,
               latency_spread=spread(lat), unstable=spread(lat)["unstable"])
    progress.step(f"{mode}: throughput, batch {batch}" + (" (compiling)" if mode in COMPILED else ""))
    while True:
        try:
            xb = torch.randn((batch * frames, *shape1[1:]), device=device, dtype=dtype)
            out["first_call_batch_s"] = _first_call_s(fn, xb, device)
            thr = _timed(fn, xb, device, warmup, settings["repeats"], settings["iters"])
            break
        except RuntimeError as exc:
            if not _is_oom(exc) or batch == 1:
                raise
            xb = None
            batch //= 2
            torch.cuda.empty_cache()
            print(f"vtlab: {mode}: out of memory, retrying throughput at batch {batch}", file=sys.stderr)
    if mode == "cudagraphs":  # a skipped capture (e.g. a host sync, a CPU tensor) runs the graph eagerly
        out["cudagraph_skips"] = int(counters["inductor"].get("cudagraph_skips", 0))
    img_s = batch / (median(thr) / 1e3)
    tflops = flops_per_img * img_s / 1e12
    peak, _ = peak_memory_mb(device)
    out.update(
        throughput_batch_size=batch,
        throughput_ms_all=thr,
        throughput_spread=spread(thr),
        unstable=out["unstable"] or spread(thr)["unstable"],
        throughput_img_s=img_s,
        throughput_tokens_s=img_s * tokens,
        tflops=tflops,
        mfu=tflops / ceiling_tflops if ceiling_tflops > 0 else None,
        peak_memory_mb=peak,
    )
    return out


def _to_fp8(stack: torch.nn.Module, device: torch.device, dtype: torch.dtype, scaling: str) -> dict[str, Any]:
    """Convert the tower to fp8 GEMMs in place; the relative L2 error of the stack output against bf16."""
    x = torch.randn(stack.input_shape(2), device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    calibration = torch.randn(stack.input_shape(8), device=device, dtype=dtype,
                              generator=torch.Generator(device).manual_seed(1))  # not the images the error is taken on
    with torch.inference_mode():
        ref = stack(x).float()
        info = to_fp8(stack, scaling, [calibration], "8 random images (seed 1)")
        out = stack(x).float()
    return {**info, "rel_err_vs_bf16": ((out - ref).norm() / ref.norm()).item()}


def _headline(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat dashboard scalars: best latency and best throughput over the modes that ran."""
    ok = {name: m for name, m in modes.items() if m.get("status") == "ok"}
    if not ok:
        return {}
    lat_mode = min(ok, key=lambda n: ok[n]["latency_ms"])
    thr_mode = max(ok, key=lambda n: ok[n]["throughput_img_s"])
    lat, thr = ok[lat_mode], ok[thr_mode]
    return {
        "latency_ms": lat["latency_ms"],
        "latency_ms_p90": lat["latency_ms_p90"],
        "latency_mode": lat_mode,
        "throughput_img_s": thr["throughput_img_s"],
        "throughput_tokens_s": thr["throughput_tokens_s"],
        "throughput_batch_size": thr["throughput_batch_size"],
        "throughput_mode": thr_mode,
        "tflops": thr["tflops"],
        "mfu": thr["mfu"],
        "peak_memory_mb": thr["peak_memory_mb"],
        "unstable": any(m.get("unstable") for m in ok.values()),
    }


def bench_stack(ctx: RunContext) -> dict[str, Any]:
    cfg, task = ctx.cfg, ctx.cfg.task
    device = resolve_device(task.device)
    dtype = resolve_dtype(task.dtype, device, quantized=True)
    fp8 = str(getattr(task.dtype, "value", task.dtype)) == "fp8"
    if fp8:
        check_fp8(device)
    settings = bench_settings(task, device)
    torch.manual_seed(cfg.seed)
    wanted = lm_wanted(cfg, ctx.overrides, device, dtype)
    vlm = build_vlm_from_config(cfg).to(device=device, dtype=dtype).eval() if wanted else None
    stack = vlm.stack if vlm is not None else build_stack(cfg).to(device=device, dtype=dtype).eval()
    # pin inside every block too (an sdpa_kernel context in the traced forward binds compiled modes as well)
    # fc1 bias + tanh GELU in the cuBLASLt GEMM epilogue: CUDA inference only (the layer checks both)
    configure_attention(stack, task.attention_backend)
    configure_fast_paths(stack, patch_gemm=task.patch_gemm, fused_gelu=task.fused_gelu,  # CUDA inference only
                         residual_gemm=task.residual_gemm)
    fp8_info = _to_fp8(stack, device, dtype, str(task.fp8_scaling)) if fp8 else None
    size = image_size_of(cfg.data.image_size)
    if vlm is not None:
        check_prompt(vlm, size, cfg.text.prompt)  # tokenizer and context, before anything is timed
    plan = stack.plan(*size) if size else None
    frames = plan.frames if plan else 1
    shape1 = stack.input_shape(frames, plan)
    tokens = plan.tokens if plan else stack.num_tokens
    pack = (lambda out, images: stack.pack(out, [plan] * images)) if plan else None
    modes = settings["modes"]
    runnable = [m for m in modes if skip_reason(m, device) is None]

    steps = 3 + 3 * len(runnable)
    with StepProgress(f"bench {ctx.run_name}", steps) as progress, pinned(task.attention_backend):
        progress.step("FLOPs per stage")
        pixels = torch.randn(stack.input_shape(1, plan), device=device, dtype=dtype)
        costs = stage_costs(stack, pixels)  # per frame
        progress.step("attention backend")
        with torch.inference_mode():
            attention = detect_backend(lambda: stack(pixels), str(task.attention_backend))
        progress.step(f"matmul ceiling ({settings['matmul_size']}^3)")
        ceiling = matmul_ceiling(device, dtype, settings["matmul_size"])
        results: dict[str, dict[str, Any]] = {}
        for mode in modes:
            reason = skip_reason(mode, device)
            if reason:
                results[mode] = {"status": "skipped", "reason": reason}
                continue
            try:
                with torch.inference_mode():
                    results[mode] = measure_mode(mode, stack, shape1, settings["throughput_batch_size"],
                                                 costs.flops * frames, tokens, ceiling["tflops"], settings, device,
                                                 dtype, progress, pack)
            except Exception as exc:
                if mode not in COMPILED:
                    raise
                # a compiler failure is a result (and must not cost the eager numbers)
                results[mode] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
                print(f"vtlab: {mode} failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            finally:
                if mode in COMPILED:
                    torch._dynamo.reset()
    lm_side: dict[str, Any] = {"rows": [], "fields": {}}
    if vlm is not None:  # text.lm=true: LM prefill, KV cache and TTFT, eager LM (vtlab.measure.lm_side)
        with pinned(task.attention_backend):
            lm_side = measure_lm_side(vlm, size, cfg.text.prompt, device, 3, settings["latency_iters"])
    ceiling = raise_to_run(ceiling, [m["tflops"] for m in results.values() if m.get("status") == "ok"])
    for m in results.values():  # mfu against the ceiling no run exceeds
        if m.get("status") == "ok" and ceiling["tflops"] > 0:
            m["mfu"] = m["tflops"] / ceiling["tflops"]
    if ceiling["exceeded"]:
        print(f"vtlab: warning: {ceiling['note']}", file=sys.stderr)
    shaky = [name for name, m in results.items() if m.get("unstable")]
    if shaky:
        print(f"vtlab: warning: unstable timings in mode(s) {', '.join(shaky)}: the repeats spread by more than "
              f"{UNSTABLE_SPREAD:.0%} of the median ((p90 - p10) / p50; a loaded machine?); `unstable: true` in "
              f"results.json", file=sys.stderr)
    peak, peak_kind = peak_memory_mb(device)
    info = device_info(device)
    paths = {**fast_paths(stack, device), "attention": attention["ran"],
             "cudagraphs_throughput_captured": (results.get("cudagraphs", {}).get("cudagraph_skips") == 0
                                                if results.get("cudagraphs", {}).get("status") == "ok" else None)}
    prefill = lm_prefill(cfg.text, tokens, stack.text_hidden)
    return {
        **ctx.header(),
        **lm_side["fields"],
        "lm_stages": lm_side["rows"],
        **stack_facts(stack, plan),
        "dtype": str(dtype).removeprefix("torch."),
        "device_name": info["device_name"],
        "torch_version": torch.__version__,
        "attention_backend": attention["ran"],
        "attention_backend_requested": str(task.attention_backend),
        "fused_gelu": bool(task.fused_gelu and device.type == "cuda"),
        "attention": attention,
        "fast_paths": paths,
        "fp8": fp8_info,
        "stages": image_stages(costs.stages, plan) if plan else costs.stages,
        "params": count_params(stack),
        "params_tower": costs.row("tower")["params"],
        "params_connector": costs.row("connector")["params"],
        "flops": costs.flops * frames,
        "flops_tower": costs.tower_flops * frames,
        "flops_connector": costs.connector_flops * frames,
        "flops_closed_form": costs.flops_closed_form * frames,
        "lm_prefill_flops": prefill["flops"],
        "lm_prefill": prefill,
        **_headline(results),
        "ceiling_exceeded": ceiling["exceeded"],
        "peak_memory_kind": peak_kind,
        "peak_memory_process_mb": peak,
        "ceiling_tflops": ceiling["tflops"],
        "ceiling": ceiling,
        "modes": results,
        "settings": settings,
        "device_info": info,
        "overrides": ctx.overrides,
    }


def run(ctx: RunContext, tracker: Any) -> dict[str, Any]:
    result = bench_stack(ctx)
    path = ctx.write_result(result)
    print_bench_table(result)
    print(f"results: {path}")
    tracker.log_result(result)
    return result
