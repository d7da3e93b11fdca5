"""The Idefics2 family: a SigLIP tower with bucketed position ids, then the perceiver-resampler connector.

Upstream: transformers `models/idefics2/modeling_idefics2.py`. `Idefics2VisionTransformer` is SigLIP's ViT
whose `Idefics2VisionEmbeddings` bucket fractional patch coordinates into the position table (position_rule
`bucket`, as Idefics3); `Idefics2Connector` = SwiGLU `modality_projection` (to the text width, hidden = the
text model's intermediate size) + `Idefics2PerceiverResampler` (vtlab.models.connectors.perceiver: 64
latents, depth 3, 16 heads x 96, 4 kv heads, RMSNorm eps = the text model's `rms_norm_eps`).
`Idefics2Model.get_image_features` = tower -> connector, which this family's stack reproduces for unpadded
frames at the native size (the patch attention mask is then all ones). Padded images (the processor's
`do_pad` batch padding with a `pixel_attention_mask`) are not mirrored: vtlab feeds whole square frames.

Pixels: `Idefics2ImageProcessor` resizes to shortest edge 378 / longest edge 980 keeping the aspect ratio,
BILINEAR, ImageNet-standard mean / std 0.5; here one square frame of `model.image_size` (tiling `none`), which
equals the processor's output for square images of that size. Checkpoints: `Idefics2ForConditionalGeneration`
(`model.vision_model.*`, `model.connector.{modality_projection,perceiver_resampler}.*`) and a bare
`Idefics2Model` (no `model.`); config.json `Idefics2Config` (`vision_config`, `perceiver_config`,
`text_config`). The text model is ignored.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from PIL import Image

from vtlab.errors import CheckpointError
from vtlab.families.base import Layout, register_family
from vtlab.families.siglip import SiglipTowerFamily, hf_vision_config, text_config_stub, text_fields, tower_fields
from vtlab.models.connectors.perceiver import idefics2_to_native, native_to_idefics2

_KV = re.compile(r"perceiver_resampler\.layers\.(\d+)\.self_attn\.([kv])_proj\.weight")
_FUSED_KV = re.compile(r"connector\.layers\.(\d+)\.attn\.kv\.weight")
LATENTS = "perceiver_resampler.latents"


class Idefics2Family(SiglipTowerFamily):
    name = "idefics2"
    tiling = "none"
    position_rule = "bucket"
    model_types = ("idefics2",)
    hub_prefix = "model.vision_model."
    detect_order = 5  # before idefics3, which owns any other `model.vision_model.*` checkpoint
    resample = Image.Resampling.BILINEAR
    connector_fused_parts = ("k", "v")
    # transformers' Idefics2VisionConfig defaults, for fields a config.json omits
    vision_defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           num_channels=3, image_size=224, patch_size=32, hidden_act="gelu_pytorch_tanh",
                           layer_norm_eps=1e-6)

    def detect(self, keys: list[str], keyset: set[str], hf_prefix: str | None) -> Layout | None:
        for model in ("model.", ""):
            if hf_prefix == f"{model}vision_model." and f"{model}connector.{LATENTS}" in keyset:
                name = "Idefics2ForConditionalGeneration" if model else "Idefics2Model"
                return Layout(f"{name} ({hf_prefix}*)", self.name, "hf", hf_prefix, f"{model}connector.",
                              carries_connector=True)
        return None

    def connector_fused_key(self, rel: str) -> tuple[str, str] | None:
        m = _KV.fullmatch(rel)
        return (f"connector.layers.{m.group(1)}.attn.kv.weight", m.group(2)) if m else None

    def connector_key_to_native(self, rel: str) -> str | None:
        try:
            (native,) = idefics2_to_native({rel: None}, prefix="")  # type: ignore[dict-item]
        except KeyError:
            return None
        return f"connector.{native}"

    def connector_fused_to_hf(self, name: str) -> list[str] | None:
        m = _FUSED_KV.fullmatch(name)
        if not m:
            return None
        base = f"model.connector.perceiver_resampler.layers.{m.group(1)}.self_attn."
        return [f"{base}k_proj.weight", f"{base}v_proj.weight"]

    def connector_native_to_hf(self, name: str) -> str | None:
        if not name.startswith("connector.") or _FUSED_KV.fullmatch(name):
            return None
        try:
            (hf,) = native_to_idefics2({name[len("connector."):]: None}, prefix="model.connector.")  # type: ignore[dict-item]
        except KeyError:
            return None
        return hf

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        p, t = conf.get("perceiver_config") or {}, conf.get("text_config") or {}
        eps = p.get("rms_norm_eps") or t.get("rms_norm_eps") or 1e-6
        out: dict[str, Any] = {
            "model.family": self.name, "model.use_head": False, "model.feature_layers": None,
            "connector.kind": "perceiver", "connector.tokens": int(p.get("resampler_n_latents", 64)),
            "connector.depth": int(p.get("resampler_depth", 3)), "connector.num_heads": int(p.get("resampler_n_heads", 16)),
            "connector.head_dim": int(p.get("resampler_head_dim", 96)),
            "connector.num_kv_heads": int(p.get("num_key_value_heads", 4)), "connector.norm_eps": float(eps),
        }
        if t.get("intermediate_size"):
            out["connector.hidden_size"] = int(t["intermediate_size"])
        out.update(tower_fields(conf.get("vision_config") or {}, self.vision_defaults, where))
        out.update(text_fields(t))
        return out

    def shape_fields(self, native: dict[str, tuple[int, ...]], width: int) -> dict[str, Any]:
        if "connector.latents" not in native:
            return {}
        tokens, text = native["connector.latents"]
        out: dict[str, Any] = {"text_hidden": text, "connector.tokens": tokens}
        if "connector.proj.gate.weight" in native:
            out["connector.hidden_size"] = native["connector.proj.gate.weight"][0]
        return out

    def hf_defaults(self, arch: dict[str, Any]) -> dict[str, Any]:
        return {"connector.kind": "perceiver"}

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        m, c = cfg.model, cfg.connector
        kind = getattr(c.kind, "value", c.kind)
        if kind != "perceiver" or m.use_head or m.feature_layers is not None:
            raise CheckpointError(
                f"export: Idefics2 holds a perceiver connector, no MAP head and no feature taps; this stack has "
                f"connector.kind={kind}, use_head={m.use_head}, feature_layers={m.feature_layers}"
            )
        conn = stack.connector
        text = text_config_stub(cfg.text, conn.out_dim) | {"model_type": "mistral",
                                                           "intermediate_size": conn.proj_hidden,
                                                           "rms_norm_eps": c.norm_eps, "hidden_act": "silu"}
        attn = conn.layers[0].attn if len(conn.layers) else None
        perceiver = {"hidden_size": conn.out_dim, "resampler_n_latents": conn.tokens, "resampler_depth": len(conn.layers),
                     "resampler_n_heads": attn.num_heads if attn else c.num_heads,
                     "resampler_head_dim": attn.head_dim if attn else c.head_dim,
                     "num_key_value_heads": attn.num_kv_heads if attn else c.num_kv_heads,
                     "rms_norm_eps": c.norm_eps, "hidden_act": "silu"}
        return {"architectures": ["Idefics2ForConditionalGeneration"], "model_type": "idefics2",
                "vision_config": hf_vision_config(m, "idefics2_vision"), "perceiver_config": perceiver,
                "text_config": text}


IDEFICS2 = register_family(Idefics2Family())

__all__ = ["IDEFICS2", "Idefics2Family"]
