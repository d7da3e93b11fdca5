"""What the native towers share (clip.py, dinov2.py, siglip.py, siglip2.py): their base class, layers, HF names and
image helpers. Each tower module keeps only what is its own (embeddings, position rule, init, key maps' extras).

- `TowerBase`: the structure every tower has (sizes, `native_grid`, `grid_for`, `depth_used`, `feature_dim`,
  `prefix_tokens`, `inactive_modules`, the patch-embedding FLOPs) and the block stack with feature taps
  (`block_states`: HF-style hidden_states; `run_stack`: the output norm without taps, the concatenated taps
  with them, no block past the deepest tap); `init_siglip_weights` (the SigLIP / SigLIP2 init) and
  `resize_table` (a position table interpolated to another grid).
- Layers of the CLIP, DINOv2 and SigLIP2 towers, with the numerics of the transformers encoder layers they
  mirror (`CLIPEncoderLayer`, `Dinov2Layer`, `Siglip2EncoderLayer`): pre-LN blocks, q/k/v fused into one
  Linear (rows q, k, v), attention through `F.scaled_dot_product_attention` with scale head_dim^-0.5 and an
  optional boolean key mask, optional LayerScale, a plain or SwiGLU MLP; the closed-form FLOPs of one block.
  (The SigLIP `VisionTower` runs vtlab.models.layers' blocks, which carry the fast paths.)
- HF names of the CLIP-style encoder (`encoder.layers.N.*` <-> `blocks.N.*`, q/k/v fused and split), the
  rules the towers' key maps share (applied by vtlab.models.keymap).
- The PIL-side image helpers (RGB conversion, shortest-edge resize, center crop, rescale/normalise) that
  reproduce transformers' `PilBackend` image processors, which resize uint8 images with Pillow and then
  rescale in float64 and normalise in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vtlab.models.kernels import add_layer_norm, triton_usable
from vtlab.models.keymap import Fuse, Rules, Split, split_qkv, strip_prefix  # noqa: F401  (the last two re-exported)
from vtlab.models.layers import activation

# ----------------------------------------------------------------------------------------------- layers


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


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, gh*gw, p*p*C): non-overlapping patches row-major, each flattened in (row, col, channel)
    order as the NaFlex processor packs them (transformers Siglip2ImageProcessor); a ragged edge is cropped."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images[:, :, : gh * patch, : gw * patch].reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


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


# ----------------------------------------------------------------------------------------------- towers


def resize_table(
    table: torch.Tensor, native: int, grid_h: int, grid_w: int, mode: str = "bicubic", antialias: bool = False
) -> torch.Tensor:
    """A row-major (native^2, D) position table seen as a native x native image, `F.interpolate`d
    (align_corners=False) to (grid_h, grid_w): (grid_h * grid_w, D), row-major."""
    image = table.reshape(1, native, native, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(grid_h, grid_w), mode=mode, align_corners=False, antialias=antialias)
    return image.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)


class TowerBase(nn.Module):
    """What every native ViT tower shares (ClipTower, Dinov2Tower, Siglip2Tower, and `VisionTower` of
    vtlab.models.towers.siglip): the structure that the stack, the trainer and the cost rows read (sizes,
    patch grid, output width and prefix tokens, the modules `forward` never runs) and the block stack with
    feature taps.

    A subclass calls `__init__` with its sizes (in the signature's order), then builds `blocks` (an nn.ModuleList of blocks taking
    `(x)` or `(x, mask)`) and sets `feature_layers` (hidden_states indices resolved to 0..L, or None). It
    says which norm its forward applies to the last state when there are no taps (`output_norm`) and which
    modules its forward never runs whatever the taps (`idle_modules`); `run_block` may wrap a block
    (activation checkpointing)."""

    blocks: nn.ModuleList
    feature_layers: list[int] | None
    stream_norm_kernel: bool = True  # the residual stream's LayerNorms through vtlab.models.kernels (else torch's)

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        hidden_size: int,
        intermediate_size: int,
        num_layers: int,
        num_channels: int,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_layers = num_layers
        self.num_channels = num_channels
        self.native_grid = image_size // patch_size

    # ------------------------------------------------------------------ structure
    @property
    def depth_used(self) -> int:
        """Blocks actually run by `forward` (stops after the deepest feature tap)."""
        return self.num_layers if self.feature_layers is None else max(self.feature_layers)

    @property
    def feature_dim(self) -> int:
        """Channels of the output: the width, times the number of taps."""
        return self.hidden_size * (1 if self.feature_layers is None else len(self.feature_layers))

    @property
    def prefix_tokens(self) -> int:
        """Tokens in front of the patch tokens in the output (a kept class token, registers): none here."""
        return 0

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid of a (height, width) input (valid padding: a remainder is dropped)."""
        return height // self.patch_size, width // self.patch_size

    def output_norm(self) -> nn.Module | None:
        """The norm `forward` applies to the last hidden state when there are no taps (None: none)."""
        return None

    def idle_modules(self) -> list[nn.Module | None]:
        """Modules `forward` never runs whatever the taps (None entries: absent), e.g. a pooling head."""
        return []

    def inactive_modules(self) -> list[nn.Module]:
        """Modules `forward` never touches: blocks past the deepest tap, the output norm with taps, idle modules."""
        unused: list[nn.Module] = list(self.blocks[self.depth_used :])
        norm = self.output_norm()
        if self.feature_layers is not None and norm is not None:
            unused.append(norm)
        unused.extend(m for m in self.idle_modules() if m is not None)
        return unused

    def patch_flops(self, n: int) -> int:
        """Matmul FLOPs (2 per multiply-add) of the patch embedding on n patches: 2 N C p^2 d."""
        return 2 * n * self.num_channels * self.patch_size**2 * self.hidden_size

    # ------------------------------------------------------------------ forward
    def run_block(self, blk: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One block; `mask` (a key mask) is passed only when there is one."""
        return blk(x) if mask is None else blk(x, mask)

    def uses_stream(self, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
        """Whether `run_stack` carries the residual stream of `Block.stream_step` (vtlab.models.fastpaths
        `residual_gemm`): every block opts in, CUDA, no grad, no autocast, no mask, one dtype."""
        blocks = list(self.blocks)
        return (len(blocks) > 0 and all(getattr(b, "streams", lambda: False)() for b in blocks) and x.is_cuda
                and mask is None and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cuda")
                and all(p.dtype == x.dtype for p in blocks[0].parameters()))

    def uses_fused_norm(self, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
        """Whether `run_stack` fuses each residual add into the next LayerNorm (`Block.fused_step`,
        `task.fused_norm`): every block opts in, the kernel runs for x (CUDA), no mask, no activation checkpointing
        in this forward."""
        blocks = list(self.blocks)
        checkpointing = getattr(self, "activation_checkpointing", False) and self.training and torch.is_grad_enabled()
        return (len(blocks) > 0 and all(getattr(b, "fuses_norm", lambda: False)() for b in blocks) and mask is None
                and triton_usable(x) and not checkpointing)

    def fused_norm_states(self, x: torch.Tensor, upto: int, taps: list[int] | None,
                          norm: nn.Module | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks 1..`upto` through `Block.fused_step` from the embedding `x`: the last state (`norm` of it where
        given, fused with the last add where it is a LayerNorm) and the hidden states at the `taps`."""
        wanted = set(taps or [])
        states: dict[int, torch.Tensor] = {0: x} if 0 in wanted else {}
        h, pending = x, None
        for i, blk in enumerate(self.blocks[:upto], start=1):
            h, pending = blk.fused_step(h, pending)
            if i in wanted:  # a tap materialises the state; the next block starts from it
                h, pending = h + pending, None
                states[i] = h
        if norm is None:
            last = h if pending is None else h + pending
        else:
            last = norm(h) if pending is None else add_layer_norm(h, pending, norm)[1]
        return last, [states[i] for i in (taps or [])]

    def stream_states(self, x: torch.Tensor, upto: int, taps: list[int] | None,
                      norm_kernel: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks 1..`upto` on the residual stream (`Block.stream_step`) from the embedding `x` (not modified):
        the last state x_upto and the hidden states at the `taps` (indices 0..upto, in their order)."""
        r = x.contiguous().clone()
        acc = torch.zeros(r.shape[-1], device=r.device, dtype=r.dtype)
        wanted = set(taps or [])
        states: dict[int, torch.Tensor] = {0: x} if 0 in wanted else {}
        for i, blk in enumerate(self.blocks[:upto], start=1):
            acc = blk.stream_step(r, acc, norm_kernel)
            if i in wanted:
                states[i] = r + acc
        return r + acc, [states[i] for i in (taps or [])]

    def block_states(
        self, x: torch.Tensor, upto: int | None = None, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """HF-style `hidden_states` from the embedding `x`: [x, after block 1, ..., after block `upto`]."""
        if self.uses_stream(x, mask):
            n = self.num_layers if upto is None else upto
            return self.stream_states(x, n, list(range(n + 1)), self.stream_norm_kernel)[1]
        states = [x]
        for blk in self.blocks[: self.num_layers if upto is None else upto]:
            x = self.run_block(blk, x, mask)
            states.append(x)
        return states

    def run_stack(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding `x` -> the tower output before any prefix selection. Without taps: every block, then
        `output_norm` (only the running state is kept); with taps: the tapped hidden states concatenated on
        channels, no block past the deepest tap run."""
        if self.uses_stream(x, mask):
            last, feats = self.stream_states(x, self.depth_used, self.feature_layers, self.stream_norm_kernel)
            if self.feature_layers is None:
                norm = self.output_norm()
                return last if norm is None else norm(last)
        elif self.uses_fused_norm(x, mask):
            norm = self.output_norm() if self.feature_layers is None else None
            last, feats = self.fused_norm_states(x, self.depth_used, self.feature_layers, norm)
            if self.feature_layers is None:
                return last
        elif self.feature_layers is None:
            for blk in self.blocks:
                x = self.run_block(blk, x, mask)
            norm = self.output_norm()
            return x if norm is None else norm(x)
        else:
            states = self.block_states(x, self.depth_used, mask)
            feats = [states[i] for i in self.feature_layers]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)


class SiglipTowerBase(TowerBase):
    """A SigLIP-style tower (VisionTower, Siglip2Tower): `post_norm` applied without taps, an optional MAP
    `head` (None without) that `forward` never runs (`pool` does), the SigLIP init."""

    post_norm: nn.Module
    head: nn.Module | None

    def output_norm(self) -> nn.Module | None:
        return self.post_norm

    def idle_modules(self) -> list[nn.Module | None]:
        """The MAP head (not run for VLM features)."""
        return [self.head]

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the tower) that AdamW must not decay, besides biases and norms."""
        return {"pos_embed", "head.probe"}


def init_siglip_weights(tower: TowerBase, fan_in: int) -> None:
    """HF SigLIP / SigLIP2 init: lecun-normal patch embedding (truncated at 2 std; `fan_in` = C p^2), zero
    patch bias, N(0, 1/sqrt(d)) positions, xavier attention / MLP weights with zero (attention) and
    N(0, 1e-6) (MLP) biases, and, with a MAP head, xavier probe and in_proj."""
    std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978
    nn.init.trunc_normal_(tower.patch_embed.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(tower.patch_embed.bias)
    nn.init.normal_(tower.pos_embed, std=tower.hidden_size**-0.5)
    for blk in tower.blocks:
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(blk.mlp.fc1.bias, std=1e-6)
        nn.init.normal_(blk.mlp.fc2.bias, std=1e-6)
    if tower.head is not None:
        nn.init.xavier_uniform_(tower.head.probe)
        nn.init.xavier_uniform_(tower.head.in_proj.weight)
        nn.init.zeros_(tower.head.in_proj.bias)


# ----------------------------------------------------------------------------------------------- HF names
# transformers' CLIP-style encoder (`encoder.layers.N.*` of CLIP, SigLIP, SigLIP2 and Idefics3 towers) <-> the
# native `blocks.N.*` (vtlab.models.keymap); each tower adds the names of its embeddings, norms and head
ENCODER_RULES: Rules = [
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
]
ENCODER_INVERSE: Rules = [
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layers.\1.layer_norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
]
ENCODER_QKV = Fuse(
    r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3", r"\2", ("q", "k", "v")
)
ENCODER_QKV_SPLIT = Split(
    r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", tuple(rf"encoder.layers.\1.self_attn.{p}_proj.\2" for p in "qkv")
)


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
