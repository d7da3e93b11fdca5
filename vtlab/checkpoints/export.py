"""Export a `VisionStack` in Hugging Face layout: `model.safetensors` + `config.json`.

Mirrors what `save_pretrained` writes for the owning model (towers-and-connectors.md (c.1), (c.2), (d)):
- siglip: `SiglipVisionModel` hub names (`vision_model.*`; transformers v5 strips the prefix on load); a vtlab
  connector, which SigLIP does not own, is kept under its native `connector.*` names (HF ignores them);
- idefics3: `Idefics3ForConditionalGeneration` names (`model.vision_model.*`,
  `model.connector.modality_projection.proj.weight`), `scale_factor` = connector factor;
- llava_next: `LlavaNextForConditionalGeneration` hub names (`vision_tower.vision_model.*`,
  `multi_modal_projector.linear_{1,2}.*`, `image_newline` when the stack holds one), `vision_feature_layer`,
  `vision_feature_select_strategy: full`.
The text model is not part of vtlab: `text_config` is a Llama stub with the target's sizes (no weights), so
`from_pretrained` initialises the LM randomly. A `"vtlab"` block in config.json records the exact connector
and text settings, so `load(export(x))` rebuilds the same stack, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vtlab.checkpoints.layouts import to_hf
from vtlab.errors import CheckpointError
from vtlab.tiling.plan import Tiler

_HF_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def hf_vision_config(m: Any, model_type: str = "siglip_vision_model") -> dict[str, Any]:
    """HF vision-config fields (`SiglipVisionConfig` / `Idefics3VisionConfig`) equal to a vtlab `ModelConfig`."""
    return {
        "model_type": model_type,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_channels": m.num_channels,
        "image_size": m.image_size,
        "patch_size": m.patch_size,
        "hidden_act": _HF_ACT[_v(m.hidden_act)],
        "layer_norm_eps": m.layer_norm_eps,
        "attention_dropout": 0.0,
    }


def _text_config(t: Any, hidden: int) -> dict[str, Any]:
    heads = t.num_heads if hidden % max(t.num_heads, 1) == 0 else 1
    kv = t.num_kv_heads if heads % max(t.num_kv_heads, 1) == 0 else heads
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": max(int(t.vocab_size or 0), 32),
        "tie_word_embeddings": False,
    }


def hf_config(cfg: Any, stack: torch.nn.Module) -> dict[str, Any]:
    """The config.json for `cfg` (a `VTLabConfig`) in the owning model's format."""
    m, c = cfg.model, cfg.connector
    family, kind = _v(m.family), _v(c.kind)
    t = stack.connector.out_dim
    extra = {
        "model_name": m.name,
        "connector": {"kind": kind, "factor": c.factor, "hidden_size": c.hidden_size, "depth": c.depth,
                      "bias": c.bias, "act": _v(c.act)},
        "text": {"name": cfg.text.name, "hidden_size": t, "num_layers": cfg.text.num_layers,
                 "intermediate_size": cfg.text.intermediate_size, "num_heads": cfg.text.num_heads,
                 "num_kv_heads": cfg.text.num_kv_heads, "vocab_size": cfg.text.vocab_size},
    }
    if family == "siglip":
        if m.feature_layers is not None:
            raise CheckpointError("export: a SiglipVisionModel has no feature_layers; use family llava_next for taps")
        conf = hf_vision_config(m, "siglip_vision_model")
        conf.update({"architectures": ["SiglipVisionModel"], "vision_use_head": bool(m.use_head)})
    elif family == "idefics3":
        if kind != "pixel_unshuffle" or m.use_head or m.feature_layers is not None:
            raise CheckpointError(
                f"export: Idefics3 holds a pixel-unshuffle connector (bias-free Linear), no MAP head and no feature "
                f"taps; this stack has connector.kind={kind}, use_head={m.use_head}, feature_layers={m.feature_layers}"
            )
        conf = {
            "architectures": ["Idefics3ForConditionalGeneration"],
            "model_type": "idefics3",
            "scale_factor": c.factor,
            "vision_config": hf_vision_config(m, "idefics3_vision"),
            "text_config": _text_config(cfg.text, t),
        }
    elif family == "llava_next":
        if kind != "mlp" or c.depth != 2 or c.factor != 1 or (c.hidden_size not in (None, t)):
            raise CheckpointError(
                f"export: LlavaNext's multi_modal_projector is Linear -> act -> Linear(T -> T) without unshuffle; "
                f"this stack has connector.kind={kind}, depth={c.depth}, factor={c.factor}, hidden_size={c.hidden_size}"
            )
        layers = list(m.feature_layers) if m.feature_layers is not None else [-1]
        vision = hf_vision_config(m, "siglip_vision_model")
        vision["vision_use_head"] = bool(m.use_head)
        conf = {
            "architectures": ["LlavaNextForConditionalGeneration"],
            "model_type": "llava_next",
            "vision_config": vision,
            "text_config": _text_config(cfg.text, t),
            "vision_feature_layer": layers if len(layers) > 1 else layers[0],
            "vision_feature_select_strategy": "full",
            "projector_hidden_act": _v(c.act),
            "multimodal_projector_bias": bool(c.bias),
            "image_grid_pinpoints": [list(p) for p in Tiler.for_config(cfg).pinpoints],  # model.pinpoints or Granite's
        }
    else:
        raise CheckpointError(f"export: unknown model.family={family}")
    conf["vtlab"] = extra
    return conf


def export_hf(stack: torch.nn.Module, cfg: Any, out_dir: str | Path) -> Path:
    """Write `stack` to `out_dir` as `model.safetensors` + `config.json` in Hugging Face layout; returns the dir."""
    if not hasattr(cfg, "model") or isinstance(getattr(cfg, "model", None), dict):
        raise CheckpointError("export: pass the VTLabConfig the stack was built from (vtlab.api.to_config)")
    from omegaconf import DictConfig

    if isinstance(cfg, DictConfig):
        from vtlab.api import to_config

        cfg = to_config(cfg)
    family = _v(cfg.model.family)
    conf = hf_config(cfg, stack)
    state = {k: v.detach().cpu() for k, v in stack.state_dict().items()}
    tensors = {k: v.clone() for k, v in to_hf(state, family).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    return out
