"""GPU timing of the issue-12 towers: vtlab native vs transformers, both compiled, in one process.

For clip_l14_336, dinov2_l14, dinov2_l14_reg and siglip2_so400m_naflex it builds the transformers model
(sdpa attention) with random weights, copies them into the native tower through the tower module's own
`hf_to_native`, checks both give the same output (relative error in the timing dtype), then measures
- throughput: images/s at batch 64 (env BATCH), bf16, `torch.inference_mode()`, regional `torch.compile`
  (every transformer block compiled, as the `torch.compile` regional-compilation recipe: identical blocks
  share one compiled graph, so compile time stays in the budget), CUDA-event timing, median of REPEATS
  repeats of ITERS calls after warm-up;
- batch-1 latency (ms): the same compiled model captured in a CUDA graph (`torch.cuda.graph`) and replayed
  (on CPU: plain calls, recorded as such).
Outputs compared: CLIP last_hidden_state (class token kept), DINOv2 last_hidden_state (class + registers
kept), SigLIP2 NaFlex last_hidden_state on packed (B, max_num_patches, 3*16*16) patches + mask + spatial shapes
(a 16x16 grid: the full budget).

Runs on the bare GPU box (torch + transformers, no hydra / omegaconf): only vtlab.models is imported, the
`vtlab` package __init__ (Hydra config) is bypassed. Architectures are spelled out below (equal to the
conf/model presets; tests/test_gpu_towers_script.py checks that).

    OUT=/tmp/gpu_towers PYTHONPATH=. python experiments/gpu_towers/run.py
    # CPU smoke test: QUICK=1 DEVICE=cpu COMPILE=0 OUT=/tmp/x PYTHONPATH=. python experiments/gpu_towers/run.py
Env: OUT (required), TOWERS (comma list, default all four), BATCH (64), ITERS (10), REPEATS (5),
LAT_ITERS (100), DEVICE (cuda), COMPILE (1), QUICK (0: tiny debug sizes), MAX_SECONDS (330: towers not
started by then are recorded as skipped, so the whole run stays under 6 minutes).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
if "vtlab" not in sys.modules:  # bypass vtlab/__init__ (Hydra): the towers need only torch
    _pkg = types.ModuleType("vtlab")
    _pkg.__path__ = [str(ROOT / "vtlab")]
    sys.modules["vtlab"] = _pkg

from vtlab.models.towers import clip, dinov2, siglip2  # noqa: E402

# the conf/model presets (real) and their *_debug twins (QUICK=1)
ARCH: dict[str, dict[str, Any]] = {
    "clip_l14_336": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_layers=24,
                         num_heads=16, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "dinov2_l14": dict(image_size=518, input_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                       num_layers=24, num_heads=16, layer_norm_eps=1e-6, num_registers=0),
    "dinov2_l14_reg": dict(image_size=518, input_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                           num_layers=24, num_heads=16, layer_norm_eps=1e-6, num_registers=4),
    "siglip2_so400m_naflex": dict(image_size=256, patch_size=16, hidden_size=1152, intermediate_size=4304,
                                  num_layers=27, num_heads=16, layer_norm_eps=1e-6, max_num_patches=256),
}
DEBUG: dict[str, dict[str, Any]] = {
    "clip_l14_336": dict(image_size=56, patch_size=7, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "dinov2_l14": dict(image_size=63, input_size=56, patch_size=7, hidden_size=32, intermediate_size=128,
                       num_layers=2, num_heads=4, layer_norm_eps=1e-6, num_registers=0),
    "dinov2_l14_reg": dict(image_size=63, input_size=56, patch_size=7, hidden_size=32, intermediate_size=128,
                           num_layers=2, num_heads=4, layer_norm_eps=1e-6, num_registers=2),
    "siglip2_so400m_naflex": dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2,
                                  num_heads=4, layer_norm_eps=1e-6, max_num_patches=16),
}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# ---------------------------------------------------------------------------------------------- models
def build_pair(name: str, a: dict[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module, Callable[[int], tuple]]:
    """(hf, native, inputs(batch) -> positional args), weights copied HF -> native."""
    if name.startswith("clip"):
        from transformers import CLIPVisionConfig, CLIPVisionModel

        hf = CLIPVisionModel(CLIPVisionConfig(
            image_size=a["image_size"], patch_size=a["patch_size"], hidden_size=a["hidden_size"],
            intermediate_size=a["intermediate_size"], num_hidden_layers=a["num_layers"],
            num_attention_heads=a["num_heads"], layer_norm_eps=a["layer_norm_eps"], hidden_act=a["hidden_act"],
            attn_implementation="sdpa"))
        native = clip.ClipTower(**clip.tower_kwargs_from_hf_config(hf.config.to_dict()), select_strategy="full")
        native.load_state_dict(clip.hf_to_native(hf.state_dict()), strict=True)
        size = a["image_size"]
        return hf, native, lambda b: (torch.randn(b, 3, size, size),)
    if name.startswith("dinov2"):
        from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        kw = dict(image_size=a["image_size"], patch_size=a["patch_size"], hidden_size=a["hidden_size"],
                  mlp_ratio=a["intermediate_size"] // a["hidden_size"], num_hidden_layers=a["num_layers"],
                  num_attention_heads=a["num_heads"], layer_norm_eps=a["layer_norm_eps"], attn_implementation="sdpa")
        if a["num_registers"]:
            hf = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw, num_register_tokens=a["num_registers"]))
        else:
            hf = Dinov2Model(Dinov2Config(**kw))
        native = dinov2.Dinov2Tower(**dinov2.tower_kwargs_from_hf_config(hf.config.to_dict()), keep_prefix=True)
        native.load_state_dict(dinov2.hf_to_native(hf.state_dict()), strict=True)
        size = a["input_size"]
        return hf, native, lambda b: (torch.randn(b, 3, size, size),)
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    length, p = a["max_num_patches"], a["patch_size"]
    hf = Siglip2VisionModel(Siglip2VisionConfig(
        patch_size=p, hidden_size=a["hidden_size"], intermediate_size=a["intermediate_size"],
        num_hidden_layers=a["num_layers"], num_attention_heads=a["num_heads"], num_patches=(a["image_size"] // p) ** 2,
        layer_norm_eps=a["layer_norm_eps"], vision_use_head=False, attn_implementation="sdpa"))
    native = siglip2.Siglip2Tower(**siglip2.tower_kwargs_from_hf_config(hf.config.to_dict(), use_head=False))
    native.load_state_dict(siglip2.hf_to_native(hf.state_dict(), keep_head=False), strict=True)
    g = a["image_size"] // p

    def inputs(b: int) -> tuple:
        return (torch.randn(b, length, 3 * p * p), torch.ones(b, length, dtype=torch.int32),
                torch.tensor([[g, g]] * b, dtype=torch.int64))

    return hf, native, inputs


def blocks_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (regional compilation units) of an HF model or a native tower."""
    if hasattr(model, "blocks"):
        return list(model.blocks)
    enc = model.vision_model.encoder if hasattr(model, "vision_model") else model.encoder
    return list(getattr(enc, "layers", None) or enc.layer)


def runner(model: torch.nn.Module, is_hf: bool, name: str) -> Callable[..., torch.Tensor]:
    if not is_hf:
        return model
    if name.startswith("siglip2"):
        return lambda x, m, s: model(pixel_values=x, pixel_attention_mask=m, spatial_shapes=s).last_hidden_state
    return lambda x: model(pixel_values=x).last_hidden_state


# ---------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call_ms(fn: Callable[[], object], device: torch.device, iters: int, repeats: int, warmup: int = 3) -> list[float]:
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
            torch.cuda.synchronize(device)
            out.append(start.elapsed_time(end) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out.append((time.perf_counter() - t0) * 1e3 / iters)
    return out


def graphed(fn: Callable[..., torch.Tensor], args: tuple, device: torch.device) -> Callable[[], object]:
    """A CUDA graph of `fn(*args)` (static inputs), replayed; on CPU the plain call."""
    if device.type != "cuda":
        return lambda: fn(*args)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*args)
    return graph.replay


def bench_tower(name: str, a: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    torch.manual_seed(0)
    hf, native, inputs = build_pair(name, a)
    hf, native = hf.to(device, dtype).eval(), native.to(device, dtype).eval()
    batch, iters, repeats, lat_iters = env_int("BATCH", 64), env_int("ITERS", 10), env_int("REPEATS", 5), env_int("LAT_ITERS", 100)
    compile_on = env_int("COMPILE", 1) == 1
    row: dict[str, Any] = {"tower": name, "batch": batch, "arch": a}

    def move(args: tuple) -> tuple:
        return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in args)

    big, one = move(inputs(batch)), move(inputs(1))
    with torch.inference_mode():
        ref, mine = runner(hf, True, name)(*one), native(*one)
        row["rel_err"] = ((mine.float() - ref.float()).norm() / ref.float().norm()).item()
        row["tokens"] = int(mine.shape[1])
        t0 = time.perf_counter()
        if compile_on:
            for model in (hf, native):
                for blk in blocks_of(model):
                    blk.compile(dynamic=False)
        for impl, model in (("hf", hf), ("native", native)):
            fn = runner(model, impl == "hf", name)
            ms = per_call_ms(lambda: fn(*big), device, iters, repeats)
            row[f"{impl}_img_s"] = batch / (statistics.median(ms) / 1e3)
            try:
                replay = graphed(fn, one, device)
                lat = per_call_ms(replay, device, lat_iters, repeats)
                row[f"{impl}_bs1_ms"] = statistics.median(lat)
            except Exception as err:  # noqa: BLE001  (a model that cannot be captured: recorded, not fatal)
                row[f"{impl}_bs1_ms"] = None
                row[f"{impl}_bs1_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        row["seconds_incl_compile"] = time.perf_counter() - t0
    row["native_over_hf_throughput"] = row["native_img_s"] / row["hf_img_s"]
    if row.get("hf_bs1_ms") and row.get("native_bs1_ms"):
        row["native_over_hf_latency"] = row["native_bs1_ms"] / row["hf_bs1_ms"]
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# GPU towers ({meta['date']}, {meta['device']})", "",
             f"torch {meta['torch']}, transformers {meta['transformers']}, dtype {meta['dtype']}, "
             f"compile {meta['compile']} (regional, per block), latency: {meta['latency_mode']}", "",
             "| tower | tokens | batch | HF img/s | native img/s | native/HF | HF bs1 ms | native bs1 ms | "
             "native/HF latency | rel err | s (incl. compile) |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x: Any, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['tower']} | skipped: {r['skipped']} |||||||||")
            continue
        lines.append(f"| {r['tower']} | {r['tokens']} | {r['batch']} | {r['hf_img_s']:.0f} | {r['native_img_s']:.0f} | "
                     f"{r['native_over_hf_throughput']:.2f} | {f(r.get('hf_bs1_ms'), '.3f')} | "
                     f"{f(r.get('native_bs1_ms'), '.3f')} | {f(r.get('native_over_hf_latency'), '.2f')} | "
                     f"{r['rel_err']:.1e} | {r['seconds_incl_compile']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(os.environ["OUT"])
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(os.environ.get("DEVICE", "cuda"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    table = DEBUG if env_int("QUICK", 0) else ARCH
    names = [n for n in os.environ.get("TOWERS", ",".join(ARCH)).split(",") if n]
    unknown = [n for n in names if n not in ARCH]
    if unknown:
        raise SystemExit(f"run.py: error: TOWERS has {unknown}; valid: {', '.join(ARCH)}")
    import transformers

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype),
            "compile": env_int("COMPILE", 1) == 1, "quick": env_int("QUICK", 0) == 1,
            "latency_mode": "CUDA graph replay" if device.type == "cuda" else "plain calls (CPU)"}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t0, rows = time.perf_counter(), []
    for name in names:
        if time.perf_counter() - t0 > env_int("MAX_SECONDS", 330):
            rows.append({"tower": name, "skipped": "time budget (MAX_SECONDS) spent"})
            continue
        print(f"[gpu_towers] {name} ...", flush=True)
        rows.append(bench_tower(name, table[name], device, dtype))
        print(json.dumps(rows[-1]), flush=True)
    meta["total_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "results.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
