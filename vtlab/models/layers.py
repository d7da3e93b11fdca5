"""Building blocks of the native towers and heads: fused-QKV attention, MLP, pre-LN block, attention pooling.

Numerics mirror transformers' `SiglipEncoderLayer` (pre-LN, LayerNorm eps from the config, tanh GELU,
scale head_dim^-0.5, no mask, no dropout at inference) with q/k/v fused into one GEMM, and attention
through `F.scaled_dot_product_attention` so that PyTorch picks cuDNN/flash kernels on a GPU.
`attend` is the attention of the connectors (projected queries over a fused k/v, grouped-query capable: the
perceiver resampler's and the Q-Former's self- and cross-attention). `AttentionPool` is the one learned-probe
pooling module (timm's `AttentionPoolLatent` idea): SigLIP's MAP head (`SiglipMultiheadAttentionPoolingHead`,
fused `in_proj` like `nn.MultiheadAttention`) and the classifier head of `task=train` (vtlab.models.heads) are
both built on it. `activation` is the one map from transformers' activation names (`hidden_act`, `connector.act`)
to modules, for every tower and connector (transformers' `ACT2FN` names; an unknown name raises).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vtlab.models.fastpaths import autocast_operands, linear_gelu, residual_addmm_
from vtlab.models.kernels import add_layer_norm, linear_bias_gelu, shifted_layer_norm, triton_usable
from vtlab.models.sdpa import layer_kernels


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's activation (transformers' `quick_gelu`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


TANH_GELU_NAMES = ("gelu_tanh", "gelu_pytorch_tanh", "gelu_new")  # transformers' names of the tanh GELU


def activation(name: str) -> nn.Module:
    """The activation of a `hidden_act` / `connector.act` name (transformers' names): `gelu_tanh` (HF
    gelu_pytorch_tanh, the SigLIP towers), `gelu` (exact erf GELU: projectors, timm's default), `quick_gelu` (CLIP),
    `silu`. An unknown name raises: it never falls back to another function silently."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name in TANH_GELU_NAMES:
        return nn.GELU(approximate="tanh")
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"unsupported activation {name!r}; valid: gelu_tanh (gelu_pytorch_tanh), gelu, quick_gelu, silu")


def attend(
    q: torch.Tensor,
    kv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention of projected queries over projected keys/values, heads merged back.

    `q` (B, T, H*hd); `kv` (B, S, 2*G*hd) with rows [k; v] (a fused k/v Linear, or the k/v columns of a
    fused qkv), G = `num_kv_heads` (None: H) kv heads shared by H / G query heads each (grouped-query:
    head h reads kv head h // (H / G)). SDPA with scale hd^-0.5 and the optional boolean `mask`
    (broadcast to (B, H, T, S), True = attended). Returns (B, T, H*hd), before the output projection.
    The connectors' attention (the perceiver's latent attention, the Q-Former's self- and cross-attention)."""
    b, t, _ = q.shape
    s = kv.shape[1]
    h = num_heads
    g = h if num_kv_heads is None else num_kv_heads
    hd = q.shape[-1] // h
    q = q.view(b, t, h, hd).transpose(1, 2)
    kv = kv.view(b, s, 2, g, 1, hd).expand(b, s, 2, g, h // g, hd).reshape(b, s, 2, h, hd)
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, t, h * hd)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows ordered q, k, v as in timm)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sdpa_backends: list[SDPBackend] | None = None  # None: PyTorch's own choice (vtlab.models.sdpa.configure)

    def core(self, x: torch.Tensor) -> torch.Tensor:
        """The attention before the output projection, (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        kernels = layer_kernels(self.sdpa_backends, n, n)
        with sdpa_kernel(kernels) if kernels else nullcontext():
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.core(x))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2. With `fused_gelu` set (CUDA inference, tanh GELU), fc1's bias and GELU run in
    the cuBLASLt GEMM epilogue (`torch._addmm_activation`), saving one read and one write of the
    (tokens x hidden) activation. With `fused_gelu_train` set (CUDA, tanh GELU, grad enabled) training takes the
    same epilogue through vtlab.models.fastpaths.linear_gelu, whose backward recomputes the pre-activation."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.tanh_gelu = act in TANH_GELU_NAMES  # the fused GELU paths compute the tanh GELU only
        self.fused_gelu = False
        self.fused_gelu_train = False
        self.gelu_kernel = False  # training: fc1's bias + GELU as one Triton kernel (vtlab.models.kernels.linear_bias_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gelu_train and self.tanh_gelu and x.is_cuda and torch.is_grad_enabled():
            return self.fc2(linear_gelu(x, self.fc1, "tanh"))
        if self.gelu_kernel and self.tanh_gelu and torch.is_grad_enabled() and triton_usable(x) \
                and type(self.fc1) is nn.Linear and self.fc1.bias is not None:
            return self.fc2(linear_bias_gelu(x, self.fc1))
        return self.fc2(self.hidden(x))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """gelu(fc1(x)): in the cuBLASLt epilogue with `fused_gelu` (CUDA inference, tanh GELU)."""
        if self.fused_gelu and self.tanh_gelu and x.is_cuda and not torch.is_grad_enabled() \
                and type(self.fc1) is nn.Linear:  # not an fp8 or LoRA-wrapped fc1: the epilogue reads its weight
            flat, w, b = autocast_operands(x.reshape(-1, x.shape[-1]), self.fc1)  # frozen towers under bf16-mixed
            h = torch._addmm_activation(b, flat, w.t(), use_gelu=True)
            return h.view(*x.shape[:-1], h.shape[-1])
        return self.act(self.fc1(x))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN1(x)), then + mlp(LN2(.))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden, act)
        self.residual_gemm = False  # CUDA inference: the residual stream of stream_step (vtlab.models.fastpaths)
        self.fused_norm = False  # each residual add and the LayerNorm after it in one kernel (fused_step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def streams(self) -> bool:
        """`residual_gemm` is set and the out-projection and fc2 are plain Linears (not fp8)."""
        return self.residual_gemm and type(self.attn.proj) is nn.Linear and type(self.mlp.fc2) is nn.Linear

    def fuses_norm(self) -> bool:
        """`fused_norm` is set (a LayerNorm the kernel cannot take runs as torch's ops inside add_layer_norm)."""
        return self.fused_norm

    def fused_step(self, h: torch.Tensor, pending: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The block on x = h + pending (pending None: x = h), each residual add done inside the LayerNorm that
        reads it (vtlab.models.kernels.add_layer_norm, forward and backward); returns (h', pending'), the block's
        output being h' + pending' (the MLP's branch is added by the next block's first LayerNorm)."""
        if pending is None:
            y = self.norm1(h)
        else:
            h, y = add_layer_norm(h, pending, self.norm1)
        h, y = add_layer_norm(h, self.attn(y), self.norm2)
        return h, self.mlp(y)

    def stream_step(self, r: torch.Tensor, acc: torch.Tensor, norm_kernel: bool = True) -> torch.Tensor:
        """The block on the residual stream r = x - acc (r (B, N, D) updated in place, acc (D,) the biases of the
        out-projections and fc2s so far); returns the new acc. No grad: r is overwritten."""
        branch = self.attn.core(shifted_layer_norm(r, acc, self.norm1, norm_kernel))
        residual_addmm_(r, branch.reshape(-1, branch.shape[-1]), self.attn.proj.weight)
        acc = acc + self.attn.proj.bias.to(acc.dtype)
        hidden = self.mlp.hidden(shifted_layer_norm(r, acc, self.norm2, norm_kernel))
        residual_addmm_(r, hidden.reshape(-1, hidden.shape[-1]), self.mlp.fc2.weight)
        return acc + self.mlp.fc2.bias.to(acc.dtype)



class AttentionPool(nn.Module):
    """One learned probe attends over all tokens: (B, N, D) -> (B, D), after the output projection.

    `fused_in_proj=True`: `in_proj` holds [Wq; Wk; Wv] like `nn.MultiheadAttention.in_proj_weight` (SigLIP's
    MAP head); otherwise separate `q` and `kv` Linears. Either way only the probe's one query row is computed.
    """

    def __init__(self, dim: int, num_heads: int, fused_in_proj: bool = True, probe_std: float | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AttentionPool: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.fused_in_proj = fused_in_proj
        probe = torch.zeros(1, 1, dim) if probe_std is None else torch.randn(1, 1, dim) * probe_std
        self.probe = nn.Parameter(probe)
        if fused_in_proj:
            self.in_proj = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h, hd = self.num_heads, d // self.num_heads
        if self.fused_in_proj:
            w, bias = self.in_proj.weight, self.in_proj.bias
            q = F.linear(self.probe, w[:d], bias[:d])
            kv = F.linear(x, w[d:], bias[d:])
        else:
            q, kv = self.q(self.probe), self.kv(x)
        q = q.expand(b, 1, d).reshape(b, 1, h, hd).transpose(1, 2)
        kv = kv.view(b, n, 2, h, hd).permute(2, 0, 3, 1, 4)
        pooled = F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(1, 2).reshape(b, d)
        return self.out_proj(pooled)


class MAPHead(AttentionPool):
    """Multihead attention pooling (SigLIP `head`): the pooled probe, then + mlp(LayerNorm(.))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float, act: str) -> None:
        super().__init__(dim, num_heads, fused_in_proj=True)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = super().forward(x)
        return a + self.mlp(self.norm(a))
