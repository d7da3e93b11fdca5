"""The llavanext path (multi-layer pre-LN taps + erf-GELU MLP) vs transformers' `LlavaNextModel`.

`llavanext_debug` (66px / 7px -> floored 9x9 grid, 6 layers, taps [-6,-4,-2,-1], MLP 144 -> 64 -> 64) is
rebuilt as a tiny `LlavaNextConfig` (SigLIP vision tower, tiny Llama text model, strategy "full",
one grid pinpoint), weights are copied HF -> native, and three things are compared at <= 1e-5:
the concatenated taps, the projector output, and `get_image_features`' packed output (v5 returns the
packed base + tile features with the `image_newline` column in `pooler_output`).
"""

from __future__ import annotations

import functools

import torch
from hf_parity import copy_llava_next, force_eager, max_diff, perturb_, tiny_llama_kwargs, vision_kwargs
from transformers import LlavaNextConfig
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

import vtlab
from vtlab.api import compose_config, to_config

TOL = 1e-5
PRESET = "llavanext_debug"


@functools.cache
def models():
    """(HF LlavaNextModel, native stack with HF's weights, VTLabConfig); both only run under no_grad."""
    cfg = to_config(compose_config(PRESET))
    m = cfg.model
    assert cfg.connector.kind.value == "mlp" and cfg.connector.depth == 2 and cfg.connector.act.value == "gelu"
    hf_cfg = LlavaNextConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision_kwargs(m)),
        text_config=tiny_llama_kwargs(cfg.text_hidden),
        vision_feature_layer=list(m.feature_layers),
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[m.image_size, m.image_size]],
        projector_hidden_act="gelu",  # exact erf GELU, as Granite
        multimodal_projector_bias=True,
        image_token_index=1,
    )
    torch.manual_seed(0)
    hf = perturb_(LlavaNextModel(hf_cfg).eval())
    force_eager(hf.vision_tower)
    stack = vtlab.build(PRESET).eval()
    copy_llava_next(hf, stack)
    return hf, stack, cfg


def test_preset_mirrors_the_hf_config():
    hf, stack, cfg = models()
    assert stack.tower.feature_layers == [1, 3, 5, 6]  # [-6,-4,-2,-1] of the 7-entry hidden_states
    assert stack.feature_dim == 4 * cfg.model.hidden_size == hf.multi_modal_projector.linear_1.in_features
    assert stack.grid == (9, 9) and stack.num_tokens == 81


def test_taps_match_selected_hidden_states():
    hf, stack, cfg = models()
    x = torch.randn(stack.input_shape(2))
    with torch.no_grad():
        states = hf.vision_tower(x, output_hidden_states=True).hidden_states
        ref = torch.cat([states[i] for i in cfg.model.feature_layers], dim=-1)
        out = stack.features(x)
    assert out.shape == (2, 81, 4 * cfg.model.hidden_size)
    diff = max_diff(out, ref)
    print(f"[parity] llavanext taps {list(cfg.model.feature_layers)} max|diff| = {diff:.2e}")
    assert diff <= TOL


def test_projector_output_matches_multi_modal_projector():
    hf, stack, cfg = models()
    x = torch.randn(stack.input_shape(2))
    with torch.no_grad():
        states = hf.vision_tower(x, output_hidden_states=True).hidden_states
        ref = hf.multi_modal_projector(torch.cat([states[i] for i in cfg.model.feature_layers], dim=-1))
        out = stack(x)
        # the connector alone on identical inputs
        feats = stack.features(x)
        conn_diff = max_diff(stack.connector(feats, stack.grid), hf.multi_modal_projector(feats))
    assert out.shape == (2, 81, cfg.text_hidden)
    diff = max_diff(out, ref)
    print(f"[parity] llavanext taps+MLP max|diff| = {diff:.2e}; MLP alone {conn_diff:.2e}")
    assert diff <= TOL
    assert conn_diff <= 1e-6


def test_stack_matches_get_image_features_before_and_after_packing():
    """One image = base crop + one tile (pinpoint = the native size): HF packs base (81 rows), then the
    tile row by row with an `image_newline` after each of the 9 rows. The native stack must give the
    same rows for each crop."""
    hf, stack, cfg = models()
    n = stack.grid[0]
    crops = torch.randn(1, 2, *stack.input_shape(1)[1:])  # (batch, crops, C, H, W)
    sizes = torch.tensor([[cfg.model.image_size, cfg.model.image_size]])
    with torch.no_grad():
        packed = hf.get_image_features(crops, sizes).pooler_output[0]
        base, tile = stack(crops[0])  # (2, 81, T): the stack sees each crop as one image
    assert packed.shape == (n * n + n * (n + 1), cfg.text_hidden)
    rows = packed[n * n :].view(n, n + 1, -1)
    diffs = {
        "base": max_diff(base, packed[: n * n]),
        "tile": max_diff(tile, rows[:, :n].reshape(n * n, -1)),
    }
    print(f"[parity] llavanext vs get_image_features max|diff| = {diffs}")
    assert max(diffs.values()) <= TOL
    assert torch.equal(rows[:, n], hf.image_newline.expand(n, -1))


def test_no_block_past_the_deepest_tap_changes_the_result():
    """Taps that stop early ([-6,-4] -> 3 blocks) still equal HF's full run at those indices."""
    hf, full, _ = models()
    stack = vtlab.build(PRESET, ["model.feature_layers=[-6,-4]"]).eval()
    stack.tower.load_state_dict(full.tower.state_dict())
    assert stack.tower.depth_used == 3
    x = torch.randn(stack.input_shape(1))
    with torch.no_grad():
        states = hf.vision_tower(x, output_hidden_states=True).hidden_states
        diff = max_diff(stack.features(x), torch.cat([states[-6], states[-4]], dim=-1))
    assert diff <= TOL
