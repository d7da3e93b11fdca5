"""The CLIP family (`CLIPVisionModel`, `CLIPModel`, `LlavaForConditionalGeneration`: openai/clip-*, LLaVA-1.5).

Mirrors transformers' `CLIPImageProcessorPil` (shortest edge -> frame with BICUBIC, centre crop, CLIP
mean / std), `CLIPVisionConfig` / `LlavaConfig` (defaults for omitted fields; `vision_feature_layer`,
`vision_feature_select_strategy`, `projector_hidden_act`) and the checkpoint names of `CLIPVisionModel`
(v5 `save_pretrained`: no prefix; hub / v4: `vision_model.*`), `CLIPModel` (`vision_model.*`, text tower
ignored), LLaVA-1.5 (hub: `vision_tower.vision_model.*` + `multi_modal_projector.linear_{1,2}`; v5 saved
`vision_tower.*`; v5 runtime `model.vision_tower.*`) and timm `vit_*_clip_*` (class token + `norm_pre`).
The key maps are the tower module's own (vtlab.models.towers.clip `hf_to_native` / `timm_to_native` /
`native_to_hf`); this module only says where the tower and the projector sit. A whole LLaVA-1.5 checkpoint's LM
(`language_model.model.*` + `language_model.lm_head.*` on the hub and in v5 `save_pretrained`;
`model.language_model.*` + `lm_head.*` in the v5 runtime state dict) is loaded and exported through the LM hooks
it shares with LlavaNext (vtlab.families.lm_config); its prompt is LLaVA's N x `<image>` (N = 576 for
ViT-L/14-336 with `LlavaModel.get_image_features`' class token dropped), `image_token_index` in config.json. The tower is
vtlab.models.towers.clip.ClipTower; `model.select_strategy=full` keeps the class token in front of the patch
tokens (`prefix_tokens` 1), which only token-wise connectors accept.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch

from vtlab.errors import CheckpointError
from vtlab.families.base import Family, Layout, Mapped, map_tower_keys, register_family
from vtlab.families.lm_config import LLAVA_LM_HUB, LLAVA_LM_PREFIXES
from vtlab.families.pixels import ImageLike, to_uint8_hwc
from vtlab.families.siglip import text_config_stub, text_fields
from vtlab.models.towers import clip as clip_tower
from vtlab.models.towers.common import CLIP_MEAN, CLIP_STD

HF_CLS = "embeddings.class_embedding"
HF_PRE_NORM = "pre_layrnorm.weight"
TIMM_KEYS = ("cls_token", "norm_pre.weight", "patch_embed.proj.weight")
_QKV_GROUP = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)")
_LLAVA = re.compile(r"((?:model\.)?)vision_tower\.(vision_model\.)?")
PROJECTOR = re.compile(r"linear_[12]\.(weight|bias)")
HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # HF hidden_act -> vtlab (and back: the same names)


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def _act(name: str, where: str) -> str:
    if name not in HF_ACTS:
        raise CheckpointError(f"{where}: CLIP hidden_act '{name}' is not supported (vtlab: quick_gelu, gelu)")
    return HF_ACTS[name]


def _group(rel: str) -> str | None:
    m = _QKV_GROUP.fullmatch(rel)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _connector_native(rel: str) -> str | None:
    return "connector.layers." + rel if PROJECTOR.fullmatch(rel) else None


def _is_llava_export(cfg: Any) -> bool:
    """A stack with feature taps exports as LlavaForConditionalGeneration, one without as CLIPVisionModel."""
    return cfg is not None and cfg.model.feature_layers is not None


class ClipFamily(Family):
    name = "clip"
    detect_order = 5  # its HF towers also hold `embeddings.patch_embedding.weight`: asked before SigLIP
    model_types = ("clip_vision_model", "clip", "llava")
    hub_prefix = ""  # CLIPVisionModel as v5 save_pretrained writes it
    mean, std = CLIP_MEAN, CLIP_STD
    activations = ("quick_gelu", "gelu")
    own_fields = ("select_strategy",)
    feature_layers_hint = "LLaVA-1.5: [-2]"
    # the LM of a whole LlavaForConditionalGeneration (vtlab.models.vlm): LLaVA-1.5's N `<image>` tokens (the
    # Family default prompt) and the LM where LlavaNext keeps it too; an export writes the hub names
    lm_prefixes = LLAVA_LM_PREFIXES
    lm_hub = LLAVA_LM_HUB

    # ------------------------------------------------------------------ tower / config
    def build_tower(self, model_cfg: Any) -> torch.nn.Module:
        m = model_cfg
        return clip_tower.ClipTower(
            image_size=m.image_size, patch_size=m.patch_size, hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size, num_layers=m.num_layers, num_heads=m.num_heads,
            num_channels=m.num_channels, layer_norm_eps=m.layer_norm_eps, hidden_act=str(_v(m.hidden_act)),
            feature_layers=None if m.feature_layers is None else list(m.feature_layers),
            select_strategy=str(_v(m.select_strategy)))

    def prefix_tokens(self, model_cfg: Any) -> int:
        return 1 if str(_v(model_cfg.select_strategy)) == "full" else 0

    # ------------------------------------------------------------------ pixels
    def preprocess_frame(self, image: ImageLike, size: int) -> torch.Tensor:
        """`CLIPImageProcessorPil` with shortest_edge = crop = `size`: (3, size, size) float32."""
        return clip_tower.clip_preprocess(to_uint8_hwc(image), size, size, self.mean, self.std)

    def processor(self, size: int, longest_edge: int | None = None) -> Any:
        return partial(self.preprocess_frame, size=size)

    # ------------------------------------------------------------------ checkpoints
    def detect_keys(self, keys: list[str], keyset: set[str]) -> Layout | None:
        hf = sorted((k[: -len(HF_CLS)] for k in keys if k.endswith(HF_CLS) and k[: -len(HF_CLS)] + HF_PRE_NORM in keyset),
                    key=len)
        if hf:
            return self._hf_layout(hf[0], keys, keyset)
        timm = [k[: -len("cls_token")] for k in keys if k.endswith("cls_token")]
        for p in sorted(timm, key=len):
            if all(p + k in keyset for k in TIMM_KEYS):
                return Layout("timm vit_*_clip_* (class token, norm_pre)", self.name, "timm", p)
        return None

    def _hf_layout(self, p: str, keys: list[str], keyset: set[str]) -> Layout:
        if p == "":
            return Layout("CLIPVisionModel (transformers v5: no prefix)", self.name, "hf", "", "connector.",
                          carries_connector=any(k.startswith("connector.") for k in keys))
        if p == "vision_model.":
            name = ("CLIPModel (vision tower; text tower ignored)" if any(k.startswith("text_model.") for k in keys)
                    else "CLIPVisionModel (hub / transformers v4: vision_model.*)")
            return Layout(name, self.name, "hf", p, "connector.",
                          carries_connector=any(k.startswith("connector.") for k in keys))
        m = _LLAVA.fullmatch(p)
        if m is None:
            raise CheckpointError(f"a CLIP vision tower under '{p}', which no CLIP layout has (known: '', "
                                  f"'vision_model.', 'vision_tower.[vision_model.]', 'model.vision_tower.')")
        top = m.group(1)
        if top + "image_newline" in keyset:
            raise CheckpointError(f"a LlavaNext checkpoint with a CLIP tower ('{p}'): vtlab's llava_next family runs "
                                  "SigLIP towers only; CLIP towers load as LLaVA-1.5 (LlavaForConditionalGeneration)")
        style = {"": "v5 saved: vision_tower.*", "model.": "v5 runtime: model.vision_tower.*"}[top]
        if m.group(2):
            style = "hub / v4: vision_tower.vision_model.*"
        cp = top + "multi_modal_projector."
        return Layout(f"LlavaForConditionalGeneration / LLaVA-1.5 ({style})", self.name, "hf", p, cp,
                      carries_connector=any(k.startswith(cp) for k in keys))

    def convert(self, layout: Layout, tensors: dict[str, torch.Tensor]) -> Mapped:
        if layout.style == "timm":
            return map_tower_keys(layout, tensors, clip_tower.timm_to_native, lambda rel: None)
        llava = layout.connector_prefix.endswith("multi_modal_projector.")
        return map_tower_keys(layout, tensors, clip_tower.hf_to_native, _group,
                              _connector_native if llava else (lambda rel: "connector." + rel))

    def export_state(self, state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
        tower = {k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")}
        rest = {k: v for k, v in state.items() if not k.startswith("tower.")}
        if _is_llava_export(cfg):
            out = clip_tower.native_to_hf(tower, prefix="vision_tower.")
            for k, v in rest.items():
                if not k.startswith("connector.layers."):
                    raise CheckpointError(f"export: '{k}' has no place in a LlavaForConditionalGeneration")
                out["multi_modal_projector." + k[len("connector.layers."):]] = v
            return out
        return {**clip_tower.native_to_hf(tower), **rest}  # CLIPVisionModel; a vtlab connector keeps its names

    def native_names(self, name: str) -> list[str] | None:
        if not name.startswith("tower."):
            return None
        rel = name[len("tower."):]
        try:
            return list(clip_tower.native_to_hf({rel: torch.empty(3, 1, device="meta")}))
        except KeyError:
            return [name]

    def connector_key_to_native(self, rel: str) -> str | None:
        return _connector_native(rel)

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        mt = conf.get("model_type")
        vision = conf if mt == "clip_vision_model" else (conf.get("vision_config") or {})
        if mt == "llava" and vision.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise CheckpointError(f"{where}: a Llava with a '{vision.get('model_type')}' tower; vtlab's clip family "
                                  "reads LLaVA-1.5 (clip_vision_model towers)")
        k = clip_tower.tower_kwargs_from_hf_config({**conf, "vision_config": vision})
        out: dict[str, Any] = {
            "model.family": self.name,
            "model.image_size": int(k["image_size"]), "model.patch_size": int(k["patch_size"]),
            "model.num_channels": int(k["num_channels"]), "model.hidden_size": int(k["hidden_size"]),
            "model.intermediate_size": int(k["intermediate_size"]), "model.num_layers": int(k["num_layers"]),
            "model.num_heads": int(k["num_heads"]), "model.layer_norm_eps": float(k["layer_norm_eps"]),
            "model.hidden_act": _act(k["hidden_act"], where),
            "model.feature_layers": k.get("feature_layers"),
        }
        if mt == "llava":
            out["model.select_strategy"] = k["select_strategy"]
            act = conf.get("projector_hidden_act", "gelu")
            if act not in ("gelu", "gelu_pytorch_tanh"):
                raise CheckpointError(f"{where}: projector_hidden_act '{act}' is not supported (gelu, gelu_pytorch_tanh)")
            out.update({"connector.kind": "mlp", "connector.factor": 1, "connector.depth": 2,
                        "connector.bias": bool(conf.get("multimodal_projector_bias", True)),
                        "connector.act": "gelu" if act == "gelu" else "gelu_tanh"})
            out.update(text_fields(conf.get("text_config")))
        return out

    def shape_fields(self, native: dict[str, tuple[int, ...]], width: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pos = native.get("tower.pos_embed")
        if pos is not None:
            g = int(round((pos[0] - 1) ** 0.5))
            out["grid"] = g if g * g == pos[0] - 1 else None  # 1 class row + a square patch table
        if "connector.layers.linear_2.weight" in native:
            out["text_hidden"] = native["connector.layers.linear_2.weight"][0]
        return out

    def hf_defaults(self, arch: dict[str, Any]) -> dict[str, Any]:
        if arch.get("model.feature_layers") is not None:
            return {"connector.kind": "mlp", "connector.factor": 1, "connector.bias": True, "connector.depth": 2}
        return super().hf_defaults(arch)

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        m, c = cfg.model, cfg.connector
        vision = {"model_type": "clip_vision_model", "hidden_size": m.hidden_size,
                  "intermediate_size": m.intermediate_size, "num_hidden_layers": m.num_layers,
                  "num_attention_heads": m.num_heads, "num_channels": m.num_channels, "image_size": m.image_size,
                  "patch_size": m.patch_size, "hidden_act": str(_v(m.hidden_act)), "layer_norm_eps": m.layer_norm_eps,
                  "attention_dropout": 0.0}
        if not _is_llava_export(cfg):
            return {**vision, "architectures": ["CLIPVisionModel"]}
        t = stack.connector.out_dim
        kind = str(_v(c.kind))
        if kind != "mlp" or c.depth != 2 or c.factor != 1 or c.hidden_size not in (None, t):
            raise CheckpointError(
                f"export: LLaVA-1.5's multi_modal_projector is Linear -> act -> Linear(T -> T) without unshuffle; "
                f"this stack has connector.kind={kind}, depth={c.depth}, factor={c.factor}, hidden_size={c.hidden_size}")
        layers = list(m.feature_layers)
        return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "vision_config": vision,
                "text_config": text_config_stub(cfg.text, t),
                "vision_feature_layer": layers if len(layers) > 1 else layers[0],
                "vision_feature_select_strategy": str(_v(m.select_strategy)),
                "projector_hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[str(_v(c.act))],
                "multimodal_projector_bias": bool(c.bias)}


CLIP = register_family(ClipFamily())
