"""Native SigLIP tower vs transformers (CPU, fp32, eager attention, tiny configs, weights copied in the test).

Tolerances from issue 2: max |diff| <= 1e-5 for the tower outputs (last_hidden_state, hidden_states, the
MAP-head pooler_output, interpolated position embeddings). Real-size presets are only compared on the
meta device (parameter names, shapes and counts), never run.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hf_parity import copy_hf_tower, hf_tower_state_to_native, max_diff, perturb_, vision_kwargs
from transformers import Idefics3VisionConfig, SiglipVisionConfig, SiglipVisionModel
from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer

import vtlab
from vtlab.api import compose_config, to_config
from vtlab.models.towers import build_tower

TOL = 1e-5
DEBUG_PRESETS = ["siglip_debug", "smolvlm_debug", "llavanext_debug"]  # 14x14, 8x8 and floored 9x9 (66px/7px)


def model_cfg(preset: str, *overrides: str):
    """The preset's ModelConfig, with the head on and the post-LN output (so every HF output has a twin)."""
    return to_config(compose_config(preset, ["model.use_head=true", "model.feature_layers=null", *overrides])).model


def hf_siglip(cfg) -> SiglipVisionModel:
    hf = SiglipVisionModel(SiglipVisionConfig(**vision_kwargs(cfg), attn_implementation="eager")).eval()
    assert hf.config._attn_implementation == "eager"
    return perturb_(hf)


@functools.cache
def pair(preset: str, *overrides: str):
    """(HF SiglipVisionModel, native VisionTower with HF's weights, ModelConfig) for a debug preset.

    Cached: the tests only run both models in eval mode under no_grad, never mutate them."""
    cfg = model_cfg(preset, *overrides)
    torch.manual_seed(0)
    hf = hf_siglip(cfg)
    tower = build_tower(cfg).eval()
    copy_hf_tower(hf, tower)
    return hf, tower, cfg


def pixels(cfg, height: int | None = None, width: int | None = None, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, cfg.num_channels, height or cfg.image_size, width or cfg.image_size, generator=gen)


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_last_hidden_state_matches_siglip_vision_model(preset):
    hf, tower, cfg = pair(preset)
    x = pixels(cfg)
    with torch.no_grad():
        ref = hf(x).last_hidden_state
        out = tower(x)
    grid = cfg.image_size // cfg.patch_size
    assert out.shape == (2, grid * grid, cfg.hidden_size)
    diff = max_diff(out, ref)
    print(f"[parity] {preset} last_hidden_state max|diff| = {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_hidden_states_match_pre_post_layernorm(preset):
    """hidden_states[0] = embeddings, [k] = after block k, all before post_layernorm (docs b.6)."""
    hf, tower, cfg = pair(preset)
    x = pixels(cfg)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True).hidden_states
        states = tower.hidden_states(x)
    assert len(ref) == len(states) == cfg.num_layers + 1
    diffs = {i: max_diff(states[i], ref[i]) for i in (0, 1, -2, -1)}
    print(f"[parity] {preset} hidden_states max|diff| = {max(diffs.values()):.2e} at {diffs}")
    assert max(diffs.values()) <= TOL


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_feature_taps_equal_selected_hidden_states(preset):
    """`model.feature_layers` taps (negative and positive indices) concatenate HF hidden_states[i]."""
    taps = [0, 1, -1]
    cfg = model_cfg(preset, f"model.feature_layers=[{','.join(map(str, taps))}]")
    torch.manual_seed(0)
    hf = hf_siglip(cfg)
    tower = build_tower(cfg).eval()
    copy_hf_tower(hf, tower)
    x = pixels(cfg)
    with torch.no_grad():
        states = hf(x, output_hidden_states=True).hidden_states
        ref = torch.cat([states[i] for i in taps], dim=-1)
        out = tower(x)
    assert out.shape[-1] == len(taps) * cfg.hidden_size == tower.feature_dim
    diff = max_diff(out, ref)
    print(f"[parity] {preset} taps {taps} max|diff| = {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("preset", ["siglip_debug", "llavanext_debug"])
def test_map_head_matches_pooler_output(preset):
    hf, tower, cfg = pair(preset)
    x = pixels(cfg)
    with torch.no_grad():
        ref = hf(x).pooler_output
        out = tower.pool(tower(x))
    assert out.shape == (2, cfg.hidden_size)
    diff = max_diff(out, ref)
    print(f"[parity] {preset} MAP head vs pooler_output max|diff| = {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
@pytest.mark.parametrize(
    "grid",
    [(6, 10), (12, 12), (5, 5), (7, 7, 3)],  # rectangular, larger, smaller, not a whole number of patches
    ids=["rect-6x10", "larger-12x12", "smaller-5x5", "floored-7x7+3px"],
)
def test_interpolated_position_embeddings_match_interpolate_pos_encoding(preset, grid):
    hf, tower, cfg = pair(preset)
    extra = grid[2] if len(grid) == 3 else 0
    x = pixels(cfg, grid[0] * cfg.patch_size + extra, grid[1] * cfg.patch_size + extra)
    with torch.no_grad():
        ref = hf(x, interpolate_pos_encoding=True, output_hidden_states=True)
        out = tower(x)
        emb = tower.embed(x)
    assert out.shape == (2, grid[0] * grid[1], cfg.hidden_size)
    diff = max(max_diff(out, ref.last_hidden_state), max_diff(emb, ref.hidden_states[0]))
    print(f"[parity] {preset} interpolated pos-emb {grid} max|diff| = {diff:.2e}")
    assert diff <= TOL


def test_model_input_size_runs_the_stack_at_an_interpolated_resolution():
    """`model.input_size` (other than image_size) = HF `interpolate_pos_encoding=True` at that size."""
    cfg = model_cfg("siglip_debug", "model.input_size=160")
    torch.manual_seed(0)
    hf = hf_siglip(cfg)
    stack = vtlab.build("siglip_debug", ["model.use_head=true", "model.input_size=160"]).eval()
    copy_hf_tower(hf, stack.tower)
    assert stack.grid == (20, 20) and stack.num_tokens == 400
    x = torch.randn(stack.input_shape(2))
    with torch.no_grad():
        diff = max_diff(stack.features(x), hf(x, interpolate_pos_encoding=True).last_hidden_state)
    print(f"[parity] siglip_debug input_size=160 max|diff| = {diff:.2e}")
    assert diff <= TOL


def test_idefics3_vision_transformer_matches_with_a_full_mask():
    """The SmolVLM tower (Idefics3VisionTransformer, no head): v5 bucketed position ids = arange on a full grid."""
    cfg = to_config(compose_config("smolvlm_debug")).model
    torch.manual_seed(0)
    hf_cfg = Idefics3VisionConfig(**vision_kwargs(cfg))
    hf_cfg._attn_implementation = "eager"
    hf = perturb_(Idefics3VisionTransformer(hf_cfg).eval())
    tower = build_tower(cfg).eval()
    copy_hf_tower(hf, tower)
    x = pixels(cfg)
    with torch.no_grad():
        diff = max_diff(tower(x), hf(x).last_hidden_state)
    print(f"[parity] smolvlm_debug vs Idefics3VisionTransformer max|diff| = {diff:.2e}")
    assert diff <= TOL


# ---------------------------------------------------------------------------------------------- real presets
REAL_TOWER_PARAMS = {  # towers-and-connectors.md (a), meta-device counts
    "siglip": 92_884_224,  # SigLIP-base-224 with the MAP head
    "smolvlm": 86_433_024,  # SmolVLM-512/16, no head
    "llavanext": 412_987_248,  # so400m-384/14 without the head
}


@pytest.mark.parametrize("preset", list(REAL_TOWER_PARAMS))
def test_real_preset_has_hf_parameter_names_shapes_and_count(preset):
    """On the meta device: the HF tower of the same config maps 1:1 (strict) onto the native tower."""
    cfg = to_config(compose_config(preset)).model
    with torch.device("meta"):
        hf = SiglipVisionModel(SiglipVisionConfig(**vision_kwargs(cfg), vision_use_head=cfg.use_head))
        tower = build_tower(cfg)
    native = hf_tower_state_to_native(hf.state_dict(), prefix="")
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in native.items()} == expected
    n_native = sum(p.numel() for p in tower.parameters())
    assert n_native == sum(p.numel() for p in hf.parameters()) == REAL_TOWER_PARAMS[preset]


def test_so400m_with_head_matches_the_documented_count():
    cfg = to_config(compose_config("llavanext", ["model.use_head=true"])).model
    with torch.device("meta"):
        tower = build_tower(cfg)
    assert sum(p.numel() for p in tower.parameters()) == 428_225_600
    with torch.device("meta"):
        no_head = build_tower(to_config(compose_config("siglip", ["model.use_head=false"])).model)
    assert sum(p.numel() for p in no_head.parameters()) == 85_797_120
