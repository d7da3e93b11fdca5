"""Vision towers. `VisionTower` (vtlab.models.towers.siglip) is the SigLIP-style ViT of the siglip, idefics3 and
llava_next families; each family says which tower it builds (vtlab.families)."""

from vtlab.models.towers.siglip import VisionTower, build_tower

__all__ = ["VisionTower", "build_tower"]
