"""The LM side of a VLM, measured: prefill of the visual + prompt tokens, KV cache, time to first token.

Used by `task=profile` and `task=bench` when an LM is built (vtlab.tasks.common.lm_wanted). For one image (of `data.image_size`, or one frame
at the tower's input size) and `text.prompt`:
- prefill: the decoder (`lm.model`, no LM head) over the merged prompt embeddings; FLOPs counted with
  torch.utils.flop_counter and the closed form `lm_prefill_flops_closed_form` (the Llama-style decoder of
  vtlab.measure.flops with the attention SDPA really computes: the full T x T scores, as the counter counts
  them), latency measured (batch 1, with the KV cache written);
- KV cache: 2 x layers x kv_heads x head_dim x bytes per token, for the visual tokens and the whole prompt;
- time to first token: image in (uint8 pixels) -> processor frames -> tower + connector -> packing -> merged
  embeddings -> prefill -> argmax of the last logits, end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtlab.families.tiler import ImagePlan
from vtlab.measure.flops import count_flops, decoder_prefill_flops
from vtlab.measure.timing import median, percentile, time_ms
from vtlab.text.lm import kv_cache_bytes_per_token


def lm_prefill_flops_closed_form(text: Any, tokens: int) -> int:
    """`decoder_prefill_flops` + the causally masked half of the scores that SDPA computes anyway and the counter
    counts (2 T^2 d per layer). Norms, SiLU, rotary and softmax are not counted (as the vision closed forms)."""
    base = decoder_prefill_flops(tokens, text.hidden_size, text.num_layers, text.intermediate_size, text.num_heads,
                                 text.num_kv_heads)
    return base + text.num_layers * 2 * tokens * tokens * text.hidden_size


def random_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A random uint8 (H, W, 3) image (what a camera hands the processor)."""
    return np.random.default_rng(seed).integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)


def single_frame_plan(stack: Any) -> ImagePlan:
    """One frame at the tower's input size, no tiling (the vision rows' image when data.image_size is null)."""
    t = stack.num_tokens
    return ImagePlan((stack.input_size, stack.input_size), "none", 0, 0, 1, t, t, {})


def check_prompt(vlm: Any, image_size: tuple[int, int] | None, prompt: str) -> None:
    """The prompt of one image of `image_size` fits the tokenizer and the LM's context (ConfigError; no pixels)."""
    vlm.prompt_ids([vlm.stack.plan(*image_size) if image_size else single_frame_plan(vlm.stack)], prompt)


def measure_lm_side(vlm: Any, image_size: tuple[int, int] | None, prompt: str, device: torch.device, warmup: int,
                    repeats: int, budget_s: float | None = None, vision_warm: bool = False) -> dict[str, Any]:
    """Rows and fields of the LM side for one image of `image_size` (H, W) and `prompt` (see the module doc).
    `image_size` None: one frame at the tower's input size (as the vision rows), no tiling. The FLOP-counted
    decoder pass is the prefill's first warm-up call; `vision_warm` (the caller has just timed the tower and the
    connector on frames of this size) drops the TTFT warm-up, whose parts have then all run. `budget_s` caps
    each loop's repeats (`time_ms`); the counts run are in the fields."""
    stack, lm, text = vlm.stack, vlm.lm, vlm.text
    like = next(stack.parameters())
    side = stack.input_size
    image = random_image(image_size or (side, side))

    def encode() -> tuple[torch.Tensor, Any]:
        """image -> (visual tokens (n, T), its plan): the tiler's frames, or the family's single frame."""
        if image_size is None:
            frame = stack.tiler.family.preprocess_frame(image, side)[None].to(device=like.device, dtype=like.dtype)
            return stack(frame)[0], single_frame_plan(stack)
        frames, p = stack.tiler.frames(image)
        return vlm.visual_tokens(pixel_values=frames.to(device=like.device, dtype=like.dtype), plans=[p]), p

    with torch.inference_mode():
        visual, plan = encode()
        ids = vlm.prompt_ids([plan], prompt).to(device)
        total, visual_n = ids.shape[1], plan.tokens
        embeds = vlm.embed(ids, visual)
        flops = count_flops(lambda e: lm.model(inputs_embeds=e, use_cache=False), embeds)
        prefill_ms = time_ms(lambda: lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), device,
                             max(warmup - 1, 0), repeats, budget_s=budget_s)
        ttft_ms = time_ms(lambda: vlm.prefill(ids, encode()[0])[0].argmax(-1), device, 0 if vision_warm else warmup,
                          repeats, budget_s=budget_s)
    per_token = kv_cache_bytes_per_token(text, like.element_size())
    closed = lm_prefill_flops_closed_form(text, total)
    rows = [
        {"name": "prompt", "shape": [1, total], "detail": f"{visual_n} visual + {total - visual_n} text tokens "
                                                          f"({text.name}, context {vlm.context})"},
        {"name": "lm prefill", "shape": [1, total, text.hidden_size],
         "detail": f"{text.model_type} {text.num_layers} layers, {text.num_heads}/{text.num_kv_heads} heads, KV cache "
                   f"{per_token / 1024:.1f} KiB/token", "params": sum(p.numel() for p in lm.parameters()),
         "flops": flops, "flops_closed_form": closed, "latency_ms": median(prefill_ms)},
        {"name": "first token", "shape": [1, 1], "detail": "image in -> frames -> tower -> connector -> packed -> "
                                                           "prefill -> argmax (TTFT)", "latency_ms": median(ttft_ms)},
    ]
    return {
        "rows": rows,
        "fields": {
            "prompt_tokens": total, "visual_tokens": visual_n,
            "lm_prefill_flops_counted": flops, "lm_prefill_flops_closed_form": closed,
            "lm_prefill_ms": median(prefill_ms), "lm_prefill_ms_all": prefill_ms,
            "ttft_ms": median(ttft_ms), "ttft_ms_p90": percentile(ttft_ms, 90), "ttft_ms_all": ttft_ms,
            "lm_repeats_run": {"lm prefill": len(prefill_ms), "first token": len(ttft_ms)},
            "kv_cache_bytes_per_token": per_token, "kv_cache_mb_visual": per_token * visual_n / 2**20,
            "kv_cache_mb": per_token * total / 2**20, "lm_name": text.name,
        },
    }
