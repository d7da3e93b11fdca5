"""The SigLIP family (`SiglipVisionModel`, `SiglipModel`; google/siglip-*), and the SigLIP tower's key maps that the
idefics3 and llava_next families reuse.

Mirrors transformers' `SiglipImageProcessorPil` (RGB, resize to exactly size x size with BICUBIC, x / 255,
(x - 0.5) / 0.5), `SiglipVisionConfig` (defaults for fields a config.json omits) and the checkpoint names of
`SiglipVisionModel` (hub / transformers v4: `vision_model.*`; v5 `save_pretrained`: no prefix) and of a whole
`SiglipModel` (`vision_model.*`; its text tower is ignored). HF q/k/v projections are fused into vtlab's
`attn.qkv` (rows q, k, v). A SigLIP tower reads other frame sizes with a bicubic-interpolated position table.
The tower's names are the tower module's (vtlab.models.towers.siglip `HF_RULES` / `HF_INVERSE`); `TOWER_RULES`
puts them under `tower.`, applied by `apply_rules` (vtlab.models.keymap).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vtlab.errors import CheckpointError
from vtlab.families.base import Family, Layout, apply_rules, register_family
from vtlab.families.lm_config import text_fields_of, with_text_defaults
from vtlab.families.pixels import ImageLike, normalise, resize, to_uint8_hwc
from vtlab.models.towers import siglip as siglip_tower

# the SigLIP tower's HF names (vtlab.models.towers.siglip), here relative to the stack (`tower.*`)
TOWER_RULES: list[tuple[str, str]] = [(pattern, "tower." + repl) for pattern, repl in siglip_tower.HF_RULES]
TOWER_INVERSE: list[tuple[str, str]] = siglip_tower.HF_INVERSE
QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
TOWER_ROOTS = ("embeddings.", "encoder.", "post_layernorm.", "head.")  # what a SigLIP tower's keys start with

# transformers' config-class defaults, used only for fields a config.json omits (SiglipVisionConfig)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6)
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
HF_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def hf_activation(name: str, where: str) -> str:
    if name not in ACTIVATIONS:
        raise CheckpointError(f"{where}: activation '{name}' is not supported (vtlab: gelu_pytorch_tanh, gelu)")
    return ACTIVATIONS[name]


def tower_fields(vision_config: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """The `model.*` architecture fields of a SigLIP-style vision config (omitted fields: `defaults`)."""
    v = {**defaults, **{k: val for k, val in vision_config.items() if val is not None}}
    return {
        "model.image_size": int(v["image_size"]),
        "model.patch_size": int(v["patch_size"]),
        "model.num_channels": int(v["num_channels"]),
        "model.hidden_size": int(v["hidden_size"]),
        "model.intermediate_size": int(v["intermediate_size"]),
        "model.num_layers": int(v["num_hidden_layers"]),
        "model.num_heads": int(v["num_attention_heads"]),
        "model.layer_norm_eps": float(v["layer_norm_eps"]),
        "model.hidden_act": hf_activation(v["hidden_act"], where),
    }


def text_fields(text_config: Any) -> dict[str, Any]:
    """`text` (every LM field it spells out, vtlab.text.lm) and `text_hidden` from a VLM's `text_config`."""
    if isinstance(text_config, dict):
        text_config = with_text_defaults(text_config)
    if not isinstance(text_config, dict) or not text_config.get("hidden_size"):
        return {}
    heads = text_config.get("num_attention_heads", 1)
    hidden = int(text_config["hidden_size"])
    text = dict(name=str(text_config.get("model_type", "text")), hidden_size=hidden,
                num_layers=int(text_config.get("num_hidden_layers", 1)),
                intermediate_size=int(text_config.get("intermediate_size", 4 * hidden)),
                num_heads=int(heads), num_kv_heads=int(text_config.get("num_key_value_heads") or heads),
                vocab_size=int(text_config.get("vocab_size", 0)))
    text.update({k: v for k, v in text_fields_of(text_config).items() if k not in ("name",) and k not in text})
    return {"text": text, "text_hidden": hidden}


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
        "hidden_act": HF_ACTIVATIONS[_v(m.hidden_act)],
        "layer_norm_eps": m.layer_norm_eps,
        "attention_dropout": 0.0,
    }


def text_config_stub(t: Any, hidden: int) -> dict[str, Any]:
    """A Llama `text_config` with the text target's sizes (no weights: transformers initialises the LM)."""
    heads = t.num_heads if hidden % max(t.num_heads, 1) == 0 else 1
    kv = t.num_kv_heads if heads % max(t.num_kv_heads, 1) == 0 else heads
    return {"model_type": "llama", "hidden_size": hidden, "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "vocab_size": max(int(t.vocab_size or 0), 32), "tie_word_embeddings": False}


class SiglipPreprocessor:
    """Square resize to `size` (BICUBIC by default), rescale, normalise (0.5 / 0.5): `SiglipImageProcessorPil`."""

    def __init__(self, size: int, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3,
                 resample: int = Image.Resampling.BICUBIC) -> None:
        self.size, self.mean, self.std, self.resample = size, tuple(mean), tuple(std), resample

    def __call__(self, image: ImageLike) -> torch.Tensor:
        """(3, size, size) float32."""
        return normalise(resize(to_uint8_hwc(image), self.size, self.size, self.resample), self.mean, self.std)


class SiglipTowerFamily(Family):
    """Shared by the families whose tower is a SigLIP ViT: its key maps and its q/k/v fusion."""

    qkv_pattern = QKV
    tower_roots = TOWER_ROOTS

    def tower_key_to_native(self, rel: str) -> str | None:
        return apply_rules(TOWER_RULES, rel)

    def tower_native_to_hf(self, rel: str) -> str | None:
        return apply_rules(TOWER_INVERSE, rel)

    def processor(self, size: int, longest_edge: int | None = None) -> Any:
        return SiglipPreprocessor(size, self.mean, self.std, self.resample)


class SiglipFamily(SiglipTowerFamily):
    name = "siglip"
    detect_order = 100  # a bare SigLIP tower: asked after the families whose checkpoints also hold one
    model_types = ("siglip_vision_model", "siglip")
    hub_prefix = "vision_model."

    def detect(self, keys: list[str], keyset: set[str], hf_prefix: str | None) -> Layout | None:
        if hf_prefix not in ("", "vision_model."):
            return None
        if any(k.startswith("text_model.") for k in keys):
            name = "SiglipModel (vision tower; text tower ignored)"
        elif hf_prefix:
            name = "SiglipVisionModel (hub / transformers v4: vision_model.*)"
        else:
            name = "SiglipVisionModel (transformers v5: no prefix)"
        return Layout(name, self.name, "hf", hf_prefix, "connector.",
                      carries_connector=any(k.startswith("connector.") for k in keys))

    def connector_key_to_native(self, rel: str) -> str | None:
        return "connector." + rel  # a vtlab export of a SigLIP stack keeps its connector under native names

    def connector_native_to_hf(self, name: str) -> str | None:
        return name

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        vc = conf if conf.get("model_type") == "siglip_vision_model" else (conf.get("vision_config") or {})
        out = {"model.family": self.name, "model.feature_layers": None}
        out.update(tower_fields(vc, VISION_DEFAULTS, where))
        return out  # SiglipModel's text tower is no LM: no text fields

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        m = cfg.model
        if m.feature_layers is not None:
            raise CheckpointError("export: a SiglipVisionModel has no feature_layers; use family llava_next for taps")
        conf = hf_vision_config(m, "siglip_vision_model")
        conf.update({"architectures": ["SiglipVisionModel"], "vision_use_head": bool(m.use_head)})
        return conf


SIGLIP = register_family(SiglipFamily())
