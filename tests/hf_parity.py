"""Test-only helpers for parity with Hugging Face transformers: tiny HF configs and HF -> native weight copies.

This mapping is deliberately independent of `vtlab.checkpoints` (the real loader): the parity tests check
the native modules, not the loader. Names follow towers-and-connectors.md (d) for the v5 runtime layout
(`SiglipVisionModel` without the `vision_model.` wrapper):

    embeddings.patch_embedding.*            -> tower.patch_embed.*
    embeddings.position_embedding.weight    -> tower.pos_embed
    encoder.layers.i.layer_norm1/2.*        -> tower.blocks.i.norm1/2.*
    encoder.layers.i.self_attn.{q,k,v}_proj -> tower.blocks.i.attn.qkv (cat[q, k, v] on dim 0)
    encoder.layers.i.self_attn.out_proj.*   -> tower.blocks.i.attn.proj.*
    encoder.layers.i.mlp.fc1/fc2.*          -> tower.blocks.i.mlp.fc1/fc2.*
    post_layernorm.*                        -> tower.post_norm.*
    head.probe                              -> tower.head.probe
    head.attention.in_proj_{weight,bias}    -> tower.head.in_proj.{weight,bias}
    head.attention.out_proj.*               -> tower.head.out_proj.*
    head.layernorm.*                        -> tower.head.norm.*
    head.mlp.fc1/fc2.*                      -> tower.head.mlp.fc1/fc2.*
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from vtlab.models.stack import VisionStack
from vtlab.models.towers import VisionTower

_RENAMES = [
    (r"^embeddings\.patch_embedding\.", "patch_embed."),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^post_layernorm\.", "post_norm."),
    (r"^head\.probe$", "head.probe"),
    (r"^head\.attention\.in_proj_(weight|bias)$", r"head.in_proj.\1"),
    (r"^head\.attention\.out_proj\.", "head.out_proj."),
    (r"^head\.layernorm\.", "head.norm."),
    (r"^head\.mlp\.", "head.mlp."),
]
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def hf_tower_state_to_native(hf_state: dict[str, torch.Tensor], prefix: str = "tower.") -> dict[str, torch.Tensor]:
    """Rename an HF SigLIP / Idefics3 vision-tower state dict (v5 runtime names) to native names.

    Every HF key must be consumed; an unknown key raises, so a silent partial copy cannot pass a test.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in hf_state.items():
        if key.endswith("position_ids"):  # non-persistent buffer in some versions
            continue
        m = _QKV.match(key)
        if m:
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _RENAMES:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                out[prefix + new] = value
                break
        else:
            raise KeyError(f"no native name for HF key {key!r}")
    for (layer, kind), parts in qkv.items():
        out[f"{prefix}blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


@torch.no_grad()
def copy_hf_tower(hf_tower: nn.Module, tower: VisionTower) -> None:
    """Copy an HF vision tower's weights into a native `VisionTower` (strict: every tensor must land)."""
    state = hf_tower_state_to_native(hf_tower.state_dict(), prefix="")
    if tower.head is None:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    tower.load_state_dict(state, strict=True)


@torch.no_grad()
def copy_linear(src: nn.Linear, dst: nn.Linear) -> None:
    assert src.weight.shape == dst.weight.shape, (src.weight.shape, dst.weight.shape)
    assert (src.bias is None) == (dst.bias is None)
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)


@torch.no_grad()
def copy_llava_next(hf_model: nn.Module, stack: VisionStack) -> None:
    """`LlavaNextModel` (v5: `vision_tower`, `multi_modal_projector`) -> native tower + mlp connector."""
    copy_hf_tower(hf_model.vision_tower, stack.tower)
    copy_linear(hf_model.multi_modal_projector.linear_1, stack.connector.layers["linear_1"])
    copy_linear(hf_model.multi_modal_projector.linear_2, stack.connector.layers["linear_2"])


@torch.no_grad()
def copy_idefics3(hf_model: nn.Module, stack: VisionStack) -> None:
    """`Idefics3Model` (`vision_model`, `connector.modality_projection.proj`) -> native tower + connector."""
    copy_hf_tower(hf_model.vision_model, stack.tower)
    copy_linear(hf_model.connector.modality_projection.proj, stack.connector.proj)


def vision_kwargs(model_cfg: Any) -> dict[str, Any]:
    """HF `SiglipVisionConfig` / `Idefics3VisionConfig` kwargs equal to a vtlab `ModelConfig` (eager, tanh GELU)."""
    act = getattr(model_cfg.hidden_act, "value", model_cfg.hidden_act)
    return dict(
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_channels=model_cfg.num_channels,
        image_size=model_cfg.image_size,
        patch_size=model_cfg.patch_size,
        layer_norm_eps=model_cfg.layer_norm_eps,
        hidden_act={"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[act],
        attention_dropout=0.0,
    )


def tiny_llama_kwargs(hidden_size: int) -> dict[str, Any]:
    """A tiny Llama text config: LlavaNext and Idefics3 need one, only its hidden size matters here."""
    return dict(
        model_type="llama",
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
    )


def force_eager(model: nn.Module) -> None:
    """Pin eager attention everywhere (the tightest parity; SDPA differs by float rounding only)."""
    model.set_attn_implementation("eager")
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None:
            assert cfg._attn_implementation == "eager", type(module).__name__


@torch.no_grad()
def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Add noise to every parameter so that LayerNorm weights are not all 1 and biases not all 0.

    HF inits LayerNorm to (1, 0) and many biases to 0, which would hide a swapped norm or a lost bias.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()
