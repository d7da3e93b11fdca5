"""Issue 16: every speed lever, measured side by side with transformers and timm, one process per preset.

Per preset (siglip B/16-224, smolvlm B/16-512, llavanext so400m/14-384, real sizes, random weights copied
between the implementations by harness.py's mappings), in order of priority, each section written to
`OUT/<preset>.json` as soon as it is done (a timeout still leaves data; a section that would not fit in the
preset's time budget is recorded as skipped):

1. numerics: relative L2 error vs an fp32 transformers reference of transformers bf16, timm bf16, native bf16
   with the default levers and with all levers (2 images, eager);
2. throughput, compiled (bf16, inference_mode, batch 256/64/64): transformers, timm, native default
   (task defaults: fused GELU epilogue, conv patch embedding), native with all inference levers (patch GEMM,
   and the batch CUDA-graph captured, reduce-overhead); host-sync check of the native call; per-kernel
   breakdown (torch.profiler, top kernels) of native default and native levers;
3. batch-1 latency with CUDA graphs (reduce-overhead): transformers, native default, native levers;
4. training step (`--train-presets`, default smolvlm; bf16 autocast, compiled tower+connector, AdamW, clip,
   batch 64, random data on the device): full fine-tuning and frozen tower, native with the training levers
   (fc1+GELU epilogue with its backward, patch GEMM, compiled AdamW step) vs transformers-compiled (fused
   AdamW) (`--train-extra`: also native without levers, full);
5. levers one by one (`--lever-presets`, default siglip): throughput with each lever switched off from the
   all-levers configuration, the SDPA backends cudnn / flash, and fp8 (opt-in, its error vs bf16);
6. tiled images (smolvlm: one 1536x2048 image; llavanext = Granite-Vision's tower: one 600x800 image): per-image
   latency end to end (PIL preprocessing included) of `stack.encode_images` vs the transformers PIL processor +
   `get_image_features`, eager and with the tower compiled, the preprocessing alone, and how close (uint8 levels)
   and how fast a GPU resize (torch bicubic, antialias) is against Pillow's BICUBIC / LANCZOS on that image.
7. the largest batch that fits (full fine-tuning, compiled with a dynamic
   batch, doubling then bisecting, capped at `--max-batch-cap`) for native levers and transformers
   (`--train-extra`: also native with activation checkpointing);
8. (only when named in `--sections`) autotune: compiled throughput with inductor max-autotune on every side
   (transformers, timm, native levers; native also with CUDA graphs), each side's tuning time recorded.
`--sections` picks sections; `--presets P --sections training,max_batch --budget-s 560` gives one of them a
whole call.

Method: CUDA-event timing, median of `--repeats` repeats of `--iters` calls after warm-up (which compiles);
an 8192^3 bf16 matmul in the same process. Outputs: OUT/<preset>.json per preset, OUT/levers.json (all) and
OUT/levers.md (tables).

GPU (all three presets in one 10-minute call; each preset in its own subprocess with its own budget):
    python experiments/gpu_speed/run_levers.py --out $OUT
One preset with the whole budget:   python experiments/gpu_speed/run_levers.py --presets smolvlm --budget-s 560 --out $OUT
CPU smoke (debug presets, dynamo's eager backend, one iteration):
    python experiments/gpu_speed/run_levers.py --smoke --out /tmp/levers
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(HERE), str(REPO / "experiments" / "training"), str(REPO / "tests")]  # this checkout first

import harness as H  # noqa: E402

import vtlab  # noqa: E402
from vtlab.models.fastpaths import configure_fast_paths, fast_paths  # noqa: E402
from vtlab.models.fp8 import GRANULARITIES, calibrate_fp8, convert_to_fp8  # noqa: E402
from vtlab.models.sdpa import configure, configure_attention, pinned  # noqa: E402

BUDGET_S = {"siglip": 170, "smolvlm": 240, "llavanext": 120}  # + ~15 s start-up each: one 10-minute call in all
TILED = {"smolvlm": (1536, 2048), "llavanext": (600, 800)}  # (H, W): SmolVLM image, Granite-Vision image
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def allows(self, need_s: float) -> bool:
        return self.left() >= need_s


class Run:
    """One preset's measurements: settings, budget, the result dict, written after every section."""

    def __init__(self, preset: str, args: argparse.Namespace) -> None:
        self.preset, self.args = preset, args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.budget = Budget(args.budget_s)
        self.name = preset + ("_debug" if args.smoke else "")
        self.row: dict[str, Any] = {"preset": preset, "config": self.name, "sections": {}, "skipped": {}}
        self.path = args.out / f"{preset}.json"

    def save(self) -> None:
        self.path.write_text(json.dumps(self.row, indent=2, default=str))

    def section(self, name: str, need_s: float, fn: Callable[[], Any]) -> None:
        if not self.budget.allows(need_s):
            self.row["skipped"][name] = f"time budget: {self.budget.left():.0f}s left, needs ~{need_s:.0f}s"
            log(f"{self.preset}: skip {name} ({self.row['skipped'][name]})")
            self.save()
            return
        log(f"{self.preset}: {name} ...")
        t = time.perf_counter()
        try:
            self.row["sections"][name] = fn()
        except Exception as exc:  # a failing section is a result and must not cost the others
            self.row["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
            log(f"{self.preset}: {name} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
        self.row.setdefault("section_s", {})[name] = time.perf_counter() - t
        torch._dynamo.reset()
        if self.cuda:
            torch.cuda.empty_cache()
        self.save()

    # ------------------------------------------------------------------ helpers
    def compile(self, fn: Callable, mode: str | None = None, dynamic: bool | None = False) -> Callable:
        if self.args.backend != "inductor":
            return torch.compile(fn, backend=self.args.backend, dynamic=dynamic)
        return torch.compile(fn, mode=mode, dynamic=dynamic)

    def graphed(self, fn: Callable) -> Callable:
        """fn compiled with CUDA graphs (reduce-overhead), each call a new graph step; plain compile on CPU."""
        if not self.cuda:
            return self.compile(fn)
        compiled = self.compile(fn, mode="reduce-overhead")

        def step(x: torch.Tensor) -> Any:
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(x)

        return step

    def ms(self, fn: Callable[[], Any], iters: int | None = None) -> float:
        a = self.args
        return statistics.median(H.time_per_call_ms(fn, self.device, a.warmup, iters or a.iters, a.repeats))


# ---------------------------------------------------------------------------------------------- inference
def build_inference(run: Run) -> dict[str, Any]:
    m = H.tower_config(run.preset, run.args.smoke)
    torch.manual_seed(0)
    hf = H.build_hf(m)
    native = vtlab.build_stack(vtlab.compose_config(run.name, H.TOWER_ONLY)).tower
    H.hf_to_native(hf, native)
    tim = H.build_timm(m)
    H.native_to_timm(native, tim)
    ref32 = H.build_hf(m)
    ref32.load_state_dict(hf.state_dict())
    ref32.to(run.device).eval()
    for mod in (hf, native, tim):
        mod.to(device=run.device, dtype=run.dtype).eval()
    batch = run.args.batch or (2 if run.args.smoke else H.BATCH[run.preset])
    x = torch.randn(batch, m.num_channels, m.image_size, m.image_size, device=run.device, dtype=run.dtype)
    return {"m": m, "hf": hf, "native": native, "timm": tim, "ref32": ref32, "x": x, "batch": batch}


def set_levers(native: torch.nn.Module, *, patch_gemm: bool, fused_gelu: bool = True, attention: str = "auto") -> None:
    configure(native, attention, fused_gelu=fused_gelu)
    configure_fast_paths(native, patch_gemm=patch_gemm)


def numerics(run: Run, b: dict[str, Any]) -> dict[str, Any]:
    x2 = b["x"][:2]
    out: dict[str, Any] = {}
    with torch.inference_mode():
        ref = b["ref32"](pixel_values=x2.float()).last_hidden_state
        out["hf_bf16_vs_fp32"] = H.rel_err(b["hf"](pixel_values=x2).last_hidden_state, ref)
        out["timm_bf16_vs_fp32"] = H.rel_err(b["timm"].forward_features(x2), ref)
        for label, gemm in (("native_default_bf16_vs_fp32", False), ("native_levers_bf16_vs_fp32", True)):
            set_levers(b["native"], patch_gemm=gemm)
            out[label] = H.rel_err(b["native"](x2), ref)
    out["within_hf_rounding"] = out["native_levers_bf16_vs_fp32"] <= 1.05 * out["hf_bf16_vs_fp32"] + 1e-6
    return out


def sync_free(run: Run, fn: Callable[[], Any]) -> bool | str:
    """True when one call makes no host-device synchronisation (CUDA sync debug mode 'error')."""
    if not run.cuda:
        return "n/a (CPU)"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return True
    except RuntimeError as exc:
        return f"sync: {str(exc)[:200]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def throughput(run: Run, b: dict[str, Any]) -> dict[str, Any]:
    x, batch = b["x"], b["batch"]
    out: dict[str, Any] = {"batch": batch, "img_s": {}, "host_sync_free": {}, "kernels": {}}
    with torch.inference_mode():
        for name, fn in (("hf", lambda t: b["hf"](pixel_values=t).last_hidden_state), ("timm", b["timm"].forward_features)):
            f = run.compile(fn)
            out["img_s"][f"{name}_compile"] = batch / (run.ms(lambda: f(x)) * 1e-3)
            log(f"{run.preset}: {name} compile {out['img_s'][f'{name}_compile']:.0f} img/s")
            torch._dynamo.reset()
        for label, gemm, graphs in (("native_default", False, False), ("native_levers", True, True)):
            set_levers(b["native"], patch_gemm=gemm)
            f = run.graphed(b["native"]) if graphs else run.compile(b["native"])
            out["img_s"][label] = batch / (run.ms(lambda: f(x)) * 1e-3)
            out["fast_paths_" + label] = {**fast_paths(b["native"], run.device), "cudagraphs": graphs and run.cuda}
            out["host_sync_free"][label] = sync_free(run, lambda: f(x))
            out["kernels"][label] = H.kernel_breakdown(lambda: f(x), top=run.args.top_kernels)
            log(f"{run.preset}: {label} {out['img_s'][label]:.0f} img/s")
            torch._dynamo.reset()
    if run.args.residual_levers and "levers" not in run.args.sections.split(","):  # else the lever sweep times them
        residual_variants(run, b, out, "img_s", x)
    best = max(out["img_s"]["hf_compile"], out["img_s"]["timm_compile"])
    out["ratio_default"] = out["img_s"]["native_default"] / best
    out["ratio_levers"] = out["img_s"]["native_levers"] / best
    out["ratio"] = {k: v / best for k, v in out["img_s"].items() if not k.endswith("_compile") and isinstance(v, float)}
    return out


def autotune(run: Run, b: dict[str, Any]) -> dict[str, Any]:
    """Compiled throughput with inductor's `max-autotune-no-cudagraphs` on every side (Triton GEMM templates tuned
    per shape, epilogue fusion): transformers, timm and native with the levers; plus native levers under
    `max-autotune` (the same, CUDA graphs included). Autotuning one side only would not be a fair ratio."""
    x, batch = b["x"], b["batch"]
    tma = run.args.autotune_tma and run.cuda
    out: dict[str, Any] = {"batch": batch, "mode": "max-autotune-no-cudagraphs", "img_s": {}, "compile_s": {},
                           "persistent_tma_templates": tma}
    set_levers(b["native"], patch_gemm=True)
    sides = [("hf", lambda t: b["hf"](pixel_values=t).last_hidden_state, "max-autotune-no-cudagraphs"),
             ("timm", b["timm"].forward_features, "max-autotune-no-cudagraphs"),
             ("native_levers", b["native"], "max-autotune-no-cudagraphs"),
             ("native_levers_cudagraphs", b["native"], "max-autotune")]
    if tma:  # the GELU left to Inductor, so that it can fuse into a (persistent TMA) template's epilogue
        sides.insert(3, ("native_levers_unfused_gelu", b["native"], "max-autotune-no-cudagraphs"))
    tuning = torch._inductor.config.patch({"triton.enable_persistent_tma_matmul": True,
                                           "triton.enable_template_tma_store": True}) if tma else contextlib.nullcontext()
    with torch.inference_mode(), tuning:
        for name, fn, mode in sides:
            if not run.budget.allows(40 if run.cuda else 0):
                out["img_s"][name] = "skipped: time budget"
                continue
            set_levers(b["native"], patch_gemm=True, fused_gelu=name != "native_levers_unfused_gelu")
            f = run.compile(fn, mode=mode)
            t = time.perf_counter()
            call = (lambda: (torch.compiler.cudagraph_mark_step_begin(), f(x))[1]) if mode == "max-autotune" else (lambda: f(x))
            call()  # the tuning happens here
            out["compile_s"][name] = time.perf_counter() - t
            out["img_s"][name] = batch / (run.ms(call) * 1e-3)
            log(f"{run.preset}: {name} {mode} {out['img_s'][name]:.0f} img/s (compile {out['compile_s'][name]:.0f}s)")
            torch._dynamo.reset()
            run.row["sections"]["autotune"] = out  # a kill during the next side's tuning keeps this one
            run.save()
    set_levers(b["native"], patch_gemm=True)
    done = {k: v for k, v in out["img_s"].items() if isinstance(v, float)}
    if {"hf", "timm"} <= set(done):
        best = max(done["hf"], done["timm"])
        out["ratio"] = {k: v / best for k, v in done.items() if k.startswith("native")}
    return out


def autotune_bs1(run: Run, b: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 latency with inductor `max-autotune` (tuned Triton templates and CUDA graphs) on both sides:
    transformers and native with the levers, next to native under reduce-overhead."""
    x1 = b["x"][:1].clone()
    out: dict[str, Any] = {"mode": "max-autotune", "ms": {}, "compile_s": {}}
    set_levers(b["native"], patch_gemm=True)
    sides = (("hf", lambda t: b["hf"](pixel_values=t).last_hidden_state, "max-autotune"),
             ("native_levers", b["native"], "max-autotune"), ("native_levers_reduce_overhead", b["native"], "reduce-overhead"))
    with torch.inference_mode():
        for name, fn, mode in sides:
            if not run.budget.allows(40 if run.cuda else 0):
                out["ms"][name] = "skipped: time budget"
                continue
            f = run.compile(fn, mode=mode if run.cuda else None)
            t = time.perf_counter()

            def call(f: Callable = f) -> Any:
                if run.cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                return f(x1)

            call()
            out["compile_s"][name] = time.perf_counter() - t
            out["ms"][name] = run.ms(call, iters=run.args.iters * 5)
            log(f"{run.preset}: bs1 {name} {mode} {out['ms'][name]:.3f} ms (compile {out['compile_s'][name]:.0f}s)")
            torch._dynamo.reset()
            run.row["sections"]["autotune_bs1"] = out
            run.save()
    ms = out["ms"]
    if isinstance(ms.get("hf"), float):
        out["ratio"] = {k: v / ms["hf"] for k, v in ms.items() if k != "hf" and isinstance(v, float)}
    return out


def latency(run: Run, b: dict[str, Any]) -> dict[str, Any]:
    x1 = b["x"][:1].clone()
    out: dict[str, Any] = {"mode": "reduce-overhead" if run.cuda else "compile (CPU)", "ms": {}}
    with torch.inference_mode():
        for label, fn, gemm in (("hf", lambda t: b["hf"](pixel_values=t).last_hidden_state, None),
                                ("native_default", b["native"], False), ("native_levers", b["native"], True)):
            if gemm is not None:
                set_levers(b["native"], patch_gemm=gemm)
            f = run.graphed(fn)
            out["ms"][label] = run.ms(lambda: f(x1), iters=run.args.iters * 5)
            log(f"{run.preset}: bs1 {label} {out['ms'][label]:.3f} ms")
            torch._dynamo.reset()
        for setting in filter(None, run.args.latency_attention.split(",")):  # native levers, SDPA pinned per block
            label = f"native_levers@{setting}"
            if not run.budget.allows(20 if run.cuda else 0):
                out["ms"][label] = "skipped: time budget"
                continue
            set_levers(b["native"], patch_gemm=True, attention=setting)
            f = run.graphed(b["native"])
            out["ms"][label] = run.ms(lambda: f(x1), iters=run.args.iters * 5)
            log(f"{run.preset}: bs1 {label} {out['ms'][label]:.3f} ms")
            torch._dynamo.reset()
        set_levers(b["native"], patch_gemm=True)
    if run.args.triton_gelu:
        triton_gelu_variant(run, b, out, "ms", x1)
    if run.args.residual_levers:
        residual_variants(run, b, out, "ms", x1)
    out["ratio_default"] = out["ms"]["native_default"] / out["ms"]["hf"]
    out["ratio_levers"] = out["ms"]["native_levers"] / out["ms"]["hf"]
    out["ratio"] = {k: v / out["ms"]["hf"] for k, v in out["ms"].items() if k != "hf" and isinstance(v, float)}
    return out


def lever_sweep(run: Run, b: dict[str, Any]) -> dict[str, Any]:
    """Throughput of native with all inference levers, then with one lever changed at a time."""
    x, batch = b["x"], b["batch"]
    variants = [
        ("all_levers", dict(patch_gemm=True, fused_gelu=True, attention="auto"), True),
        ("no_patch_gemm", dict(patch_gemm=False, fused_gelu=True, attention="auto"), True),
        ("no_fused_gelu", dict(patch_gemm=True, fused_gelu=False, attention="auto"), True),
        ("no_cudagraphs", dict(patch_gemm=True, fused_gelu=True, attention="auto"), False),
        ("sdpa_cudnn", dict(patch_gemm=True, fused_gelu=True, attention="cudnn" if run.cuda else "auto"), True),
        ("sdpa_flash", dict(patch_gemm=True, fused_gelu=True, attention="flash"), True),
    ]
    out: dict[str, Any] = {"batch": batch, "img_s": {}}
    only = set(filter(None, run.args.lever_variants.split(",")))
    with torch.inference_mode():
        for label, levers, graphs in variants:
            if only and label not in only:
                continue
            if not run.budget.allows(25 if run.cuda else 0):
                out["img_s"][label] = "skipped: time budget"
                continue
            try:
                set_levers(b["native"], **levers)
                with pinned(levers["attention"]):
                    f = run.graphed(b["native"]) if graphs else run.compile(b["native"])
                    out["img_s"][label] = batch / (run.ms(lambda: f(x)) * 1e-3)
                log(f"{run.preset}: lever {label} {out['img_s'][label]:.0f} img/s")
            except Exception as exc:
                out["img_s"][label] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
            torch._dynamo.reset()
        set_levers(b["native"], patch_gemm=True)
        for granularity in GRANULARITIES:  # fp8 GEMMs (all levers, CUDA graphs), scales per row / per tensor
            label = f"fp8_{granularity}"
            if only and label not in only:
                continue
            if not (run.cuda and torch.cuda.get_device_capability(run.device) >= (8, 9) and run.budget.allows(25)):
                out["img_s"][label] = "skipped: needs CUDA sm89+ (or time budget)"
                continue
            try:
                fp8 = build_inference_fp8(run, b, granularity)
                f = run.graphed(fp8)
                out["img_s"][label] = batch / (run.ms(lambda: f(x)) * 1e-3)
                out.setdefault("fp8_rel_err_vs_bf16_compiled", {})[granularity] = H.rel_err(f(x)[:2], b["native"](x[:2]))
                out.setdefault("fp8_rel_err_vs_bf16", {})[granularity] = H.rel_err(fp8(x[:2]), b["native"](x[:2]))
                out.setdefault("fp8_rel_err_vs_fp32", {})[granularity] = H.rel_err(
                    fp8(x[:2]), b["ref32"](pixel_values=x[:2].float()).last_hidden_state)
                out.setdefault("fp8_kernels", {})[granularity] = H.kernel_breakdown(lambda: f(x), top=run.args.top_kernels)
                log(f"{run.preset}: {label} {out['img_s'][label]:.0f} img/s, rel err vs bf16 "
                    f"{out['fp8_rel_err_vs_bf16'][granularity]:.2e}")
            except Exception as exc:
                out["img_s"][label] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
            torch._dynamo.reset()
    if run.args.triton_gelu:
        triton_gelu_variant(run, b, out, "img_s", b["x"])
    if run.args.residual_levers:
        residual_variants(run, b, out, "img_s", b["x"])
    ok = {k: v for k, v in out["img_s"].items() if isinstance(v, float)}
    if "all_levers" in ok:
        out["relative_to_all_levers"] = {k: v / ok["all_levers"] for k, v in ok.items()}
    return out


def mlp_rows(native: torch.nn.Module, x: torch.Tensor) -> tuple[Any, int]:
    """The first tanh-GELU Mlp of the tower and the rows its fc1 sees for input x."""
    from vtlab.models.layers import Mlp

    mlp = next(m for m in native.modules() if isinstance(m, Mlp) and m.tanh_gelu)
    rows: list[int] = []
    hook = mlp.register_forward_pre_hook(lambda _m, args: rows.append(args[0].numel() // args[0].shape[-1]))
    with torch.inference_mode():
        native(x)
    hook.remove()
    return mlp, rows[0]


def triton_gelu_variant(run: Run, b: dict[str, Any], out: dict[str, Any], key: str, x: torch.Tensor) -> None:
    """The native tower with every lever and fc1 + GELU as triton_gemm.py's persistent kernel (tuned at this
    shape first), CUDA graphs; its error against the bf16 levers and fp32, and its kernel breakdown."""
    label = "triton_gelu"
    if not (run.cuda and run.budget.allows(60)):
        out[key][label] = "skipped: needs CUDA (or time budget)"
        return
    import triton_gemm as TG

    try:
        set_levers(b["native"], patch_gemm=True)
        mlp, rows = mlp_rows(b["native"], x)
        with torch.inference_mode():
            tuned = TG.tune_for(mlp.fc1, rows, torch.bfloat16, seconds=min(90.0, run.budget.left() / 3))
            out.setdefault("triton_gelu_tune", {})[key] = tuned
            best = tuned["best"]
            log(f"{run.preset}: triton fc1+GELU M={rows} best {best} vs cuBLASLt {tuned['cublaslt_epilogue_ms']:.4f} ms, "
                f"bias only {tuned['cublas_bias_only_ms']:.4f} ms")
            if best is None:
                out[key][label] = "error: no config built"
                return
            ref16 = b["native"](x[:2])
            TG.install(b["native"])
            f = run.graphed(b["native"])
            value = x.shape[0] / (run.ms(lambda: f(x)) * 1e-3) if key == "img_s" else run.ms(lambda: f(x), iters=run.args.iters * 5)
            out[key][label] = value
            errs = out.setdefault("triton_gelu_rel_err", {})
            errs[f"{key}_vs_bf16_levers"] = H.rel_err(b["native"](x[:2]), ref16)
            errs[f"{key}_vs_fp32"] = H.rel_err(b["native"](x[:2]), b["ref32"](pixel_values=x[:2].float()).last_hidden_state)
            errs[f"{key}_levers_vs_fp32"] = H.rel_err(ref16, b["ref32"](pixel_values=x[:2].float()).last_hidden_state)
            if key == "img_s":
                out["triton_gelu_kernels"] = H.kernel_breakdown(lambda: f(x), top=run.args.top_kernels)
        log(f"{run.preset}: {label} {key} {value:.3f}")
    except Exception as exc:
        out[key][label] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        TG.uninstall(b["native"])
        torch._dynamo.reset()


RESIDUAL_VARIANTS = ("residual_gemm", "residual_gemm_torch_ln")


def residual_variants(run: Run, b: dict[str, Any], out: dict[str, Any], key: str, x: torch.Tensor) -> None:
    """`task.residual_gemm` (vtlab.models.fastpaths: each residual add in the out-projection / fc2 GEMM, in place,
    the biases carried into the next LayerNorm) on top of every inference lever, CUDA graphs: with the Triton
    shifted LayerNorm (vtlab.models.kernels, the shipped path) and with torch's LayerNorm ops left to Inductor
    (`_torch_ln`). Each with its error against fp32 (2 images) and, at the throughput batch, its kernel table."""
    only = set(filter(None, run.args.residual_variants.split(",")))
    with torch.inference_mode():
        ref = b["ref32"](pixel_values=x[:2].float()).last_hidden_state
        set_levers(b["native"], patch_gemm=True)
        errs = out.setdefault("residual_rel_err_vs_fp32", {})
        errs[f"{key}_levers"] = H.rel_err(b["native"](x[:2]), ref)
    for label in RESIDUAL_VARIANTS:
        if only and label not in only:
            continue
        if not (run.cuda and run.budget.allows(30)):
            out[key][label] = "skipped: needs CUDA (or time budget)"
            continue
        try:
            set_levers(b["native"], patch_gemm=True)
            configure_fast_paths(b["native"], residual_gemm=True)
            b["native"].stream_norm_kernel = label == "residual_gemm"
            with torch.inference_mode():
                f = run.graphed(b["native"])
                value = x.shape[0] / (run.ms(lambda: f(x)) * 1e-3) if key == "img_s" else run.ms(lambda: f(x), iters=run.args.iters * 5)
                out[key][label] = value
                errs[f"{key}_{label}"] = H.rel_err(b["native"](x[:2]), ref)
                if key == "img_s":
                    out.setdefault("residual_kernels", {})[label] = H.kernel_breakdown(lambda: f(x), top=run.args.top_kernels)
            out.setdefault("residual_fast_paths", {})[label] = fast_paths(b["native"], run.device)
            log(f"{run.preset}: {label} {key} {value:.3f}")
        except Exception as exc:
            out[key][label] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            configure_fast_paths(b["native"], residual_gemm=False)
            b["native"].stream_norm_kernel = True
            torch._dynamo.reset()


def build_inference_fp8(run: Run, b: dict[str, Any], granularity: str) -> torch.nn.Module:
    import copy

    fp8 = copy.deepcopy(b["native"])
    fp8.linears_fp8 = convert_to_fp8(fp8, granularity)
    x = b["x"]
    calibration = torch.randn(8, *x.shape[1:], device=x.device, dtype=x.dtype, generator=torch.Generator(x.device).manual_seed(1))
    calibrate_fp8(fp8, [calibration])  # static scales from other random images than the timed / checked ones
    return fp8


# ---------------------------------------------------------------------------------------------- training
TRAIN_LEVERS = ("fused_gelu_train", "patch_gemm", "compile_optimizer")  # what --train-sweep can switch off


def train_setup(run: Run, tower: str, freeze: str, levers: bool, checkpointing: bool = False,
                compiled: bool = True, attention: str = "auto", off: tuple[str, ...] = (),
                frozen_bf16: bool = False, fused_norm: bool = False, gelu_kernel: bool = False) -> tuple[Any, Any]:
    """A classifier over the preset's tower (native or transformers) and its AdamW. `attention` is pinned inside
    every native attention layer (vtlab.models.sdpa.configure; the process-wide pin is the caller's); `levers`
    switches the training levers (TRAIN_LEVERS) on, except those named in `off`; `frozen_bf16` keeps the frozen
    tower in bf16 outside autocast (`task.frozen_tower_bf16`, either side; native: the residual stream too);
    `fused_norm` (native) each residual add + LayerNorm as one Triton kernel, forward and backward (`task.fused_norm`);
    `gelu_kernel` (native) fc1's bias + GELU as one kernel that also reduces the bias gradient (`task.gelu_kernel`)."""
    on = {k: levers and k not in off for k in TRAIN_LEVERS}
    import train_throughput as TT

    from vtlab.train.module import adamw

    # the post-LN last layer on both sides (transformers' tower has no taps; llavanext's Granite taps off)
    cfg = vtlab.to_config(vtlab.compose_config(run.name, ["model.feature_layers=null"]))
    torch.manual_seed(0)
    lit = TT.build_classifier("native" if tower == "native" else "hf", cfg, freeze, 4).to(run.device).train()
    if tower == "native":
        configure_attention(lit.stack, attention)
        # fused_gelu: the inference epilogue of the frozen tower's no-grad forward
        configure_fast_paths(lit.stack, patch_gemm=on["patch_gemm"], fused_gelu=levers,
                             fused_gelu_train=on["fused_gelu_train"],
                             activation_checkpointing=checkpointing, residual_gemm=levers, fused_norm=fused_norm,
                             gelu_kernel=gelu_kernel)
    if frozen_bf16:
        lit.stack.freeze_tower_in(torch.bfloat16)
    if compiled:
        lit.compile_stack(**({} if run.args.backend == "inductor" else {"backend": run.args.backend}))
    opt = adamw(lit.param_groups(), (0.9, 0.999),
                compiled=compiled and on["compile_optimizer"] and tower == "native" and run.args.backend == "inductor")
    return lit, opt


def train_step_fn(run: Run, lit: Any, opt: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    params = [p for g in opt.param_groups for p in g["params"]]

    def step() -> None:
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.cuda):
            loss, _ = lit.loss_and_logits((x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


KERNEL_KINDS = (  # (kind, substrings of the kernel name), first match wins: where a step's GPU time goes
    ("layernorm", ("residual_ln", "add_ln_", "shifted_ln")),  # vtlab.models.kernels' (before `bwd` files them under attention)
    ("gelu", ("bias_gelu_", "fused_gelu")),  # vtlab's bias_gelu_{fwd,bwd}, Inductor's GELU kernels (not cuBLAS's gelubias)
    ("copy", ("direct_copy_kernel", "catarraybatchedcopy")),  # ATen copies outside Inductor's kernels
    ("attention_backward", ("bprop", "bwd", "backward_kernel", "dgrad_kernel")),
    ("attention", ("sdpa", "fmha", "flash", "attention")),
    ("gemm", ("nvjet", "gemm", "cutlass", "xmma", "sm90_", "splitk", "cublas")),
    ("optimizer", ("multi_tensor", "adam", "foreach")),
    ("layernorm", ("layer_norm", "layernorm")),
)


def kernel_kinds(fn: Callable[[], Any], top: int) -> dict[str, Any]:
    """One call of `fn` under the profiler: its top kernels, the GPU time per kind (KERNEL_KINDS, else `other`:
    casts, adds, Inductor's other fusions) and the five longest kernels of each kind."""
    times = H.gpu_kernel_times(fn)
    kinds: dict[str, float] = {}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for name, ms, calls in times:  # longest first
        kind = next((k for k, subs in KERNEL_KINDS if any(x in name.lower() for x in subs)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
        if len(by_kind.setdefault(kind, [])) < 5:
            by_kind[kind].append({"kernel": name[:120], "ms": ms, "calls": calls})
    return {"total_ms": sum(ms for _, ms, _ in times), "ms_by_kind": kinds,
            "top": H.kernel_breakdown(fn, top, times), "top_by_kind": by_kind}


def training(run: Run) -> dict[str, Any]:
    """The training step under each SDPA setting of `--train-attention` (comma list): `X` pins X process-wide
    and in the native layers; `cudnn_safe` pins no_cudnn process-wide (so transformers runs no_cudnn) and lets each
    native layer take cuDNN where its key length is clean (vtlab.models.sdpa)."""
    a = run.args
    batch = 2 if a.smoke else a.train_batch
    backends = a.train_attention.split(",")
    variants: list[tuple[str, str, str, bool, tuple[str, ...]]] = [
        ("native_levers", "native", "none", True, ()), ("hf", "hf", "none", False, ()),
        ("native_levers", "native", "tower", True, ()), ("hf", "hf", "tower", False, ())]
    variants += [("native_levers", "native", "tower_bf16", True, ()), ("hf", "hf", "tower_bf16", False, ())] \
        if a.train_frozen_bf16 else []
    variants += [(f"native_no_{k}", "native", "none", True, tuple(k.split("+"))) for k in a.train_sweep.split(",") if k]
    variants += [("native_plain", "native", "none", False, ())] if a.train_extra else []
    variants += [("native_fused_norm", "native", "none", True, ("fused_gelu_train",)),  # the full-FT best + the kernel
                 ("native_fused_norm", "native", "tower", True, ()),
                 ("native_fused_norm_gelu_kernel", "native", "none", True, ("fused_gelu_train",))] \
        if a.train_fused_norm else []
    out: dict[str, Any] = {"batch": batch, "precision": "bf16 autocast" if run.cuda else "fp32",
                           "attention_backend": a.train_attention, "img_s": {}, "peak_mb": {}, "host_sync_free": {},
                           "grads_finite": {}, "kernels": {}}
    wanted = [k for k in a.train_variants.split(",") if k]
    for backend in backends:
        suffix = f"@{backend}" if len(backends) > 1 else ""
        keyed = [(f"{v[0]}_{'full' if v[2] == 'none' else 'frozen_' + v[2]}{suffix}", v) for v in variants]
        if wanted:  # only these, in the order given (what must be timed first goes first: the budget may run out)
            keyed = sorted(((k, v) for k, v in keyed if k in wanted), key=lambda kv: wanted.index(kv[0]))
        for key, (label, tower, freeze, levers, off) in keyed:
            if not run.budget.allows(45 if run.cuda else 0):
                out["img_s"][key] = "skipped: time budget"
                continue
            try:
                with pinned(backend):
                    lit, opt = train_setup(run, tower, freeze.removesuffix("_bf16"), levers, attention=backend,
                                           off=off, frozen_bf16=freeze.endswith("_bf16"),
                                           fused_norm=label.startswith("native_fused_norm"),
                                           gelu_kernel=label.endswith("gelu_kernel"))
                    size = lit.stack.input_size
                    x = torch.randn(batch, 3, size, size, device=run.device)
                    y = torch.randint(0, 4, (batch,), device=run.device)
                    step = train_step_fn(run, lit, opt, x, y)
                    if run.cuda:
                        torch.cuda.reset_peak_memory_stats()
                    ms = statistics.median(H.time_per_call_ms(step, run.device, a.train_warmup, a.train_steps, a.repeats))
                    out["img_s"][key] = batch / (ms * 1e-3)
                    out["peak_mb"][key] = torch.cuda.max_memory_allocated() / 2**20 if run.cuda else None
                    out["host_sync_free"][key] = sync_free(run, step)
                    if a.train_profile and freeze == "none":
                        out["kernels"][key] = kernel_kinds(step, a.top_kernels)
                    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.cuda):
                        loss, _ = lit.loss_and_logits((x, y))
                    loss.backward()
                    grads = [p.grad for p in lit.parameters() if p.grad is not None]
                    out["grads_finite"][key] = bool(torch.stack([g.isfinite().all() for g in grads]).all())
                log(f"{run.preset}: train {key} {out['img_s'][key]:.0f} img/s")
                del lit, opt, step
            except Exception as exc:
                out["img_s"][key] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                log(f"{run.preset}: train {key} FAILED {str(exc)[:200]}")
            torch._dynamo.reset()
            if run.cuda:
                torch.cuda.empty_cache()
    i = out["img_s"]
    for part in ("full", "frozen_tower", "frozen_tower_bf16"):
        for backend in backends:
            suffix = f"@{backend}" if len(backends) > 1 else ""
            nat = i.get(f"native_levers_{part}{suffix}")
            hfs = [v for k, v in i.items() if k.split("@")[0] == f"hf_{part}" and isinstance(v, float)]
            hf = i.get(f"hf_{part}{suffix}")
            if isinstance(nat, float) and isinstance(hf, float):
                out[f"ratio_{part}{suffix}"] = nat / hf  # vs transformers under the same process-wide pin
            if isinstance(nat, float) and hfs:
                out[f"ratio_{part}{suffix}_vs_fastest_hf"] = nat / max(hfs)
    # every native variant against transformers' step of the same kind (full / frozen tower) and SDPA setting
    out["vs_hf"] = {}
    for key, value in i.items():
        name, _, backend = key.partition("@")
        part = next((p for p in ("frozen_tower_bf16", "frozen_tower", "full") if name.endswith("_" + p)), None)
        hf = i.get(f"hf_{part}" + (f"@{backend}" if backend else ""))
        if name.startswith("native") and part and isinstance(value, float) and isinstance(hf, float):
            out["vs_hf"][key] = value / hf
    return out


def grad_numerics(run: Run) -> dict[str, Any]:
    """Relative L2 error of all gradients of one bf16-autocast training step (eager, 4 images) against the same
    model's fp32 step (SDPA math, no levers): native with the training levers under each `--train-attention`
    setting, and transformers under each, as the rounding yardstick."""
    import copy

    a = run.args
    out: dict[str, Any] = {"images": 4}
    for tower in ("native", "hf"):
        lit, _ = train_setup(run, tower, "none", False, compiled=False)
        size = lit.stack.input_size
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(4, 3, size, size, generator=g).to(run.device)
        y = torch.randint(0, 4, (4,), generator=g).to(run.device)

        def grads(model: Any, bf16: bool, x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16 and run.cuda):
                loss, _ = model.loss_and_logits((x, y))
            loss.backward()
            return torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])

        with pinned("math"):
            ref = grads(lit, bf16=False)
        for backend in a.train_attention.split(","):
            if tower == "hf" and backend == "cudnn_safe":
                continue
            model = copy.deepcopy(lit)
            if tower == "native":
                configure(model.stack, backend, fused_gelu=True)
                configure_fast_paths(model.stack, patch_gemm=True, fused_gelu_train=True)
            try:
                with pinned(backend):
                    gr = grads(model, bf16=True)
                out[f"{tower}{'_levers' if tower == 'native' else ''}@{backend}"] = {
                    "rel_err": H.rel_err(gr, ref), "finite": bool(gr.isfinite().all())}
            except Exception as exc:
                out[f"{tower}@{backend}"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            del model
        del lit
    return out


def _fits(run: Run, lit: Any, opt: Any, batch: int) -> bool:
    size = lit.stack.input_size
    try:
        x = torch.randn(batch, 3, size, size, device=run.device)
        y = torch.randint(0, 4, (batch,), device=run.device)
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(y, 0)
        train_step_fn(run, lit, opt, x, y)()
        if run.cuda:
            torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower() or "ALLOC_FAILED" in str(exc):
            return False
        raise
    finally:
        opt.zero_grad(set_to_none=True)
        if run.cuda:
            torch.cuda.empty_cache()


def max_batch(run: Run) -> dict[str, Any]:
    """Largest full-fine-tuning batch that fits: double from the training batch, then bisect (cap, probe limit)."""
    a = run.args
    cap = 8 if a.smoke else a.max_batch_cap
    out: dict[str, Any] = {"cap": cap, "largest": {}, "probes": {}}
    backend = a.train_attention.split(",")[0]
    out["attention_backend"] = backend
    with pinned(backend):
        variants = [("native_levers", "native", True, False), ("hf", "hf", False, False)]
        variants += [("native_levers_checkpointing", "native", True, True)] if a.train_extra else []
        for label, tower, levers, ckpt in variants:
            if not run.budget.allows(60 if run.cuda else 0):
                out["largest"][label] = "skipped: time budget"
                continue
            lit, opt = train_setup(run, tower, "none", levers, checkpointing=ckpt, attention=backend)
            lo, hi, probes = 0, None, []
            b = 2 if a.smoke else a.train_batch
            while b <= cap and len(probes) < a.max_batch_probes and run.budget.allows(10 if run.cuda else 0):
                ok = _fits(run, lit, opt, b)
                probes.append((b, ok))
                if ok:
                    lo = b
                    if hi is None:
                        b = min(2 * b, cap) if b < cap else cap + 1
                        continue
                else:
                    hi = b
                if hi is None or hi - lo <= max(1, lo // 16):
                    break
                b = (lo + hi) // 2
            out["largest"][label] = lo
            out["probes"][label] = probes
            out.setdefault("at_cap", {})[label] = lo >= cap
            log(f"{run.preset}: max batch {label} {lo} (probes {probes})")
            del lit, opt
            torch._dynamo.reset()
            if run.cuda:
                torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------- tiled images
def tiled(run: Run) -> dict[str, Any]:
    import numpy as np
    from hf_parity import copy_idefics3, copy_llava_next, tiny_llama_kwargs, vision_kwargs
    from PIL import Image

    from vtlab.families.llava_next import default_pinpoints

    h, w = TILED[run.preset]
    cfg = vtlab.to_config(vtlab.compose_config(run.name))
    m, s = cfg.model, cfg.model.image_size
    stack = vtlab.build(run.name).eval()
    torch.manual_seed(0)
    if run.preset == "smolvlm":
        from transformers import Idefics3Config
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
        from transformers.models.idefics3.modeling_idefics3 import Idefics3Model

        hf = Idefics3Model(Idefics3Config(vision_config=vision_kwargs(m), text_config=tiny_llama_kwargs(cfg.text_hidden),
                                          scale_factor=cfg.connector.factor)).eval()
        copy_idefics3(hf, stack)
        proc = Idefics3ImageProcessorPil(size={"longest_edge": 4 * s}, max_image_size={"longest_edge": s},
                                         do_image_splitting=True, resample=Image.Resampling.LANCZOS,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
        vision = hf.vision_model

        def hf_pre(img: Any) -> Any:
            return proc([[img]], return_tensors="pt", return_row_col_info=True)

        def hf_model(enc: Any) -> torch.Tensor:
            pv = enc.pixel_values.to(run.device, run.dtype)
            return hf.get_image_features(pv, enc.pixel_attention_mask.to(run.device)).pooler_output
    else:
        from transformers import LlavaNextConfig
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
        from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

        pinpoints = [list(p) for p in default_pinpoints(s)]
        hf = LlavaNextModel(LlavaNextConfig(
            vision_config=dict(model_type="siglip_vision_model", **vision_kwargs(m)),
            text_config=tiny_llama_kwargs(cfg.text_hidden), vision_feature_layer=list(m.feature_layers),
            vision_feature_select_strategy="full", image_grid_pinpoints=pinpoints, projector_hidden_act="gelu",
            multimodal_projector_bias=True, image_token_index=1)).eval()
        copy_llava_next(hf, stack)
        stack.image_newline.copy_(hf.image_newline.detach())
        proc = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                          image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        vision = hf.vision_tower

        def hf_pre(img: Any) -> Any:
            return proc([img], return_tensors="pt")

        def hf_model(enc: Any) -> torch.Tensor:
            pv = enc.pixel_values.to(run.device, run.dtype)
            return hf.get_image_features(pv, enc.image_sizes, vision_feature_select_strategy="full").pooler_output
    hf.set_attn_implementation("sdpa")
    hf.to(run.device, run.dtype)
    stack.to(run.device, run.dtype)
    configure(stack, "auto", fused_gelu=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out: dict[str, Any] = {"image_hw": [h, w], "plan": None, "ms": {}}
    plan = stack.plan(h, w)
    out["plan"] = {"frames": plan.frames, "tokens": plan.tokens}
    iters = 1 if run.args.smoke else max(3, run.args.iters // 2)

    def native_e2e() -> Any:
        return stack.encode_images([image])

    def hf_e2e() -> Any:
        return hf_model(hf_pre(image))

    with torch.inference_mode():
        a, r = native_e2e()[0], hf_e2e()
        r = r[0] if isinstance(r, (list, tuple)) else r
        out["rel_err_native_vs_hf"] = H.rel_err(a, r.reshape(a.shape)) if r.numel() == a.numel() else f"shapes {a.shape} vs {r.shape}"
        out["ms"]["native_preprocess"] = run.ms(lambda: stack.tiler.frames(image), iters)
        out["ms"]["hf_preprocess"] = run.ms(lambda: hf_pre(image), iters)
        out["ms"]["native_eager"] = run.ms(native_e2e, iters)
        out["ms"]["hf_eager"] = run.ms(hf_e2e, iters)
        if run.budget.allows(60 if run.cuda else 0):
            stack.tower.compile(**({} if run.args.backend == "inductor" else {"backend": run.args.backend}))
            vision.compile(**({} if run.args.backend == "inductor" else {"backend": run.args.backend}))
            out["ms"]["native_compiled_tower"] = run.ms(native_e2e, iters)
            out["ms"]["hf_compiled_tower"] = run.ms(hf_e2e, iters)
    out["ratio_eager"] = out["ms"]["native_eager"] / out["ms"]["hf_eager"]
    if "native_compiled_tower" in out["ms"]:
        out["ratio_compiled"] = out["ms"]["native_compiled_tower"] / out["ms"]["hf_compiled_tower"]
    out["gpu_preprocessing"] = "not implemented (PIL path only); resize_check: how close a GPU resize would be"
    out["resize_check"] = resize_check(run, image)
    log(f"{run.preset}: tiled {h}x{w}: {out['ms']}")
    return out


def resize_check(run: Run, image: Any) -> dict[str, Any]:
    """A 2x down-scale of the image with Pillow (BICUBIC, LANCZOS) vs torch's antialiased bicubic on the device:
    the uint8 difference a GPU preprocessing path would introduce, and the time of each."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from vtlab.families.pixels import resize

    arr = np.array(image)
    h2, w2 = arr.shape[0] // 2, arr.shape[1] // 2
    src = torch.from_numpy(arr).to(run.device).permute(2, 0, 1)[None].float()

    def gpu() -> torch.Tensor:
        return F.interpolate(src, size=(h2, w2), mode="bicubic", antialias=True).round().clamp(0, 255)

    out: dict[str, Any] = {"size": [h2, w2], "gpu_ms": run.ms(gpu, 3)}
    g = gpu()[0].permute(1, 2, 0).cpu()
    for name, rs in (("bicubic", Image.Resampling.BICUBIC), ("lanczos", Image.Resampling.LANCZOS)):
        pil = torch.from_numpy(resize(arr, h2, w2, rs)).float()
        d = (g - pil).abs()
        out[name] = {"max_abs_uint8": d.max().item(), "mean_abs_uint8": d.mean().item(),
                     "pil_ms": run.ms(lambda rs=rs: resize(arr, h2, w2, rs), 3)}
    return out


# ---------------------------------------------------------------------------------------------- driver
def meta(args: argparse.Namespace) -> dict[str, Any]:
    import timm
    import transformers

    from vtlab.models import kernels

    device = torch.device(args.device)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "timm": timm.__version__, "backend": args.backend, "smoke": args.smoke,
        "ln_launch_table": {f"{w}x{r}": list(v) for (w, r), v in kernels.LAUNCH_TABLE.items()},
        "method": "bf16, inference_mode, randn inputs, CUDA events, median of repeats x iters after warm-up",
    }


def run_preset(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(preset, args)
    run.row["meta"] = meta(args)
    run.row["meta"]["budget_s"] = args.budget_s
    run.row["meta"]["matmul_tflops"] = H.matmul_tflops(run.device) if not args.smoke else None
    if args.train_kernel_launch is not None:  # training_kernel_sweep.py's fastest launches at this preset's shapes
        import training_kernel_sweep

        run.row["meta"]["train_kernel_launch"] = training_kernel_sweep.load_choice(args.train_kernel_launch, preset)
    log(f"{preset}: start ({args.budget_s:.0f}s budget)")
    wanted = set(args.sections.split(","))
    inference = {"numerics", "throughput", "latency_bs1", "levers", "autotune", "autotune_bs1"}
    b = build_inference(run) if wanted & inference else {}  # four towers: skipped for training-only calls
    plan: list[tuple[str, float, Callable[[], Any], bool]] = [  # in order of priority
        ("numerics", 5, lambda: numerics(run, b), True),
        ("throughput", 60, lambda: throughput(run, b), True),
        ("latency_bs1", 40, lambda: latency(run, b), True),
        ("training", 90, lambda: training(run), preset in args.train_presets.split(",")),
        ("grad_numerics", 20, lambda: grad_numerics(run), preset in args.train_presets.split(",")),
        ("levers", 40, lambda: lever_sweep(run, b), preset in args.lever_presets.split(",")),
        ("tiled", 30, lambda: tiled(run), preset in TILED and preset in args.tiled_presets.split(",")),
        ("max_batch", 60, lambda: max_batch(run), preset in args.train_presets.split(",")),
        ("autotune", 120, lambda: autotune(run, b), True),  # not in the default --sections: minutes of tuning
        ("autotune_bs1", 90, lambda: autotune_bs1(run, b), True),  # likewise
    ]
    for name, need_s, fn, applies in plan:
        if applies and name in wanted:
            run.section(name, need_s, fn)
    log(f"{preset}: done")
    return run.row


def fmt(v: Any, spec: str = ".0f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else ("-" if v is None else str(v))


def tuned_table(title: str, unit: str, values: dict[str, Any], compile_s: dict[str, Any], spec: str,
                ratio: dict[str, float] | None, ratio_title: str) -> list[str]:
    """Markdown lines of one max-autotune section: a row per side (value, tuning seconds) and the ratios."""
    lines = ["", f"{title} ({unit}; compile s):", "", f"| side | {unit} | compile s |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(v, spec)} | {fmt(compile_s.get(k))} |" for k, v in values.items()]
    if ratio:
        lines.append(f"\n{ratio_title}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    return lines


def markdown(rows: list[dict[str, Any]]) -> str:
    m = next((r["meta"] for r in rows if "meta" in r), {})
    lines = [f"# Issue 16 levers — {m.get('device_name')} — {m.get('date')}", "",
             f"torch {m.get('torch')} (CUDA {m.get('cuda')}), transformers {m.get('transformers')}, timm {m.get('timm')}; "
             f"matmul 8192^3 bf16: {', '.join(fmt(r.get('meta', {}).get('matmul_tflops')) for r in rows)} TFLOP/s", "",
             "| preset | batch | HF compile img/s | timm compile img/s | native default | native levers | default / best | "
             "levers / best | HF bs1 ms | native default bs1 ms | native levers bs1 ms | levers / HF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r.get("sections", {}).get("throughput", {})
        lat = r.get("sections", {}).get("latency_bs1", {})
        i, ms = t.get("img_s", {}), lat.get("ms", {})
        lines.append(f"| {r['preset']} | {fmt(t.get('batch'))} | {fmt(i.get('hf_compile'))} | {fmt(i.get('timm_compile'))} | "
                     f"{fmt(i.get('native_default'))} | {fmt(i.get('native_levers'))} | {fmt(t.get('ratio_default'), '.2f')}x | "
                     f"**{fmt(t.get('ratio_levers'), '.2f')}x** | {fmt(ms.get('hf'), '.3f')} | {fmt(ms.get('native_default'), '.3f')} | "
                     f"{fmt(ms.get('native_levers'), '.3f')} | **{fmt(lat.get('ratio_levers'), '.2f')}x** |")
    lines += ["", "Numerics (relative L2 error vs transformers fp32, 2 images):", "",
              "| preset | HF bf16 | timm bf16 | native default bf16 | native levers bf16 | within HF's rounding |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        n = r.get("sections", {}).get("numerics", {})
        lines.append(f"| {r['preset']} | {fmt(n.get('hf_bf16_vs_fp32'), '.2e')} | {fmt(n.get('timm_bf16_vs_fp32'), '.2e')} | "
                     f"{fmt(n.get('native_default_bf16_vs_fp32'), '.2e')} | {fmt(n.get('native_levers_bf16_vs_fp32'), '.2e')} | "
                     f"{n.get('within_hf_rounding', '-')} |")
    for r in rows:
        tr = r.get("sections", {}).get("training")
        if tr and "img_s" in tr:
            lines += ["", f"Training step, {r['preset']}, batch {tr['batch']}, {tr['precision']}, compiled, "
                      f"SDPA {tr['attention_backend']} (img/s, peak MiB):", "", "| variant | img/s | peak MiB | host-sync free |",
                      "|---|---|---|---|"]
            for k, v in tr["img_s"].items():
                lines.append(f"| {k} | {fmt(v)} | {fmt(tr['peak_mb'].get(k))} | {tr['host_sync_free'].get(k, '-')} |")
            lines.append("\nnative levers / HF (same pin; cudnn_safe vs HF no_cudnn): " +
                         ", ".join(f"{k[6:]} {v:.2f}x" for k, v in tr.items() if k.startswith("ratio_")))
            lines.append("\nevery native variant / HF of the same kind: " +
                         ", ".join(f"{k} {v:.3f}x" for k, v in tr.get("vs_hf", {}).items()))
            for k, kk in tr.get("kernels", {}).items():
                kinds = ", ".join(f"{n} {ms:.1f}" for n, ms in sorted(kk["ms_by_kind"].items(), key=lambda t: -t[1]))
                lines.append(f"\nGPU time of one step, {k}: {kk['total_ms']:.1f} ms ({kinds} ms)")
            if tr.get("grads_finite"):
                lines.append("\nall gradients finite after the timed steps: " +
                             ", ".join(f"{k} {v}" for k, v in tr["grads_finite"].items()))
        gn = r.get("sections", {}).get("grad_numerics")
        if gn and "images" in gn:
            lines.append(f"\nGradients of one bf16 step ({gn['images']} images) vs the same model's fp32 step, relative L2: " +
                         ", ".join(f"{k} {fmt(v.get('rel_err'), '.2e')}" for k, v in gn.items() if isinstance(v, dict)))
        mb = r.get("sections", {}).get("max_batch")
        if mb and "largest" in mb:
            lines.append(f"\nLargest full-fine-tuning batch that fits (cap {mb['cap']}): " +
                         ", ".join(f"{k} {v}" for k, v in mb["largest"].items()))
        lv = r.get("sections", {}).get("levers")
        if lv and "img_s" in lv:
            lines += ["", f"Levers one at a time, {r['preset']} batch {lv['batch']} (img/s, relative to all levers):", "",
                      "| variant | img/s | vs all levers |", "|---|---|---|"]
            rel = lv.get("relative_to_all_levers", {})
            lines += [f"| {k} | {fmt(v)} | {fmt(rel.get(k), '.3f')} |" for k, v in lv["img_s"].items()]
            for g, err in lv.get("fp8_rel_err_vs_bf16", {}).items():
                lines.append(f"\nfp8 ({g} scales): relative error vs native bf16 {err:.2e}, vs fp32 "
                             f"{lv['fp8_rel_err_vs_fp32'][g]:.2e}")
        at = r.get("sections", {}).get("autotune")
        if at and "img_s" in at:
            lines += tuned_table(f"max-autotune on every side, {r['preset']} batch {at['batch']}", "img/s", at["img_s"],
                                 at["compile_s"], ".0f", at.get("ratio"), "native / best of HF, timm (all autotuned)")
        ab = r.get("sections", {}).get("autotune_bs1")
        if ab and "ms" in ab:
            lines += tuned_table(f"Batch-1 latency, max-autotune (CUDA graphs) on both sides, {r['preset']}", "ms",
                                 ab["ms"], ab["compile_s"], ".3f", ab.get("ratio"), "native / transformers")
        td = r.get("sections", {}).get("tiled")
        if td and "ms" in td:
            lines += ["", f"Tiled image {td['image_hw'][0]}x{td['image_hw'][1]}, {r['preset']} ({td['plan']['frames']} frames, "
                      f"{td['plan']['tokens']} tokens), per image ms (PIL preprocessing included):", "",
                      "| step | ms |", "|---|---|"]
            lines += [f"| {k} | {fmt(v, '.2f')} |" for k, v in td["ms"].items()]
            rc = td.get("resize_check", {})
            if "bicubic" in rc:
                lines.append(f"\nGPU resize (torch bicubic, antialias) vs Pillow, 2x down-scale to {rc['size']}: "
                             f"{rc['gpu_ms']:.2f} ms vs {rc['bicubic']['pil_ms']:.2f} ms (BICUBIC) / "
                             f"{rc['lanczos']['pil_ms']:.2f} ms (LANCZOS); |diff| max {rc['bicubic']['max_abs_uint8']:.0f} / "
                             f"{rc['lanczos']['max_abs_uint8']:.0f}, mean {rc['bicubic']['mean_abs_uint8']:.2f} / "
                             f"{rc['lanczos']['mean_abs_uint8']:.2f} uint8 levels")
            lines.append(f"\nnative / HF eager {fmt(td.get('ratio_eager'), '.2f')}x, compiled tower "
                         f"{fmt(td.get('ratio_compiled'), '.2f')}x; rel err native vs HF {fmt(td.get('rel_err_native_vs_hf'), '.1e')}")
        for label, ks in r.get("sections", {}).get("throughput", {}).get("kernels", {}).items():
            if ks:
                lines += ["", f"Top GPU kernels, {r['preset']} {label} (one call):", "", "| kernel | ms | share | calls |",
                          "|---|---|---|---|"]
                lines += [f"| `{k['kernel'][:90]}` | {k['ms']:.3f} | {k['share']:.1%} | {k['calls']} |" for k in ks]
        for name, why in r.get("skipped", {}).items():
            lines.append(f"\n{r['preset']}: {name} skipped ({why})")
        for name, sec in r.get("sections", {}).items():
            if isinstance(sec, dict) and "error" in sec:
                lines.append(f"\n{r['preset']}: {name} failed: {sec['error'][:300]}")
    return "\n".join(lines) + "\n"


def merge(args: argparse.Namespace, presets: list[str]) -> list[dict[str, Any]]:
    rows = []
    for p in presets:
        path = args.out / f"{p}.json"
        rows.append(json.loads(path.read_text()) if path.exists() else {"preset": p, "error": "no result written"})
    (args.out / "levers.json").write_text(json.dumps(rows, indent=2, default=str))
    (args.out / "levers.md").write_text(markdown(rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="siglip,smolvlm,llavanext")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=0, help="seconds for this preset (default: BUDGET_S, per preset)")
    ap.add_argument("--total-s", type=float, default=580, help="seconds for all presets together (subprocess mode)")
    ap.add_argument("--in-process", action="store_true", help="run the presets in this process (default: one subprocess each)")
    ap.add_argument("--batch", type=int, default=0, help="throughput batch (default 256/64/64)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--train-presets", default="smolvlm")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--train-warmup", type=int, default=2)
    ap.add_argument("--train-attention", default="no_cudnn",
                    help="SDPA for the training steps, a comma list (default no_cudnn, task=train's default until "
                         "2026-12-01); cudnn_safe: cuDNN in the native layers where the key length is clean")
    ap.add_argument("--train-profile", action="store_true", help="kernel breakdown (by kind) of one full-FT step")
    ap.add_argument("--train-variants", default="", help="only these training variants, in this order (keys as in the table), e.g. "
                    "hf_full,native_no_fused_gelu_train_full")
    ap.add_argument("--train-sweep", default="", help=f"training levers to switch off, one variant each (full FT), of {TRAIN_LEVERS}; "
                         "a+b switches off both")
    ap.add_argument("--latency-attention", default="", help="extra batch-1 variants: native levers with SDPA pinned to "
                    "each of these task.attention_backend settings (comma list), e.g. efficient,flash")
    ap.add_argument("--lever-variants", default="", help="only these lever-sweep variants (keys as in the table, e.g. "
                    "all_levers,fp8_row,fp8_tensor)")
    ap.add_argument("--autotune-tma", action="store_true", help="autotune section: Inductor's persistent TMA Triton "
                    "templates on every side, plus native with the GELU left to Inductor (fusable into a template)")
    ap.add_argument("--triton-gelu", action="store_true", help="levers and latency_bs1: one more variant, fc1 + GELU as "
                    "triton_gemm.py's persistent Triton kernel, tuned at the shape first")
    ap.add_argument("--residual-levers", action="store_true", help="levers (or throughput, without levers) and "
                    f"latency_bs1: the variants {RESIDUAL_VARIANTS} of task.residual_gemm")
    ap.add_argument("--residual-variants", default="", help="only these of the --residual-levers variants")
    ap.add_argument("--ln-table", type=Path, default=None, help="ln_launch_sweep.py's output: its `table` loaded into "
                    "vtlab.models.kernels.LAUNCH_TABLE (the shifted LayerNorm's launch per shape)")
    ap.add_argument("--max-batch-cap", type=int, default=1024)
    ap.add_argument("--max-batch-probes", type=int, default=6)
    ap.add_argument("--lever-presets", default="siglip")
    ap.add_argument("--tiled-presets", default="smolvlm,llavanext")
    ap.add_argument("--top-kernels", type=int, default=12)
    ap.add_argument("--sections", default="numerics,throughput,latency_bs1,training,grad_numerics,levers,tiled,max_batch",
                    help="which sections to run (in this order of priority; `autotune`, inductor max-autotune on "
                         "every side, only when named)")
    ap.add_argument("--train-frozen-bf16", action="store_true", help="training: the frozen-tower step once more "
                    "with the tower kept in bf16 outside autocast (task.frozen_tower_bf16), native and transformers")
    ap.add_argument("--train-fused-norm", action="store_true", help="training: native with `task.fused_norm` "
                    "(full FT without the fused GELU, and the frozen tower): native_fused_norm_{full,frozen_tower}; with "
                    "`task.gelu_kernel` too: native_fused_norm_gelu_kernel_full")
    ap.add_argument("--train-kernel-launch", type=Path, default=None, help="training_kernel_sweep.py's output: "
                    "vtlab.models.kernels' training launches (bias_gelu, add_ln_bwd) set to its choice for the preset")
    ap.add_argument("--train-extra", action="store_true",
                    help="also native without levers (training) and native with activation checkpointing (max batch)")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (the smoke test uses eager)")
    ap.add_argument("--smoke", action="store_true", help="CPU, debug presets, one iteration, dynamo's eager backend")
    args = ap.parse_args()
    if args.smoke:
        args.device, args.backend = "cpu", "eager"
        args.iters = args.repeats = args.warmup = args.train_steps = args.train_warmup = 1
        args.max_batch_probes, args.top_kernels = 3, 3
        if args.train_attention == "no_cudnn":  # the GPU default; on CPU PyTorch's own choice
            args.train_attention = "auto"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ln_table is not None:
        from vtlab.models import kernels

        for width, rows, per_program, warps in json.loads(args.ln_table.read_text())["table"]:
            kernels.LAUNCH_TABLE[(width, rows)] = (per_program, warps)
    presets = args.presets.split(",")
    if args.in_process or len(presets) == 1:
        for p in presets:
            budget = args.budget_s or (1e9 if args.smoke else BUDGET_S.get(p, 150))
            run_preset(p, argparse.Namespace(**{**vars(args), "budget_s": budget}))
    else:
        deadline = T0 + args.total_s  # the whole call: the device's 10-minute limit, less a margin
        for n, p in enumerate(presets):  # one process per preset: its own CUDA context, compile caches and budget
            left = deadline - time.perf_counter()
            later = sum(BUDGET_S.get(q, 150) for q in presets[n + 1 :])
            own = args.budget_s or BUDGET_S.get(p, 150)
            budget = min(left - 25, own if args.budget_s else max(own, left - 25 - later))  # time left over rolls on
            if budget < 30:
                log(f"{p}: not started, {left:.0f}s left of --total-s")
                continue
            cmd = [sys.executable, __file__, *sys.argv[1:], "--presets", p, "--budget-s", str(budget)]
            log(f"subprocess {p}: budget {budget:.0f}s")
            try:
                subprocess.run(cmd, timeout=max(30.0, min(budget + 30, deadline - time.perf_counter())), check=False)
            except subprocess.TimeoutExpired:
                log(f"{p}: killed (its partial results are kept)")
            merge(args, presets)  # levers.md is current after every preset
    rows = merge(args, presets)
    print(markdown(rows))


if __name__ == "__main__":
    main()
