"""Architecture from a checkpoint: config.json fields plus what the tensor shapes say (reading only).

The config.json is read by the family that owns its `model_type` (`Family.read_hf_config`: transformers'
`SiglipVisionConfig`, `Idefics3Config`, `LlavaNextConfig`, ... with the upstream defaults for fields a file
leaves out). The weights are the truth for every width, depth, patch and grid; config.json adds what shapes
cannot say (heads, image size, eps, activation, feature layers). A `"vtlab"` block written by `export_hf`
restores the exact connector and text settings. vtlab.config.from_checkpoint turns this into a config
(`+model=hf`) or checks a preset against it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vtlab.checkpoints.layouts import Layout, to_native
from vtlab.checkpoints.loader import inspect
from vtlab.families import family_for_model_type, get_family


def _from_config(conf: dict, where: str) -> dict[str, Any]:
    """Flat architecture dict from a Hugging Face config.json of any registered family."""
    family = family_for_model_type(str(conf.get("model_type", "")))
    out = family.read_hf_config(conf, where) if family is not None else {}
    if not out:
        return {}
    extra = conf.get("vtlab")
    if isinstance(extra, dict):
        for k, val in (extra.get("connector") or {}).items():
            out[f"connector.{k}"] = val
        if extra.get("text"):
            out["text"] = dict(extra["text"])
            out["text_hidden"] = int(extra["text"]["hidden_size"])
        if extra.get("model_name"):
            out["name"] = extra["model_name"]
    return out


def _from_shapes(layout: Layout, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What the tensors themselves say (widths, depth, patch, grid, head, connector widths)."""
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    native = {k: tuple(t.shape) for k, t in to_native(layout, meta).tensors.items()}
    out: dict[str, Any] = {}
    pe = native.get("tower.patch_embed.weight")
    if pe is None or len(pe) != 4:
        return out
    d = pe[0]
    out.update({"model.hidden_size": d, "model.num_channels": pe[1], "model.patch_size": pe[2]})
    if "tower.pos_embed" in native:
        n = native["tower.pos_embed"][0]
        g = math.isqrt(n)
        if g * g == n:
            out["grid"] = g
    blocks = {int(k.split(".")[2]) for k in native if k.startswith("tower.blocks.")}
    if blocks:
        out["model.num_layers"] = max(blocks) + 1
    fc1 = native.get("tower.blocks.0.mlp.fc1.weight")
    if fc1:
        out["model.intermediate_size"] = fc1[0]
    out["has_head"] = any(k.startswith("tower.head.") for k in native)
    if layout.family is not None:
        out.update(get_family(layout.family).shape_fields(native, d))
    return out


def checkpoint_arch(path: str) -> dict[str, Any]:
    """Architecture read from `path`: config.json (if beside the weights) merged with the tensor shapes."""
    source, layout, shapes = inspect(path)
    conf = source.config()
    arch = _from_config(conf, f"checkpoint {path}: {source.config_path}") if conf else {}
    arch["layout"] = layout
    arch["config_json"] = str(source.config_path) if conf and arch.get("model.family") else None
    shape_info = _from_shapes(layout, shapes)
    for key in ("model.hidden_size", "model.num_channels", "model.patch_size", "model.num_layers",
                "model.intermediate_size", "text_hidden"):
        if key in shape_info:
            arch[key] = shape_info[key]
    if "connector.factor" in shape_info and "connector.factor" not in arch:
        arch["connector.factor"] = shape_info["connector.factor"]
    for key, value in shape_info.items():  # family fields only shapes tell (e.g. dinov2 register count)
        if key.startswith("model.") and key not in arch:
            arch[key] = value
    arch["grid"] = shape_info.get("grid")
    arch["has_head"] = shape_info.get("has_head", False)
    if layout.family and "model.family" not in arch:
        arch["model.family"] = layout.family
    return arch
