"""Export a `VisionStack` in Hugging Face layout: `model.safetensors` + `config.json`.

What `save_pretrained` writes for the owning model: the tensor names come from the family's hub layout
(vtlab.checkpoints.layouts.to_hf, through the family's key tables) and config.json from `Family.hf_config`
(SigLIP: `SiglipVisionModel`; Idefics3: `Idefics3ForConditionalGeneration`; LlavaNext:
`LlavaNextForConditionalGeneration`). The text model is not part of vtlab: `text_config` is a Llama stub with
the target's sizes (no weights), so `from_pretrained` initialises the LM randomly. A `"vtlab"` block in
config.json records the exact connector and text settings, so `load(export(x))` rebuilds the same stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import save

from vtlab.atomic import atomic_write, write_json_atomic
from vtlab.checkpoints.layouts import to_hf
from vtlab.errors import CheckpointError
from vtlab.families import get_family


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def hf_config(cfg: Any, stack: torch.nn.Module) -> dict[str, Any]:
    """The config.json for `cfg` in the owning model's format, with the `vtlab` block."""
    m, c = cfg.model, cfg.connector
    t = stack.connector.out_dim
    extra = {
        "model_name": m.name,
        "connector": {"kind": _v(c.kind), "factor": c.factor, "tokens": c.tokens, "hidden_size": c.hidden_size, "depth": c.depth,
                      "bias": c.bias, "act": _v(c.act)},
        "text": {"name": cfg.text.name, "hidden_size": t, "num_layers": cfg.text.num_layers,
                 "intermediate_size": cfg.text.intermediate_size, "num_heads": cfg.text.num_heads,
                 "num_kv_heads": cfg.text.num_kv_heads, "vocab_size": cfg.text.vocab_size},
    }
    conf = get_family(m.family).hf_config(cfg, stack, extra)
    conf["vtlab"] = extra
    return conf


EXPORT_FILES = ("model.safetensors", "config.json")


def export_hf(stack: torch.nn.Module, cfg: Any, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write `stack` to `out_dir` as `model.safetensors` + `config.json` in Hugging Face layout; returns the dir.

    A folder that already holds a checkpoint (either file, or any *.safetensors / *.bin / *.ckpt) is refused
    unless `overwrite=True`."""
    out = Path(out_dir)
    held = sorted(p.name for p in out.glob("*") if p.name in EXPORT_FILES or p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")) if out.is_dir() else []
    if held and not overwrite:
        raise CheckpointError(f"export: {out} already holds a checkpoint ({', '.join(held[:3])}); export into another "
                              f"folder, or pass overwrite=True to replace it")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"export: {out} is a file, not a folder")
    if isinstance(cfg, DictConfig | dict) or not hasattr(cfg, "model"):
        raise CheckpointError("export: pass the VTLabConfig the stack was built from (vtlab.make_config(...) or "
                              "vtlab.to_config(...))")
    conf = hf_config(cfg, stack)
    state = {k: v.detach().cpu() for k, v in stack.state_dict().items()}
    tensors = {k: v.clone() for k, v in to_hf(state, cfg.model.family, cfg).items()}
    out.mkdir(parents=True, exist_ok=True)
    data = save(tensors, metadata={"format": "pt"})
    atomic_write(out / "model.safetensors", lambda fh: fh.write(data), "checkpoint")
    write_json_atomic(out / "config.json", conf)
    return out
