"""Native CLIP vision tower: numerically `transformers.CLIPVisionModel` (models/clip/modeling_clip.py, 5.24).

Mirrors `CLIPVisionEmbeddings` (a class token, a bias-free patch Conv2d, a learned table over 1 + N
positions; for other input sizes the patch part is bicubic-interpolated with align_corners=False and the
class position kept, as `interpolate_pos_encoding=True`), `pre_layrnorm`, pre-LN `CLIPEncoderLayer` blocks
(quick_gelu or gelu, scale head_dim^-0.5) with q/k/v fused into one Linear and attention through SDPA, and
`post_layernorm`, which HF applies only to the pooled class token (`pool`). `hidden_states[0]` is the
embedding after `pre_layrnorm`, as HF's.

LLaVA feature selection (`LlavaModel.get_image_features`): `feature_layers` are hidden_states indices
(negative from the end), concatenated on channels; `select_strategy="default"` drops the class token,
`"full"` keeps it. Without taps the output is `last_hidden_state` (no post-LN). No block past the deepest
tap is run. The forward has no host syncs or value-dependent branches (compiles with fullgraph=True).

The structure (grid, taps, inactive modules) and the block stack are `TowerBase`'s (vtlab.models.towers.common);
this module holds the CLIP embeddings, init, FLOPs and pooling. Also: HF <-> native state-dict mapping
(CLIPVisionModel / CLIPModel `vision_model.` / Llava `vision_tower.[vision_model.]` and v5 `model.vision_tower.`
layouts: CLIP's embedding / norm names plus common's encoder names, run by vtlab.models.keymap), timm
`vit_*_clip_*` -> native, the config.json reader, and `clip_preprocess`, equal to `CLIPImageProcessorPil`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vtlab.models.keymap import Rules, rename_state, strip_prefix, unrename_state
from vtlab.models.towers.common import (
    CLIP_MEAN,
    CLIP_STD,
    ENCODER_INVERSE,
    ENCODER_QKV,
    ENCODER_QKV_SPLIT,
    ENCODER_RULES,
    Block,
    TowerBase,
    block_flops,
    resize_crop_normalize,
    resize_table,
    resolve_layers,
)

STRATEGIES = ("default", "full")


class ClipTower(TowerBase):
    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 32,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        num_channels: int = 3,
        layer_norm_eps: float = 1e-5,
        hidden_act: str = "quick_gelu",
        feature_layers: Sequence[int] | None = None,
        select_strategy: str = "default",
    ) -> None:
        if select_strategy not in STRATEGIES:
            raise ValueError(f"select_strategy={select_strategy!r}; valid: {', '.join(STRATEGIES)}")
        super().__init__(image_size, patch_size, hidden_size, intermediate_size, num_layers, num_channels)
        self.select_strategy = select_strategy
        self.patch_embed = nn.Conv2d(num_channels, hidden_size, patch_size, stride=patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1 + self.native_grid**2, hidden_size))
        self.pre_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, intermediate_size, layer_norm_eps, hidden_act) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.feature_layers = resolve_layers(feature_layers, num_layers)
        self.reset_parameters()

    # ------------------------------------------------------------------ structure (the rest: TowerBase)
    @property
    def prefix_tokens(self) -> int:
        return 1 if self.select_strategy == "full" else 0

    def idle_modules(self) -> list[nn.Module | None]:
        """`post_norm`: HF applies it to the pooled CLS only (`pool`)."""
        return [self.post_norm]

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the tower) AdamW must not decay, besides biases and norms."""
        return {"cls_token", "pos_embed"}

    def flops_closed_form(self, grid_h: int, grid_w: int) -> int:
        """Per image: patch conv 2 N C p^2 d + depth_used blocks on 1 + N tokens (matmuls only)."""
        n = grid_h * grid_w
        return self.patch_flops(n) + self.depth_used * block_flops(n + 1, self.hidden_size, self.intermediate_size)

    def reset_parameters(self) -> None:
        """HF CLIP init (initializer_range 0.02, factor 1): N(0, d^-0.5) class token, N(0, 0.02) patch/pos,
        depth-scaled N(0, .) attention/MLP weights, zero biases, unit LayerNorms."""
        d, layers = self.hidden_size, self.num_layers
        nn.init.normal_(self.cls_token, std=d**-0.5)
        nn.init.normal_(self.patch_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        in_std = d**-0.5 * (2 * layers) ** -0.5
        for blk in self.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=in_std)
            nn.init.normal_(blk.attn.proj.weight, std=d**-0.5)
            nn.init.normal_(blk.mlp.fc1.weight, std=(2 * d) ** -0.5)
            nn.init.normal_(blk.mlp.fc2.weight, std=in_std)
            for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                nn.init.zeros_(lin.bias)
        for norm in (self.pre_norm, self.post_norm, *(m for b in self.blocks for m in (b.norm1, b.norm2))):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    # ------------------------------------------------------------------ forward
    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1 + gh*gw, D): class position, then the patch table (bicubic-resized off the native grid)."""
        n = self.native_grid
        if (grid_h, grid_w) == (n, n):
            return self.pos_embed
        return torch.cat([self.pos_embed[:1], resize_table(self.pos_embed[1:], n, grid_h, grid_w)])

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + N, D) after `pre_layrnorm` (= HF hidden_states[0])."""
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        gh, gw = x.shape[-2], x.shape[-1]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        return self.pre_norm(x + self.position_embedding(gh, gw))

    def hidden_states(self, pixel_values: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """HF `hidden_states`: [embeddings, after block 1, ..., after block `upto`] (class token included)."""
        return self.block_states(self.embed(pixel_values), upto)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, [1 +] N, feature_dim): last_hidden_state or the concatenated taps, class token per strategy."""
        out = self.run_stack(self.embed(pixel_values))
        return out if self.select_strategy == "full" else out[:, 1:]

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """HF `pooler_output`: post_layernorm of the class token of the (full) last hidden state."""
        return self.post_norm(last_hidden_state[:, 0])


# ---------------------------------------------------------------------------------------------- mapping
_HF_RULES: Rules = [  # HF CLIPVisionModel name (after the prefix / `vision_model.`) -> native
    (r"embeddings\.class_embedding", "cls_token"),
    (r"embeddings\.patch_embedding\.weight", "patch_embed.weight"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"pre_layrnorm\.(weight|bias)", r"pre_norm.\1"),
    (r"post_layernorm\.(weight|bias)", r"post_norm.\1"),
    *ENCODER_RULES,
]
_HF_INVERSE: Rules = [
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding.weight"),
    (r"patch_embed\.weight", "embeddings.patch_embedding.weight"),
    (r"pre_norm\.(weight|bias)", r"pre_layrnorm.\1"),
    (r"post_norm\.(weight|bias)", r"post_layernorm.\1"),
    *ENCODER_INVERSE,
]


def hf_to_native(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """HF CLIP vision weights -> native names; q/k/v fused into qkv (rows q, k, v).

    `prefix` selects the tower inside a larger state dict, keys outside it are ignored: "" for
    CLIPVisionModel (saved and runtime), "vision_model." for CLIPModel, "vision_tower." for a v5-saved
    LlavaForConditionalGeneration, "vision_tower.vision_model." (or "vision_tower.", the wrapper is
    stripped) for hub LLaVA-1.5, "model.vision_tower." for a v5 Llava runtime state dict. A
    `vision_model.` wrapper right after the prefix is stripped. Every key under the prefix must map,
    otherwise KeyError names it.
    """
    picked = strip_prefix(state, prefix, wrappers=("vision_model.",))
    out = rename_state(picked, _HF_RULES, [ENCODER_QKV], unknown="no native CLIP name for HF key", where=prefix)
    if "cls_token" in out:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    return out


def native_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Native -> HF CLIPVisionModel names (what `CLIPVisionModel.load_state_dict` takes), under `prefix`."""
    if "cls_token" in state:
        state = {**state, "cls_token": state["cls_token"].reshape(-1)}
    unknown = "no HF CLIP name for native key"
    return unrename_state(state, _HF_INVERSE, [ENCODER_QKV_SPLIT], unknown=unknown, prefix=prefix)


def timm_to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm `VisionTransformer` CLIP tower (vit_*_clip_*: class_token, pre_norm, no patch bias) -> native.

    `norm_pre` = HF pre_layrnorm, `norm` = HF post_layernorm. `head.*` (the CLIP projection / classifier,
    not part of CLIPVisionModel) is dropped; any other key that does not map raises KeyError.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        if key == "cls_token":
            out[key] = value.reshape(1, 1, -1)
        elif key == "pos_embed":
            out[key] = value.reshape(-1, value.shape[-1])
        elif key == "patch_embed.proj.weight":
            out["patch_embed.weight"] = value
        elif key.startswith("norm_pre."):
            out["pre_norm." + key[len("norm_pre.") :]] = value
        elif key.startswith("norm."):
            out["post_norm." + key[len("norm.") :]] = value
        elif re.match(r"^blocks\.\d+\.(norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12])\.(weight|bias)$", key):
            out[key] = value
        else:
            raise KeyError(f"no native CLIP name for timm key {key!r}")
    return out


def tower_kwargs_from_hf_config(conf: dict[str, Any]) -> dict[str, Any]:
    """`ClipTower` kwargs from a config.json dict: CLIPVisionConfig, or CLIPConfig / LlavaConfig (their
    `vision_config`; Llava's vision_feature_layer / vision_feature_select_strategy become the taps).
    Omitted fields take the transformers 5.24 CLIPVisionConfig defaults (LlavaConfig: -2, "default")."""
    vision = conf.get("vision_config", conf) or {}
    kwargs: dict[str, Any] = dict(
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 32),
        hidden_size=vision.get("hidden_size", 768),
        intermediate_size=vision.get("intermediate_size", 3072),
        num_layers=vision.get("num_hidden_layers", 12),
        num_heads=vision.get("num_attention_heads", 12),
        num_channels=vision.get("num_channels", 3),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-5),
        hidden_act=vision.get("hidden_act", "quick_gelu"),
    )
    if str(conf.get("model_type", "")).startswith("llava"):  # a LLaVA-style VLM config (llava, llava_next, ...)
        layer = conf.get("vision_feature_layer", -2)
        kwargs["feature_layers"] = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        kwargs["select_strategy"] = conf.get("vision_feature_select_strategy", "default")
    return kwargs


# ---------------------------------------------------------------------------------------------- images
def clip_preprocess(
    image: Image.Image | np.ndarray,
    size: int = 224,
    crop: int | tuple[int, int] = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """`CLIPImageProcessorPil`: shortest edge -> `size` (Pillow BICUBIC on uint8), center crop, x/255,
    CLIP mean/std. Returns (3, crop_h, crop_w) float32."""
    return resize_crop_normalize(image, size, crop, mean, std, Image.Resampling.BICUBIC)
