"""Export a `VisionStack` in Hugging Face layout: `model.safetensors` + `config.json`.

What `save_pretrained` writes for the owning model: the tensor names come from the family's hub layout
(vtlab.checkpoints.layouts.to_hf, through the family's key tables) and config.json from `Family.hf_config`
(SigLIP: `SiglipVisionModel`; Idefics3: `Idefics3ForConditionalGeneration`; LlavaNext:
`LlavaNextForConditionalGeneration`). The text model is not part of vtlab: `text_config` is a Llama stub with
the target's sizes (no weights), so `from_pretrained` initialises the LM randomly. A `"vtlab"` block in
config.json records the exact connector and text settings, so `load(export(x))` rebuilds the same stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vtlab.checkpoints.layouts import to_hf
from vtlab.config.schema import VTLabConfig
from vtlab.errors import CheckpointError
from vtlab.families import get_family
from vtlab.text.lm import hf_text_config


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def hf_config(cfg: VTLabConfig, stack: torch.nn.Module) -> dict[str, Any]:
    """The config.json for `cfg` in the owning model's format, with the `vtlab` block."""
    m, c = cfg.model, cfg.connector
    t = stack.connector.out_dim
    extra = {
        "model_name": m.name,
        "connector": {"kind": _v(c.kind), "factor": c.factor, "hidden_size": c.hidden_size, "depth": c.depth,
                      "bias": c.bias, "act": _v(c.act)},
        "text": {"name": cfg.text.name, "hidden_size": t, "num_layers": cfg.text.num_layers,
                 "intermediate_size": cfg.text.intermediate_size, "num_heads": cfg.text.num_heads,
                 "num_kv_heads": cfg.text.num_kv_heads, "vocab_size": cfg.text.vocab_size},
    }
    conf = get_family(m.family).hf_config(cfg, stack, extra)
    conf["vtlab"] = extra
    return conf


def export_hf(stack: torch.nn.Module, cfg: VTLabConfig, out_dir: str | Path) -> Path:
    """Write `stack` to `out_dir` as `model.safetensors` + `config.json` in Hugging Face layout; returns the dir."""
    if not isinstance(cfg, VTLabConfig):
        raise CheckpointError("export: pass the VTLabConfig the stack was built from (vtlab.config(...) or "
                              "vtlab.to_config(...))")
    conf = hf_config(cfg, stack)
    state = {k: v.detach().cpu() for k, v in stack.state_dict().items()}
    tensors = {k: v.clone() for k, v in to_hf(state, cfg.model.family).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    return out


TEXT_KEYS = ("name", "hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads", "vocab_size",
             "model_type", "hidden_act", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
             "extra")


def export_vlm(vlm: torch.nn.Module, cfg: VTLabConfig, out_dir: str | Path) -> Path:
    """Write a whole `VisionLanguageModel` (tower, connector, LM, tokenizer) as the owning transformers VLM's
    folder (`Idefics3ForConditionalGeneration`, `LlavaNextForConditionalGeneration`): the stack as `export_hf`
    writes it, the LM under the family's hub names, the full `text_config` and the image token id."""
    family = get_family(cfg.model.family)
    if family.lm_hub is None:
        raise CheckpointError(f"export: family {family.name} has no whole-VLM layout (valid: idefics3, llava_next)")
    out = export_hf(vlm.stack, cfg, out_dir)
    conf = json.loads((out / "config.json").read_text())
    conf["text_config"] = hf_text_config(cfg.text)
    conf[family.image_token_key] = vlm.image_token_id
    conf["tie_word_embeddings"] = bool(cfg.text.tie_word_embeddings)
    conf["vtlab"]["text"] = {k: _v(getattr(cfg.text, k)) for k in TEXT_KEYS}
    conf["vtlab"]["text"]["extra"] = dict(cfg.text.extra or {})
    decoder, head = family.lm_hub
    tensors: dict[str, torch.Tensor] = {}
    for key, value in vlm.lm.state_dict().items():
        if key.startswith("lm_head.") and cfg.text.tie_word_embeddings:
            continue
        name = head + key[len("lm_head."):] if key.startswith("lm_head.") else decoder + key[len("model."):]
        tensors[name] = value.detach().cpu().clone()
    tensors.update(load_file(str(out / "model.safetensors")))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    vlm.tokenizer.save_pretrained(out)
    return out
