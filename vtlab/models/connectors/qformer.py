"""BLIP-2 Q-Former connector: learned queries, post-LN BERT layers with periodic cross-attention, then a Linear.

Paper: Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large
Language Models" (ICML 2023). Upstream: transformers `models/blip_2/modeling_blip_2.py`: `query_tokens`,
`Blip2QFormerModel` (image path, `query_embeds` only) and `language_projection` of
`Blip2ForConditionalGeneration`. Numerics of the query path:

    h = LN0(queries)
    per layer i:  h = LN1(h + proj(self_attn(h)))
                  if i % cross_attention_frequency == 0:  h = LN2(h + proj_x(cross_attn(h, image)))
                  h = LN3(h + fc2(act(fc1(h))))          # `intermediate_query` / `output_query`
    out = out_proj(h)                                     # `language_projection`

Attention scale head_dim^-0.5, biases everywhere, LayerNorm eps 1e-12, exact (erf) GELU. The text branch
of the Q-Former (`intermediate` / `output` for text tokens, used for ITM/ITC training) is not part of this
connector. Self-attention q, k, v and cross-attention k, v are fused into one GEMM each (rows q, k, v); both
attentions are vtlab.models.layers `attend` (shared with the perceiver); the BLIP-2 key maps run through
vtlab.models.keymap.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vtlab.models.keymap import Fuse, Rules, Split, rename_state, unrename_state
from vtlab.models.layers import attend


class QFormerLayer(nn.Module):
    def __init__(self, dim: int, ctx_dim: int, num_heads: int, hidden: int, eps: float, cross: bool, act: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.has_cross = cross
        if cross:
            self.cross_q = nn.Linear(dim, dim)
            self.cross_kv = nn.Linear(ctx_dim, 2 * dim)
            self.cross_proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if act == "gelu_tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)
        self.norm3 = nn.LayerNorm(dim, eps=eps)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        d = h.shape[-1]
        qkv = self.qkv(h)
        h = self.norm1(h + self.proj(attend(qkv[..., :d], qkv[..., d:], self.num_heads)))
        if self.has_cross:
            a = attend(self.cross_q(h), self.cross_kv(ctx), self.num_heads, mask=mask)
            h = self.norm2(h + self.cross_proj(a))
        return self.norm3(h + self.fc2(self.act(self.fc1(h))))


class QFormer(nn.Module):
    """(B, N, in_dim) -> (B, tokens, out_dim). Defaults are BLIP-2's Q-Former (BERT-base: 12 layers, width 768,
    12 heads, FFN 3072, cross-attention every 2nd layer, 32 queries)."""

    needs_grid = False

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tokens: int = 32,
        *,
        hidden: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        intermediate: int = 3072,
        cross_attention_frequency: int = 2,
        eps: float = 1e-12,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        if tokens < 1:
            raise ValueError(f"qformer: tokens must be positive, got {tokens}")
        if hidden % num_heads:
            raise ValueError(f"qformer: hidden={hidden} is not a multiple of num_heads={num_heads}")
        self.in_dim, self.out_dim, self.tokens, self.hidden = in_dim, out_dim, tokens, hidden
        self.query_tokens = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            QFormerLayer(hidden, in_dim, num_heads, intermediate, eps, i % cross_attention_frequency == 0, act)
            for i in range(depth)
        )
        self.out_proj = nn.Linear(hidden, out_dim)

    @staticmethod
    def valid_tokens(grid: tuple[int, int]) -> list[int] | None:
        return None  # any positive number of queries

    def query_states(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Q-Former output before `out_proj` (HF `Blip2QFormerModel(...).last_hidden_state`)."""
        # a copy, not an expand view: a view of a parameter made under no_grad trips the FLOP counter's tracker
        h = self.norm(self.query_tokens.repeat(x.shape[0], 1, 1))
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        for layer in self.layers:
            h = layer(h, x, attn_mask)
        return h

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`mask`: optional (B, N) bool, True for image tokens that the queries may attend to."""
        return self.out_proj(self.query_states(x, mask))

    def flops_closed_form(self, n_in: int, grid: tuple[int, int] | None = None) -> int:
        """Matmul FLOPs per image (2 per multiply-add), norms and elementwise ops excluded."""
        t, h, c = self.tokens, self.hidden, self.in_dim
        total = 2 * t * h * self.out_dim
        for layer in self.layers:
            total += 2 * t * h * 3 * h + 2 * 2 * t * t * h + 2 * t * h * h  # self-attention
            if layer.has_cross:
                total += 2 * t * h * h + 2 * n_in * c * 2 * h + 2 * 2 * t * n_in * h + 2 * t * h * h
            total += 2 * 2 * t * h * layer.fc1.out_features  # FFN
        return total


# ---------------------------------------------------------------------- BLIP-2 key mapping
_LAYER = r"qformer\.encoder\.layer\.(\d+)\."
_QKV = ("query", "key", "value")
_RENAMES: Rules = [
    (r"query_tokens", "query_tokens"),
    (r"qformer\.layernorm\.(weight|bias)", r"norm.\1"),
    (r"language_projection\.(weight|bias)", r"out_proj.\1"),
    (_LAYER + r"attention\.output\.dense\.(weight|bias)", r"layers.\1.proj.\2"),
    (_LAYER + r"attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.norm1.\2"),
    (_LAYER + r"crossattention\.attention\.query\.(weight|bias)", r"layers.\1.cross_q.\2"),
    (_LAYER + r"crossattention\.output\.dense\.(weight|bias)", r"layers.\1.cross_proj.\2"),
    (_LAYER + r"crossattention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.norm2.\2"),
    (_LAYER + r"intermediate_query\.dense\.(weight|bias)", r"layers.\1.fc1.\2"),
    (_LAYER + r"output_query\.dense\.(weight|bias)", r"layers.\1.fc2.\2"),
    (_LAYER + r"output_query\.LayerNorm\.(weight|bias)", r"layers.\1.norm3.\2"),
]
_FUSED = [
    Fuse(_LAYER + r"attention\.attention\.(query|key|value)\.(weight|bias)", r"layers.\1.qkv.\3", r"\2", _QKV),
    Fuse(_LAYER + r"crossattention\.attention\.(key|value)\.(weight|bias)", r"layers.\1.cross_kv.\3", r"\2", _QKV[1:]),
]
# Text-token branch of the Q-Former (`use_qformer_text_input`): not used on the image path.
TEXT_BRANCH = re.compile(_LAYER + r"(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)|qformer\.embeddings\..*")


_INVERSE: Rules = [
    (r"query_tokens", "query_tokens"),
    (r"norm\.(weight|bias)", r"qformer.layernorm.\1"),
    (r"out_proj\.(weight|bias)", r"language_projection.\1"),
    (r"layers\.(\d+)\.proj\.(weight|bias)", r"qformer.encoder.layer.\1.attention.output.dense.\2"),
    (r"layers\.(\d+)\.norm1\.(weight|bias)", r"qformer.encoder.layer.\1.attention.output.LayerNorm.\2"),
    (r"layers\.(\d+)\.cross_q\.(weight|bias)", r"qformer.encoder.layer.\1.crossattention.attention.query.\2"),
    (r"layers\.(\d+)\.cross_proj\.(weight|bias)", r"qformer.encoder.layer.\1.crossattention.output.dense.\2"),
    (r"layers\.(\d+)\.norm2\.(weight|bias)", r"qformer.encoder.layer.\1.crossattention.output.LayerNorm.\2"),
    (r"layers\.(\d+)\.fc1\.(weight|bias)", r"qformer.encoder.layer.\1.intermediate_query.dense.\2"),
    (r"layers\.(\d+)\.fc2\.(weight|bias)", r"qformer.encoder.layer.\1.output_query.dense.\2"),
    (r"layers\.(\d+)\.norm3\.(weight|bias)", r"qformer.encoder.layer.\1.output_query.LayerNorm.\2"),
]
_SPLIT = [
    Split(
        r"layers\.(\d+)\.qkv\.(weight|bias)",
        tuple(rf"qformer.encoder.layer.\1.attention.attention.{p}.\2" for p in _QKV),
    ),
    Split(
        r"layers\.(\d+)\.cross_kv\.(weight|bias)",
        tuple(rf"qformer.encoder.layer.\1.crossattention.attention.{p}.\2" for p in _QKV[1:]),
    ),
]


def blip2_to_native(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """`query_tokens`, `qformer.*`, `language_projection.*` of a `Blip2ForConditionalGeneration` state dict
    (under `prefix`) -> `QFormer` keys. Other top-level modules (vision_model, language_model) are ignored, the
    text branch (`TEXT_BRANCH`) is skipped; any other unknown key under qformer raises."""
    picked = {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix)
        and key[len(prefix) :].startswith(("qformer.", "query_tokens", "language_projection."))
        and not TEXT_BRANCH.fullmatch(key[len(prefix) :])
    }
    return rename_state(picked, _RENAMES, _FUSED, unknown="no QFormer name for BLIP-2 key", where=prefix)


def native_to_blip2(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of `blip2_to_native` (splits the fused projections back into query / key / value)."""
    return unrename_state(state, _INVERSE, _SPLIT, unknown="no BLIP-2 name for QFormer key", prefix=prefix)
