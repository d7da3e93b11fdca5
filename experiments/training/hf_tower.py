"""transformers' `SiglipVisionModel` behind the vtlab tower interface, for same-harness comparisons.

`HFSiglipTower(model_cfg)` builds a randomly initialised `SiglipVisionModel` with exactly the preset's
architecture (no MAP head, SDPA attention) and exposes what `VisionStack` and `VisionClassifier` use:
`grid_for`, `patch_embed`, `image_size`, `patch_size`, `feature_dim`, `inactive_modules()`; `forward`
returns the post-LayerNorm last hidden state, like vtlab's native tower without feature taps.
"""

from __future__ import annotations

import torch
from torch import nn


class HFSiglipTower(nn.Module):
    def __init__(self, model_cfg, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        from vtlab.families.siglip import hf_vision_config

        if model_cfg.feature_layers is not None:
            raise ValueError("HFSiglipTower supports post-LN last-layer features only (model.feature_layers=null)")
        fields = {k: v for k, v in hf_vision_config(model_cfg).items() if k != "model_type"}
        config = SiglipVisionConfig(**fields, vision_use_head=False)
        self.model = SiglipVisionModel._from_config(config, attn_implementation=attn_implementation)
        self.image_size = model_cfg.image_size
        self.patch_size = model_cfg.patch_size
        self.hidden_size = model_cfg.hidden_size
        self.num_layers = model_cfg.num_layers
        self.feature_layers = None
        self.depth_used = model_cfg.num_layers

    @property
    def _vision(self) -> nn.Module:
        return getattr(self.model, "vision_model", self.model)  # transformers 4.x nests it, 5.x does not

    @property
    def patch_embed(self) -> nn.Conv2d:
        return self._vision.embeddings.patch_embedding

    @property
    def feature_dim(self) -> int:
        return self.hidden_size

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def inactive_modules(self) -> list[nn.Module]:
        return []

    def no_weight_decay(self) -> set[str]:
        """The position table, as the native tower's `pos_embed` (VisionClassifier.param_groups asks for it)."""
        return {f"model.{n}" for n, _ in self.model.named_parameters() if n.endswith("position_embedding.weight")}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state
