"""Pieces every task shares: the facts about the stack that head every record, whether an LM is built, metrics.

`stack_facts` is the one header of a run's record after `RunContext.header()` (grid, patches, tokens, widths,
the input image's tiling plan); profile, bench, train and eval all start from it. `publish` writes the record,
prints the one-line summary and the path, and logs the result to the tracker.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vtlab.config.validate import device_memory
from vtlab.families.tiler import ImagePlan
from vtlab.measure.stages import image_fields
from vtlab.models.stack import VisionStack
from vtlab.results.record import RunContext
from vtlab.text.lm import lm_param_count


def names_text_preset(overrides: Sequence[str]) -> bool:
    """Whether the command line chose a text preset (`text=NAME`, not a `text.field=` value)."""
    return any(o.lstrip("+~").split("=", 1)[0] == "text" for o in overrides)


def lm_wanted(cfg: Any, overrides: Sequence[str], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether profile / bench build the causal LM and measure its side (prefill, KV cache, TTFT).

    `text.lm=true|false` decides. Left at null (auto) it is true when the command line names a text preset
    (`python -m vtlab +model=smolvlm text=smollm2_135m`: asking for an LM by name) or gives `text.weights`,
    unless `text_hidden` overrides the preset's width (a width alone stays a width) or the LM's parameters would
    take more than half of the device's memory (e.g. `text=vicuna_7b` on a small CPU box: a stderr note, then the
    width-only closed form; `text.lm=true` builds it anyway). A model preset's own text stays a width."""
    text = cfg.text
    if text.lm is not None:
        return bool(text.lm)
    if text.weights:
        return True
    if not names_text_preset(overrides) or cfg.text_hidden != text.hidden_size:
        return False
    need = lm_param_count(text) * torch.empty((), dtype=dtype).element_size()
    have = device_memory(device)
    if need > have / 2:
        print(f"vtlab: note: text={text.name} is not built: its {lm_param_count(text) / 1e9:.2f}B parameters take "
              f"{need / 2**30:.1f} GiB, more than half of the {device.type} device's {have / 2**30:.1f} GiB; the LM "
              f"side is the closed form (text.lm=true builds it anyway)", file=sys.stderr)
        return False
    text.check_lm(cfg)
    return True


def stack_facts(stack: VisionStack, plan: ImagePlan | None = None) -> dict[str, Any]:
    """What the stack hands the LM and how it got there: grid, patches, tokens, widths, the image plan."""
    return {
        "grid": list(stack.grid),
        **image_fields(plan, stack.num_patches, stack.num_tokens),
        "tokens": plan.tokens if plan else stack.num_tokens,
        "text_hidden": stack.text_hidden,
        "feature_dim": stack.feature_dim,
        "weights": getattr(stack, "weights", "random init"),
    }


def classifier_facts(stack: VisionStack, num_classes: int, data_kind: Any) -> dict[str, Any]:
    """The header of a train / eval record: the stack's facts plus the classification problem."""
    return {
        "grid": list(stack.grid),
        "patches": stack.num_patches,
        "tokens": stack.num_tokens,
        "text_hidden": stack.text_hidden,
        "input_size": stack.input_size,
        "num_classes": num_classes,
        "chance_acc": 1.0 / num_classes,
        "data": str(data_kind),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def metric(metrics: dict[str, Any], *names: str) -> float | None:
    for name in names:
        if name in metrics:
            return float(metrics[name])
    return None


def publish(ctx: RunContext, tracker: Any, result: dict[str, Any], summary: str) -> Path:
    """Write `results.json` (header, result, config), print a one-line summary and the path, log to the tracker."""
    path = ctx.write_result(result)
    print(summary)
    print(f"results: {path}")
    tracker.log_result(result)
    return path
