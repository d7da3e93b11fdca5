"""Shared pieces of the CLIP, DINOv2 and SigLIP2 native towers (clip.py, dinov2.py, siglip2.py).

Numerics follow the transformers encoder layers these towers mirror (`CLIPEncoderLayer`, `Dinov2Layer`,
`Siglip2EncoderLayer`): pre-LN blocks, q/k/v fused into one Linear (rows q, k, v), attention through
`F.scaled_dot_product_attention` with scale head_dim^-0.5 and an optional boolean key mask, optional
LayerScale, a plain or SwiGLU MLP. Also the closed-form FLOPs of one block and the PIL-side image helpers
(RGB conversion, shortest-edge resize, center crop, rescale/normalise) that reproduce transformers'
`PilBackend` image processors, which resize uint8 images with Pillow and then rescale in float64 and
normalise in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# ----------------------------------------------------------------------------------------------- layers


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's activation (HF `quick_gelu`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """HF `hidden_act` names: quick_gelu, gelu (erf), gelu_pytorch_tanh / gelu_tanh, silu."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new"):
        return nn.GELU(approximate="tanh")
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"unsupported hidden_act {name!r}; valid: quick_gelu, gelu, gelu_pytorch_tanh, silu")


class Attention(nn.Module):
    """Self-attention with one fused qkv projection; `mask` (B, 1, 1, N) bool, True = key attended."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """DINOv2-giant FFN: fc1 holds [gate; up] (HF `weights_in`), out = fc2(silu(gate) * up)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc1(x).split(self.hidden, dim=-1)
        return self.fc2(F.silu(gate) * up)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (HF `Dinov2LayerScale.lambda1`)."""

    def __init__(self, dim: int, value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-LN block: x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(.))); ls* are Identity without LayerScale."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        eps: float,
        act: str,
        *,
        qkv_bias: bool = True,
        layer_scale: float | None = None,
        swiglu: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, mlp_hidden) if swiglu else Mlp(dim, mlp_hidden, act)
        self.ls2 = nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


def block_flops(n: int, dim: int, mlp_hidden: int, swiglu: bool = False) -> int:
    """Matmul FLOPs (2 per multiply-add) of one block on n tokens: qkv + proj + MLP + 4 n^2 d attention."""
    mlp = 3 * dim * mlp_hidden if swiglu else 2 * dim * mlp_hidden
    return 2 * n * (3 * dim * dim + dim * dim + mlp) + 4 * n * n * dim


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int] | None:
    """hidden_states indices (negative from the end, L+1 entries) -> 0..L; ValueError when out of range."""
    if layers is None:
        return None
    out = [i if i >= 0 else num_layers + 1 + i for i in layers]
    bad = [i for i, r in zip(layers, out, strict=True) if not 0 <= r <= num_layers]
    if bad or not out:
        raise ValueError(
            f"feature_layers {list(layers)} out of range for {num_layers} layers (valid -{num_layers + 1}..{num_layers})"
        )
    return out


def split_qkv(state: dict[str, torch.Tensor], key: str, out: dict[str, torch.Tensor], names: Sequence[str]) -> None:
    """native `...qkv.{weight,bias}` (rows q, k, v) -> three HF tensors under `names` (q, k, v order)."""
    for name, part in zip(names, state[key].chunk(3, dim=0), strict=True):
        out[name] = part


def strip_prefix(state: dict[str, torch.Tensor], prefix: str, wrappers: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Keys under `prefix` with it removed (others are left to their owners), then an optional wrapper
    (e.g. `vision_model.`) removed too; a key like `position_ids` (non-persistent in v5) is dropped."""
    picked: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        for wrapper in wrappers:
            if key.startswith(wrapper):
                key = key[len(wrapper) :]
                break
        if key.endswith("position_ids"):
            continue
        picked[key] = value
    return picked


# ----------------------------------------------------------------------------------------------- images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8, as transformers' `convert_to_rgb`: alpha composited onto white, grey repeated."""
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 HWC array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, C) array with C in 1, 3, 4, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:4] / 255
        return np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return arr


def pil_resize(rgb: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """Pillow resize of a uint8 (H, W, 3) array to (height, width)."""
    return np.asarray(Image.fromarray(rgb).resize((width, height), resample=resample))


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Short side -> `shortest`, long side int(shortest * long / short) (truncated, as HF does)."""
    if width <= height:
        return int(shortest * height / width), shortest
    return shortest, int(shortest * width / height)


def center_crop(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop of (H, W, C), offsets (H - h) // 2; zero-padded around when the image is smaller."""
    h, w = rgb.shape[:2]
    if h < height or w < width:
        ph, pw = max(height, h), max(width, w)
        canvas = np.zeros((ph, pw, rgb.shape[2]), dtype=rgb.dtype)
        top, left = -(-(ph - h) // 2), -(-(pw - w) // 2)  # ceil, as HF pads
        canvas[top : top + h, left : left + w] = rgb
        # the crop window of the unpadded image, shifted by the padding
        t0, l0 = (h - height) // 2 + top, (w - width) // 2 + left
        return canvas[max(0, t0) : min(ph, t0 + height), max(0, l0) : min(pw, l0 + width)]
    top, left = (h - height) // 2, (w - width) // 2
    return rgb[top : top + height, left : left + width]


def rescale_normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (H, W, C) -> float32 (C, H, W): x * (1/255) in float64 cast to float32, then (x - mean) / std
    in float32."""
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_crop_normalize(
    image: Image.Image | np.ndarray,
    size: int,
    crop: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    resample: int = Image.Resampling.BICUBIC,
) -> torch.Tensor:
    """Shortest-edge resize, center crop, rescale, normalise: (3, crop_h, crop_w) float32."""
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    rgb = to_rgb_uint8(image)
    rgb = pil_resize(rgb, *shortest_edge_size(rgb.shape[0], rgb.shape[1], size), resample)
    return torch.from_numpy(rescale_normalize(center_crop(rgb, crop_h, crop_w), mean, std))
