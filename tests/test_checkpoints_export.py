"""Export round trip: vtlab -> Hugging Face layout -> transformers `from_pretrained` / vtlab load."""

from __future__ import annotations

import json

import pytest
import torch
from ckpt_fixtures import max_diff, pixels

from vtlab.api import build, compose_config, to_config
from vtlab.checkpoints import export_hf

TOL = 1e-5


def _randomise_stack(stack: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _source(preset: str):
    cfg = to_config(compose_config(preset, ["logger=none"]))
    stack = build(preset, ["logger=none"]).eval()
    _randomise_stack(stack)
    if preset == "llavanext_debug":  # a stack that holds LlavaNext's image_newline exports it
        stack.register_buffer("image_newline", torch.randn(cfg.text_hidden))
    return cfg, stack


def test_siglip_export_loads_in_transformers(tmp_path):
    from transformers import SiglipVisionModel

    cfg, stack = _source("siglip_debug")
    export_hf(stack, cfg, tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["model_type"] == "siglip_vision_model" and conf["vision_use_head"] is True
    hf = SiglipVisionModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = pixels(112)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        feats = stack.features(x)
        d, d_pool = max_diff(ref.last_hidden_state, feats), max_diff(ref.pooler_output, stack.tower.pool(feats))
    print(f"export siglip: tower {d:.2e}, pooled {d_pool:.2e}")
    assert d <= TOL and d_pool <= TOL


def test_idefics3_export_loads_in_transformers(tmp_path):
    from transformers import Idefics3ForConditionalGeneration

    cfg, stack = _source("smolvlm_debug")
    export_hf(stack, cfg, tmp_path)
    hf = Idefics3ForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf.config.scale_factor == 4
    x = pixels(64)
    with torch.no_grad():
        last = hf.model.vision_model(pixel_values=x).last_hidden_state
        d, d_conn = max_diff(last, stack.features(x)), max_diff(hf.model.connector(last), stack(x))
    print(f"export idefics3: tower {d:.2e}, connector {d_conn:.2e}")
    assert d <= TOL and d_conn <= TOL


def test_llava_next_export_loads_in_transformers(tmp_path):
    from transformers import LlavaNextForConditionalGeneration

    cfg, stack = _source("llavanext_debug")
    export_hf(stack, cfg, tmp_path)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    layers = list(cfg.model.feature_layers)
    assert list(hf.config.vision_feature_layer) == layers
    x = pixels(66)
    with torch.no_grad():
        hs = hf.model.vision_tower(pixel_values=x, output_hidden_states=True).hidden_states
        feats = torch.cat([hs[i] for i in layers], dim=-1)
        d, d_proj = max_diff(feats, stack.features(x)), max_diff(hf.model.multi_modal_projector(feats), stack(x))
    d_nl = max_diff(hf.model.image_newline, stack.image_newline)
    print(f"export llava_next: tower {d:.2e}, projector {d_proj:.2e}, image_newline {d_nl:.2e}")
    assert d <= TOL and d_proj <= TOL and d_nl == 0


@pytest.mark.parametrize("preset", ["siglip_debug", "smolvlm_debug", "llavanext_debug"])
@pytest.mark.parametrize("via", ["preset", "hf"])
def test_load_of_export_is_identical(preset, via, tmp_path):
    cfg, stack = _source(preset)
    export_hf(stack, cfg, tmp_path)
    back = build(preset if via == "preset" else "hf", [f"model.weights={tmp_path}", "logger=none"]).eval()
    a, b = stack.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if via == "hf":
        got = to_config(compose_config("hf", [f"model.weights={tmp_path}"]))
        assert (got.model.name, got.connector.kind, got.connector.factor, got.text_hidden) == (
            cfg.model.name, cfg.connector.kind, cfg.connector.factor, cfg.text_hidden)
