"""Native DINOv2 tower: numerically `transformers.Dinov2Model` (models/dinov2/modeling_dinov2.py) and
`Dinov2WithRegistersModel` (models/dinov2_with_registers/modeling_dinov2_with_registers.py), 5.24.

Mirrors `Dinov2Embeddings`: a biased patch Conv2d (patch 14), a CLS token, a learned table over 1 + N
positions added to [CLS, patches]; register tokens (registers model) are inserted after the CLS *after*
the positions, so they carry none. For another grid the patch table is resized in float32 with
`F.interpolate(size=(gh, gw), mode="bicubic", align_corners=False)`; the registers model adds
`antialias=True` (a different cubic kernel, a = -0.5), Dinov2Model does not. The mask token is only used
for masked pretraining (`bool_masked_pos`), never at inference: it is kept for round trips and listed in
`inactive_modules`. Blocks are pre-LN `Dinov2Layer`s with LayerScale (lambda1 / lambda2), gelu MLP
(mlp_ratio) or SwiGLU (giant), q/k/v fused; the final `layernorm` is applied to every token of
last_hidden_state.

Output for the connector: the normed patch tokens (CLS and registers dropped) unless `keep_prefix`; with
`feature_layers` the taps are pre-final-norm hidden states, concatenated on channels, no block past the
deepest tap is run. The forward compiles with fullgraph=True.

The structure (grid, taps, inactive modules) and the block stack are `TowerBase`'s (vtlab.models.towers.common).
Also: HF <-> native state-dict mapping (v5 runtime names and the legacy names `save_pretrained` writes; the HF ->
native rules run by vtlab.models.keymap), the config.json reader, and `dinov2_preprocess`, equal to
`BitImageProcessorPil` with DINOv2's settings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vtlab.models.keymap import Fuse, Rules, rename_state, split_qkv, strip_prefix
from vtlab.models.towers.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Block,
    TowerBase,
    block_flops,
    resize_crop_normalize,
    resize_table,
    resolve_layers,
)


def mlp_hidden_size(hidden_size: int, mlp_ratio: float, swiglu: bool) -> int:
    """HF: int(d * mlp_ratio); SwiGLU keeps 2/3 of it rounded up to a multiple of 8."""
    hidden = int(hidden_size * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8 if swiglu else hidden


class MaskToken(nn.Module):
    """Holder of the pretraining mask token (unused at inference), so that it can be listed as inactive."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, dim))


class Dinov2Tower(TowerBase):
    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 14,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_channels: int = 3,
        layer_norm_eps: float = 1e-6,
        hidden_act: str = "gelu",
        qkv_bias: bool = True,
        layerscale_value: float = 1.0,
        use_swiglu_ffn: bool = False,
        num_register_tokens: int = 0,
        use_mask_token: bool = True,
        antialias: bool | None = None,
        feature_layers: Sequence[int] | None = None,
        keep_prefix: bool = False,
    ) -> None:
        """`antialias` None: True with registers (Dinov2WithRegistersModel), False without (Dinov2Model)."""
        mlp_hidden = mlp_hidden_size(hidden_size, mlp_ratio, use_swiglu_ffn)
        super().__init__(image_size, patch_size, hidden_size, mlp_hidden, num_layers, num_channels)
        self.mlp_hidden = mlp_hidden
        self.swiglu = use_swiglu_ffn
        self.num_register_tokens = num_register_tokens
        self.antialias = num_register_tokens > 0 if antialias is None else antialias
        self.keep_prefix = keep_prefix
        self.patch_embed = nn.Conv2d(num_channels, hidden_size, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.reg_token = nn.Parameter(torch.zeros(1, num_register_tokens, hidden_size)) if num_register_tokens else None
        self.mask_token = MaskToken(hidden_size) if use_mask_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1 + self.native_grid**2, hidden_size))
        self.blocks = nn.ModuleList(
            Block(
                hidden_size,
                num_heads,
                self.mlp_hidden,
                layer_norm_eps,
                hidden_act,
                qkv_bias=qkv_bias,
                layer_scale=layerscale_value,
                swiglu=use_swiglu_ffn,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.layerscale_value = layerscale_value
        self.feature_layers = resolve_layers(feature_layers, num_layers)
        self.reset_parameters()

    # ------------------------------------------------------------------ structure (the rest: TowerBase)
    @property
    def num_prefix(self) -> int:
        """CLS + registers leading every sequence inside the tower."""
        return 1 + self.num_register_tokens

    @property
    def prefix_tokens(self) -> int:
        return self.num_prefix if self.keep_prefix else 0

    def output_norm(self) -> nn.Module | None:
        return self.norm

    def idle_modules(self) -> list[nn.Module | None]:
        """The mask token (masked pretraining only)."""
        return [self.mask_token]

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the tower) AdamW must not decay, besides biases and norms."""
        return {"cls_token", "reg_token", "pos_embed", "mask_token.weight"}

    def flops_closed_form(self, grid_h: int, grid_w: int) -> int:
        """Per image: patch conv 2 N C p^2 d + depth_used blocks on 1 + R + N tokens (matmuls only)."""
        n = grid_h * grid_w
        per_block = block_flops(n + self.num_prefix, self.hidden_size, self.mlp_hidden, self.swiglu)
        return self.patch_flops(n) + self.depth_used * per_block

    def reset_parameters(self) -> None:
        """HF DINOv2 init: truncated N(0, 0.02) for positions, CLS, conv and Linear weights, zero biases,
        zero registers / mask token, LayerScale = layerscale_value, unit LayerNorms."""
        for p in (self.pos_embed, self.cls_token, self.patch_embed.weight):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.patch_embed.bias)
        if self.reg_token is not None:
            nn.init.zeros_(self.reg_token)
        if self.mask_token is not None:
            nn.init.zeros_(self.mask_token.weight)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for blk in self.blocks:
            nn.init.constant_(blk.ls1.gamma, self.layerscale_value)
            nn.init.constant_(blk.ls2.gamma, self.layerscale_value)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    # ------------------------------------------------------------------ forward
    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1 + gh*gw, D): CLS position, then the patch table (float32 bicubic off the native grid)."""
        n = self.native_grid
        if (grid_h, grid_w) == (n, n):
            return self.pos_embed
        patch = resize_table(self.pos_embed[1:].float(), n, grid_h, grid_w, antialias=self.antialias)
        return torch.cat([self.pos_embed[:1], patch.to(self.pos_embed.dtype)])

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + R + N, D) = HF hidden_states[0]: [CLS, registers, patches]."""
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        gh, gw = x.shape[-2], x.shape[-1]
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + self.position_embedding(gh, gw)
        if self.reg_token is None:
            return x
        return torch.cat([x[:, :1], self.reg_token.expand(b, -1, -1), x[:, 1:]], dim=1)

    def hidden_states(self, pixel_values: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """HF `hidden_states`: [embeddings, after block 1, ..., after block `upto`], all before `layernorm`."""
        return self.block_states(self.embed(pixel_values), upto)

    def last_hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """HF `last_hidden_state`: every token (CLS, registers, patches) after the final layernorm."""
        return self.norm(self.hidden_states(pixel_values)[-1])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, [1 + R +] N, feature_dim): normed last state or concatenated taps, prefix per keep_prefix."""
        out = self.run_stack(self.embed(pixel_values))
        return out if self.keep_prefix else out[:, self.num_prefix :]


# ---------------------------------------------------------------------------------------------- mapping
_LAYER = r"encoder\.layer\.(\d+)\."
_HF_RULES: Rules = [  # HF name -> native name (runtime v5 names and the saved / hub names)
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.register_tokens", "reg_token"),
    (r"embeddings\.mask_token", "mask_token.weight"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.\1"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (_LAYER + r"(norm[12])\.(weight|bias)", r"blocks.\1.\2.\3"),
    (_LAYER + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (_LAYER + r"attention\.(?:o_proj|output\.dense)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (_LAYER + r"mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),  # saved SwiGLU: [gate; up]
    (_LAYER + r"mlp\.(?:weights_out|down_proj)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
]
_HF_FUSED = [
    Fuse(_LAYER + r"attention\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3", r"\2", ("q", "k", "v")),
    Fuse(  # the saved names: query / key / value -> part q / k / v (unmatched groups expand to "")
        _LAYER + r"attention\.attention\.(?:(q)uery|(k)ey|(v)alue)\.(weight|bias)",
        r"blocks.\1.attn.qkv.\5",
        r"\2\3\4",
        ("q", "k", "v"),
    ),
    Fuse(_LAYER + r"mlp\.(gate|up)_proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\3", r"\2", ("gate", "up")),
]


def hf_to_native(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """HF Dinov2Model / Dinov2WithRegistersModel weights -> native names.

    Accepts the v5 runtime names (`attention.{q,k,v,o}_proj`, SwiGLU `gate_proj/up_proj/down_proj`) and the
    names `save_pretrained` writes and the hub holds (`attention.attention.{query,key,value}`,
    `attention.output.dense`, SwiGLU `weights_in/weights_out`); q/k/v are fused into qkv, gate/up into fc1.
    `prefix` selects the tower inside a larger dict (e.g. "dinov2." in Dinov2ForImageClassification);
    every key under it must map, otherwise KeyError names it.
    """
    unknown = "no native DINOv2 name for HF key"
    out = rename_state(strip_prefix(state, prefix), _HF_RULES, _HF_FUSED, unknown=unknown, where=prefix)
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"].reshape(-1, out["pos_embed"].shape[-1])
    return out


_FIXED_INVERSE = {  # native name -> HF name (the per-layer names: native_to_hf)
    "cls_token": "embeddings.cls_token",
    "reg_token": "embeddings.register_tokens",
    "mask_token.weight": "embeddings.mask_token",
    "patch_embed.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def native_to_hf(state: dict[str, torch.Tensor], legacy: bool = False) -> dict[str, torch.Tensor]:
    """Native -> HF names: the v5 runtime names (`Dinov2Model.load_state_dict`), or with `legacy` the names
    `save_pretrained` writes (`attention.attention.query`, ..., SwiGLU `weights_in/weights_out`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _FIXED_INVERSE:
            out[_FIXED_INVERSE[key]] = value
            continue
        if key == "pos_embed":
            out["embeddings.position_embeddings"] = value.unsqueeze(0)
            continue
        m = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if m is None:
            raise KeyError(f"no HF DINOv2 name for native key {key!r}")
        base, name, kind = f"encoder.layer.{m.group(1)}.", m.group(2), m.group(3)
        if kind == "gamma":
            out[f"{base}layer_scale{name[-1]}.lambda1"] = value
        elif name == "attn.qkv":
            names = (
                ["attention.query", "attention.key", "attention.value"] if legacy else ["q_proj", "k_proj", "v_proj"]
            )
            split_qkv(state, key, out, [f"{base}attention.{n}.{kind}" for n in names])
        elif name == "attn.proj":
            out[f"{base}attention.{'output.dense' if legacy else 'o_proj'}.{kind}"] = value
        elif name in ("mlp.fc1", "mlp.fc2") and _is_swiglu(state, m.group(1)):
            if name == "mlp.fc2":
                out[f"{base}mlp.{'weights_out' if legacy else 'down_proj'}.{kind}"] = value
            elif legacy:
                out[f"{base}mlp.weights_in.{kind}"] = value
            else:
                gate, up = value.chunk(2, dim=0)
                out[f"{base}mlp.gate_proj.{kind}"], out[f"{base}mlp.up_proj.{kind}"] = gate, up
        elif name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            out[f"{base}{name}.{kind}"] = value
        else:
            raise KeyError(f"no HF DINOv2 name for native key {key!r}")
    return out


def _is_swiglu(state: dict[str, torch.Tensor], layer: str) -> bool:
    """fc1 has twice fc2's input width only in the SwiGLU FFN."""
    return state[f"blocks.{layer}.mlp.fc1.weight"].shape[0] == 2 * state[f"blocks.{layer}.mlp.fc2.weight"].shape[1]


def tower_kwargs_from_hf_config(conf: dict[str, Any]) -> dict[str, Any]:
    """`Dinov2Tower` kwargs from a Dinov2Config / Dinov2WithRegistersConfig config.json dict; omitted
    fields take the transformers 5.24 defaults (patch 14 for dinov2, 16 for dinov2_with_registers)."""
    registers = conf.get("model_type") == "dinov2_with_registers"
    return dict(
        image_size=conf.get("image_size", 224),
        patch_size=conf.get("patch_size", 16 if registers else 14),
        hidden_size=conf.get("hidden_size", 768),
        num_layers=conf.get("num_hidden_layers", 12),
        num_heads=conf.get("num_attention_heads", 12),
        mlp_ratio=conf.get("mlp_ratio", 4),
        num_channels=conf.get("num_channels", 3),
        layer_norm_eps=conf.get("layer_norm_eps", 1e-6),
        hidden_act=conf.get("hidden_act", "gelu"),
        qkv_bias=conf.get("qkv_bias", True),
        layerscale_value=conf.get("layerscale_value", 1.0),
        use_swiglu_ffn=conf.get("use_swiglu_ffn", False),
        num_register_tokens=conf.get("num_register_tokens", 4) if registers else 0,
        use_mask_token=True if registers else conf.get("use_mask_token", True),
        antialias=registers,
    )


# ---------------------------------------------------------------------------------------------- images
def dinov2_preprocess(
    image: Image.Image | np.ndarray,
    size: int = 256,
    crop: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """`BitImageProcessorPil` as facebook/dinov2-* configure it: shortest edge 256 (Pillow BICUBIC on uint8),
    center crop 224, x/255, ImageNet mean/std. Returns (3, crop_h, crop_w) float32."""
    return resize_crop_normalize(image, size, crop, mean, std, Image.Resampling.BICUBIC)
