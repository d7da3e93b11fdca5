"""Pixel-unshuffle connector vs transformers' `Idefics3Connector` (and the whole SmolVLM feature path).

Issue 2 tolerance: connector max |diff| <= 1e-6 (the unshuffle itself is a pure permutation: bit-exact);
the full tower + connector path vs `Idefics3Model.get_image_features` is held to the tower's 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from hf_parity import copy_idefics3, copy_linear, force_eager, max_diff, perturb_, tiny_llama_kwargs, vision_kwargs
from transformers import Idefics3Config
from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector, Idefics3Model

import vtlab
from vtlab.api import compose_config, to_config
from vtlab.models.connectors import build_connector, pixel_unshuffle

CONNECTOR_TOL = 1e-6
TOWER_TOL = 1e-5


def idefics3_config(vision: dict, text_hidden: int, scale: int) -> Idefics3Config:
    return Idefics3Config(
        vision_config=vision,
        text_config=tiny_llama_kwargs(text_hidden),
        scale_factor=scale,
    )


@pytest.mark.parametrize(("n", "s"), [(8, 1), (8, 2), (8, 4), (8, 8), (12, 3), (27, 3), (27, 9), (32, 4)])
def test_pixel_unshuffle_is_bit_identical_to_idefics3_pixel_shuffle(n, s):
    x = torch.randn(2, n * n, 20)
    ref = Idefics3Connector.pixel_shuffle(None, x, scale_factor=s)
    out = pixel_unshuffle(x, (n, n), s)
    assert out.shape == (2, (n // s) ** 2, 20 * s * s)
    assert torch.equal(out, ref)


@pytest.mark.parametrize(("h", "w", "s"), [(4, 6, 2), (6, 9, 3), (8, 8, 4)])
def test_pixel_unshuffle_follows_the_closed_form_on_rectangular_grids(h, w, s):
    """out[b, ho*(w/s)+wo, (i*s+j)*C + c] = x[b, (ho*s+i)*w + (wo*s+j), c] (docs c.1, generalised to h != w)."""
    c = 3
    x = torch.arange(2 * h * w * c, dtype=torch.float32).view(2, h * w, c)
    out = pixel_unshuffle(x, (h, w), s)
    assert out.shape == (2, (h // s) * (w // s), s * s * c)
    for ho in range(h // s):
        for wo in range(w // s):
            for i in range(s):
                for j in range(s):
                    src = x[:, (ho * s + i) * w + (wo * s + j)]
                    dst = out[:, ho * (w // s) + wo, (i * s + j) * c : (i * s + j + 1) * c]
                    assert torch.equal(dst, src)


def test_pixel_unshuffle_refuses_a_factor_that_does_not_divide_the_grid():
    with pytest.raises(ValueError, match="factor 3 does not fit a 8x8 grid"):
        pixel_unshuffle(torch.randn(1, 64, 4), (8, 8), 3)


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_connector_matches_idefics3_connector(factor):
    """The `pixel_unshuffle` connector of smolvlm_debug (8x8 grid, C=32 -> text 64) at every valid factor."""
    cfg = to_config(compose_config("smolvlm_debug", [f"connector.factor={factor}"]))
    torch.manual_seed(0)
    hf = perturb_(Idefics3Connector(idefics3_config(dict(hidden_size=cfg.model.hidden_size, num_attention_heads=4), cfg.text_hidden, factor)).eval())
    conn = build_connector(cfg.connector, in_dim=cfg.model.hidden_size, out_dim=cfg.text_hidden).eval()
    assert conn.proj.bias is None and hf.modality_projection.proj.bias is None  # Idefics3SimpleMLP: bias=False
    copy_linear(hf.modality_projection.proj, conn.proj)
    x = torch.randn(2, 64, cfg.model.hidden_size)
    with torch.no_grad():
        ref = hf(x)
        out = conn(x, (8, 8))
    assert out.shape == (2, 64 // factor**2, cfg.text_hidden)
    diff = max_diff(out, ref)
    print(f"[parity] pixel_unshuffle connector factor {factor} max|diff| = {diff:.2e}")
    assert diff <= CONNECTOR_TOL


def test_smolvlm_stack_matches_idefics3_get_image_features():
    """smolvlm_debug end to end (tower + unshuffle x4 + Linear) vs `Idefics3Model.get_image_features`."""
    cfg = to_config(compose_config("smolvlm_debug"))
    torch.manual_seed(0)
    hf_cfg = idefics3_config(vision_kwargs(cfg.model), cfg.text_hidden, cfg.connector.factor)
    hf = perturb_(Idefics3Model(hf_cfg).eval())
    force_eager(hf.vision_model)
    stack = vtlab.build("smolvlm_debug").eval()
    copy_idefics3(hf, stack)
    x = torch.randn(stack.input_shape(2))
    with torch.no_grad():
        ref = hf.get_image_features(x[:, None]).pooler_output  # one frame per sample, full pixel mask
        out = stack(x)
    assert out.shape == (2, 4, cfg.text_hidden)
    diff = max(max_diff(out[b], ref[b]) for b in range(2))
    print(f"[parity] smolvlm_debug stack vs Idefics3Model.get_image_features max|diff| = {diff:.2e}")
    assert diff <= TOWER_TOL
