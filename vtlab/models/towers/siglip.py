"""The native SigLIP vision transformer behind the siglip, idefics3 and llava_next families.

Mirrors transformers' `SiglipVisionModel` / `Idefics3VisionTransformer`: a valid-padding patch Conv2d
(384/14 sees a 27x27 grid), a learned position table, pre-LN blocks and a post-LayerNorm, plus the optional
MAP head. For a patch grid other than the native one the position table follows the family's rule
(`position_rule`): `bicubic` interpolates it (align_corners=False, as SigLIP's
`interpolate_pos_encoding=True`), `bucket` picks rows by bucketing fractional patch coordinates into the
native grid (`Idefics3VisionEmbeddings`: no interpolation). Feature taps return either the post-LN last hidden state or a
channel-concatenation of pre-LN `hidden_states[i]` (LlavaNext `vision_feature_layer`); no block past the
deepest tap is run. The forward has no host syncs and no data-dependent branches, so it compiles with
`fullgraph=True`. Fast paths (vtlab.models.fastpaths): the patch embedding as one GEMM, per-block activation
checkpointing (`run_block`). The structure (grid, taps, inactive modules), the block stack and the init are shared
with the other towers (vtlab.models.towers.common: `TowerBase`, `init_siglip_weights`).

Also the HF `SiglipVisionModel` tower names both ways (`HF_RULES` / `HF_INVERSE`, relative to the tower), which
the SigLIP2 tower and the SigLIP-tower families (vtlab.families.siglip: `TOWER_RULES`) use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vtlab.models.fastpaths import PatchEmbed
from vtlab.models.keymap import Rules
from vtlab.models.layers import Block, MAPHead
from vtlab.models.towers.common import (
    ENCODER_INVERSE,
    ENCODER_RULES,
    SiglipTowerBase,
    block_flops,
    init_siglip_weights,
    resize_table,
)

POSITION_RULES = ("bicubic", "bucket")

# HF SiglipVisionModel names (relative to the tower: no `vision_model.`) <-> native, both ways; the same names
# in SigLIP2, Idefics3 and LlavaNext towers. vtlab.families.siglip applies them under `tower.`, the SigLIP2
# tower's key maps (vtlab.models.towers.siglip2) directly. q/k/v: common.ENCODER_QKV / ENCODER_QKV_SPLIT.
HF_RULES: Rules = [
    (r"embeddings\.patch_embedding\.(weight|bias)", r"patch_embed.\1"),
    (r"embeddings\.position_embedding\.weight", r"pos_embed"),
    *ENCODER_RULES,
    (r"post_layernorm\.(weight|bias)", r"post_norm.\1"),
    (r"head\.probe", r"head.probe"),
    (r"head\.attention\.in_proj_(weight|bias)", r"head.in_proj.\1"),
    (r"head\.attention\.out_proj\.(weight|bias)", r"head.out_proj.\1"),
    (r"head\.layernorm\.(weight|bias)", r"head.norm.\1"),
    (r"head\.mlp\.(fc[12])\.(weight|bias)", r"head.mlp.\1.\2"),
]
HF_INVERSE: Rules = [
    (r"patch_embed\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"pos_embed", r"embeddings.position_embedding.weight"),
    *ENCODER_INVERSE,
    (r"post_norm\.(weight|bias)", r"post_layernorm.\1"),
    (r"head\.probe", r"head.probe"),
    (r"head\.in_proj\.(weight|bias)", r"head.attention.in_proj_\1"),
    (r"head\.out_proj\.(weight|bias)", r"head.attention.out_proj.\1"),
    (r"head\.norm\.(weight|bias)", r"head.layernorm.\1"),
    (r"head\.mlp\.(fc[12])\.(weight|bias)", r"head.mlp.\1.\2"),
]


def resolve_feature_layers(layers: Sequence[int] | None, num_layers: int) -> list[int] | None:
    """Map hidden_states indices (negative from the end, L+1 entries) to 0..L."""
    if layers is None:
        return None
    return [i if i >= 0 else num_layers + 1 + i for i in layers]


def bucket_position_ids(grid_h: int, grid_w: int, native: int, device: torch.device | None = None) -> torch.Tensor:
    """Idefics3's position rows for a (grid_h, grid_w) patch grid over a native x native table: fractional
    coordinates i / grid (float32, clamped below 1) bucketed at the boundaries k / native (right=True)."""
    boundaries = torch.arange(1 / native, 1.0, 1 / native, device=device)
    coords = []
    for size in (grid_h, grid_w):
        step = 1.0 / torch.tensor(size, device=device)
        frac = torch.clamp(torch.arange(size, device=device, dtype=torch.float32) * step, max=1.0 - 1e-6)
        coords.append(torch.bucketize(frac, boundaries, right=True))
    return (coords[0][:, None] * native + coords[1][None, :]).reshape(-1)


class VisionTower(SiglipTowerBase):
    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        hidden_size: int,
        intermediate_size: int,
        num_layers: int,
        num_heads: int,
        num_channels: int = 3,
        layer_norm_eps: float = 1e-6,
        hidden_act: str = "gelu_tanh",
        use_head: bool = False,
        feature_layers: Sequence[int] | None = None,
        position_rule: str = "bicubic",
    ) -> None:
        if position_rule not in POSITION_RULES:
            raise ValueError(f"position_rule={position_rule!r} is unknown; valid: {', '.join(POSITION_RULES)}")
        super().__init__(image_size, patch_size, hidden_size, intermediate_size, num_layers, num_channels)
        self.position_rule = position_rule
        self.patch_embed = PatchEmbed(num_channels, hidden_size, patch_size)  # an nn.Conv2d; as_gemm: one GEMM
        self.activation_checkpointing = False  # vtlab.models.fastpaths.configure_fast_paths
        self.pos_embed = nn.Parameter(torch.zeros(self.native_grid**2, hidden_size))
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, intermediate_size, layer_norm_eps, hidden_act) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.head = MAPHead(hidden_size, num_heads, intermediate_size, layer_norm_eps, hidden_act) if use_head else None
        self.feature_layers = resolve_feature_layers(None if feature_layers is None else list(feature_layers), num_layers)
        self.reset_parameters()

    # ------------------------------------------------------------------ structure (the rest: SiglipTowerBase)
    def flops_closed_form(self, grid_h: int, grid_w: int) -> int:
        """Forward FLOPs per image (2 per multiply-add, matmuls only): the patch embedding, and per block run
        8Nd^2 (qkv + proj) + 4Ndf (MLP) + 4N^2 d (scores and values); the MAP head is not run for VLM features."""
        n = grid_h * grid_w
        return self.depth_used * block_flops(n, self.hidden_size, self.intermediate_size) + self.patch_flops(n)

    def reset_parameters(self) -> None:
        """HF SigLIP init: lecun-normal conv, N(0, 1/sqrt(D)) positions, xavier attention/MLP weights."""
        init_siglip_weights(self, self.patch_embed.in_channels * self.patch_size**2)

    # ------------------------------------------------------------------ forward
    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(grid_h*grid_w, D) position table; for another grid than the native one, by `position_rule`."""
        n = self.native_grid
        if (grid_h, grid_w) == (n, n):
            return self.pos_embed
        if self.position_rule == "bucket":
            return self.pos_embed[bucket_position_ids(grid_h, grid_w, n, self.pos_embed.device)]
        return resize_table(self.pos_embed, n, grid_h, grid_w)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + positions: (B, C, H, W) -> (B, N, D), tokens in row-major (h, w) order."""
        x, (gh, gw) = self.patch_embed.tokens(pixel_values.to(self.patch_embed.weight.dtype))
        return x + self.position_embedding(gh, gw)

    def run_block(self, blk: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One block, recomputed in the backward when `activation_checkpointing` is on (training, grad)."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def hidden_states(self, pixel_values: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """HF-style `hidden_states`: [embeddings, after block 1, ..., after block `upto`], all pre-post-LN."""
        return self.block_states(self.embed(pixel_values), upto)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower output after the taps: (B, N, D) post-LN, or (B, N, D * len(feature_layers))."""
        return self.run_stack(self.embed(pixel_values))

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """MAP-head pooled output (HF `pooler_output`) from the post-LN last hidden state."""
        if self.head is None:
            raise RuntimeError("this tower was built without a head (model.use_head=false)")
        return self.head(last_hidden_state)


def build_tower(model_cfg: Any, position_rule: str = "bicubic") -> VisionTower:
    """Build the tower from a `ModelConfig` (`position_rule` comes from the model's family)."""
    act = getattr(model_cfg.hidden_act, "value", model_cfg.hidden_act)
    return VisionTower(
        image_size=model_cfg.image_size,
        patch_size=model_cfg.patch_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_layers=model_cfg.num_layers,
        num_heads=model_cfg.num_heads,
        num_channels=model_cfg.num_channels,
        layer_norm_eps=model_cfg.layer_norm_eps,
        hidden_act=act,
        use_head=model_cfg.use_head,
        feature_layers=None if model_cfg.feature_layers is None else list(model_cfg.feature_layers),
        position_rule=position_rule,
    )
