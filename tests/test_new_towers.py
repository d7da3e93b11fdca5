"""Native CLIP / DINOv2 / SigLIP2 towers (vtlab/models/towers) vs transformers 5.24 and timm (issue 12).

CPU, fp32, eager HF attention, tiny configs (hidden 32, 2-3 layers) with random HF weights perturbed so
that no LayerNorm / LayerScale is the identity and no bias is zero, copied into the native towers through
the modules' own `hf_to_native`. Tolerance max |diff| <= 1e-5 everywhere; preprocessing vs the PIL image
processors (`CLIPImageProcessorPil`, `BitImageProcessorPil`, `Siglip2ImageProcessorPil`) at <= 1e-5.
Each parity test prints its measured max |diff| (`pytest -s` shows them).
"""

from __future__ import annotations

import functools
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Siglip2VisionConfig,
    Siglip2VisionModel,
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

from vtlab.models.towers import clip, dinov2, siglip2
from vtlab.models.towers.clip import ClipTower
from vtlab.models.towers.dinov2 import Dinov2Tower
from vtlab.models.towers.siglip2 import Siglip2Tower

TOL = 1e-5
COMPILE_BACKEND = "inductor"  # fullgraph=True is the check: any graph break (host sync, value branch) fails


# ---------------------------------------------------------------------------------------------- helpers
@torch.no_grad()
def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Noise on every parameter: LayerNorm / LayerScale off (1, 0), biases off 0."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


def report(name: str, diff: float) -> None:
    print(f"[new-towers] {name} max|diff| = {diff:.2e}")
    assert diff <= TOL, (name, diff)


def pixels(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rand_image(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return arr[..., 0] if channels == 1 else arr


def count_flops(fn, *args) -> int:
    """FlopCounterMode total; the CPU flash SDPA kernel is not in torch's table, count it as 4 N^2 d."""
    extra = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = lambda q, k, v, *a, out_shape=None, **kw: (
            sdpa_flop_count(q, k, v)
        )
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=extra) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def assert_compiles(tower: nn.Module, *inputs: torch.Tensor) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(tower, fullgraph=True, backend=COMPILE_BACKEND)
    with torch.no_grad():
        diff = max_diff(compiled(*inputs), tower(*inputs))
    report(f"{type(tower).__name__} compiled(fullgraph) vs eager", diff)


CLIP_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
)


# ================================================================================================ CLIP
@functools.cache
def clip_pair(hidden_act: str = "quick_gelu"):
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(**CLIP_VISION, hidden_act=hidden_act, attn_implementation="eager")
    hf = perturb_(CLIPVisionModel(cfg).eval())
    tower = ClipTower(**clip.tower_kwargs_from_hf_config(cfg.to_dict()), select_strategy="full").eval()
    tower.load_state_dict(clip.hf_to_native(hf.state_dict()), strict=True)
    return hf, tower


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_last_hidden_state_hidden_states_and_pooler(hidden_act):
    hf, tower = clip_pair(hidden_act)
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        out, states = tower(x), tower.hidden_states(x)
        pooled = tower.pool(out)
    assert out.shape == (2, 17, 32) and len(states) == len(ref.hidden_states) == 4
    report(f"clip[{hidden_act}] last_hidden_state", max_diff(out, ref.last_hidden_state))
    report(
        f"clip[{hidden_act}] hidden_states", max(max_diff(a, b) for a, b in zip(states, ref.hidden_states, strict=True))
    )
    report(f"clip[{hidden_act}] pooler_output", max_diff(pooled, ref.pooler_output))


def test_clip_feature_taps_select_hidden_states_and_stop_early():
    hf, full = clip_pair()
    taps = [0, 1, -2]
    tower = ClipTower(
        **clip.tower_kwargs_from_hf_config(hf.config.to_dict()), feature_layers=taps, select_strategy="full"
    )
    tower.load_state_dict(full.state_dict())
    tower.eval()
    assert tower.feature_layers == [0, 1, 2] and tower.depth_used == 2 and tower.feature_dim == 96
    assert tower.blocks[2] in tower.inactive_modules() and tower.post_norm in tower.inactive_modules()
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        states = hf(x, output_hidden_states=True).hidden_states
        out = tower(x)
    report("clip taps [0, 1, -2]", max_diff(out, torch.cat([states[i] for i in taps], dim=-1)))


def test_clip_full_vs_default_strategy():
    hf, full = clip_pair()
    default = ClipTower(**clip.tower_kwargs_from_hf_config(hf.config.to_dict()), select_strategy="default").eval()
    default.load_state_dict(full.state_dict())
    assert (full.prefix_tokens, default.prefix_tokens) == (1, 0)
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        a, b = full(x), default(x)
    assert b.shape == (2, 16, 32)
    assert torch.equal(a[:, 1:], b)
    with pytest.raises(ValueError, match="select_strategy"):
        ClipTower(**CLIP_TOWER_KW, select_strategy="cls")


CLIP_TOWER_KW = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4)


@pytest.mark.parametrize("size", [(40, 56), (24, 24), (48, 48), (35, 43)], ids=["rect", "smaller", "larger", "floored"])
def test_clip_interpolated_position_embeddings(size):
    hf, tower = clip_pair()
    x = pixels(2, 3, *size)
    with torch.no_grad():
        ref = hf(x, interpolate_pos_encoding=True, output_hidden_states=True)
        out, emb = tower(x), tower.embed(x)
    gh, gw = tower.grid_for(*size)
    assert out.shape == (2, 1 + gh * gw, 32)
    report(f"clip interpolated {size}", max(max_diff(out, ref.last_hidden_state), max_diff(emb, ref.hidden_states[0])))


def tiny_llava() -> LlavaForConditionalGeneration:
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **CLIP_VISION),
        text_config=dict(
            model_type="llama",
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=128,
        ),
        image_token_index=100,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    model.set_attn_implementation("eager")
    return perturb_(model.eval())


def test_clip_llava15_feature_path_matches_get_image_features():
    """LLaVA-1.5: hidden_states[-2] without CLS, then the mlp2x_gelu projector (copied into a native MLP)."""
    model = tiny_llava()
    conf = model.config.to_dict()
    kwargs = clip.tower_kwargs_from_hf_config(conf)
    assert kwargs["feature_layers"] == [-2] and kwargs["select_strategy"] == "default"
    tower = ClipTower(**kwargs).eval()
    tower.load_state_dict(clip.hf_to_native(model.state_dict(), prefix="model.vision_tower."), strict=True)
    assert tower.depth_used == 2 and tower.prefix_tokens == 0
    proj = model.model.multi_modal_projector
    mlp = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 48))
    mlp[0].load_state_dict(proj.linear_1.state_dict())
    mlp[2].load_state_dict(proj.linear_2.state_dict())
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        feats = tower(x)
        ref_feats = model.model.vision_tower(x, output_hidden_states=True).hidden_states[-2][:, 1:]
        ref = model.get_image_features(x, vision_feature_layer=-2, vision_feature_select_strategy="default")
        ref_proj = torch.stack(list(ref.pooler_output))
    assert feats.shape == (2, 16, 32)
    report("llava-1.5 vision features (hidden_states[-2][:, 1:])", max_diff(feats, ref_feats))
    report("llava-1.5 get_image_features (after projector)", max_diff(mlp(feats), ref_proj))


def test_clip_timm_state_dict_loads_to_the_hf_outputs():
    """A tiny timm CLIP tower (vit_large_patch14_clip_quickgelu_336 settings) -> native -> HF: same outputs."""
    from timm.layers import LayerNorm
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=4,
        mlp_ratio=2.0,
        pre_norm=True,
        class_token=True,
        global_pool="token",
        act_layer="quick_gelu",
        norm_layer=partial(LayerNorm, eps=1e-5),
        num_classes=16,
    )
    perturb_(vit.eval())
    assert vit.patch_embed.proj.bias is None and vit.fc_norm.__class__ is nn.Identity
    tower = ClipTower(**CLIP_TOWER_KW, select_strategy="full").eval()
    tower.load_state_dict(clip.timm_to_native(vit.state_dict()), strict=True)
    hf = CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION, attn_implementation="eager")).eval()
    hf.load_state_dict(clip.native_to_hf(tower.state_dict()), strict=True)
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(x)
        timm_tokens = vit.forward_features(x)  # timm's `norm` (= post_layernorm) is applied to every token
        out = tower(x)
    report("timm -> native vs HF last_hidden_state", max_diff(out, ref.last_hidden_state))
    report("timm -> native vs HF pooler_output", max_diff(tower.pool(out), ref.pooler_output))
    report("timm forward_features vs native post_norm(all tokens)", max_diff(tower.post_norm(out), timm_tokens))
    with pytest.raises(KeyError, match="blocks.0.ls1"):
        clip.timm_to_native({**vit.state_dict(), "blocks.0.ls1.gamma": torch.ones(32)})


def saved_keys_state(model: nn.Module, path) -> dict[str, torch.Tensor]:
    model.save_pretrained(path)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def test_clip_save_pretrained_layouts_map_to_native(tmp_path):
    """Keys as saved by 5.24: CLIPVisionModel bare, CLIPModel `vision_model.`, Llava `vision_tower.` (the v5
    saver drops the runtime `model.` and writes no `vision_model.` wrapper); hub LLaVA-1.5
    `vision_tower.vision_model.` and the v5 runtime `model.vision_tower.` map too."""
    torch.manual_seed(0)
    vision = perturb_(CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION, attn_implementation="eager")).eval())
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=100,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    both = perturb_(CLIPModel(CLIPConfig(vision_config=CLIP_VISION, text_config=text)).eval(), seed=1)
    llava = tiny_llava()
    x = pixels(2, 3, 32, 32)
    layouts = {
        "CLIPVisionModel": (saved_keys_state(vision, tmp_path / "v"), "", vision),
        "CLIPModel": (saved_keys_state(both, tmp_path / "c"), "vision_model.", both.vision_model),
        "Llava (v5 saved)": (saved_keys_state(llava, tmp_path / "l"), "vision_tower.", llava.model.vision_tower),
        "Llava (v5 runtime)": (llava.state_dict(), "model.vision_tower.", llava.model.vision_tower),
    }
    saved_llava = layouts["Llava (v5 saved)"][0]
    assert any(k.startswith("vision_tower.embeddings.") for k in saved_llava)
    assert not any(k.startswith("vision_tower.vision_model.") for k in saved_llava)
    assert any(k.startswith("vision_model.embeddings.") for k in layouts["CLIPModel"][0])
    hub = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in saved_llava.items()}
    layouts["LLaVA-1.5 hub"] = (hub, "vision_tower.vision_model.", llava.model.vision_tower)
    layouts["LLaVA-1.5 hub, wrapper stripped"] = (hub, "vision_tower.", llava.model.vision_tower)
    for name, (state, prefix, hf) in layouts.items():
        tower = ClipTower(**CLIP_TOWER_KW, select_strategy="full").eval()
        tower.load_state_dict(clip.hf_to_native(state, prefix=prefix), strict=True)
        with torch.no_grad():
            diff = max_diff(tower(x), hf(x).last_hidden_state)
        report(f"clip saved layout {name} (prefix {prefix!r})", diff)
    native = clip.hf_to_native(layouts["CLIPVisionModel"][0])
    assert set(clip.native_to_hf(native)) == set(layouts["CLIPVisionModel"][0])
    assert set(clip.native_to_hf(native, prefix="vision_model.")) == {
        k for k in layouts["CLIPModel"][0] if k.startswith("vision_model.")
    }
    with pytest.raises(KeyError, match="vision_model.encoder.layers.0.extra.weight"):
        clip.hf_to_native(
            {**layouts["CLIPModel"][0], "vision_model.encoder.layers.0.extra.weight": torch.zeros(1)}, "vision_model."
        )


def test_clip_config_reader_defaults():
    assert clip.tower_kwargs_from_hf_config({}) == clip.tower_kwargs_from_hf_config(CLIPVisionConfig().to_dict())
    assert clip.tower_kwargs_from_hf_config({"model_type": "clip", "vision_config": CLIP_VISION})["num_layers"] == 3
    llava = clip.tower_kwargs_from_hf_config(
        {"model_type": "llava", "vision_config": {"image_size": 336, "patch_size": 14}}
    )
    assert llava["feature_layers"] == [-2] and llava["select_strategy"] == "default" and llava["image_size"] == 336


def test_clip_flops_closed_form_equals_flop_counter():
    _, full = clip_pair()
    for feature_layers, size in [(None, (32, 32)), ([-2], (40, 56)), ([0], (32, 32))]:
        tower = ClipTower(**CLIP_TOWER_KW, feature_layers=feature_layers).eval()
        counted = count_flops(tower, pixels(1, 3, *size))
        assert counted == tower.flops_closed_form(*tower.grid_for(*size)), (feature_layers, size)


@pytest.mark.slow
def test_clip_compiles_fullgraph():
    _, tower = clip_pair()
    assert_compiles(tower, pixels(2, 3, 32, 32))


# ================================================================================================ DINOv2
DINO_KINDS = {
    "dinov2": (Dinov2Model, Dinov2Config, {}),
    "registers": (Dinov2WithRegistersModel, Dinov2WithRegistersConfig, {"num_register_tokens": 3}),
    "swiglu": (Dinov2Model, Dinov2Config, {"use_swiglu_ffn": True}),
}


@functools.cache
def dino_pair(kind: str):
    cls, conf_cls, extra = DINO_KINDS[kind]
    torch.manual_seed(0)
    cfg = conf_cls(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=28,
        patch_size=7,
        layer_norm_eps=1e-5,
        attn_implementation="eager",
        **extra,
    )
    hf = perturb_(cls(cfg).eval())
    tower = Dinov2Tower(**dinov2.tower_kwargs_from_hf_config(cfg.to_dict()), keep_prefix=True).eval()
    tower.load_state_dict(dinov2.hf_to_native(hf.state_dict()), strict=True)
    return hf, tower


@pytest.mark.parametrize("kind", list(DINO_KINDS))
def test_dinov2_last_hidden_state_hidden_states_and_patch_tokens(kind):
    hf, tower = dino_pair(kind)
    r = tower.num_register_tokens
    x = pixels(2, 3, 28, 28)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        out, states = tower(x), tower.hidden_states(x)
        patches = Dinov2Tower(**dinov2.tower_kwargs_from_hf_config(hf.config.to_dict()))
        patches.load_state_dict(tower.state_dict())
        patch_out = patches.eval()(x)
    assert out.shape == (2, 1 + r + 16, 32) and tower.prefix_tokens == 1 + r and patches.prefix_tokens == 0
    report(f"dinov2[{kind}] last_hidden_state (all tokens)", max_diff(out, ref.last_hidden_state))
    report(f"dinov2[{kind}] hidden_states", max(max_diff(a, b) for a, b in zip(states, ref.hidden_states, strict=True)))
    report(
        f"dinov2[{kind}] patch tokens vs last_hidden_state[:, 1+R:]",
        max_diff(patch_out, ref.last_hidden_state[:, 1 + r :]),
    )


@pytest.mark.parametrize("kind", list(DINO_KINDS))
@pytest.mark.parametrize(
    "size", [(42, 35), (21, 21), (56, 56), (28, 30)], ids=["rect", "smaller", "larger", "same-grid-nonsquare"]
)
def test_dinov2_interpolated_position_embeddings(kind, size):
    hf, tower = dino_pair(kind)
    x = pixels(2, 3, *size)
    with torch.no_grad():
        ref = hf(x).last_hidden_state
        out = tower(x)
    report(f"dinov2[{kind}] interpolated {size}", max_diff(out, ref))


def test_dinov2_registers_interpolation_needs_antialias():
    """Dinov2WithRegistersModel resizes with antialias=True, Dinov2Model without: the flag is not cosmetic."""
    hf, tower = dino_pair("registers")
    plain = Dinov2Tower(
        **{**dinov2.tower_kwargs_from_hf_config(hf.config.to_dict()), "antialias": False}, keep_prefix=True
    )
    plain.load_state_dict(tower.state_dict())
    x = pixels(2, 3, 42, 35)
    with torch.no_grad():
        assert max_diff(plain.eval()(x), hf(x).last_hidden_state) > 1e-3


def test_dinov2_feature_taps():
    hf, tower = dino_pair("registers")
    taps = [1, -1]
    tapped = Dinov2Tower(**dinov2.tower_kwargs_from_hf_config(hf.config.to_dict()), feature_layers=taps)
    tapped.load_state_dict(tower.state_dict())
    assert tapped.depth_used == 3 and tapped.norm in tapped.inactive_modules()
    assert tapped.mask_token in tapped.inactive_modules()
    x = pixels(2, 3, 28, 28)
    with torch.no_grad():
        states = hf(x, output_hidden_states=True).hidden_states
        ref = torch.cat([states[i] for i in taps], dim=-1)[:, 4:]
        out = tapped.eval()(x)
    report("dinov2[registers] taps [1, -1] (pre-norm, patches)", max_diff(out, ref))


@pytest.mark.parametrize("kind", list(DINO_KINDS))
def test_dinov2_save_pretrained_names_round_trip(kind, tmp_path):
    """5.24 saves the legacy names (attention.attention.query, ..., SwiGLU weights_in); both name sets map."""
    hf, tower = dino_pair(kind)
    saved = saved_keys_state(hf, tmp_path)
    assert any(".attention.attention.query." in k for k in saved)
    native = dinov2.hf_to_native(saved)
    assert native.keys() == tower.state_dict().keys()
    assert all(torch.equal(native[k], v) for k, v in tower.state_dict().items())
    assert set(dinov2.native_to_hf(native, legacy=True)) == set(saved)
    hf.load_state_dict(dinov2.native_to_hf(native), strict=True)
    with pytest.raises(KeyError, match="encoder.layer.0.attention.bogus.weight"):
        dinov2.hf_to_native({**saved, "encoder.layer.0.attention.bogus.weight": torch.zeros(1)})


def test_dinov2_config_reader_defaults():
    for conf_cls in (Dinov2Config, Dinov2WithRegistersConfig):
        full = conf_cls().to_dict()
        assert dinov2.tower_kwargs_from_hf_config(
            {"model_type": full["model_type"]}
        ) == dinov2.tower_kwargs_from_hf_config(full)
    assert dinov2.tower_kwargs_from_hf_config({"model_type": "dinov2_with_registers"})["antialias"] is True


def test_dinov2_flops_closed_form_equals_flop_counter():
    for kind in DINO_KINDS:
        hf, tower = dino_pair(kind)
        for size in [(28, 28), (42, 35)]:
            assert count_flops(tower, pixels(1, 3, *size)) == tower.flops_closed_form(*tower.grid_for(*size)), (
                kind,
                size,
            )


@pytest.mark.slow
def test_dinov2_compiles_fullgraph():
    _, tower = dino_pair("registers")
    assert_compiles(tower, pixels(2, 3, 42, 35))


# ================================================================================================ SigLIP2
SIGLIP2_IMAGES = [(50, 80), (120, 40), (64, 64)]


@functools.cache
def siglip2_pair(patch_size: int = 4, num_patches: int = 64):
    torch.manual_seed(0)
    cfg = Siglip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=patch_size,
        num_patches=num_patches,
        attn_implementation="eager",
    )
    hf = perturb_(Siglip2VisionModel(cfg).eval())
    tower = Siglip2Tower(**siglip2.tower_kwargs_from_hf_config(cfg.to_dict())).eval()
    tower.load_state_dict(siglip2.hf_to_native(hf.state_dict()), strict=True)
    return hf, tower


def pil_images(sizes, seed: int = 0) -> list[Image.Image]:
    return [Image.fromarray(rand_image(h, w, seed + i)) for i, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize("patch_size", [4, 8])
@pytest.mark.parametrize("budget", [1, 16, 64, 100])
def test_naflex_patchify_matches_siglip2_image_processor_pil(patch_size, budget):
    images = pil_images(SIGLIP2_IMAGES)
    ref = Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=budget)(images, return_tensors="pt")
    mine = siglip2.naflex_batch(images, patch_size=patch_size, max_num_patches=budget)
    assert mine.keys() == ref.keys()
    for key in ("pixel_attention_mask", "spatial_shapes"):
        assert mine[key].dtype == ref[key].dtype and torch.equal(mine[key], ref[key]), key
    assert (mine["spatial_shapes"].prod(-1) <= budget).all()
    report(f"naflex pixel_values p={patch_size} budget={budget}", max_diff(mine["pixel_values"], ref["pixel_values"]))


@pytest.mark.parametrize("budget", [16, 64, 100])
def test_siglip2_naflex_forward_matches_hf(budget):
    """Three aspect ratios padded to one length in a single forward; valid rows and padded rows both."""
    hf, tower = siglip2_pair()
    images = pil_images(SIGLIP2_IMAGES)
    ref_in = Siglip2ImageProcessorPil(patch_size=4, max_num_patches=budget)(images, return_tensors="pt")
    mine = siglip2.naflex_batch(images, patch_size=4, max_num_patches=budget)
    valid = ref_in["pixel_attention_mask"].bool()
    assert not valid.all()  # some padding in the batch
    with torch.no_grad():
        ref = hf(**ref_in, output_hidden_states=True)
        out = tower(**mine)
        states = tower.hidden_states(mine["pixel_values"], None, mine["pixel_attention_mask"], mine["spatial_shapes"])
    report(
        f"siglip2 budget={budget} last_hidden_state (valid rows)", max_diff(out[valid], ref.last_hidden_state[valid])
    )
    report(f"siglip2 budget={budget} last_hidden_state (padded rows too)", max_diff(out, ref.last_hidden_state))
    report(
        f"siglip2 budget={budget} hidden_states (valid rows)",
        max(max_diff(a[valid], b[valid]) for a, b in zip(states, ref.hidden_states, strict=True)),
    )


def test_siglip2_two_image_sizes_in_one_batch_and_map_head():
    hf, tower = siglip2_pair()
    images = pil_images([(30, 90), (70, 50)], seed=5)
    batch = siglip2.naflex_batch(images, patch_size=4, max_num_patches=64)
    assert batch["spatial_shapes"][0].tolist() != batch["spatial_shapes"][1].tolist()
    headed = Siglip2Tower(**siglip2.tower_kwargs_from_hf_config(hf.config.to_dict(), use_head=True)).eval()
    headed.load_state_dict(siglip2.hf_to_native(hf.state_dict()), strict=True)
    with torch.no_grad():
        ref = hf(**batch)
        out = headed(**batch)
        pooled = headed.pool(out, batch["pixel_attention_mask"])
        alone = [headed(**{k: v[i : i + 1] for k, v in batch.items()}) for i in range(2)]
    report("siglip2 two sizes last_hidden_state", max_diff(out, ref.last_hidden_state))
    report("siglip2 MAP head pooler_output (masked)", max_diff(pooled, ref.pooler_output))
    report("siglip2 batched vs one image at a time", max(max_diff(out[i : i + 1], alone[i]) for i in range(2)))
    no_head = siglip2.hf_to_native(hf.state_dict(), keep_head=False)
    bare = Siglip2Tower(**siglip2.tower_kwargs_from_hf_config(hf.config.to_dict(), use_head=False))
    assert not any(k.startswith("head.") for k in no_head) and set(no_head) == set(bare.state_dict())
    assert set(siglip2.native_to_hf(headed.state_dict())) == set(hf.state_dict())


@pytest.mark.parametrize("out_size", [(3, 5), (8, 8), (16, 6), (12, 4), (1, 1), (10, 20)])
def test_siglip2_position_resize_equals_antialiased_bilinear_interpolate(out_size):
    _, tower = siglip2_pair()
    g = tower.native_grid
    h, w = out_size
    with torch.no_grad():
        mine = tower.resized_positions(torch.tensor([[h, w]]), h * w + 3)[0]
        table = tower.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        ref = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        ref = ref.permute(0, 2, 3, 1).reshape(h * w, -1)
    report(f"siglip2 position resize {out_size}", max_diff(mine[: h * w], ref))
    assert torch.equal(mine[h * w :], mine[:1].expand(3, -1))  # padding rows take the (0, 0) position


def test_siglip2_image_input_patchifies_in_graph():
    hf, tower = siglip2_pair()
    x = pixels(2, 3, 24, 40)
    packed = tower.patchify(x)
    with torch.no_grad():
        ref = hf(packed, torch.ones(2, 60, dtype=torch.int32), torch.tensor([[6, 10], [6, 10]])).last_hidden_state
        out = tower(x)
    report("siglip2 4-D input vs HF on its patches", max_diff(out, ref))


def test_siglip2_feature_taps():
    hf, tower = siglip2_pair()
    tapped = Siglip2Tower(
        **siglip2.tower_kwargs_from_hf_config(hf.config.to_dict(), use_head=False), feature_layers=[0, -2]
    )
    tapped.load_state_dict(siglip2.hf_to_native(hf.state_dict(), keep_head=False), strict=True)
    assert tapped.depth_used == 1 and tapped.blocks[1] in tapped.inactive_modules()
    batch = siglip2.naflex_batch(pil_images(SIGLIP2_IMAGES), patch_size=4, max_num_patches=64)
    with torch.no_grad():
        states = hf(**batch, output_hidden_states=True).hidden_states
        out = tapped.eval()(**batch)
    valid = batch["pixel_attention_mask"].bool()
    report("siglip2 taps [0, -2] (valid rows)", max_diff(out[valid], torch.cat([states[0], states[-2]], -1)[valid]))


def test_patch_budget_below_one_patch_is_a_clear_error():
    with pytest.raises(ValueError, match="max_num_patches=0 must be at least 1"):
        siglip2.naflex_patchify(Image.fromarray(rand_image(20, 30)), patch_size=4, max_num_patches=0)
    with pytest.raises(ValueError, match="max_num_patches=-3"):
        siglip2.size_for_patch_budget(20, 30, 4, -3)


def test_siglip2_config_reader_defaults():
    full = Siglip2VisionConfig().to_dict()
    assert siglip2.tower_kwargs_from_hf_config({}) == siglip2.tower_kwargs_from_hf_config(full)
    assert siglip2.tower_kwargs_from_hf_config({"vision_config": {"num_patches": 64}})["num_patches"] == 64


def test_siglip2_flops_closed_form_equals_flop_counter():
    _, tower = siglip2_pair()
    batch = siglip2.naflex_batch(pil_images(SIGLIP2_IMAGES[:1]), patch_size=4, max_num_patches=100)
    gh, gw = batch["spatial_shapes"][0].tolist()
    counted = count_flops(lambda: tower(**batch))
    assert counted == tower.flops_closed_form(gh, gw, max_patches=100)
    assert count_flops(tower, pixels(1, 3, 24, 40)) == tower.flops_closed_form(6, 10)


@pytest.mark.slow
def test_siglip2_compiles_fullgraph_without_recompiling_for_new_shapes():
    """Per-image sizes are tensor values: other images of the same padded length reuse the graph."""
    _, tower = siglip2_pair()
    batch = siglip2.naflex_batch(pil_images(SIGLIP2_IMAGES), patch_size=4, max_num_patches=64)
    assert_compiles(tower, batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"])
    compiled = torch.compile(tower, fullgraph=True, backend=COMPILE_BACKEND)
    other = siglip2.naflex_batch(pil_images([(30, 90), (70, 50), (20, 20)], seed=3), patch_size=4, max_num_patches=64)
    assert not torch.equal(other["spatial_shapes"], batch["spatial_shapes"])
    with torch.no_grad():
        compiled(*batch.values())
        with torch.compiler.set_stance("fail_on_recompile"):
            diff = max_diff(compiled(*other.values()), tower(*other.values()))
    report("siglip2 compiled, new spatial shapes, no recompile", diff)


# ================================================================================================ preprocessing
PREP_IMAGES = [(50, 80), (300, 200), (224, 224), (100, 500), (257, 255)]


def prep_inputs():
    for i, (h, w) in enumerate(PREP_IMAGES):
        yield f"pil{h}x{w}", Image.fromarray(rand_image(h, w, i))
    yield "numpy-hwc", rand_image(90, 60, 7)
    yield "grey-pil", Image.fromarray(rand_image(70, 40, 8, channels=1))
    yield "rgba-pil", Image.fromarray(rand_image(60, 90, 9, channels=4), mode="RGBA")
    yield "rgba-numpy", rand_image(60, 90, 10, channels=4)


@pytest.mark.parametrize("name,image", list(prep_inputs()), ids=[n for n, _ in prep_inputs()])
def test_clip_preprocess_matches_clip_image_processor_pil(name, image):
    ref = CLIPImageProcessorPil()(image, return_tensors="pt")["pixel_values"][0]
    report(f"clip_preprocess {name}", max_diff(clip.clip_preprocess(image), ref))
    ref336 = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})(
        image, return_tensors="pt"
    )["pixel_values"][0]
    report(f"clip_preprocess 336 {name}", max_diff(clip.clip_preprocess(image, 336, 336), ref336))


def test_clip_preprocess_crop_larger_than_resize_pads_like_hf():
    image = Image.fromarray(rand_image(50, 80, 3))
    ref = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 41, "width": 37})(
        image, return_tensors="pt"
    )["pixel_values"][0]
    report("clip_preprocess crop > resized image (zero pad)", max_diff(clip.clip_preprocess(image, 30, (41, 37)), ref))


@pytest.mark.parametrize("name,image", list(prep_inputs()), ids=[n for n, _ in prep_inputs()])
def test_dinov2_preprocess_matches_bit_image_processor_pil(name, image):
    proc = BitImageProcessorPil(  # facebook/dinov2-* preprocessor_config.json
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    ref = proc(image, return_tensors="pt")["pixel_values"][0]
    report(f"dinov2_preprocess {name}", max_diff(dinov2.dinov2_preprocess(image), ref))


@pytest.mark.parametrize("name,image", list(prep_inputs())[-4:], ids=[n for n, _ in prep_inputs()][-4:])
def test_naflex_patchify_other_inputs(name, image):
    # do_convert_rgb is off by default in Siglip2ImageProcessorPil (grey / RGBA inputs fail there); on here
    ref = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=50, do_convert_rgb=True)(image, return_tensors="pt")
    mine = siglip2.naflex_patchify(image, patch_size=8, max_num_patches=50)
    assert torch.equal(mine["spatial_shapes"], ref["spatial_shapes"][0])
    assert torch.equal(mine["pixel_attention_mask"], ref["pixel_attention_mask"][0])
    report(f"naflex_patchify {name}", max_diff(mine["pixel_values"], ref["pixel_values"][0]))


# ================================================================================================ structure
REAL = {  # real-size configs, built on the meta device only
    "clip-L/14-336 (LLaVA-1.5)": (
        CLIPVisionModel,
        CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        ),
        clip,
        ClipTower,
        303_507_456,
    ),
    "dinov2-giant (SwiGLU)": (
        Dinov2Model,
        Dinov2Config(
            hidden_size=1536,
            num_hidden_layers=40,
            num_attention_heads=24,
            image_size=518,
            patch_size=14,
            use_swiglu_ffn=True,
        ),
        dinov2,
        Dinov2Tower,
        None,
    ),
    "dinov2-large-registers": (
        Dinov2WithRegistersModel,
        Dinov2WithRegistersConfig(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518, patch_size=14
        ),
        dinov2,
        Dinov2Tower,
        None,
    ),
    "siglip2-so400m-16-naflex": (
        Siglip2VisionModel,
        Siglip2VisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            patch_size=16,
            num_patches=256,
        ),
        siglip2,
        Siglip2Tower,
        None,
    ),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_size_configs_map_one_to_one_on_meta(name):
    hf_cls, cfg, module, tower_cls, params = REAL[name]
    with torch.device("meta"):
        hf = hf_cls(cfg)
        tower = tower_cls(**module.tower_kwargs_from_hf_config(cfg.to_dict()))
    native = module.hf_to_native(hf.state_dict())
    assert {k: tuple(v.shape) for k, v in native.items()} == {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    n = sum(p.numel() for p in tower.parameters())
    assert n == sum(p.numel() for p in hf.parameters())
    if params is not None:
        assert n == params


@pytest.mark.parametrize(
    "tower",
    [
        ClipTower(**CLIP_TOWER_KW),
        Dinov2Tower(
            image_size=28,
            patch_size=7,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            num_register_tokens=2,
            layerscale_value=0.1,
        ),
        Siglip2Tower(
            patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_patches=64, use_head=True
        ),
    ],
    ids=["clip", "dinov2", "siglip2"],
)
def test_reset_parameters_gives_a_working_tower(tower):
    tower.reset_parameters()
    with torch.no_grad():
        out = tower.eval()(pixels(2, 3, 32, 32) if isinstance(tower, ClipTower) else pixels(2, 3, 28, 28))
    assert torch.isfinite(out).all() and out.std() > 0
    assert out.shape[-1] == tower.feature_dim
    if isinstance(tower, Dinov2Tower):
        assert torch.all(tower.blocks[0].ls1.gamma == 0.1) and torch.all(tower.reg_token == 0)
