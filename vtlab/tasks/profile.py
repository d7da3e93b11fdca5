"""`task=profile` (the default job): per-stage shapes, parameters, FLOPs, latency and peak memory.

Builds the stack (random weights unless `model.weights` is set), prints a table stage by stage
(image -> patch grid -> tower tokens x width -> connector tokens x text hidden), and writes the same
numbers to `results.json` in the run directory. With an input image size (`data.image_size=[H,W]`) the
image is planned with the model's tiling (SmolVLM split, LlavaNext anyres): the table gains the frames
and packed-token rows, FLOPs are per image (all frames), and the latency is that of `batch_size` images
whose frames go through the tower as one batch, split back and packed. FLOPs are counted with torch.utils.flop_counter and
checked against the closed form of performance.md section 2.
"""

from __future__ import annotations

from typing import Any

import torch

from vtlab.api import build_stack
from vtlab.costs import stage_costs
from vtlab.measure import (
    count_params,
    device_info,
    median,
    peak_memory_mb,
    percentile,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
    time_ms,
)
from vtlab.report import print_stage_table
from vtlab.run import RunContext
from vtlab.tiling.plan import image_size_of
from vtlab.tiling.stages import image_fields, image_stages
from vtlab.towers.kernels import configure_kernels


def profile_stack(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    device = resolve_device(cfg.task.device)
    dtype = resolve_dtype(cfg.task.dtype, device)
    torch.manual_seed(cfg.seed)
    stack = build_stack(cfg).to(device=device, dtype=dtype).eval()
    configure_kernels(stack, fused_gelu=cfg.task.fused_gelu)  # acts on CUDA inference only
    batch = cfg.task.batch_size
    size = image_size_of(cfg.data.image_size)
    plan = stack.plan(*size) if size else None
    frames = plan.frames if plan else 1
    pixels = torch.randn(stack.input_shape(batch * frames), device=device, dtype=dtype)
    grid = stack.grid

    costs = stage_costs(stack, pixels[:1] if plan else pixels)  # per frame
    with torch.inference_mode():
        feats = stack.tower(pixels) if plan else costs.features
        reset_peak_memory(device)
        if plan:
            plans = [plan] * batch
            tokens = stack.connector(feats, grid)
            total_ms = time_ms(lambda: stack.encode_frames(pixels, plans), device, cfg.task.warmup, cfg.task.repeats)
            pack_ms = time_ms(lambda: stack.pack(tokens, plans), device, 1, cfg.task.repeats)
        else:
            total_ms = time_ms(lambda: stack(pixels), device, cfg.task.warmup, cfg.task.repeats)
        tower_ms = time_ms(lambda: stack.tower(pixels), device, 1, cfg.task.repeats)
        conn_ms = time_ms(lambda: stack.connector(feats, grid), device, 1, cfg.task.repeats)
    peak, peak_kind = peak_memory_mb(device)

    stages = costs.stages
    stages[2].update(latency_ms=median(tower_ms))
    stages[3].update(latency_ms=median(conn_ms))
    if plan:
        stages = image_stages(stages, plan)
        stages[-1].update(latency_ms=median(pack_ms))
    return {
        "task": "profile",
        "status": "ok",
        "run_name": ctx.run_name,
        "model": ctx.model_choice,
        "factor": cfg.connector.factor,
        "grid": list(grid),
        **image_fields(plan, stack.num_patches, stack.num_tokens),
        "tokens": plan.tokens if plan else stack.num_tokens,
        "text_hidden": stack.text_hidden,
        "feature_dim": stack.feature_dim,
        "batch_size": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "stages": stages,
        "params": count_params(stack),
        "flops": costs.flops * frames,
        "flops_closed_form": costs.flops_closed_form * frames,
        "latency_ms": median(total_ms),
        "latency_ms_p90": percentile(total_ms, 90),
        "latency_ms_all": total_ms,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "device_info": device_info(device),
        "overrides": ctx.overrides,
    }


def run(ctx: RunContext, tracker) -> dict[str, Any]:
    result = profile_stack(ctx)
    path = ctx.write_json("results.json", result | {"config": ctx.config_dict()})
    print_stage_table(result)
    print(f"results: {path}")
    tracker.log_result(result)
    return result
