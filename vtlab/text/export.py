"""Export a whole vision-language model (tower, connector, LM, tokenizer) as the owning transformers VLM's folder.

The vision stack is written by vtlab.checkpoints.export.export_hf in the family's hub layout; the LM's tensors go
under the family's hub names (`Family.lm_hub`), with the full `text_config` (vtlab.text.lm.hf_text_config) and the
image token id, so `from_pretrained` of `Idefics3ForConditionalGeneration` / `LlavaNextForConditionalGeneration` /
`LlavaForConditionalGeneration` (LLaVA-1.5) loads the folder and generates the same tokens (tests/test_vlm_parity.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vtlab.checkpoints.export import export_hf
from vtlab.errors import CheckpointError
from vtlab.families import FAMILIES, get_family
from vtlab.families.lm_config import hf_text_config


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


TEXT_KEYS = ("name", "hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads", "vocab_size",
             "model_type", "hidden_act", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
             "extra")


def export_vlm(vlm: torch.nn.Module, cfg: Any, out_dir: str | Path) -> Path:
    """Write a whole `VisionLanguageModel` (tower, connector, LM, tokenizer) as the owning transformers VLM's
    folder (`Idefics3ForConditionalGeneration`, `LlavaNextForConditionalGeneration`, `LlavaForConditionalGeneration`): the stack as `export_hf`
    writes it, the LM under the family's hub names, the full `text_config` and the image token id."""
    family = get_family(cfg.model.family)
    if family.lm_hub is None:
        valid = ", ".join(f.name for f in FAMILIES.values() if f.lm_hub is not None)
        raise CheckpointError(f"export: family {family.name} has no whole-VLM layout (valid: {valid})")
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
