"""The LM side of a VLM on one GPU: prefill latency, KV cache and time to first token vs visual tokens.

What `python -m vtlab task=profile text.lm=true` measures per cell (vtlab.measure.lm_side), for
- smolvlm (SigLIP-B/16 at 512 + pixel unshuffle) + SmolLM2-135M at connector.factor 1 / 2 / 4 / 8 on one 512px
  frame (1024 / 256 / 64 / 16 visual tokens);
- llavanext (SigLIP-so400m taps + MLP, anyres) + Granite-3.1-2B at image sizes [384, 384] and [768, 1152].
Random weights (nothing downloaded), bf16, batch 1, `torch.inference_mode()`; the vision side compiled
(`VisionLanguageModel.compile_vision`, default mode) unless --no-compile. Per cell: visual / prompt tokens,
LM prefill latency (p50 of --repeats, after --warmup calls), its counted FLOPs and the closed form, KV-cache
bytes per token and MiB for the prompt, vision encode latency and TTFT (uint8 image in -> first token out).

GPU (about 3 minutes on an H200):  PYTHONPATH=. python experiments/lm_side/run.py --out $OUT
CPU smoke (the *_debug twins):    PYTHONPATH=. python experiments/lm_side/run.py --quick --device cpu --out /tmp/lm_side
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import vtlab
from vtlab.measure.lm_side import measure_lm_side, random_image
from vtlab.measure.timing import median, time_ms

FULL = [("smolvlm", ["text=smollm2_135m"], "connector.factor", [1, 2, 4, 8], None),
        ("llavanext", ["text=granite_2b"], "data.image_size", [[384, 384], [768, 1152]], None)]
QUICK = [("smolvlm_debug", [], "connector.factor", [1, 2, 4, 8], None),
         ("llavanext_debug", [], "data.image_size", [[66, 66], [132, 198]], None)]
PROMPT = "Describe this image in one sentence."


def build(preset: str, overrides: list[str], device: torch.device, compile_vision: bool) -> Any:
    torch.manual_seed(0)
    vlm = vtlab.build_vlm(preset, [*overrides, "logger=none"])  # random init on the CPU (Granite-2B: ~10 s)
    vlm = vlm.to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    return vlm.compile_vision() if compile_vision else vlm


def cell(vlm: Any, size: list[int] | None, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    image_size = tuple(size) if size else None
    t0 = time.perf_counter()
    out = measure_lm_side(vlm, image_size, PROMPT, device, warmup, repeats)
    fields = {k: v for k, v in out["fields"].items() if not k.endswith("_all")}
    image = random_image(image_size or (vlm.stack.input_size,) * 2)
    like = next(vlm.stack.parameters())
    with torch.inference_mode():
        if image_size is None:
            frame = vlm.stack.tiler.family.preprocess_frame(image, vlm.stack.input_size)[None]
            encode = lambda: vlm.stack(frame.to(device=like.device, dtype=like.dtype))  # noqa: E731
        else:
            encode = lambda: vlm.stack.encode_images([image])  # noqa: E731
        fields["vision_ms"] = median(time_ms(encode, device, warmup, repeats))
    fields["cell_s"] = time.perf_counter() - t0
    return fields


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = ["model", "lm", "setting", "visual_tokens", "prompt_tokens", "vision_ms", "lm_prefill_ms", "ttft_ms",
            "lm_prefill_flops_counted", "lm_prefill_flops_closed_form", "kv_cache_bytes_per_token", "kv_cache_mb"]
    lines = [f"# LM side: prefill, KV cache, TTFT ({meta['device_name']}, {meta['dtype']}, torch {meta['torch']}, "
             f"vision compiled: {meta['compile_vision']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:.3e}" if isinstance(v, int) and v > 10**9 else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="the *_debug presets (CPU smoke test)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for preset, base, key, values, _ in QUICK if args.quick else FULL:
        vlm = None
        for value in values:
            if key == "connector.factor" or vlm is None:  # the factor changes the connector: rebuild
                vlm = build(preset, [*base, f"{key}={value}"] if key == "connector.factor" else base, device,
                            args.compile)
            size = value if key == "data.image_size" else None
            row = {"model": preset, "lm": vlm.text.name, "setting": f"{key}={value}", "vision_compiled": args.compile}
            try:
                row.update(cell(vlm, size, device, args.warmup, args.repeats))
            except Exception as exc:  # a compiler failure is a result: record it, measure eager instead
                if not args.compile:
                    raise
                row["compile_error"] = f"{type(exc).__name__}: {exc}"[:500]
                torch._dynamo.reset()
                vlm = build(preset, [*base, f"{key}={value}"] if key == "connector.factor" else base, device, False)
                row["vision_compiled"] = False
                row.update(cell(vlm, size, device, args.warmup, args.repeats))
            rows.append(row)
            print(json.dumps(row), flush=True)
        del vlm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    meta = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "dtype": "bfloat16" if device.type == "cuda" else "float32", "torch": torch.__version__,
            "compile_vision": args.compile, "warmup": args.warmup, "repeats": args.repeats, "prompt": PROMPT,
            "wall_s": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "results.md").write_text(markdown(rows, meta))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
