"""Family rules of issue 11, each against transformers: the position rule for other frame sizes, the RGB
conversion of images with transparency, and settings a checkpoint carries that a preset leaves open."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_parity import copy_hf_tower, max_diff, perturb_, vision_kwargs
from PIL import Image
from transformers import Idefics3VisionConfig, SiglipVisionConfig, SiglipVisionModel
from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer

from vtlab.api import build, compose_config, to_config
from vtlab.errors import ConfigError
from vtlab.families import get_family

TOL = 1e-5


def _tower_pair(preset: str, size: int):
    overrides = [f"model.input_size={size}", "connector.factor=1"]
    cfg = to_config(compose_config(preset, overrides))
    torch.manual_seed(0)
    if get_family(cfg.model.family).position_rule == "bucket":
        hf = Idefics3VisionTransformer(Idefics3VisionConfig(**vision_kwargs(cfg.model), attn_implementation="eager"))
    else:
        hf = SiglipVisionModel(SiglipVisionConfig(**vision_kwargs(cfg.model), attn_implementation="eager"))
    hf = perturb_(hf.eval())
    stack = build(preset, overrides + ["model.use_head=true"] * (not hasattr(hf, "encoder"))).eval()
    copy_hf_tower(hf, stack.tower)
    return hf, stack, cfg


@pytest.mark.parametrize("size", [48, 40, 72, 96])  # native 64 (8 x 8 patches): smaller, odd grid, larger
def test_idefics3_other_frame_size_buckets_positions_like_idefics3_model(size: int) -> None:
    hf, stack, cfg = _tower_pair("smolvlm_debug", size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    g = size // cfg.model.patch_size
    with torch.no_grad():
        ref = hf(x, patch_attention_mask=torch.ones(2, g, g, dtype=torch.bool)).last_hidden_state
        ours = stack.tower(x)
    diff = max_diff(ours, ref)
    print(f"idefics3 at {size}px ({g}x{g} grid over a native 8x8 table): max |diff| {diff:.2e}")
    assert diff <= TOL


def test_siglip_other_frame_size_interpolates_bicubically_like_siglip() -> None:
    hf, stack, cfg = _tower_pair("siglip_debug", 160)
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x, interpolate_pos_encoding=True).last_hidden_state
        ours = stack.tower(x)
    assert max_diff(ours, ref) <= TOL


def _transparent_images() -> dict[str, object]:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, size=(37, 53, 4), dtype=np.uint8)
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {"RGBA": Image.fromarray(rgba, "RGBA"), "LA": la, "P+transparency": palette, "4-channel array": rgba,
            "L": Image.fromarray(rgba[..., 0], "L")}


def _hf_processors(size: int):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    half = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return {
        "siglip": lambda im: SiglipImageProcessorPil(size={"height": size, "width": size})(im, return_tensors="pt")
        .pixel_values[0],
        "idefics3": lambda im: Idefics3ImageProcessorPil(size={"longest_edge": size}, max_image_size={"longest_edge": size},
                                                         do_image_splitting=False, **half)(im, return_tensors="pt")
        .pixel_values[0, 0],
        "llava_next": lambda im: LlavaNextImageProcessorPil(size={"shortest_edge": size},
                                                            crop_size={"height": size, "width": size},
                                                            image_grid_pinpoints=[[size, size]], **half)(
            im, return_tensors="pt").pixel_values[0, 0],
    }


@pytest.mark.parametrize("kind", list(_transparent_images()))
def test_transparency_is_converted_as_the_transformers_processors_do(kind: str) -> None:
    """RGBA, LA, P with a transparency index and 4-channel arrays are composited onto white, per family."""
    image = _transparent_images()[kind]
    size = 32
    for family, ref_fn in _hf_processors(size).items():
        ref = ref_fn(image)
        if family == "idefics3":  # unsplit: the longest-edge resize, then the frame
            ours = get_family(family).single_frame(_as_array_or_pil(image), size, size)[0]
        else:
            ours = get_family(family).preprocess_frame(image, size)
        diff = max_diff(ours, ref)
        print(f"{kind} via {family}: max |diff| {diff:.2e}")
        assert diff <= TOL, (kind, family, diff)


def _as_array_or_pil(image: object) -> np.ndarray:
    from vtlab.families.pixels import to_uint8_hwc

    return to_uint8_hwc(image)


def test_checkpoint_pinpoints_are_taken_when_the_preset_leaves_them_open(tmp_path) -> None:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    cfg = to_config(compose_config("llavanext_debug"))
    s = cfg.model.image_size
    pinpoints = [[s, s], [s, 3 * s], [3 * s, s]]
    hf_cfg = LlavaNextConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision_kwargs(cfg.model)),
        text_config=dict(model_type="llama", hidden_size=cfg.text_hidden, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=64),
        vision_feature_layer=list(cfg.model.feature_layers), vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints, projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(hf_cfg).save_pretrained(tmp_path)
    stack = build("llavanext_debug", [f"model.weights={tmp_path}"])
    assert [list(p) for p in stack.tiler.pinpoints] == pinpoints  # not Granite's default
    with pytest.raises(ConfigError, match=r"model\.pinpoints: preset \[\[66, 66\]\], checkpoint \[\[66, 66\], "):
        build("llavanext_debug", [f"model.weights={tmp_path}", f"model.pinpoints=[[{s},{s}]]"])
