"""Anyres tiling (vtlab.tiling.anyres) vs transformers' LLaVA-NeXT: geometry, token counts, pixels and packing.

References, all from the installed transformers v5:
- geometry: `image_processing_utils.select_best_resolution` / `get_patch_output_size`, and the modeling helpers
  `get_anyres_image_grid_shape`, `image_size_to_num_patches`, `unpad_image`;
- token counts: `LlavaNextProcessor._get_number_of_features`. The processor is made with `object.__new__` (its
  `__init__` needs a tokenizer, i.e. a download) and given only what that method reads: `image_processor`
  (a namespace holding `image_grid_pinpoints`), `patch_size` and `num_additional_image_tokens = 0` (no CLS, as
  for SigLIP with strategy "full");
- pixels: `LlavaNextImageProcessorPil` configured as Granite's (mean / std 0.5, shortest_edge = crop = the
  frame size, BICUBIC, do_pad) on generated images;
- packing: `LlavaNextModel.pack_image_features` of a tiny random `LlavaNextModel` (SigLIP 32 px / patch 8 ->
  grid 4, and a 384 / 14 one -> grid 27) with its own `image_newline`.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vtlab.families.llava_next import (
    GRANITE_PINPOINTS,
    AnyresLayout,
    anyres_frames,
    anyres_layout,
    pack_anyres,
    pack_anyres_batch,
    resized_size_to_fit,
    select_best_resolution,
    unpadded_size,
)

TOL = 1e-5
TINY_CROP, TINY_PATCH = 32, 8  # grid 4
TINY_PINPOINTS = [[TINY_CROP * a, TINY_CROP * b] for a in range(1, 7) for b in range(1, 7) if a * b <= 6]
# (H, W): tiny, thin, square, 384-exact, common photo / screen / document shapes, extreme strips, odd sizes
GRANITE_SIZES = [
    (1, 1), (2, 3), (5, 500), (10, 10), (31, 33), (64, 48), (100, 100), (123, 457), (457, 123), (224, 224),
    (300, 4000), (4000, 300), (1, 4000), (4000, 1), (383, 385), (385, 383), (384, 384), (384, 3840),
    (3840, 384), (336, 672), (375, 500), (500, 375), (600, 800), (720, 1280), (768, 768), (768, 1152),
    (769, 1153), (1000, 50), (50, 1000), (1024, 1024), (1080, 1920), (1152, 1152), (1920, 1080),
    (2480, 3508), (3508, 2480), (3000, 4000), (6000, 800), (800, 6000), (10000, 10000),
]  # fmt: skip
TINY_SIZES = [(5, 7), (17, 250), (32, 32), (50, 80), (64, 64), (97, 96), (120, 37), (200, 33), (300, 200)]


def _random_sizes(n: int, high: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(h), int(w)) for h, w in rng.integers(1, high, size=(n, 2))]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise (uint8 HWC), so resampling differences would show."""
    rng = np.random.default_rng(seed + h * 1000 + w)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(h + w - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _hf_counter(pinpoints, patch: int):
    """A `LlavaNextProcessor` with only what `_get_number_of_features` reads (no tokenizer download)."""
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    proc = object.__new__(LlavaNextProcessor)
    proc.image_processor = SimpleNamespace(image_grid_pinpoints=[list(p) for p in pinpoints])
    proc.patch_size = patch
    proc.num_additional_image_tokens = 0
    return proc


def _hf_processor(crop: int, pinpoints, mean=(0.5,) * 3, std=(0.5,) * 3):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_mean=list(mean),
        image_std=list(std),
        do_pad=True,
        image_grid_pinpoints=[list(p) for p in pinpoints],
    )


def _hf_model(image_size: int, patch: int, pinpoints, hidden: int = 16):
    from transformers import LlavaNextConfig, LlavaNextModel, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )
    text = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 64,
    }
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=[list(p) for p in pinpoints],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_token_index=63,
    )
    model = LlavaNextModel(config).eval()
    with torch.no_grad():
        model.image_newline.copy_(torch.randn(hidden, generator=torch.Generator().manual_seed(1)))
    return model


@pytest.mark.parametrize(
    "name,crop,patch,pinpoints,sizes",
    [
        ("granite", 384, 14, GRANITE_PINPOINTS, GRANITE_SIZES + _random_sizes(300, 5000)),
        ("tiny", TINY_CROP, TINY_PATCH, TINY_PINPOINTS, TINY_SIZES + _random_sizes(300, 400, seed=1)),
    ],
)
def test_layout_matches_transformers_geometry_and_token_count(name, crop, patch, pinpoints, sizes):
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_processing_utils import select_best_resolution as hf_best
    from transformers.image_utils import ChannelDimension
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
        unpad_image,
    )

    grid = crop // patch
    counter = _hf_counter(pinpoints, patch)
    hf_pins = [list(p) for p in pinpoints]
    for h, w in sizes:
        layout = anyres_layout(h, w, pinpoints=pinpoints, crop=crop, grid=grid)
        best = hf_best((h, w), hf_pins)
        assert layout.best_resolution == tuple(best) == select_best_resolution(h, w, pinpoints), (h, w)
        assert (layout.rows, layout.cols) == get_anyres_image_grid_shape((h, w), hf_pins, crop), (h, w)
        assert layout.num_frames == image_size_to_num_patches((h, w), hf_pins, crop), (h, w)
        shaped = np.broadcast_to(np.uint8(0), (3, h, w))  # no memory: get_patch_output_size reads the shape only
        assert resized_size_to_fit(h, w, *best) == get_patch_output_size(shaped, best, ChannelDimension.FIRST)
        feature_map = torch.empty(1, layout.rows * grid, layout.cols * grid)
        assert layout.unpadded == tuple(unpad_image(feature_map, (h, w)).shape[1:]), (h, w)
        assert layout.num_tokens == counter._get_number_of_features(h, w, crop, crop), (h, w)
    tokens = [anyres_layout(h, w, pinpoints=pinpoints, crop=crop, grid=grid).num_tokens for h, w in sizes]
    print(
        f"{name}: {len(sizes)} sizes agree (best resolution, rows x cols, frames, fitted size, unpadded, tokens); "
        f"tokens {min(tokens)}..{max(tokens)}"
    )


def test_granite_layout_examples_from_spec():
    """towers-and-connectors.md (c.2): 600x800 -> 7 crops / 4725 tokens, 384x384 -> 2 crops / 1485 tokens."""
    assert len(GRANITE_PINPOINTS) == 27
    assert set(GRANITE_PINPOINTS) == {(384 * a, 384 * b) for a in range(1, 11) for b in range(1, 11) if a * b <= 10}
    a = anyres_layout(600, 800)
    b = anyres_layout(384, 384)
    print(f"600x800: {a}\n384x384: {b}")
    assert (a.best_resolution, a.num_frames, a.unpadded, a.num_tokens) == ((768, 1152), 7, (54, 73), 4725)
    assert (b.best_resolution, b.num_frames, b.unpadded, b.num_tokens) == ((384, 384), 2, (27, 27), 1485)
    assert unpadded_size(600, 800, 54, 81) == (54, 73)


@pytest.mark.parametrize("h,w", TINY_SIZES)
def test_frames_match_llava_next_image_processor_pil(h, w):
    arr = _image(h, w)
    ref = _hf_processor(TINY_CROP, TINY_PINPOINTS)(Image.fromarray(arr), return_tensors="pt")
    inputs = {
        "pil": Image.fromarray(arr),
        "chw": torch.from_numpy(arr).permute(2, 0, 1).contiguous(),
        "hwc": torch.from_numpy(arr),
        "numpy": arr,
    }
    worst = 0.0
    for x in inputs.values():
        frames, layout = anyres_frames(x, pinpoints=TINY_PINPOINTS, crop=TINY_CROP, grid=TINY_CROP // TINY_PATCH)
        assert frames.dtype == torch.float32 and frames.shape == ref.pixel_values[0].shape
        assert layout.image_size == tuple(ref.image_sizes[0].tolist())
        worst = max(worst, (frames - ref.pixel_values[0]).abs().max().item())
    print(f"tiny {h}x{w}: best {layout.best_resolution}, {layout.num_frames} frames, max |diff| {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("h,w", [(50, 80), (400, 900), (700, 300)])
def test_frames_match_processor_at_granite_settings(h, w):
    arr = _image(h, w)
    ref = _hf_processor(384, GRANITE_PINPOINTS)(Image.fromarray(arr), return_tensors="pt").pixel_values[0]
    frames, layout = anyres_frames(Image.fromarray(arr))
    diff = (frames - ref).abs().max().item() if frames.shape == ref.shape else float("inf")
    print(f"granite {h}x{w}: best {layout.best_resolution}, {tuple(frames.shape)}, max |diff| {diff:.2e}")
    assert frames.shape == (layout.num_frames, 3, 384, 384) and diff <= TOL


def test_frames_padding_value_and_clip_normalisation():
    """Letterbox padding is 0 in uint8 space (-1 after 0.5 / 0.5); other mean / std match the processor too."""
    arr = _image(20, 90)  # wide: tiles 32 x 96 hold a 22 x 96 image, 5 rows of padding above and below
    frames, layout = anyres_frames(arr, pinpoints=TINY_PINPOINTS, crop=TINY_CROP)
    assert layout.best_resolution == (32, 96) and resized_size_to_fit(20, 90, 32, 96) == (22, 96)
    top = frames[1:, :, :5]
    bottom = frames[1:, :, -5:]
    print(f"pad rows: top {tuple(top.shape)}, bottom {tuple(bottom.shape)}, values {top.unique().tolist()}")
    assert torch.all(top == -1) and torch.all(bottom == -1)
    clip_mean, clip_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    ref = _hf_processor(TINY_CROP, TINY_PINPOINTS, clip_mean, clip_std)(Image.fromarray(arr), return_tensors="pt")
    ours, _ = anyres_frames(arr, pinpoints=TINY_PINPOINTS, crop=TINY_CROP, mean=clip_mean, std=clip_std)
    diff = (ours - ref.pixel_values[0]).abs().max().item()
    print(f"clip mean/std 20x90: max |diff| {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize(
    "name,crop,patch,pinpoints,sizes",
    [
        ("tiny", TINY_CROP, TINY_PATCH, TINY_PINPOINTS, TINY_SIZES + [(1, 200), (200, 1), (96, 64)]),
        ("granite", 384, 14, GRANITE_PINPOINTS, [(600, 800), (384, 384), (300, 4000), (1, 4000), (2480, 3508)]),
    ],
)
def test_pack_matches_llava_next_pack_image_features(name, crop, patch, pinpoints, sizes):
    grid = crop // patch
    model = _hf_model(crop, patch, pinpoints)
    layouts = [anyres_layout(h, w, pinpoints=pinpoints, crop=crop, grid=grid) for h, w in sizes]
    hidden = model.image_newline.shape[0]
    total = sum(layout.num_frames for layout in layouts)
    features = torch.randn(total, grid * grid, hidden, generator=torch.Generator().manual_seed(0))
    features.requires_grad_(True)
    ours = pack_anyres_batch(features, layouts, model.image_newline)
    per_image = list(features.split([layout.num_frames for layout in layouts]))
    ref, lens = model.pack_image_features(per_image, torch.tensor(sizes), "full", image_newline=model.image_newline)
    assert [t.shape[0] for t in ours] == lens.tolist() == [layout.num_tokens for layout in layouts]
    diff = max((a - b).abs().max().item() for a, b in zip(ours, ref, strict=True))
    exact = all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))

    # gradients flow identically to the features and to image_newline
    weights = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(ref)]
    grads = []
    for packed in (ours, ref):
        loss = sum((t * wt).sum() for t, wt in zip(packed, weights, strict=True))
        grads.append(torch.autograd.grad(loss, (features, model.image_newline)))
    grad_diff = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
    print(
        f"{name}: {len(sizes)} images, {total} frames, tokens {lens.tolist()}, max |diff| {diff:.2e} "
        f"(exact: {exact}), grad max |diff| {grad_diff:.2e}"
    )
    assert diff <= TOL and exact and grad_diff <= TOL


def test_pack_single_frame_like_upstream():
    """Upstream packs a 1-frame feature (base only) as base + one newline, whatever the image size."""
    grid = TINY_CROP // TINY_PATCH
    model = _hf_model(TINY_CROP, TINY_PATCH, TINY_PINPOINTS)
    sizes = [(50, 80), (120, 37), (64, 64)]
    layouts = [anyres_layout(h, w, pinpoints=TINY_PINPOINTS, crop=TINY_CROP, grid=grid) for h, w in sizes]
    layouts[1] = dataclasses.replace(layouts[1], num_frames=1)  # the middle image brings only its base frame
    hidden = model.image_newline.shape[0]
    features = torch.randn(sum(la.num_frames for la in layouts), grid * grid, hidden)
    per_image = list(features.split([la.num_frames for la in layouts]))
    with torch.no_grad():
        ours = pack_anyres_batch(features, layouts, model.image_newline)
        ref, lens = model.pack_image_features(per_image, torch.tensor(sizes), "full", image_newline=model.image_newline)
        single = pack_anyres(per_image[1], layouts[0], model.image_newline)  # layout is ignored for 1 frame
    diff = max((a - b).abs().max().item() for a, b in zip(ours, ref, strict=True))
    print(f"1-frame in a batch: tokens {lens.tolist()}, max |diff| {diff:.2e}")
    assert lens.tolist()[1] == grid * grid + 1 and torch.equal(single, ref[1])
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="multiples of crop"):
        anyres_layout(100, 100, pinpoints=[[384, 400]])
    with pytest.raises(ValueError, match="positive"):
        anyres_layout(0, 100)
    layout = anyres_layout(50, 80, pinpoints=TINY_PINPOINTS, crop=TINY_CROP, grid=4)
    assert isinstance(layout, AnyresLayout) and layout.num_frames > 2
    newline = torch.zeros(8)
    with pytest.raises(ValueError, match="frames of features for a layout"):
        pack_anyres(torch.zeros(2, 16, 8), layout, newline)
    with pytest.raises(ValueError, match="expected features"):
        pack_anyres(torch.zeros(layout.num_frames, 15, 8), layout, newline)
    with pytest.raises(ValueError, match="layouts need"):
        pack_anyres_batch(torch.zeros(layout.num_frames + 1, 16, 8), [layout], newline)
