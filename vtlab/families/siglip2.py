"""The SigLIP2 NaFlex family (`Siglip2VisionModel`: google/siglip2-*-naflex) and its `naflex` tiling scheme.

Mirrors transformers' `Siglip2ImageProcessorPil` (aspect-preserving Pillow BILINEAR resize to the largest
patch grid under `max_num_patches`, found as `get_image_size_for_max_num_patches` does, x / 255,
(x - 0.5) / 0.5) and `Siglip2VisionModel` (a patch Linear, a G x G position table resized per image with
antialiased bilinear interpolation, SigLIP blocks, post-LayerNorm). The native tower is
vtlab.models.towers.siglip2.Siglip2Tower. One image is ONE frame at its own size (no padding): the tower's
4-D input path patchifies it and resizes the table to its grid, which equals the padded, masked NaFlex
forward on the valid patches (tests/test_families_siglip2.py). `model.max_num_patches` is the budget
(null: the position table's G^2); sweeping it is the resolution axis that needs no tiling. Checkpoint names
are SigLIP's (the siglip family's layouts read them; config.json's `siglip2_vision_model` says the family).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from PIL import Image

from vtlab.errors import ConfigError, InvalidCellError
from vtlab.families.base import register_family
from vtlab.families.pixels import ImageLike, normalise, resize, to_uint8_hwc
from vtlab.families.siglip import HF_ACTIVATIONS, SiglipTowerFamily, hf_activation
from vtlab.families.tiler import ImagePlan, Tiler, TilingScheme, image_size_of, register_tiling
from vtlab.models.connectors.pixel_unshuffle import valid_factors
from vtlab.models.towers import siglip2 as siglip2_tower


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


class NaflexTiling(TilingScheme):
    """One frame per image at the aspect-preserving size whose patch grid fits the budget."""

    name = "naflex"

    def grid(self, tiler: Tiler, height: int, width: int) -> tuple[int, int]:
        p = tiler.patch_size
        h, w = siglip2_tower.size_for_patch_budget(height, width, p, tiler.max_num_patches)  # budget >= 1: validated
        return h // p, w // p

    def plan(self, tiler: Tiler, height: int, width: int) -> ImagePlan:
        gh, gw = self.grid(tiler, height, width)
        p, f = tiler.patch_size, tiler.factor
        if gh % f or gw % f:
            raise ConfigError(f"connector.factor={f} does not divide the {gh}x{gw} NaFlex patch grid of a "
                              f"{height}x{width} image; valid factors: {valid_factors((gh, gw))}")
        tokens = (gh // f) * (gw // f)
        return ImagePlan((height, width), self.name, 0, 0, 1, tokens, tokens,
                         {"resized": [gh * p, gw * p], "frame": [gh * p, gw * p], "grid": [gh, gw],
                          "max_num_patches": tiler.max_num_patches})

    def frames(self, tiler: Tiler, array: Any) -> torch.Tensor:
        """(1, 3, gh * p, gw * p): the processor's resize and normalisation, unpatchified."""
        gh, gw = self.grid(tiler, array.shape[0], array.shape[1])
        p = tiler.patch_size
        fam = tiler.family
        return normalise(resize(array, gh * p, gw * p, fam.resample), fam.mean, fam.std)[None]

    def packing(self) -> str:
        return "one frame at its own aspect ratio (NaFlex)"


class Siglip2Family(SiglipTowerFamily):
    name = "siglip2"
    tiling = "naflex"
    detect_order = 200  # its checkpoint names are SigLIP's: config.json says siglip2
    model_types = ("siglip2_vision_model", "siglip2")
    hub_prefix = ""
    resample = Image.Resampling.BILINEAR
    own_fields = ("max_num_patches",)

    def build_tower(self, model_cfg: Any) -> torch.nn.Module:
        m = model_cfg
        return siglip2_tower.Siglip2Tower(
            patch_size=m.patch_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
            num_layers=m.num_layers, num_heads=m.num_heads, num_channels=m.num_channels,
            num_patches=(m.image_size // m.patch_size) ** 2, layer_norm_eps=m.layer_norm_eps,
            hidden_act=HF_ACTIVATIONS[str(_v(m.hidden_act))], use_head=m.use_head,
            feature_layers=None if m.feature_layers is None else list(m.feature_layers))

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        m = cfg.model
        if m.image_size % m.patch_size:
            raise ConfigError(f"model.image_size={m.image_size} must be a multiple of model.patch_size="
                              f"{m.patch_size} for siglip2 (the position table is (image_size / patch)^2 rows)")
        f, size = cfg.connector.factor, image_size_of(cfg.data.image_size)
        if f != 1 and size is not None and (m.tiling or self.tiling) == NAFLEX.name:
            budget = m.max_num_patches or (m.image_size // m.patch_size) ** 2
            h, w = siglip2_tower.size_for_patch_budget(size[0], size[1], m.patch_size, budget)
            gh, gw = h // m.patch_size, w // m.patch_size
            if gh % f or gw % f:
                raise InvalidCellError(
                    f"connector.factor={f} does not divide the {gh}x{gw} NaFlex patch grid of a {size[0]}x{size[1]} "
                    f"image under model.max_num_patches={budget}; valid factors: {valid_factors((gh, gw))}")

    def preprocess_frame(self, image: ImageLike, size: int) -> torch.Tensor:
        return normalise(resize(to_uint8_hwc(image), size, size, self.resample), self.mean, self.std)

    def processor(self, size: int, longest_edge: int | None = None) -> Any:
        return partial(self.preprocess_frame, size=size)

    def export_state(self, state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
        tower = {k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")}
        return {**siglip2_tower.native_to_hf(tower), **{k: v for k, v in state.items() if not k.startswith("tower.")}}

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        vc = conf if conf.get("model_type") == "siglip2_vision_model" else (conf.get("vision_config") or {})
        k = siglip2_tower.tower_kwargs_from_hf_config(vc)
        g = int(round(k["num_patches"] ** 0.5))
        return {"model.family": self.name, "model.feature_layers": None,
                "model.image_size": g * int(k["patch_size"]), "model.patch_size": int(k["patch_size"]),
                "model.num_channels": int(k["num_channels"]), "model.hidden_size": int(k["hidden_size"]),
                "model.intermediate_size": int(k["intermediate_size"]), "model.num_layers": int(k["num_layers"]),
                "model.num_heads": int(k["num_heads"]), "model.layer_norm_eps": float(k["layer_norm_eps"]),
                "model.hidden_act": hf_activation(k["hidden_act"], where)}  # the budget is a run setting (null: the table size)

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        m = cfg.model
        return {"architectures": ["Siglip2VisionModel"], "model_type": "siglip2_vision_model",
                "hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
                "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads, "num_channels": m.num_channels,
                "num_patches": (m.image_size // m.patch_size) ** 2, "patch_size": m.patch_size,
                "hidden_act": HF_ACTIVATIONS[str(_v(m.hidden_act))], "layer_norm_eps": m.layer_norm_eps,
                "vision_use_head": bool(m.use_head), "attention_dropout": 0.0}


NAFLEX = register_tiling(NaflexTiling())
SIGLIP2 = register_family(Siglip2Family())
