"""`VisionStack` API: token bookkeeping, shapes, the stages() table, parameter and FLOP counts, taps that
stop early, overrides through `vtlab.build`, and `torch.compile(fullgraph=True)` on CPU.

Real-size presets run only on the meta device (shapes, parameters and FLOPs without any compute).
"""

from __future__ import annotations

import pytest
import torch

import vtlab
from vtlab.api import build_stack, compose_config
from vtlab.measure.flops import closed_form_flops, count_flops
from vtlab.models.stack import VisionStack

DEBUG = {  # preset: (grid side, tower width, text hidden)
    "siglip_debug": (14, 32, 64),
    "smolvlm_debug": (8, 32, 64),
    "llavanext_debug": (9, 4 * 36, 64),
}
REAL = {  # preset: (grid side, tokens, feature_dim, text hidden, tower params, connector params)
    "siglip": (14, 196, 768, 576, 92_884_224, 768 * 576 + 576),
    "smolvlm": (32, 64, 768, 576, 86_433_024, 12288 * 576),
    "llavanext": (27, 729, 4608, 2048, 412_987_248, 4608 * 2048 + 2048 + 2048 * 2048 + 2048),
}


def meta_build(preset: str, *overrides: str) -> VisionStack:
    with torch.device("meta"):
        return vtlab.build(preset, list(overrides))


def cells(presets: dict) -> list[tuple[str, int]]:
    return [(p, f) for p, (g, *_) in presets.items() for f in range(1, g + 1) if g % f == 0 and f <= 8]


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(("preset", "factor"), cells(DEBUG))
def test_debug_stack_shapes_and_token_counts(preset, factor):
    side, width, text = DEBUG[preset]
    stack = vtlab.build(preset, [f"connector.factor={factor}"]).eval()
    tokens = (side // factor) ** 2
    assert stack.grid == (side, side)
    assert stack.num_patches == side * side
    assert stack.num_tokens == tokens
    assert stack.feature_dim == width
    assert stack.text_hidden == text
    x = torch.randn(stack.input_shape(2))
    with torch.no_grad():
        assert stack.features(x).shape == (2, side * side, width)
        assert stack(x).shape == (2, tokens, text)


@pytest.mark.parametrize("preset", list(REAL))
def test_real_preset_bookkeeping_on_meta(preset):
    side, tokens, feature_dim, text, tower_params, connector_params = REAL[preset]
    stack = meta_build(preset)
    assert stack.grid == (side, side)
    assert stack.num_tokens == tokens
    assert stack.feature_dim == feature_dim and stack.text_hidden == text
    assert sum(p.numel() for p in stack.tower.parameters()) == tower_params
    assert sum(p.numel() for p in stack.connector.parameters()) == connector_params
    x = torch.empty(stack.input_shape(2), device="meta")
    assert stack.features(x).shape == (2, side * side, feature_dim)
    assert stack(x).shape == (2, tokens, text)


def test_documented_token_counts():
    """siglip 196, smolvlm 1024 patches and 64 tokens at factor 4, llavanext 729."""
    assert meta_build("siglip").num_tokens == 196
    assert meta_build("smolvlm", "connector.factor=1").num_tokens == 1024
    assert meta_build("smolvlm").num_tokens == 64  # the preset's own factor is 4
    assert meta_build("llavanext").num_tokens == 729


# ---------------------------------------------------------------------------------------------- stages
def test_stages_table_smolvlm():
    stages = meta_build("smolvlm").stages()
    assert [s.name for s in stages] == ["image", "patch grid", "tower", "connector"]
    assert [s.shape for s in stages] == [(1, 3, 512, 512), (32, 32), (1, 1024, 768), (1, 64, 576)]
    assert stages[1].detail == "32x32 patches of 16px"
    assert stages[2].detail == "12/12 blocks, width 768, post-LN last layer"
    assert stages[3].detail == "pixel_unshuffle, factor 4: 1024 -> 64 tokens"
    assert stages[3].as_dict() == {"name": "connector", "shape": (1, 64, 576), "detail": stages[3].detail}


def test_stages_table_llavanext_reports_the_floored_grid_and_taps():
    stages = meta_build("llavanext").stages()
    assert [s.shape for s in stages] == [(1, 3, 384, 384), (27, 27), (1, 729, 4608), (1, 729, 2048)]
    assert stages[1].detail == "27x27 patches of 14px (uses 378px, drops 6px)"
    assert stages[2].detail == "27/27 blocks, width 1152, taps [4, 8, 16, 27] concatenated"
    assert stages[3].detail == "mlp, factor 1: 729 -> 729 tokens"


# ---------------------------------------------------------------------------------------------- FLOPs
def tower_closed_form(n: int, d: int, f: int, layers: int, p: int, c: int = 3) -> int:
    """performance.md section 2, written out here independently of vtlab.measure."""
    return layers * (8 * n * d * d + 4 * n * d * f + 4 * n * n * d) + 2 * n * c * p * p * d


def test_closed_form_values_for_the_real_presets():
    assert closed_form_flops(meta_build("smolvlm")) == {
        "tower": tower_closed_form(1024, 768, 3072, 12, 16),
        "connector": 2 * 64 * 12288 * 576,
    }
    assert closed_form_flops(meta_build("llavanext")) == {
        "tower": tower_closed_form(729, 1152, 4304, 27, 14),
        "connector": 2 * 729 * (4608 * 2048 + 2048 * 2048),
    }


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("siglip", ()),
        ("smolvlm", ()),
        ("llavanext", ()),
        ("smolvlm", ("connector=mlp", "connector.factor=2")),
        ("llavanext", ("model.feature_layers=[-24,-20]",)),  # stops after block 8
    ],
    ids=["siglip", "smolvlm", "llavanext", "smolvlm-mlp-f2", "llavanext-early-taps"],
)
def test_counted_flops_equal_the_closed_form_on_meta(preset, overrides):
    stack = meta_build(preset, *overrides)
    x = torch.empty(stack.input_shape(1), device="meta")
    counted = {"tower": count_flops(stack.tower, x), "connector": count_flops(stack.connector, stack.tower(x), stack.grid)}
    assert counted == closed_form_flops(stack)


@pytest.mark.parametrize("preset", list(DEBUG))
def test_counted_flops_equal_the_closed_form_on_cpu(preset):
    stack = vtlab.build(preset).eval()
    x = torch.randn(stack.input_shape(2))
    counted = {
        "tower": count_flops(stack.tower, x) // 2,
        "connector": count_flops(stack.connector, stack.tower(x), stack.grid) // 2,
    }
    assert counted == closed_form_flops(stack)


# ---------------------------------------------------------------------------------------------- taps
def block_calls(stack: VisionStack) -> dict[str, int]:
    calls = {"blocks": 0, "post_norm": 0, "head": 0}

    def hook(name):
        def fn(*_):
            calls[name] += 1

        return fn

    for blk in stack.tower.blocks:
        blk.register_forward_hook(hook("blocks"))
    stack.tower.post_norm.register_forward_hook(hook("post_norm"))
    if stack.tower.head is not None:
        stack.tower.head.register_forward_hook(hook("head"))
    with torch.no_grad():
        stack(torch.randn(stack.input_shape(1)))
    return calls


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("llavanext_debug", (), {"blocks": 6, "post_norm": 0, "head": 0}),  # taps [-6,-4,-2,-1]
        ("llavanext_debug", ("model.feature_layers=[-6,-4]",), {"blocks": 3, "post_norm": 0, "head": 0}),
        ("llavanext_debug", ("model.feature_layers=[0]",), {"blocks": 0, "post_norm": 0, "head": 0}),
        ("llavanext_debug", ("model.feature_layers=[2,1]",), {"blocks": 2, "post_norm": 0, "head": 0}),
        ("siglip_debug", (), {"blocks": 2, "post_norm": 1, "head": 0}),  # the MAP head is never on the VLM path
    ],
    ids=["all-taps", "stop-after-3", "embeddings-only", "unsorted-taps", "post-ln-no-head"],
)
def test_no_block_past_the_deepest_tap_is_computed(preset, overrides, expected):
    stack = vtlab.build(preset, list(overrides)).eval()
    assert block_calls(stack) == expected
    assert stack.tower.depth_used == expected["blocks"]
    assert len(stack.tower.inactive_modules()) == (
        len(stack.tower.blocks) - expected["blocks"]
        + (stack.tower.feature_layers is not None)
        + (stack.tower.head is not None)
    )


# ---------------------------------------------------------------------------------------------- API
def test_build_equals_build_stack_of_the_composed_config():
    overrides = ["connector.factor=2", "connector=mlp"]
    torch.manual_seed(0)
    a = vtlab.build("smolvlm_debug", overrides)
    torch.manual_seed(0)
    b = build_stack(compose_config("smolvlm_debug", overrides))
    assert a.connector.kind == b.connector.kind == "mlp"
    assert a.num_tokens == b.num_tokens == 16
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [(["text_hidden=100"], 100), (["text.hidden_size=48"], 48), (["text=smollm2_360m"], 960)],
    ids=["text_hidden", "text.hidden_size", "text-preset"],
)
def test_text_hidden_override(overrides, expected):
    stack = vtlab.build("smolvlm_debug", overrides)
    assert stack.text_hidden == expected
    assert stack.connector.proj.out_features == expected
    with torch.no_grad():
        assert stack(torch.randn(stack.input_shape(1))).shape == (1, 4, expected)


def test_map_head_pools_the_post_ln_tokens():
    stack = vtlab.build("siglip_debug").eval()
    with torch.no_grad():
        pooled = stack.tower.pool(stack.features(torch.randn(stack.input_shape(3))))
    assert pooled.shape == (3, 32)
    with pytest.raises(RuntimeError, match="without a head"):
        vtlab.build("smolvlm_debug").tower.pool(torch.zeros(1, 64, 32))


# ---------------------------------------------------------------------------------------------- compile
def test_torch_compile_fullgraph_inductor_on_cpu_matches_eager():
    torch.manual_seed(0)
    stack = vtlab.build("smolvlm_debug").eval()
    compiled = torch.compile(stack, fullgraph=True)
    x = torch.randn(stack.input_shape(2))
    with torch.no_grad():
        out, ref = compiled(x), stack(x)
    assert out.shape == (2, 4, 64)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("preset", ["siglip_debug", "llavanext_debug"])
def test_torch_compile_fullgraph_traces_without_graph_breaks(preset):
    """Dynamo capture only (backend="eager"): fullgraph=True raises on any graph break."""
    torch._dynamo.reset()
    stack = vtlab.build(preset).eval()
    x = torch.randn(stack.input_shape(2))
    with torch.no_grad():
        out = torch.compile(stack, fullgraph=True, backend="eager")(x)
        assert torch.allclose(out, stack(x), atol=1e-6)
