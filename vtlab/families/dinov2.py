"""The DINOv2 family (`Dinov2Model`, `Dinov2WithRegistersModel`: facebook/dinov2-*, dinov2-with-registers-*).

Mirrors transformers' `BitImageProcessorPil` as the DINOv2 checkpoints configure it (shortest edge 256 with
BICUBIC, centre crop 224, ImageNet mean / std; for another frame size S the shortest edge is S * 256 / 224,
rounded), `Dinov2Config` / `Dinov2WithRegistersConfig` (defaults for omitted fields) and the checkpoint names
of both models (what `save_pretrained` writes and the hub holds: `attention.attention.{query,key,value}`,
`attention.output.dense`; and the v5 runtime names `attention.{q,k,v,o}_proj`), at the top level or under
`dinov2.` (`Dinov2ForImageClassification`, classifier ignored). The key maps are the tower module's own
(vtlab.models.towers.dinov2); the tower is `Dinov2Tower` (LayerScale, registers after the positions, its own
interpolation: antialiased bicubic with registers, plain bicubic without). The class and register tokens are
dropped before the connector unless `model.keep_prefix=true` (then only token-wise connectors fit).
The hub checkpoints' position table is 37x37 (image_size 518) and they run at 224: the presets say so with
`model.input_size: 224`.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch

from vtlab.errors import CheckpointError, ConfigError
from vtlab.families.base import Family, Layout, Mapped, map_tower_keys, register_family
from vtlab.families.pixels import ImageLike, to_uint8_hwc
from vtlab.models.towers import dinov2 as dinov2_tower
from vtlab.models.towers.common import IMAGENET_MEAN, IMAGENET_STD

HF_PATCH = "embeddings.patch_embeddings.projection.weight"
HF_CLS = "embeddings.cls_token"
_GROUP = re.compile(r"encoder\.layer\.(\d+)\.(?:attention\.(?:[qkv]_proj|attention\.(?:query|key|value))|"
                    r"mlp\.(?:gate|up)_proj)\.(weight|bias)")
RESIZE_RATIO = 256 / 224  # BitImageProcessor: shortest edge 256 for a 224 crop


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def _group(rel: str) -> str | None:
    m = _GROUP.fullmatch(rel)
    if m is None:
        return None
    what = "gu" if ".mlp." in rel else "qkv"
    return f"{m.group(1)}.{m.group(2)}.{what}"


class Dinov2Family(Family):
    name = "dinov2"
    detect_order = 6
    model_types = ("dinov2", "dinov2_with_registers")
    hub_prefix = ""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    activations = ("gelu",)
    own_fields = ("keep_prefix", "num_registers")

    # ------------------------------------------------------------------ tower / config
    def build_tower(self, model_cfg: Any) -> torch.nn.Module:
        m = model_cfg
        return dinov2_tower.Dinov2Tower(
            image_size=m.image_size, patch_size=m.patch_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
            num_heads=m.num_heads, mlp_ratio=m.intermediate_size / m.hidden_size, num_channels=m.num_channels,
            layer_norm_eps=m.layer_norm_eps, hidden_act=str(_v(m.hidden_act)), num_register_tokens=m.num_registers,
            feature_layers=None if m.feature_layers is None else list(m.feature_layers), keep_prefix=m.keep_prefix)

    def prefix_tokens(self, model_cfg: Any) -> int:
        return 1 + model_cfg.num_registers if model_cfg.keep_prefix else 0

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        m = cfg.model
        built = dinov2_tower.mlp_hidden_size(m.hidden_size, m.intermediate_size / m.hidden_size, False)
        if built != m.intermediate_size:
            raise ConfigError(f"model.intermediate_size={m.intermediate_size}: a DINOv2 MLP is "
                              f"int(hidden_size * mlp_ratio) wide, which gives {built} for hidden_size={m.hidden_size}")

    # ------------------------------------------------------------------ pixels
    def preprocess_frame(self, image: ImageLike, size: int) -> torch.Tensor:
        """`BitImageProcessorPil` (DINOv2 settings) for a `size` crop: (3, size, size) float32."""
        return dinov2_tower.dinov2_preprocess(to_uint8_hwc(image), round(size * RESIZE_RATIO), size,
                                              self.mean, self.std)

    def processor(self, size: int, longest_edge: int | None = None) -> Any:
        return partial(self.preprocess_frame, size=size)

    # ------------------------------------------------------------------ checkpoints
    def detect_keys(self, keys: list[str], keyset: set[str]) -> Layout | None:
        found = sorted((k[: -len(HF_PATCH)] for k in keys if k.endswith(HF_PATCH)), key=len)
        if not found or found[0] + HF_CLS not in keyset:
            return None
        p = found[0]
        model = "Dinov2WithRegistersModel" if p + "embeddings.register_tokens" in keyset else "Dinov2Model"
        where = f"under '{p}'" if p else "no prefix"
        return Layout(f"{model} ({where})", self.name, "hf", p, "connector.",
                      carries_connector=any(k.startswith("connector.") for k in keys))

    def convert(self, layout: Layout, tensors: dict[str, torch.Tensor]) -> Mapped:
        return map_tower_keys(layout, tensors, dinov2_tower.hf_to_native, _group, lambda rel: "connector." + rel)

    def export_state(self, state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
        """The names `save_pretrained` writes (legacy `attention.attention.query` ...); a connector keeps its names."""
        tower = {k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")}
        rest = {k: v for k, v in state.items() if not k.startswith("tower.")}
        return {**dinov2_tower.native_to_hf(tower, legacy=True), **rest}

    def native_names(self, name: str) -> list[str] | None:
        if not name.startswith("tower."):
            return None
        rel = name[len("tower."):]
        try:
            return list(dinov2_tower.native_to_hf({rel: torch.empty(3, 1, device="meta")}, legacy=True))
        except (KeyError, RuntimeError):
            return [name]

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        k = dinov2_tower.tower_kwargs_from_hf_config(conf)
        for key, ok in (("use_swiglu_ffn", False), ("qkv_bias", True)):
            if k[key] != ok:
                raise CheckpointError(f"{where}: {key}={k[key]} is not supported by vtlab's dinov2 family "
                                      f"(only {key}={ok}: the ViT-S/B/L checkpoints)")
        if k["hidden_act"] != "gelu":
            raise CheckpointError(f"{where}: hidden_act '{k['hidden_act']}' is not supported (dinov2: gelu)")
        return {
            "model.family": self.name,
            "model.image_size": int(k["image_size"]), "model.patch_size": int(k["patch_size"]),
            "model.num_channels": int(k["num_channels"]), "model.hidden_size": int(k["hidden_size"]),
            "model.intermediate_size": dinov2_tower.mlp_hidden_size(k["hidden_size"], k["mlp_ratio"], False),
            "model.num_layers": int(k["num_layers"]), "model.num_heads": int(k["num_heads"]),
            "model.layer_norm_eps": float(k["layer_norm_eps"]), "model.hidden_act": "gelu",
            "model.num_registers": int(k["num_register_tokens"]), "model.feature_layers": None,
        }

    def shape_fields(self, native: dict[str, tuple[int, ...]], width: int) -> dict[str, Any]:
        out: dict[str, Any] = {"model.num_registers": native["tower.reg_token"][1] if "tower.reg_token" in native else 0}
        pos = native.get("tower.pos_embed")
        if pos is not None:
            g = int(round((pos[0] - 1) ** 0.5))
            out["grid"] = g if g * g == pos[0] - 1 else None
        return out

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        m = cfg.model
        if m.feature_layers is not None:
            raise CheckpointError("export: a Dinov2Model has no feature_layers (its output is the normed last layer)")
        registers = m.num_registers > 0
        if m.intermediate_size % m.hidden_size:
            raise CheckpointError(f"export: Dinov2Config.mlp_ratio is an int; model.intermediate_size="
                                  f"{m.intermediate_size} is not a multiple of model.hidden_size={m.hidden_size}")
        conf: dict[str, Any] = {
            "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
            "model_type": "dinov2_with_registers" if registers else "dinov2",
            "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
            "mlp_ratio": m.intermediate_size // m.hidden_size, "image_size": m.image_size, "patch_size": m.patch_size,
            "num_channels": m.num_channels, "layer_norm_eps": m.layer_norm_eps, "hidden_act": "gelu",
            "qkv_bias": True, "use_swiglu_ffn": False, "layerscale_value": 1.0, "attention_probs_dropout_prob": 0.0,
            "hidden_dropout_prob": 0.0, "drop_path_rate": 0.0,
        }
        if registers:
            conf["num_register_tokens"] = m.num_registers
        return conf


DINOV2 = register_family(Dinov2Family())
