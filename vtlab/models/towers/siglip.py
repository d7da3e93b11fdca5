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
checkpointing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vtlab.models.fastpaths import PatchEmbed
from vtlab.models.layers import Block, MAPHead

POSITION_RULES = ("bicubic", "bucket")


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


class VisionTower(nn.Module):
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
        super().__init__()
        if position_rule not in POSITION_RULES:
            raise ValueError(f"position_rule={position_rule!r} is unknown; valid: {', '.join(POSITION_RULES)}")
        self.position_rule = position_rule
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.native_grid = image_size // patch_size
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

    # ------------------------------------------------------------------ structure
    @property
    def depth_used(self) -> int:
        """Blocks actually run by `forward` (stops after the deepest feature tap)."""
        return self.num_layers if self.feature_layers is None else max(self.feature_layers)

    @property
    def feature_dim(self) -> int:
        return self.hidden_size * (1 if self.feature_layers is None else len(self.feature_layers))

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def inactive_modules(self) -> list[nn.Module]:
        """Modules `forward` never touches (blocks past the deepest tap, post_norm with taps, the head)."""
        unused: list[nn.Module] = list(self.blocks[self.depth_used :])
        if self.feature_layers is not None:
            unused.append(self.post_norm)
        if self.head is not None:
            unused.append(self.head)
        return unused

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the tower) that AdamW must not decay, besides biases and norms."""
        return {"pos_embed", "head.probe"}

    def flops_closed_form(self, grid_h: int, grid_w: int) -> int:
        """Forward FLOPs per image (2 per multiply-add, matmuls only): the patch embedding, and per block run
        8Nd^2 (qkv + proj) + 4Ndf (MLP) + 4N^2 d (scores and values); the MAP head is not run for VLM features."""
        n, d = grid_h * grid_w, self.hidden_size
        f = self.blocks[0].mlp.fc1.out_features if len(self.blocks) else 0
        channels = self.patch_embed.in_channels
        per_block = 8 * n * d * d + 4 * n * d * f + 4 * n * n * d
        return self.depth_used * per_block + 2 * n * channels * self.patch_size**2 * d

    def reset_parameters(self) -> None:
        """HF SigLIP init: lecun-normal conv, N(0, 1/sqrt(D)) positions, xavier attention/MLP weights."""
        d = self.hidden_size
        fan_in = self.patch_embed.in_channels * self.patch_size**2
        std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978  # lecun normal, truncated at 2 std
        nn.init.trunc_normal_(self.patch_embed.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.pos_embed, std=d**-0.5)
        for blk in self.blocks:
            for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
            nn.init.normal_(blk.mlp.fc1.bias, std=1e-6)
            nn.init.normal_(blk.mlp.fc2.bias, std=1e-6)
        if self.head is not None:
            nn.init.xavier_uniform_(self.head.probe)
            nn.init.xavier_uniform_(self.head.in_proj.weight)
            nn.init.zeros_(self.head.in_proj.bias)

    # ------------------------------------------------------------------ forward
    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(grid_h*grid_w, D) position table; for another grid than the native one, by `position_rule`."""
        n = self.native_grid
        if (grid_h, grid_w) == (n, n):
            return self.pos_embed
        if self.position_rule == "bucket":
            return self.pos_embed[bucket_position_ids(grid_h, grid_w, n, self.pos_embed.device)]
        table = self.pos_embed.reshape(1, n, n, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + positions: (B, C, H, W) -> (B, N, D), tokens in row-major (h, w) order."""
        x, (gh, gw) = self.patch_embed.tokens(pixel_values.to(self.patch_embed.weight.dtype))
        return x + self.position_embedding(gh, gw)

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def hidden_states(self, pixel_values: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """HF-style `hidden_states`: [embeddings, after block 1, ..., after block `upto`], all pre-post-LN."""
        x = self.embed(pixel_values)
        states = [x]
        for blk in self.blocks[: self.num_layers if upto is None else upto]:
            x = self._block(blk, x)
            states.append(x)
        return states

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower output after the taps: (B, N, D) post-LN, or (B, N, D * len(feature_layers))."""
        if self.feature_layers is None:
            x = self.embed(pixel_values)
            for blk in self.blocks:
                x = self._block(blk, x)
            return self.post_norm(x)
        states = self.hidden_states(pixel_values, upto=self.depth_used)
        feats = [states[i] for i in self.feature_layers]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)

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
