"""The idefics2 family: `Idefics2ForConditionalGeneration` checkpoints (tower + perceiver connector) loaded
end to end and compared with `Idefics2Model.get_image_features` (unpadded frames at the native size), the
`+model=hf` architecture read from its config.json, and the presets' geometry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_parity import force_eager, max_diff, perturb_

from vtlab.api import build_stack
from vtlab.config.compose import compose_config, make_config, to_config
from vtlab.families import get_family

TOL = 1e-5


def tiny_idefics2(path: Path):
    """A tiny Idefics2 whose vision side equals `+model=idefics2_debug` (text `tiny`: width 64), saved to `path`."""
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    text = dict(model_type="mistral", hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=128, hidden_act="silu", rms_norm_eps=1e-5)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=4, attention_dropout=0.0, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    perceiver = dict(hidden_size=64, resampler_n_latents=4, resampler_depth=2, resampler_n_heads=4,
                     resampler_head_dim=8, num_key_value_heads=2, rms_norm_eps=1e-5, hidden_act="silu")
    cfg = Idefics2Config(vision_config=vision, perceiver_config=perceiver, text_config=text, image_token_id=127)
    torch.manual_seed(0)
    model = perturb_(Idefics2ForConditionalGeneration(cfg).eval())
    model.save_pretrained(path)
    force_eager(model)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("idefics2")
    return path, tiny_idefics2(path)


@pytest.mark.parametrize("preset", ["idefics2_debug", "hf"])
def test_checkpoint_end_to_end_matches_get_image_features(saved, preset: str) -> None:
    path, hf = saved
    stack = build_stack(compose_config(preset, [f"model.weights={path}", "logger=none"])).eval()
    assert str(to_config(compose_config(preset, [f"model.weights={path}"])).model.family) == "idefics2"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf.model.get_image_features(pixels[:, None], pixel_attention_mask=torch.ones(2, 1, 32, 32, dtype=torch.long))
        ref = getattr(ref, "pooler_output", ref)
        ref = torch.stack(list(ref)) if isinstance(ref, (list, tuple)) else ref
        out = stack(pixels)
    diff = max_diff(out, ref.reshape(out.shape))
    print(f"[parity] idefics2 {preset}: stack vs Idefics2Model.get_image_features max|diff| = {diff:.2e}")
    assert out.shape == (2, 4, 64) and diff <= TOL


def test_hf_architecture_from_config_json(saved) -> None:
    path, _ = saved
    c = to_config(compose_config("hf", [f"model.weights={path}"]))
    assert (str(c.connector.kind), c.connector.tokens, c.connector.depth, c.connector.num_heads, c.connector.head_dim,
            c.connector.num_kv_heads, c.connector.hidden_size, c.connector.norm_eps) == (
        "perceiver", 4, 2, 4, 8, 2, 256, 1e-5)
    assert (c.model.hidden_size, c.model.num_layers, c.model.image_size, c.model.patch_size, c.text_hidden) == (
        32, 2, 32, 4, 64)


def test_fused_kv_keys_round_trip() -> None:
    fam = get_family("idefics2")
    assert fam.connector_fused_key("perceiver_resampler.layers.1.self_attn.v_proj.weight") == (
        "connector.layers.1.attn.kv.weight", "v")
    assert fam.connector_key_to_native("perceiver_resampler.layers.0.self_attn.q_proj.weight") == (
        "connector.layers.0.attn.q.weight")
    assert fam.connector_native_to_hf("connector.latents") == "model.connector.perceiver_resampler.latents"
    assert fam.connector_fused_to_hf("connector.layers.0.attn.kv.weight") == [
        "model.connector.perceiver_resampler.layers.0.self_attn.k_proj.weight",
        "model.connector.perceiver_resampler.layers.0.self_attn.v_proj.weight"]
    assert fam.connector_key_to_native("perceiver_resampler.nope") is None


def test_presets() -> None:
    c = make_config("idefics2", [])
    assert (c.connector.tokens, c.text_hidden, c.model.image_size // c.model.patch_size) == (64, 4096, 70)
    assert str(c.model.family) == "idefics2" and get_family("idefics2").position_rule == "bucket"
    stack = build_stack(make_config("idefics2_debug", []))
    assert stack.num_tokens == 4 and stack.stages()["connector"].shape == (1, 4, 64)


def test_export_loads_in_transformers(saved, tmp_path: Path) -> None:
    from transformers import Idefics2ForConditionalGeneration

    from vtlab.checkpoints.export import export_hf

    path, _ = saved
    cfg = to_config(compose_config("idefics2_debug", [f"model.weights={path}"]))
    stack = build_stack(cfg).eval()
    out = export_hf(stack, cfg, tmp_path / "export")
    hf = Idefics2ForConditionalGeneration.from_pretrained(out).eval()
    force_eager(hf)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf.model.get_image_features(pixels[:, None], pixel_attention_mask=torch.ones(2, 1, 32, 32, dtype=torch.long))
        ref = getattr(ref, "pooler_output", ref)
        ref = torch.stack(list(ref)) if isinstance(ref, (list, tuple)) else ref
        diff = max_diff(stack(pixels), ref.reshape(2, 4, 64))
    print(f"[export] idefics2 export -> Idefics2ForConditionalGeneration max|diff| = {diff:.2e}")
    assert diff <= TOL
