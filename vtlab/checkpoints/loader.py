"""Load a checkpoint into a `VisionStack`, all or nothing.

Mirrors `transformers`' `from_pretrained(strict)` checks, done up front: the whole native state dict is built
and compared with the stack (missing keys, unexpected keys, shapes) before a single tensor is copied, and only
then `load_state_dict(strict=True)` runs, so a failed load leaves the model exactly as it was. Values are checked
too: only floating tensors go into floating parameters, and NaN/inf values are refused.

Policies (documented in README "Real weights"):
- a MAP head in the checkpoint is skipped when the stack was built without one (`model.use_head=false`: the
  VLM presets; LlavaNext checkpoints always carry the unused SigLIP head);
- layouts that carry no connector (SiglipVisionModel from the hub, timm) leave the stack's connector as built;
- LlavaNext's `image_newline` (T,) has no module in the stack: it is kept as a persistent buffer
  `stack.image_newline` (so it moves with `.to()`, is saved in vtlab/Lightning checkpoints and is exported).
  Stacks with anyres tiling are built with one (N(0, 1/sqrt(T)), as LlavaNext initialises it); a checkpoint
  without one leaves it as built.
"""

from __future__ import annotations

from typing import Any

import torch

from vtlab.checkpoints.layouts import Layout, detect, native_to_hf, to_native
from vtlab.checkpoints.sources import Source, read_shapes, read_tensors, resolve
from vtlab.errors import CheckpointError
from vtlab.families import get_family

MAX_LISTED = 8


def _listed(items: list[str]) -> str:
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _ckpt_names(native: str, layout: Layout) -> str:
    """How a native key is spelled in the checkpoint's own layout (best effort, for messages)."""
    if layout.style == "hf" and layout.family:
        names = native_to_hf(native, layout.family)
        hub = get_family(layout.family).hub_prefix
        names = [layout.prefix + n[len(hub):] if n.startswith(hub) else n for n in names]
        return " / ".join(names)
    return native


def check_values(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> None:
    """Only floating tensors are cast into floating parameters (an int8, bool or complex tensor would be cast
    silently: quantised or foreign data), and every value must be finite (NaN/inf would propagate everywhere)."""
    wrong = [f"{k} ({v.dtype})" for k, v in tensors.items()
             if expected[k].is_floating_point() and not v.is_floating_point()]
    if wrong:
        raise CheckpointError(f"{where}: tensors of a non-floating dtype for floating parameters: {_listed(wrong)}; "
                              f"vtlab casts only between floating dtypes (dequantise the checkpoint first). Nothing was loaded.")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: NaN or infinite values in {_listed(bad)}; refused. Nothing was loaded.")


def inspect(path: str) -> tuple[Source, Layout, dict[str, tuple[int, ...]]]:
    """Resolve `path`, read tensor names and shapes, and recognise the layout (no tensor data is read)."""
    source = resolve(path)
    shapes = read_shapes(source)
    if not shapes:
        raise CheckpointError(f"checkpoint {path}: holds no tensors ({', '.join(map(str, source.files))})")
    return source, detect(list(shapes), path), shapes


def native_state(path: str) -> tuple[dict[str, torch.Tensor], Layout, Source, Any]:
    """Read a checkpoint and return its tensors under vtlab's native names."""
    source, layout, shapes = inspect(path)
    conv = to_native(layout, read_tensors(source))
    conv.present = set(shapes)
    return conv.tensors, layout, source, conv


def load_weights(stack: torch.nn.Module, path: str, cfg: Any = None) -> dict[str, Any]:
    """Load `path` into `stack` atomically; returns a small report (layout, counts, skipped parts)."""
    tensors, layout, source, conv = native_state(path)
    expected = stack.state_dict()
    skipped: list[str] = []
    has_head = any(k.startswith("tower.head.") for k in expected)
    if not has_head and any(k.startswith("tower.head.") for k in tensors):
        tensors = {k: v for k, v in tensors.items() if not k.startswith("tower.head.")}
        skipped.append("MAP head (the stack has none: model.use_head=false)")
    if not layout.carries_connector and not any(k.startswith("connector.") for k in tensors):
        for k, v in expected.items():
            if k.startswith("connector."):
                tensors[k] = v
        if any(k.startswith("connector.") for k in expected):
            skipped.append(f"connector (the {layout.name} layout has none; kept as built)")
    newline = tensors.pop("image_newline", None)
    if "image_newline" in expected and newline is not None:
        tensors["image_newline"] = newline
        newline = None
    elif "image_newline" in expected:  # anyres stacks are built with one; a tower-only checkpoint has none
        tensors["image_newline"] = expected["image_newline"]
        skipped.append(f"image_newline (the {layout.name} layout has none; kept as built)")

    missing = [k for k in expected if k not in tensors]
    unexpected = [conv.origin.get(k, k) for k in tensors if k not in expected] + conv.unexpected
    mismatched = [
        f"{conv.origin.get(k, k)}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}"
        for k, v in tensors.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems: list[str] = []
    where = f"checkpoint {path} (layout: {layout.describe()})"
    if missing:
        names: list[str] = []
        for k in missing:
            spelled = [n for n in _ckpt_names(k, layout).split(" / ") if n not in conv.present]
            names += spelled or [k]
        names = sorted(set(names + conv.incomplete))
        problems.append(f"missing keys ({len(names)}): {_listed(names)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listed(sorted(unexpected))}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {_listed(mismatched)}")
    if problems:
        hint = ""
        if unexpected or mismatched:
            hint = (" The checkpoint's architecture differs from the model's: use +model=hf model.weights=PATH to take "
                    "the architecture from the checkpoint, or pick the matching preset.")
        raise CheckpointError(f"{where} does not fit model '{getattr(getattr(cfg, 'model', None), 'name', '?')}': "
                              + "; ".join(problems) + "." + hint + " Nothing was loaded.")

    check_values(tensors, expected, where)
    stack.load_state_dict(tensors, strict=True)
    if newline is not None:  # a checkpoint's image_newline for a stack built without one (no anyres tiling)
        param = next(stack.parameters(), None)
        like = param if param is not None else newline
        stack.register_buffer("image_newline", newline.to(device=like.device, dtype=like.dtype))
    return {
        "layout": layout.name,
        "family": layout.family,
        "source": source.origin,
        "loaded": len(tensors),
        "ignored": conv.ignored,
        "skipped": skipped,
    }
