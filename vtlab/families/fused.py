"""The `fused` family: several towers of other families on one image, features concatenated on channels
(Prismatic's DINOv2 + SigLIP, `prismatic/models/backbones/vision/dinosiglip_vit.py`).

`model.towers.<name>` holds each sub-tower's own `ModelConfig` fields (its `family`, architecture, taps and
`weights`; `ModelConfig.sub_towers()` makes them typed); each is built and checked by its own family. Their patch grids must be equal (Prismatic runs
DINOv2 ViT-L/14 and SigLIP-so400m/14 both at 224 -> 16x16): a mismatch is refused naming every grid.
`model.hidden_size` must be the channel sum; `model.image_size` / `patch_size` give the stack's frame and grid.
Pixels: the image resized to the frame (BICUBIC), rescaled to [0, 1]; each sub-tower normalises with its
family's mean / std inside vtlab.models.towers.fused.FusedTower. There is no single Hugging Face layout, so
no export; each sub-tower loads its own checkpoint (`model.towers.<name>.weights=PATH`, any layout of its
family).
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image

from vtlab.errors import ConfigError
from vtlab.families.base import Family, get_family, register_family
from vtlab.families.pixels import ImageLike, normalise, resize, to_uint8_hwc
from vtlab.models.towers.fused import FusedTower, Part


class FusedFamily(Family):
    name = "fused"
    own_fields = ("towers",)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # [0, 1] pixels: each part normalises itself
    activations = ("gelu_tanh", "gelu", "quick_gelu")  # the top-level field is unused; the parts check theirs

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        m = cfg.model
        subs = m.sub_towers()
        if len(subs) < 2:
            raise ConfigError(f"model.towers has {len(subs)} tower(s) ({', '.join(subs) or 'none'}); family fused "
                              f"needs at least two (e.g. model.towers.dinov2.*, model.towers.siglip.*)")
        grids = {}
        for name, sub in subs.items():
            if sub.family == self.name:
                raise ConfigError(f"model.towers.{name}.family=fused: fused towers do not nest")
            try:
                sub.check(cfg)
                get_family(sub.family, f"model.towers.{name}.family").check(
                    SimpleNamespace(model=sub, connector=type(cfg.connector)(), data=type(cfg.data)()))
            except ConfigError as err:
                raise ConfigError(f"model.towers.{name}: {err}") from None
            if get_family(sub.family).prefix_tokens(sub):
                raise ConfigError(f"model.towers.{name}: a kept prefix token has no patch to fuse with; drop it")
            size = sub.input_size or sub.image_size
            grids[name] = (size // sub.patch_size, size // sub.patch_size, size, sub.patch_size)
        top = m.input_size or m.image_size
        grids_set = {g[:2] for g in grids.values()} | {(top // m.patch_size, top // m.patch_size)}
        if len(grids_set) > 1:
            listed = ", ".join(f"{n} {g[0]}x{g[1]} ({g[2]}px / {g[3]}px)" for n, g in grids.items())
            raise ConfigError(f"model.towers: the patch grids differ: {listed}, stack {top // m.patch_size}x"
                              f"{top // m.patch_size} ({top}px / {m.patch_size}px); fused features are concatenated per "
                              f"patch, so every tower needs the same grid (set their input_size / patch_size to match)")
        width = sum(sub.hidden_size * (1 if sub.feature_layers is None else len(sub.feature_layers))
                    for sub in subs.values())
        if m.hidden_size != width:
            raise ConfigError(f"model.hidden_size={m.hidden_size} must be the fused channel width {width} (the sum "
                              f"of the towers' feature widths: {', '.join(subs)})")

    def build_tower(self, model_cfg: Any) -> torch.nn.Module:
        parts = {}
        for name, sub in model_cfg.sub_towers().items():
            fam = get_family(sub.family)
            parts[name] = Part(fam.build_tower(sub), fam.mean, fam.std)
        return FusedTower(parts, model_cfg.input_size or model_cfg.image_size, model_cfg.patch_size)

    def load_parts(self, stack: torch.nn.Module, model_cfg: Any, load: Any) -> None:
        for name, sub in model_cfg.sub_towers().items():
            if sub.weights:
                shim = torch.nn.Module()
                shim.tower = stack.tower.parts_[name].tower
                load(shim, sub.weights, SimpleNamespace(model=sub))

    def preprocess_frame(self, image: ImageLike, size: int) -> torch.Tensor:
        """Square BICUBIC resize to `size`, x / 255 (the parts normalise)."""
        return normalise(resize(to_uint8_hwc(image), size, size, Image.Resampling.BICUBIC), self.mean, self.std)

    def processor(self, size: int, longest_edge: int | None = None) -> Any:
        return partial(self.preprocess_frame, size=size)


FUSED = register_family(FusedFamily())
