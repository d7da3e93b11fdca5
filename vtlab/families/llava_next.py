"""The LlavaNext / Granite-Vision family: "anyres" tiling and packing, its taps + MLP connector, checkpoints, export.

Mirrors transformers v5:
- `select_best_resolution` of `image_processing_utils` (most effective pixels, then least waste; the first
  pinpoint wins a full tie, so pinpoint order matters) and `get_patch_output_size` (fit keeping aspect, ceil).
- `LlavaNextImageProcessorPil`: frame 0 is the whole image resized to crop x crop (BICUBIC); then the image
  resized to fit the best pinpoint, padded symmetrically with 0 in uint8 space (so -1 after Granite's 0.5 / 0.5
  normalisation; the odd pixel goes right / bottom) and cut into crop x crop tiles, row-major. The processor's
  per-crop `resize(shortest_edge=crop)` + `center_crop(crop)` are identity on crop x crop frames (Pillow returns
  a copy for a same-size resize), so they are skipped here. Then x / 255 and (x - mean) / std.
- `LlavaNextModel.pack_image_features` + `unpad_image` (base tokens first, f.14): the tiles' features laid out
  as a (rows * grid, cols * grid) map, the letterbox rows / columns removed with `int(round(x, 7))`, one
  `image_newline` column appended per row, flattened row-major. A single frame packs as base + one newline.
- `LlavaNextProcessor._get_number_of_features` (strategy "full", no CLS): grid^2 + h' * w' + h' tokens.
Pinpoints and sizes are (height, width) pairs throughout (upstream's "(width, height)" docstring is wrong).
Pinpoints must be multiples of `crop` (upstream's processor and model disagree otherwise).

Checkpoints: `LlavaNextForConditionalGeneration` hub / v4 names (`vision_tower.vision_model.*`,
`multi_modal_projector.linear_{1,2}.*`, `image_newline`) and v5 (`[model.]vision_tower.*`); `LlavaNextConfig`
(`vision_feature_layer`, `vision_feature_select_strategy` must be `full` for a SigLIP tower,
`projector_hidden_act`, `multimodal_projector_bias`, `image_grid_pinpoints`). A checkpoint's pinpoints are a
setting the preset may leave open (`carried_fields`): taken from the checkpoint, or a differing value refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vtlab.errors import CheckpointError, ConfigError
from vtlab.families.base import Layout, register_family
from vtlab.families.lm_config import LLAVA_LM_HUB, LLAVA_LM_PREFIXES
from vtlab.families.pixels import ImageLike, normalise, resize, to_uint8_hwc
from vtlab.families.siglip import (
    VISION_DEFAULTS,
    SiglipTowerFamily,
    hf_activation,
    hf_vision_config,
    text_config_stub,
    text_fields,
    tower_fields,
)
from vtlab.families.tiler import ImagePlan, Tiler, TilingScheme, register_tiling

# Granite-Vision's `image_grid_pinpoints` (config.json of ibm-granite/granite-vision-3.x; order as there): every
# (384 a, 384 b) with a * b <= 10. Sources: FMS `fms/models/llava_next.py` `_granite_3_2_2b_grid`, the
# llama.cpp granitevision guide (`image_grid_pinpoints` "from $GRANITE_MODEL/config.json"), and a granite-vision
# 4.1 config copied in a docling-mlx test; all three give this exact list of 27.
GRANITE_PINPOINTS: tuple[tuple[int, int], ...] = (
    (384, 384), (384, 768), (384, 1152), (384, 1536), (384, 1920),
    (384, 2304), (384, 2688), (384, 3072), (384, 3456), (384, 3840),
    (768, 384), (768, 768), (768, 1152), (768, 1536), (768, 1920),
    (1152, 384), (1152, 768), (1152, 1152),
    (1536, 384), (1536, 768),
    (1920, 384), (1920, 768),
    (2304, 384), (2688, 384), (3072, 384), (3456, 384), (3840, 384),
)  # fmt: skip

Pinpoints = Sequence[Sequence[int]]


def select_best_resolution(height: int, width: int, pinpoints: Pinpoints) -> tuple[int, int]:
    """The (h, w) pinpoint keeping the most image pixels when fitted (aspect kept); ties -> least padding."""
    best: tuple[int, int] | None = None
    best_effective, best_wasted = 0, math.inf
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(h), int(w)), effective, wasted
    if best is None:
        raise ValueError(f"anyres: no usable pinpoint in {list(pinpoints)!r} for a {height}x{width} image")
    return best


def resized_size_to_fit(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """`get_patch_output_size`: the size of (height, width) scaled to fit (target_h, target_w), ceil, clamped."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def unpadded_size(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """`unpad_image` on a (grid_h, grid_w) feature map of a (height, width) image: the kept (h', w').

    The letterbox side loses `pad = (cur - int(round(cur_other / other * side, 7))) // 2` on both ends.
    """
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        return grid_h - 2 * ((grid_h - new_h) // 2), grid_w
    new_w = int(round(width * (grid_h / height), 7))
    return grid_h, grid_w - 2 * ((grid_w - new_w) // 2)


@dataclass(frozen=True)
class AnyresLayout:
    """Geometry of one image under anyres tiling (all sizes (height, width))."""

    image_size: tuple[int, int]  # original (H, W)
    best_resolution: tuple[int, int]  # the chosen pinpoint
    rows: int  # tiles down
    cols: int  # tiles across
    num_frames: int  # rows * cols + 1 (base frame first)
    grid: int  # feature tokens per side of one frame (27 for 384 / 14)
    unpadded: tuple[int, int]  # (h', w') of the tile feature map after unpadding
    num_tokens: int  # LM tokens: grid^2 + h' * w' + h'


def anyres_layout(
    height: int, width: int, *, pinpoints: Pinpoints = GRANITE_PINPOINTS, crop: int = 384, grid: int = 27
) -> AnyresLayout:
    """The tiling and token count of a (height, width) image, without touching pixels."""
    if height < 1 or width < 1:
        raise ValueError(f"anyres: image size must be positive, got {height}x{width}")
    if crop < 1 or grid < 1:
        raise ValueError(f"anyres: crop and grid must be positive, got crop={crop}, grid={grid}")
    bad = [tuple(p) for p in pinpoints if p[0] % crop or p[1] % crop or p[0] < crop or p[1] < crop]
    if bad:
        raise ValueError(f"anyres: pinpoints must be positive multiples of crop={crop}, got {bad}")
    best_h, best_w = select_best_resolution(height, width, pinpoints)
    rows, cols = best_h // crop, best_w // crop
    unpadded = unpadded_size(height, width, rows * grid, cols * grid)
    num_tokens = grid * grid + unpadded[0] * unpadded[1] + unpadded[0]
    return AnyresLayout(
        image_size=(int(height), int(width)),
        best_resolution=(best_h, best_w),
        rows=rows,
        cols=cols,
        num_frames=rows * cols + 1,
        grid=grid,
        unpadded=unpadded,
        num_tokens=num_tokens,
    )


def anyres_frames(
    image: ImageLike,
    *,
    pinpoints: Pinpoints = GRANITE_PINPOINTS,
    crop: int = 384,
    mean: Sequence[float] = (0.5,) * 3,
    std: Sequence[float] = (0.5,) * 3,
    grid: int = 27,
    resample: int = Image.Resampling.BICUBIC,
) -> tuple[torch.Tensor, AnyresLayout]:
    """(num_frames, 3, crop, crop) float32 frames, base first then tiles row-major, and the image's layout.

    `grid` only fills in the layout (tokens per frame side of the tower that will see these frames).
    """
    array = to_uint8_hwc(image)
    height, width = array.shape[:2]
    layout = anyres_layout(height, width, pinpoints=pinpoints, crop=crop, grid=grid)
    base = normalise(resize(array, crop, crop, resample), mean, std)

    best_h, best_w = layout.best_resolution
    new_h, new_w = resized_size_to_fit(height, width, best_h, best_w)
    top, left = (best_h - new_h) // 2, (best_w - new_w) // 2  # the odd pixel of padding goes bottom / right
    canvas = np.zeros((best_h, best_w, 3), dtype=np.uint8)  # padding is 0 before rescale / normalise
    canvas[top : top + new_h, left : left + new_w] = resize(array, new_h, new_w, resample)
    tiles = normalise(canvas, mean, std).view(3, layout.rows, crop, layout.cols, crop)
    tiles = tiles.permute(1, 3, 0, 2, 4).reshape(layout.rows * layout.cols, 3, crop, crop)
    return torch.cat([base[None], tiles]), layout


def pack_anyres(features: torch.Tensor, layout: AnyresLayout, newline: torch.Tensor) -> torch.Tensor:
    """One image's (F, grid^2, T) frame features (base first) -> (num_tokens, T) LM tokens.

    F == layout.num_frames: base tokens, then the unpadded tile map with a newline after each row. F == 1 (base
    only, as upstream allows): base tokens then one newline, grid^2 + 1 tokens.
    """
    g = layout.grid
    if features.dim() != 3 or features.shape[1] != g * g:
        raise ValueError(f"anyres: expected features (frames, {g * g}, T), got {tuple(features.shape)}")
    dim = features.shape[-1]
    newline = newline.to(device=features.device, dtype=features.dtype)
    if features.shape[0] == 1:
        return torch.cat([features[0], newline[None]])
    if features.shape[0] != layout.num_frames:
        raise ValueError(f"anyres: {features.shape[0]} frames of features for a layout of {layout.num_frames}")
    rows, cols = layout.rows, layout.cols
    grid_map = features[1:].reshape(rows, cols, g, g, dim).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, dim)
    h, w = layout.unpadded
    top, left = (rows * g - h) // 2, (cols * g - w) // 2
    grid_map = grid_map[top : top + h, left : left + w]
    grid_map = torch.cat([grid_map, newline.expand(h, 1, dim)], dim=1)
    return torch.cat([features[0], grid_map.reshape(h * (w + 1), dim)])


def pack_anyres_batch(
    features: torch.Tensor, layouts: Sequence[AnyresLayout], newline: torch.Tensor
) -> list[torch.Tensor]:
    """Concatenated (sum of num_frames, grid^2, T) features of several images -> one (tokens_i, T) per image."""
    sizes = [layout.num_frames for layout in layouts]
    if features.shape[0] != sum(sizes):
        raise ValueError(f"anyres: {features.shape[0]} frames of features, layouts need {sum(sizes)} ({sizes})")
    return [pack_anyres(f, layout, newline) for f, layout in zip(features.split(sizes), layouts, strict=True)]


def default_pinpoints(frame: int) -> list[tuple[int, int]]:
    """Granite-Vision's pinpoints expressed in frames, scaled to `frame` (exactly Granite's at 384)."""
    base = GRANITE_PINPOINTS[0][0]
    return [(h // base * frame, w // base * frame) for h, w in GRANITE_PINPOINTS]


class AnyresTiling(TilingScheme):
    """`model.tiling=anyres`: base frame + best-resolution tiles; unpadded tile map with a newline per row."""

    name = "anyres"
    needs_newline = True

    def setup(self, tiler: Tiler) -> None:
        if tiler.pinpoints is None:
            tiler.pinpoints = default_pinpoints(tiler.frame)

    def plan(self, tiler: Tiler, height: int, width: int) -> ImagePlan:
        lay = anyres_layout(height, width, pinpoints=tiler.pinpoints, crop=tiler.frame, grid=tiler.token_grid)
        return ImagePlan((height, width), self.name, lay.rows, lay.cols, lay.num_frames, tiler.token_grid**2,
                         lay.num_tokens, {"best_resolution": list(lay.best_resolution), "unpadded": list(lay.unpadded),
                                          "layout": lay})

    def frames(self, tiler: Tiler, array: Any) -> torch.Tensor:
        return anyres_frames(array, pinpoints=tiler.pinpoints, crop=tiler.frame, mean=tiler.family.mean,
                             std=tiler.family.std, resample=tiler.family.resample)[0]

    def pack(self, tiler: Tiler, features: torch.Tensor, plan: ImagePlan, newline: torch.Tensor | None) -> torch.Tensor:
        return pack_anyres(features, plan.detail["layout"], newline)

    def check(self, model: Any, frame: int, grid: tuple[int, int]) -> None:
        if model.pinpoints is None:
            return
        if not model.pinpoints:
            raise ConfigError("model.pinpoints=[] is empty; give [[H, W], ...] or null for Granite's list")
        for p in model.pinpoints:
            pair = list(p) if not isinstance(p, int) else [p]
            if len(pair) != 2 or any(not isinstance(v, int) or v < frame or v % frame for v in pair):
                raise ConfigError(f"model.pinpoints contains {pair}: each entry must be [H, W], both multiples of "
                                  f"the frame size {frame}px (e.g. [{frame}, {2 * frame}])")

    def packing(self) -> str:
        return "base frame first, then the tiles' map unpadded with an image_newline per row (h'w' + h')"


class LlavaNextPreprocessor:
    """The LlavaNext base crop (Granite: 0.5 / 0.5): the whole image resized to size x size, BICUBIC."""

    def __init__(self, size: int, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3,
                 resample: int = Image.Resampling.BICUBIC) -> None:
        self.size, self.mean, self.std, self.resample = size, tuple(mean), tuple(std), resample

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return normalise(resize(to_uint8_hwc(image), self.size, self.size, self.resample), self.mean, self.std)


_LAYOUT = re.compile(r"(model\.)?vision_tower\.(vision_model\.)?")


class LlavaNextFamily(SiglipTowerFamily):
    name = "llava_next"
    tiling = "anyres"
    model_types = ("llava_next",)
    hub_prefix = "vision_tower.vision_model."
    carried_fields = ("model.pinpoints",)
    needs_feature_layers = True
    feature_layers_hint = "Granite: [-24,-20,-12,-1]"

    lm_prefixes = LLAVA_LM_PREFIXES
    lm_hub = LLAVA_LM_HUB  # the hub / v4 names, as the tower's

    def processor(self, size: int, longest_edge: int | None = None) -> LlavaNextPreprocessor:
        return LlavaNextPreprocessor(size, self.mean, self.std, self.resample)

    def detect(self, keys: list[str], keyset: set[str], hf_prefix: str | None) -> Layout | None:
        m = _LAYOUT.fullmatch(hf_prefix or "")
        if m is None:
            return None
        top = m.group(1) or ""
        style = "hub / v4: vision_tower.vision_model.*" if m.group(2) else "v5: vision_tower.*"
        return Layout(f"LlavaNext / Granite-Vision ({top}{style})", self.name, "hf", hf_prefix,
                      top + "multi_modal_projector.", top + "image_newline", carries_connector=True)

    def connector_key_to_native(self, rel: str) -> str | None:
        return "connector.layers." + rel if re.fullmatch(r"linear_[12]\.(weight|bias)", rel) else None

    def connector_native_to_hf(self, name: str) -> str | None:
        if name.startswith("connector.layers."):
            return "multi_modal_projector." + name[len("connector.layers."):]
        return None

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        vc = conf.get("vision_config") or {}
        if vc.get("model_type", "siglip_vision_model") != "siglip_vision_model":
            raise CheckpointError(f"{where}: LlavaNext with a '{vc.get('model_type')}' tower; vtlab supports SigLIP towers")
        strategy = conf.get("vision_feature_select_strategy", "default")
        if strategy != "full":
            raise CheckpointError(
                f"{where}: vision_feature_select_strategy='{strategy}' drops token 0 (a CLIP CLS); vtlab's SigLIP "
                "stacks keep every token ('full', as Granite-Vision)"
            )
        layers = conf.get("vision_feature_layer", -2)
        out: dict[str, Any] = {
            "model.family": self.name,
            "model.feature_layers": [layers] if isinstance(layers, int) else list(layers),
            "connector.kind": "mlp", "connector.factor": 1, "connector.depth": 2,
            "connector.bias": bool(conf.get("multimodal_projector_bias", True)),
            "connector.act": hf_activation(conf.get("projector_hidden_act", "gelu"), where),
        }
        if conf.get("image_grid_pinpoints"):  # the anyres candidates of this checkpoint (model.pinpoints)
            out["model.pinpoints"] = [[int(h), int(w)] for h, w in conf["image_grid_pinpoints"]]
        out.update(tower_fields(vc, VISION_DEFAULTS, where))
        out.update(text_fields(conf.get("text_config")))
        return out

    def shape_fields(self, native: dict[str, tuple[int, ...]], width: int) -> dict[str, Any]:
        if "connector.layers.linear_1.weight" not in native:
            return {}
        depth = sum(k.endswith(".weight") and k.startswith("connector.layers.") for k in native)
        return {"text_hidden": native[f"connector.layers.linear_{depth}.weight"][0],
                "num_taps": native["connector.layers.linear_1.weight"][1] // width}

    def hf_defaults(self, arch: dict[str, Any]) -> dict[str, Any]:
        return {"connector.kind": "mlp", "connector.factor": 1, "connector.bias": True, "connector.depth": 2}

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        m, c = cfg.model, cfg.connector
        t = stack.connector.out_dim
        kind = getattr(c.kind, "value", c.kind)
        if kind != "mlp" or c.depth != 2 or c.factor != 1 or (c.hidden_size not in (None, t)):
            raise CheckpointError(
                f"export: LlavaNext's multi_modal_projector is Linear -> act -> Linear(T -> T) without unshuffle; "
                f"this stack has connector.kind={kind}, depth={c.depth}, factor={c.factor}, hidden_size={c.hidden_size}"
            )
        layers = list(m.feature_layers) if m.feature_layers is not None else [-1]
        vision = hf_vision_config(m, "siglip_vision_model")
        vision["vision_use_head"] = bool(m.use_head)
        pinpoints = m.pinpoints or default_pinpoints(m.input_size or m.image_size)
        return {"architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
                "vision_config": vision, "text_config": text_config_stub(cfg.text, t),
                "vision_feature_layer": layers if len(layers) > 1 else layers[0],
                "vision_feature_select_strategy": "full", "projector_hidden_act": getattr(c.act, "value", c.act),
                "multimodal_projector_bias": bool(c.bias), "image_grid_pinpoints": [list(p) for p in pinpoints]}


ANYRES = register_tiling(AnyresTiling())
LLAVA_NEXT = register_family(LlavaNextFamily())
