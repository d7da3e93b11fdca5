"""Native SigLIP2 NaFlex tower: numerically `transformers.Siglip2VisionModel` (models/siglip2/modeling_siglip2.py,
5.24), and the NaFlex preprocessor of `Siglip2ImageProcessorPil` (models/siglip2/image_processing_pil_siglip2.py).

Input is patchified: pixel_values (B, L, p*p*C) with each patch flattened in (row, col, channel) order,
`pixel_attention_mask` (B, L) (1 = real patch, 0 = padding) and `spatial_shapes` (B, 2) = (gh, gw) per
image. The patch embedding is a Linear. The learned table (G x G, G^2 = num_patches) is resized per image
to its (gh, gw) as `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` would (written as
separable triangle-filter weights so that every image in the batch has its own size without a host sync:
support max(G/S, 1), centre (i + 0.5) G/S, weights normalised), laid out row-major over the first gh*gw
rows; padding rows take the (0, 0) output position, as HF. Blocks are pre-LN `Siglip2EncoderLayer`s (tanh
GELU, scale head_dim^-0.5) with q/k/v fused and padded keys masked in SDPA (padded query rows are
computed too, as HF), then `post_layernorm`; the optional MAP head (`use_head`) pools with the same key
mask. A 4-D (B, C, H, W) input is patchified in the graph, unpadded (no mask), and resized with
`F.interpolate` directly. Feature taps work as in vtlab's SigLIP tower (concatenated pre-LN
hidden_states); no block past the deepest tap is run. The forward compiles with fullgraph=True.

The structure (grid, taps, inactive modules), the block stack and the init are shared (vtlab.models.towers.common:
`TowerBase`, `init_siglip_weights`). Also: HF <-> native state-dict mapping (SigLIP's names,
vtlab.models.towers.siglip `HF_RULES`, run by vtlab.models.keymap), the config.json reader, and
`naflex_patchify` / `naflex_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vtlab.models.keymap import rename_state, strip_prefix, unrename_state
from vtlab.models.towers.common import (
    ENCODER_QKV,
    ENCODER_QKV_SPLIT,
    Block,
    Mlp,
    SiglipTowerBase,
    block_flops,
    init_siglip_weights,
    patchify,
    pil_resize,
    rescale_normalize,
    resize_table,
    resolve_layers,
    to_rgb_uint8,
)
from vtlab.models.towers.siglip import HF_INVERSE, HF_RULES


class MaskedMAPHead(nn.Module):
    """SigLIP2 attention-pooling head: one learned probe attends over the (unpadded) tokens.

    `in_proj` = [Wq; Wk; Wv] (HF `head.attention.in_proj_weight`, an nn.MultiheadAttention)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float, act: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden, act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        wq, wkv = self.in_proj.weight.split([d, 2 * d])
        bq, bkv = self.in_proj.bias.split([d, 2 * d])
        q = F.linear(self.probe.expand(b, 1, d), wq, bq).view(b, 1, h, d // h).transpose(1, 2)
        k, v = F.linear(x, wkv, bkv).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        a = self.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, 1, d))
        return (a + self.mlp(self.norm(a)))[:, 0]


def axis_weights(coord: torch.Tensor, out_size: torch.Tensor, grid: int) -> torch.Tensor:
    """Antialiased-bilinear (triangle filter) weights of output coordinates `coord` (..., N) on an axis of
    `out_size` (..., 1) samples resampled from `grid`: (..., N, grid), rows summing to 1."""
    scale = grid / out_size
    support = scale.clamp(min=1.0)
    centre = (coord + 0.5) * scale
    taps = torch.arange(grid, device=coord.device, dtype=torch.float32) + 0.5
    w = (1.0 - (taps - centre.unsqueeze(-1)).abs() / support.unsqueeze(-1)).clamp(min=0.0)
    return w / w.sum(-1, keepdim=True)


class Siglip2Tower(SiglipTowerBase):
    def __init__(
        self,
        *,
        patch_size: int = 16,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        num_channels: int = 3,
        num_patches: int = 256,
        layer_norm_eps: float = 1e-6,
        hidden_act: str = "gelu_pytorch_tanh",
        use_head: bool = False,
        feature_layers: Sequence[int] | None = None,
    ) -> None:
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"num_patches={num_patches} is not a square (the position table is G x G)")
        super().__init__(grid * patch_size, patch_size, hidden_size, intermediate_size, num_layers, num_channels)
        self.patch_embed = nn.Linear(num_channels * patch_size * patch_size, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(num_patches, hidden_size))
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, intermediate_size, layer_norm_eps, hidden_act) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.head = (
            MaskedMAPHead(hidden_size, num_heads, intermediate_size, layer_norm_eps, hidden_act) if use_head else None
        )
        self.feature_layers = resolve_layers(feature_layers, num_layers)
        self.reset_parameters()

    # ------------------------------------------------------------------ structure (the rest: SiglipTowerBase)
    def flops_closed_form(self, grid_h: int, grid_w: int, max_patches: int | None = None) -> int:
        """Per image, matmuls only. Packed NaFlex input (`max_patches` = padded length L): patch Linear
        2 L (C p^2) d, the position resize as one (L x G^2) @ (G^2 x d) matmul 2 L G^2 d, and depth_used
        blocks on L tokens (padding rows cost like real ones). 4-D input (`max_patches` None): L = gh*gw and
        no resize matmul (F.interpolate is not a matmul)."""
        n = grid_h * grid_w if max_patches is None else max_patches
        d = self.hidden_size
        resize = 0 if max_patches is None else 2 * n * self.native_grid**2 * d
        return self.patch_flops(n) + resize + self.depth_used * block_flops(n, d, self.intermediate_size)

    def reset_parameters(self) -> None:
        """HF SigLIP2 init: lecun-normal patch Linear, N(0, 1/sqrt(d)) positions, xavier attention/MLP."""
        init_siglip_weights(self, self.patch_embed.in_features)

    # ------------------------------------------------------------------ forward
    def resized_positions(self, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
        """(B, length, D): the table resized to each image's (gh, gw), row-major, padding rows at (0, 0)."""
        g = self.native_grid
        shapes = spatial_shapes.to(torch.float32)
        h, w = shapes[:, 0:1], shapes[:, 1:2]
        t = torch.arange(length, device=spatial_shapes.device, dtype=torch.float32).unsqueeze(0)
        valid = t < h * w
        row = torch.where(valid, torch.floor(t / w), 0.0)
        col = torch.where(valid, t - row * w, 0.0)
        weights = axis_weights(row, h, g).unsqueeze(-1) * axis_weights(col, w, g).unsqueeze(-2)
        table = self.pos_embed.float()
        return (weights.flatten(2) @ table).to(self.pos_embed.dtype)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, gh*gw, p*p*C), each patch in (row, col, channel) order like the processor."""
        return patchify(images, self.patch_size)

    def embed(
        self,
        pixel_values: torch.Tensor,
        spatial_shapes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patch Linear + resized positions: (B, L, D) (= HF hidden_states[0])."""
        if pixel_values.dim() == 4:
            gh, gw = self.grid_for(pixel_values.shape[-2], pixel_values.shape[-1])
            x = self.patch_embed(self.patchify(pixel_values.to(self.patch_embed.weight.dtype)))
            g = self.native_grid
            table = self.pos_embed.float()
            if (gh, gw) != (g, g):
                table = resize_table(table, g, gh, gw, mode="bilinear", antialias=True)
            return x + table.reshape(1, gh * gw, -1).to(x.dtype)
        if spatial_shapes is None:
            raise ValueError("patchified pixel_values (B, L, C*p*p) need spatial_shapes (B, 2)")
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        return x + self.resized_positions(spatial_shapes, pixel_values.shape[1])

    @staticmethod
    def key_mask(pixel_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, L) 0/1 -> (B, 1, 1, L) bool for SDPA (True = attend)."""
        return None if pixel_attention_mask is None else pixel_attention_mask.bool()[:, None, None, :]

    def hidden_states(
        self,
        pixel_values: torch.Tensor,
        upto: int | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """HF-style [embeddings, after block 1, ..., after block `upto`], all before post_layernorm."""
        return self.block_states(self.embed(pixel_values, spatial_shapes), upto, self.key_mask(pixel_attention_mask))

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, feature_dim): post-LN last_hidden_state (padding rows included) or concatenated taps."""
        return self.run_stack(self.embed(pixel_values, spatial_shapes), self.key_mask(pixel_attention_mask))

    def pool(self, last_hidden_state: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """HF `pooler_output` from the post-LN last hidden state (padded keys masked)."""
        if self.head is None:
            raise RuntimeError("this tower was built without a head (use_head=False)")
        return self.head(last_hidden_state, self.key_mask(pixel_attention_mask))


# ---------------------------------------------------------------------------------------------- mapping
def hf_to_native(state: dict[str, torch.Tensor], prefix: str = "", keep_head: bool = True) -> dict[str, torch.Tensor]:
    """HF Siglip2VisionModel weights (runtime = saved names in 5.24) -> native; q/k/v fused into qkv.
    The names are SigLIP's (`HF_RULES` of vtlab.models.towers.siglip).

    `prefix` selects the tower in a larger dict ("vision_model." in Siglip2Model); a `vision_model.`
    wrapper after it is stripped. `keep_head=False` drops `head.*` (for a tower built with use_head=False).
    Every other key under the prefix must map, otherwise KeyError names it."""
    picked = strip_prefix(state, prefix, wrappers=("vision_model.",))
    if not keep_head:
        picked = {k: v for k, v in picked.items() if not k.startswith("head.")}
    return rename_state(picked, HF_RULES, [ENCODER_QKV], unknown="no native SigLIP2 name for HF key", where=prefix)


def native_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Native -> HF Siglip2VisionModel names, under `prefix`."""
    unknown = "no HF SigLIP2 name for native key"
    return unrename_state(state, HF_INVERSE, [ENCODER_QKV_SPLIT], unknown=unknown, prefix=prefix)


def tower_kwargs_from_hf_config(conf: dict[str, Any], use_head: bool | None = None) -> dict[str, Any]:
    """`Siglip2Tower` kwargs from a Siglip2VisionConfig (or Siglip2Config: its vision_config) config.json
    dict; omitted fields take the 5.24 defaults. `use_head` None follows `vision_use_head` (default True)."""
    vision = conf.get("vision_config", conf) or {}
    return dict(
        patch_size=vision.get("patch_size", 16),
        hidden_size=vision.get("hidden_size", 768),
        intermediate_size=vision.get("intermediate_size", 3072),
        num_layers=vision.get("num_hidden_layers", 12),
        num_heads=vision.get("num_attention_heads", 12),
        num_channels=vision.get("num_channels", 3),
        num_patches=vision.get("num_patches", 256),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        hidden_act=vision.get("hidden_act", "gelu_pytorch_tanh"),
        use_head=vision.get("vision_use_head", True) if use_head is None else use_head,
    )


# ---------------------------------------------------------------------------------------------- NaFlex
def size_for_patch_budget(
    height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5
) -> tuple[int, int]:
    """(h, w), multiples of the patch, at least one patch each, aspect kept: the largest scale whose patch
    count fits `max_num_patches`, found like transformers' `get_image_size_for_max_num_patches` (bisection
    of the scale in [eps / 10, 100] until the bracket is narrower than eps, keeping the feasible end)."""
    if max_num_patches < 1:
        raise ValueError(f"max_num_patches={max_num_patches} must be at least 1 (one {patch_size}x{patch_size} patch)")
    if patch_size < 1:
        raise ValueError(f"patch_size={patch_size} must be a positive integer")

    def side(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    low, high = eps / 10, 100.0
    while high - low >= eps:
        mid = (low + high) / 2
        if (side(mid, height) / patch_size) * (side(mid, width) / patch_size) <= max_num_patches:
            low = mid
        else:
            high = mid
    return side(low, height), side(low, width)


def naflex_patchify(
    image: Image.Image | np.ndarray,
    patch_size: int = 16,
    max_num_patches: int = 256,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    resample: int = Image.Resampling.BILINEAR,
) -> dict[str, torch.Tensor]:
    """One image as `Siglip2ImageProcessorPil` packs it: Pillow BILINEAR resize of the uint8 image to
    `size_for_patch_budget`, x/255, (x - mean) / std, patches in row-major order, each flattened (row, col,
    channel), zero-padded to `max_num_patches`. Returns pixel_values (L, p*p*C) float32,
    pixel_attention_mask (L,) int32, spatial_shapes (2,) int64."""
    rgb = to_rgb_uint8(image)
    h, w = size_for_patch_budget(rgb.shape[0], rgb.shape[1], patch_size, max_num_patches)
    x = rescale_normalize(pil_resize(rgb, h, w, resample), mean, std).transpose(1, 2, 0)  # (h, w, C)
    gh, gw = h // patch_size, w // patch_size
    patches = x.reshape(gh, patch_size, gw, patch_size, -1).transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
    values = np.zeros((max_num_patches, patches.shape[1]), dtype=np.float32)
    values[: gh * gw] = patches
    mask = np.zeros(max_num_patches, dtype=np.int32)
    mask[: gh * gw] = 1
    return {
        "pixel_values": torch.from_numpy(values),
        "pixel_attention_mask": torch.from_numpy(mask),
        "spatial_shapes": torch.tensor([gh, gw], dtype=torch.int64),
    }


def naflex_batch(images: Sequence[Image.Image | np.ndarray], **kwargs: Any) -> dict[str, torch.Tensor]:
    """`naflex_patchify` of each image, stacked: (B, L, p*p*C), (B, L), (B, 2)."""
    items = [naflex_patchify(image, **kwargs) for image in images]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
