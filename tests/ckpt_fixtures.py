"""Tiny transformers / timm models with the same structure as the *_debug presets, for checkpoint tests."""

from __future__ import annotations

import torch

TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=100, model_type="llama")
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=112,
              patch_size=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
SMOLVLM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64,
               patch_size=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
LLAVA = dict(hidden_size=36, intermediate_size=72, num_hidden_layers=6, num_attention_heads=2, image_size=66,
             patch_size=7, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
LLAVA_LAYERS = [-6, -4, -2, -1]  # Granite-style multi-layer taps, as llavanext_debug


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere (biases and norms too), so that every mapped tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_scale = ("norm" in name or "layernorm" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.1 * noise)
    return model.eval()


def siglip_vision(seed: int = 0, **over):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(**{**SIGLIP, **over})
    cfg._attn_implementation = "eager"
    return _randomise(SiglipVisionModel(cfg), seed)


def siglip_full(seed: int = 0):
    from transformers import SiglipConfig, SiglipModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=50)
    cfg = SiglipConfig(vision_config=SIGLIP, text_config=text)
    cfg._attn_implementation = "eager"
    return _randomise(SiglipModel(cfg), seed)


def idefics3(seed: int = 0):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    cfg = Idefics3Config(vision_config=SMOLVLM, text_config=TINY_TEXT, scale_factor=4)
    cfg._attn_implementation = "eager"
    return _randomise(Idefics3ForConditionalGeneration(cfg), seed)


def llava_next(seed: int = 0):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    s = LLAVA["image_size"]
    cfg = LlavaNextConfig(
        vision_config={**LLAVA, "model_type": "siglip_vision_model"},
        text_config=TINY_TEXT,
        vision_feature_layer=LLAVA_LAYERS,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
    )
    cfg._attn_implementation = "eager"
    return _randomise(LlavaNextForConditionalGeneration(cfg), seed)


def timm_siglip(seed: int = 0, **over):
    import timm

    kw = dict(img_size=112, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=0)
    kw.update(over)
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, act_layer="gelu_tanh", **kw)
    return _randomise(model, seed)


def pixels(size: int | tuple[int, int], batch: int = 2, seed: int = 1) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()
