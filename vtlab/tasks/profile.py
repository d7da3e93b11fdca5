"""`task=profile` (the default job): per-stage shapes, parameters, FLOPs, latency and peak memory.

Builds the stack (random weights unless `model.weights` is set), prints a table stage by stage
(image -> patch grid -> tower tokens x width -> connector tokens x text hidden), and writes the same
numbers to `results.json` in the run directory. With an input image size (`data.image_size=[H,W]`) the
image is planned with the model's tiling (SmolVLM split, LlavaNext anyres): the table gains the frames
and packed-token rows, FLOPs are per image (all frames), and the latency is that of `batch_size` images
whose frames go through the tower as one batch, split back and packed. FLOPs are counted with
torch.utils.flop_counter in ONE pass (its tower output is reused; untiled, that pass is also the first
warm-up call) and reported beside the modules' closed forms (vtlab.measure.flops). Each timed call is
clocked stage by stage (tower, connector, packing: `time_stages`), so the rows and the total come from the
same calls; `task.time_budget_s` stops a loop's repeats once they took that long (at least one; the counts
run are reported), which binds only where a call takes seconds (a full-size tower on CPU). With an LM
(`text.lm=true`, or a text preset named on the command line: `vtlab.tasks.common.lm_wanted`) the causal LM is
built too (vtlab.build_vlm) and the table gains the prompt, LM prefill and first-token (TTFT) rows, the
results the KV-cache size (vtlab.measure.lm_side).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from vtlab.api import build_stack, build_vlm_from_config
from vtlab.config.schema import image_size_of
from vtlab.errors import ConfigError
from vtlab.measure.flops import stage_costs
from vtlab.measure.lm_side import check_prompt, measure_lm_side
from vtlab.measure.progress import StepProgress
from vtlab.measure.stages import image_stages
from vtlab.measure.timing import (
    count_params,
    device_info,
    median,
    peak_memory_mb,
    percentile,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
    spread,
    stage_sum_warning,
    time_stages,
)
from vtlab.models.fastpaths import configure_fast_paths
from vtlab.models.sdpa import configure_attention
from vtlab.results.record import RESULTS, RunContext
from vtlab.tasks.common import lm_wanted, stack_facts
from vtlab.tasks.console import print_stage_table


def check(ctx: RunContext) -> None:
    """Refuse an out_dir that already holds a results.json (outside a sweep: a sweep cell has its own folder)."""
    if not ctx.is_sweep and not ctx.cfg.overwrite and (ctx.out_dir / RESULTS).exists():
        raise ConfigError(f"out_dir={ctx.out_dir} already holds results.json of an earlier run, which this run would "
                          f"overwrite; choose another out_dir (or leave it unset for a fresh outputs/<date>/<time>/, or overwrite=true)")


def profile_stack(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    device = resolve_device(cfg.task.device)
    dtype = resolve_dtype(cfg.task.dtype, device)
    torch.manual_seed(cfg.seed)
    wanted = lm_wanted(cfg, ctx.overrides, device, dtype)
    vlm = build_vlm_from_config(cfg).to(device=device, dtype=dtype).eval() if wanted else None
    stack = vlm.stack if vlm is not None else build_stack(cfg).to(device=device, dtype=dtype).eval()
    configure_attention(stack)
    configure_fast_paths(stack, patch_gemm=cfg.task.patch_gemm, fused_gelu=cfg.task.fused_gelu,  # CUDA inference only
                         residual_gemm=cfg.task.residual_gemm)
    batch = cfg.task.batch_size
    size = image_size_of(cfg.data.image_size)
    if vlm is not None:
        check_prompt(vlm, size, cfg.text.prompt)  # tokenizer and context, before anything is timed
    plan = stack.plan(*size) if size else None
    frames = plan.frames if plan else 1
    pixels = torch.randn(stack.input_shape(batch * frames, plan), device=device, dtype=dtype)
    grid = stack.connector_grid_for(stack.tower.grid_for(pixels.shape[-2], pixels.shape[-1]))  # frames' own (naflex)
    warmup, repeats = (min(cfg.task.warmup, 1), min(cfg.task.repeats, 2)) if cfg.task.quick else (cfg.task.warmup,
                                                                                                   cfg.task.repeats)

    budget = cfg.task.time_budget_s
    # the FLOP-counted pass runs the timed call itself (same frames, no tiling): it is the first warm-up call
    counted_warmup = 0 if plan else min(warmup, 1)
    with StepProgress(f"profile {ctx.run_name}", 2) as progress:
        progress.step("FLOPs per stage (one counted pass" + (", also the first warm-up call)" if counted_warmup else ")"))
        costs = stage_costs(stack, pixels[:1] if plan else pixels)  # per frame
        reset_peak_memory(device)
        progress.step(f"latency per stage, {warmup} warm-up + up to {repeats} timed calls of batch {batch}"
                      + (f" (at most {budget:g} s of repeats)" if budget else ""))
        plans = [plan] * batch if plan else []
        pipeline: list[tuple[str, Any]] = [("tower", stack.features),
                                           ("connector", lambda feats: stack.connector(feats, grid))]
        if plan:
            pipeline.append(("packed", lambda tokens: stack.pack(tokens, plans)))
        with torch.inference_mode():
            clock = time_stages(pipeline, pixels, device, warmup - counted_warmup, repeats, budget)
    total_ms, tower_ms, conn_ms = clock["total"], clock["tower"], clock["connector"]
    peak, peak_kind = peak_memory_mb(device)

    warning = stage_sum_warning(median(total_ms), {"tower": median(tower_ms), "connector": median(conn_ms)})
    if warning:
        print(f"vtlab: warning: {warning}", file=sys.stderr)
    costs.row("tower").update(latency_ms=median(tower_ms))
    costs.row("connector").update(latency_ms=median(conn_ms))
    stages = costs.stages
    if plan:
        stages = image_stages(stages, plan)
        next(s for s in stages if s["name"] == "packed").update(latency_ms=median(clock["packed"]))
    lm_side: dict[str, Any] = {"rows": [], "fields": {}}
    if vlm is not None:  # the LM behind the connector, measured (vtlab.measure.lm_side); the vision side is warm
        lm_side = measure_lm_side(vlm, size, cfg.text.prompt, device, warmup, repeats, budget, vision_warm=True)
    return {
        **ctx.header(),
        **lm_side["fields"],
        **stack_facts(stack, plan),
        "batch_size": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "stages": stages + lm_side["rows"],
        "params": count_params(stack),
        "flops": costs.flops * frames,
        "flops_closed_form": costs.flops_closed_form * frames,
        "latency_ms": median(total_ms),
        "latency_ms_p90": percentile(total_ms, 90),
        "latency_ms_all": total_ms,
        "latency_spread": spread(total_ms),
        "repeats_asked": repeats,
        "repeats_run": len(total_ms),
        "time_budget_s": budget,
        "unstable": spread(total_ms)["unstable"],
        "stages_inconsistent": warning,
        "quick": cfg.task.quick,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "device_info": device_info(device),
        "overrides": ctx.overrides,
    }


def run(ctx: RunContext, tracker: Any) -> dict[str, Any]:
    result = profile_stack(ctx)
    path = ctx.write_result(result)
    print_stage_table(result)
    print(f"results: {path}")
    tracker.log_result(result)
    return result
