"""Vision towers: one native SigLIP-style ViT serves every preset (SigLIP, Idefics3/SmolVLM, LlavaNext)."""

from vtlab.towers.siglip import VisionTower, build_tower

__all__ = ["VisionTower", "build_tower"]
