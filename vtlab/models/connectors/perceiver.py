"""Idefics2 perceiver resampler connector: SwiGLU modality projection, then a few perceiver layers.

Paper: Laurençon et al., "What matters when building vision-language models?" (Idefics2, 2024), after
Flamingo's perceiver resampler (Alayrac et al., 2022). Upstream: transformers
`models/idefics2/modeling_idefics2.py`, `Idefics2Connector` = `Idefics2MLP` (down(act(gate(x)) * up(x)),
no biases) followed by `Idefics2PerceiverResampler`. Each perceiver layer (`Idefics2PerceiverLayer`):

    lat = lat + o(attn(q(RMS(lat)), kv([RMS(ctx); RMS(lat)])))   # keys/values over context ++ latents
    lat = lat + mlp(RMS(lat))                                   # SwiGLU, hidden 4 * D
    ... final RMSNorm

with grouped-query attention (num_kv_heads <= num_heads, head h reads kv head h // (H / KV)), scale
head_dim^-0.5 and RMSNorm computed in fp32 (`Idefics2RMSNorm`). The perceiver works at the text width
(`out_dim`); the learned latents (`tokens` of them) are the output tokens. An optional (B, N) bool mask
marks valid patches (Idefics2's patch attention mask); latents are always attended. The attention itself is
vtlab.models.layers `attend` (shared with the Q-Former); the Idefics2 key maps run through vtlab.models.keymap.
"""

from __future__ import annotations

import torch
from torch import nn

from vtlab.models.keymap import Fuse, Rules, Split, rename_state, unrename_state
from vtlab.models.layers import attend


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in fp32, cast back, times a learned weight (LlamaRMSNorm numerics)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)), bias-free (`Idefics2MLP`)."""

    def __init__(self, dim: int, hidden: int, out: int, act: str = "silu") -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, out, bias=False)
        acts = {"silu": nn.SiLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}
        acts["gelu_pytorch_tanh"] = acts["gelu_tanh"]  # the transformers name
        self.act = acts[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class PerceiverAttention(nn.Module):
    """Latent queries over [context; latents] keys/values, GQA; k and v fused in one GEMM (rows k, v)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, num_kv_heads: int) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.q = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.kv = nn.Linear(dim, 2 * num_kv_heads * head_dim, bias=False)
        self.proj = nn.Linear(num_heads * head_dim, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        seq = torch.cat([context, latents], dim=1)
        return self.proj(attend(self.q(latents), self.kv(seq), self.num_heads, self.num_kv_heads, mask))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, num_kv_heads: int, eps: float, act: str) -> None:
        super().__init__()
        self.norm_latents = RMSNorm(dim, eps)
        self.norm_context = RMSNorm(dim, eps)
        self.attn = PerceiverAttention(dim, num_heads, head_dim, num_kv_heads)
        self.norm_mlp = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, 4 * dim, dim, act)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        latents = latents + self.attn(self.norm_latents(latents), self.norm_context(context), mask)
        return latents + self.mlp(self.norm_mlp(latents))


class PerceiverResampler(nn.Module):
    """(B, N, in_dim) -> (B, tokens, out_dim). Defaults are Idefics2-8B's perceiver (depth 3, 16 heads of 96,
    4 kv heads, SiLU); `proj_hidden` is the text model's intermediate size (Mistral-7B: 14336)."""

    needs_grid = False

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tokens: int = 64,
        *,
        depth: int = 3,
        num_heads: int = 16,
        head_dim: int = 96,
        num_kv_heads: int = 4,
        proj_hidden: int | None = None,
        proj_act: str = "silu",
        act: str = "silu",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if tokens < 1:
            raise ValueError(f"perceiver: tokens must be positive, got {tokens}")
        self.in_dim, self.out_dim, self.tokens = in_dim, out_dim, tokens
        self.proj_hidden = proj_hidden or 4 * out_dim
        self.proj = SwiGLU(in_dim, self.proj_hidden, out_dim, proj_act)
        self.latents = nn.Parameter(torch.ones(tokens, out_dim))  # HF init: ones
        self.layers = nn.ModuleList(
            PerceiverLayer(out_dim, num_heads, head_dim, num_kv_heads, eps, act) for _ in range(depth)
        )
        self.norm = RMSNorm(out_dim, eps)

    @staticmethod
    def valid_tokens(grid: tuple[int, int]) -> list[int] | None:
        return None  # any positive number of latents

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`mask`: optional (B, N) bool, True for real patches (padding patches are not attended)."""
        context = self.proj(x)
        b = x.shape[0]
        attn_mask = None
        if mask is not None:
            full = torch.cat([mask.bool(), mask.new_ones(b, self.tokens, dtype=torch.bool)], dim=1)
            attn_mask = full[:, None, None, :]
        # a copy, not an expand view: a view of a parameter made under no_grad trips the FLOP counter's tracker
        latents = self.latents.unsqueeze(0).repeat(b, 1, 1)
        for layer in self.layers:
            latents = layer(latents, context, attn_mask)
        return self.norm(latents)

    def flops_closed_form(self, n_in: int, grid: tuple[int, int] | None = None) -> int:
        """Matmul FLOPs per image (2 per multiply-add), norms and elementwise ops excluded."""
        c, d, i, t = self.in_dim, self.out_dim, self.proj_hidden, self.tokens
        total = 2 * n_in * (2 * c * i + i * d)
        for layer in self.layers:
            a = layer.attn
            hd_all, kv_all, s = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, n_in + t
            total += 2 * t * d * hd_all + 2 * s * d * 2 * kv_all  # q; k, v
            total += 2 * 2 * t * s * hd_all  # q k^T and attn @ v
            total += 2 * t * hd_all * d  # output projection
            total += 2 * t * 3 * d * 4 * d  # SwiGLU, hidden 4D
        return total


# ---------------------------------------------------------------------- Idefics2 key mapping
_RESAMPLER = r"perceiver_resampler\.layers\.(\d+)\."
_RENAMES: Rules = [  # Idefics2 connector name (after the prefix) -> native
    (r"modality_projection\.(gate|up|down)_proj\.weight", r"proj.\1.weight"),
    (r"perceiver_resampler\.latents", "latents"),
    (r"perceiver_resampler\.norm\.weight", "norm.weight"),
    (_RESAMPLER + r"input_latents_norm\.weight", r"layers.\1.norm_latents.weight"),
    (_RESAMPLER + r"input_context_norm\.weight", r"layers.\1.norm_context.weight"),
    (_RESAMPLER + r"post_attention_layernorm\.weight", r"layers.\1.norm_mlp.weight"),
    (_RESAMPLER + r"self_attn\.q_proj\.weight", r"layers.\1.attn.q.weight"),
    (_RESAMPLER + r"self_attn\.o_proj\.weight", r"layers.\1.attn.proj.weight"),
    (_RESAMPLER + r"mlp\.(gate|up|down)_proj\.weight", r"layers.\1.mlp.\2.weight"),
]
_INVERSE: Rules = [
    (r"proj\.(gate|up|down)\.weight", r"modality_projection.\1_proj.weight"),
    (r"latents", "perceiver_resampler.latents"),
    (r"norm\.weight", "perceiver_resampler.norm.weight"),
    (r"layers\.(\d+)\.norm_latents\.weight", r"perceiver_resampler.layers.\1.input_latents_norm.weight"),
    (r"layers\.(\d+)\.norm_context\.weight", r"perceiver_resampler.layers.\1.input_context_norm.weight"),
    (r"layers\.(\d+)\.norm_mlp\.weight", r"perceiver_resampler.layers.\1.post_attention_layernorm.weight"),
    (r"layers\.(\d+)\.attn\.q\.weight", r"perceiver_resampler.layers.\1.self_attn.q_proj.weight"),
    (r"layers\.(\d+)\.attn\.proj\.weight", r"perceiver_resampler.layers.\1.self_attn.o_proj.weight"),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)\.weight", r"perceiver_resampler.layers.\1.mlp.\2_proj.weight"),
]
_KV = Fuse(_RESAMPLER + r"self_attn\.([kv])_proj\.weight", r"layers.\1.attn.kv.weight", r"\2", ("k", "v"))
_KV_SPLIT = Split(
    r"layers\.(\d+)\.attn\.kv\.weight", tuple(rf"perceiver_resampler.layers.\1.self_attn.{p}_proj.weight" for p in "kv")
)


def idefics2_to_native(state: dict[str, torch.Tensor], prefix: str = "model.connector.") -> dict[str, torch.Tensor]:
    """The `prefix`-ed connector keys of an Idefics2 state dict -> `PerceiverResampler` keys.

    Keys outside `prefix` are ignored; an unknown key under it raises (no silent partial copy)."""
    picked = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    unknown = "no PerceiverResampler name for Idefics2 key"
    return rename_state(picked, _RENAMES, [_KV], unknown=unknown, where=prefix)


def native_to_idefics2(state: dict[str, torch.Tensor], prefix: str = "model.connector.") -> dict[str, torch.Tensor]:
    """Inverse of `idefics2_to_native` (splits the fused kv back into k_proj / v_proj)."""
    unknown = "no Idefics2 name for PerceiverResampler key"
    return unrename_state(state, _INVERSE, [_KV_SPLIT], unknown=unknown, prefix=prefix)
