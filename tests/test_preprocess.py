"""Preprocessing vs transformers' PIL image processors, on generated images of several sizes and aspect ratios."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vtlab.api import compose_config, to_config
from vtlab.families import preprocess, processor_for
from vtlab.families.idefics3 import Idefics3Preprocessor, encoder_multiple_size, longest_edge_size
from vtlab.families.llava_next import LlavaNextPreprocessor
from vtlab.families.pixels import to_uint8_hwc
from vtlab.families.siglip import SiglipPreprocessor

TOL = 1e-5
SIZES = [(50, 80), (120, 37), (64, 64), (300, 200), (17, 250), (97, 96)]  # (H, W): wide, tall, square, odd


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise (uint8 HWC), so resampling differences would show."""
    rng = np.random.default_rng(seed + h * 1000 + w)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(h + w - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _inputs(arr: np.ndarray):
    """The same image as PIL, uint8 CHW tensor and uint8 HWC tensor."""
    return {"pil": Image.fromarray(arr), "chw": torch.from_numpy(arr).permute(2, 0, 1).contiguous(),
            "hwc": torch.from_numpy(arr)}


@pytest.mark.parametrize("h,w", SIZES)
def test_siglip_matches_siglip_image_processor_pil(h, w):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    arr = _image(h, w)
    ref = SiglipImageProcessorPil(size={"height": 112, "width": 112})(Image.fromarray(arr), return_tensors="pt")
    ref = ref.pixel_values[0]
    worst = max((SiglipPreprocessor(112)(x) - ref).abs().max().item() for x in _inputs(arr).values())
    print(f"siglip {h}x{w}: max |diff| {worst:.2e}")
    assert ref.shape == (3, 112, 112) and worst <= TOL


@pytest.mark.parametrize("h,w", SIZES)
def test_idefics3_matches_idefics3_image_processor_pil(h, w):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    s = 64  # smolvlm_debug: frames of 64 px, longest edge 4 x 64 (SmolVLM: 512 and 2048)
    arr = _image(h, w)
    proc = Idefics3ImageProcessorPil(size={"longest_edge": 4 * s}, max_image_size={"longest_edge": s},
                                     do_image_splitting=True, resample=Image.Resampling.LANCZOS,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ref = proc(Image.fromarray(arr), return_tensors="pt", return_row_col_info=True)
    ours = Idefics3Preprocessor(s)
    worst = 0.0
    for x in _inputs(arr).values():
        frames, rows, cols = ours.frames(x)
        assert (rows, cols) == (ref.rows[0][0], ref.cols[0][0])
        worst = max(worst, (frames - ref.pixel_values[0]).abs().max().item())
        full = ours(x)  # unsplit: the tiles are exactly its s x s blocks
        assert full.shape[1:] == (rows * s, cols * s)
        tiles = full.unfold(1, s, s).unfold(2, s, s).permute(1, 2, 0, 3, 4).reshape(-1, 3, s, s)
        worst = max(worst, (tiles - ref.pixel_values[0][: rows * cols]).abs().max().item())
    print(f"idefics3 {h}x{w}: {rows}x{cols} tiles + global, max |diff| {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("h,w", SIZES)
def test_llava_next_base_crop_matches_llava_next_image_processor_pil(h, w):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    s = 66
    arr = _image(h, w)
    proc = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                      image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]])
    ref = proc(Image.fromarray(arr), return_tensors="pt").pixel_values[0, 0]  # crop 0 = the base image
    worst = max((LlavaNextPreprocessor(s)(x) - ref).abs().max().item() for x in _inputs(arr).values())
    print(f"llava_next {h}x{w}: base crop max |diff| {worst:.2e}")
    assert worst <= TOL


def test_idefics3_sizes_at_smolvlm_scale():
    """The size arithmetic at SmolVLM's real settings (2048 / 512), without resizing any pixels."""
    assert longest_edge_size(600, 800, 2048) == (1536, 2048)
    assert encoder_multiple_size(1536, 2048, 512) == (1536, 2048)
    assert longest_edge_size(333, 1000, 2048) == (682, 2048)
    assert encoder_multiple_size(682, 2048, 512) == (1024, 2048)
    assert longest_edge_size(100, 9000, 2048) == (22, 2048)


def test_inputs_and_dispatch_by_family():
    arr = _image(40, 30)
    assert np.array_equal(to_uint8_hwc(torch.from_numpy(arr).permute(2, 0, 1)), arr)
    assert to_uint8_hwc(torch.from_numpy(arr[:, :, 0])).shape == (40, 30, 3)  # grayscale HW
    with pytest.raises(TypeError, match="uint8"):
        to_uint8_hwc(torch.rand(3, 8, 8))
    for preset, kind in [("siglip_debug", SiglipPreprocessor), ("smolvlm_debug", Idefics3Preprocessor),
                         ("llavanext_debug", LlavaNextPreprocessor)]:
        cfg = to_config(compose_config(preset))
        assert isinstance(processor_for(cfg), kind)
    cfg = to_config(compose_config("siglip_debug"))
    batch = preprocess([Image.fromarray(arr), torch.from_numpy(arr)], cfg)
    assert batch.shape == (2, 3, 112, 112) and torch.equal(batch[0], batch[1])
    assert batch.min() >= -1 and batch.max() <= 1
