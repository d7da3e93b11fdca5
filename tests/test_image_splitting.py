"""SmolVLM / Idefics3 image splitting (`vtlab.tiling.idefics3`) vs transformers: frame geometry against
`Idefics3ImageProcessorPil` at SmolVLM's real settings (and scaled down, and a cheap shape-only sweep of the
upstream pipeline), `<image>` token counts against the upstream prompt builder and the real SmolVLM / Idefics3
processors (tiny offline tokenizer), frame pixels, and the per-image packing order."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vtlab.families.idefics3 import (
    SplitLayout,
    frame_tokens,
    pack_split,
    pack_split_batch,
    prompt_image_tokens,
    split_frames,
    split_layout,
)

TOL = 1e-5
SMOL = {"frame": 512, "longest_edge": 2048}
SMALL = {"frame": 64, "longest_edge": 256}  # the same geometry scaled down by 8 (pixels are cheap)
SIZES = [  # (H, W): tiny, around the frame, SmolVLM-scale, photo formats, extreme aspect ratios, odd sizes
    (1, 1), (2, 3), (17, 250), (250, 17), (97, 96), (300, 200), (200, 300), (511, 512), (512, 512), (513, 512),
    (512, 513), (480, 640), (683, 1024), (1023, 767), (769, 1025), (1024, 1024), (720, 1280), (1080, 1920),
    (1366, 2048), (1536, 2048), (2048, 1536), (2049, 2047), (333, 1000), (1000, 333), (4000, 300), (300, 4000),
    (4000, 50), (50, 4000), (5000, 100), (100, 5000), (1, 4000), (4000, 1), (3, 2000), (2000, 3), (4096, 4096),
    (6000, 4000),
]
IMAGE, FAKE, GLOBAL = "<image>", "<fake_token_around_image>", "<global-img>"


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise (uint8 HWC), so resampling differences would show."""
    rng = np.random.default_rng(seed + h * 1000 + w)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(h + w - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _processor(frame: int, longest_edge: int, splitting: bool = True, **kwargs):
    """`Idefics3ImageProcessorPil` configured as SmolVLM's preprocessor_config, recording the size the frames
    are cut from (the output of `resize_for_vision_encoder`)."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    class Recording(Idefics3ImageProcessorPil):
        def resize_for_vision_encoder(self, image, vision_encoder_max_size, resample=None):
            out = super().resize_for_vision_encoder(image, vision_encoder_max_size, resample=resample)
            self.cut_from.append(tuple(out.shape[-2:]))
            return out

    proc = Recording(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": frame},
                     do_image_splitting=splitting, resample=Image.Resampling.LANCZOS, image_mean=[0.5] * 3,
                     image_std=[0.5] * 3, **kwargs)
    proc.cut_from = []
    return proc


def _reference(proc, image: Image.Image) -> tuple[int, int, int, torch.Tensor]:
    """Upstream (rows, cols, frames, pixel_values of the one image)."""
    out = proc(image, return_tensors="pt", return_row_col_info=True)
    return out.rows[0][0], out.cols[0][0], out.pixel_values.shape[1], out.pixel_values[0]


def _check_layout(lay: SplitLayout, rows: int, cols: int, frames: int, cut_from: tuple[int, int] | None) -> None:
    assert (lay.rows, lay.cols, lay.num_frames) == (rows, cols, frames)
    assert lay.num_tokens == lay.num_frames * lay.tokens_per_frame == prompt_image_tokens(lay)
    if cut_from is not None:
        assert lay.resized == cut_from


@pytest.mark.parametrize("h,w", SIZES)
def test_layout_matches_processor_at_smolvlm_scale(h, w):
    """rows, cols, frames (and the resized size) at 512 / 2048, split and unsplit, real pixels upstream."""
    image = Image.new("RGB", (w, h), (90, 140, 200))  # geometry only: a flat image resizes as fast as any
    t = time.perf_counter()
    proc = _processor(**SMOL)
    rows, cols, frames, _ = _reference(proc, image)
    lay = split_layout(h, w, **SMOL)
    _check_layout(lay, rows, cols, frames, proc.cut_from[-1])
    rows1, cols1, frames1, pixels1 = _reference(_processor(**SMOL, splitting=False), image)
    one = split_layout(h, w, **SMOL, do_splitting=False)
    _check_layout(one, rows1, cols1, frames1, None)
    assert pixels1.shape[-2:] == one.resized == (512, 512)
    print(f"{h}x{w}: resized {lay.resized} upstream {proc.cut_from[-1]}, tiles {lay.rows}x{lay.cols} upstream "
          f"{rows}x{cols}, frames {lay.num_frames} upstream {frames}, tokens {lay.num_tokens}; unsplit frames "
          f"{one.num_frames} upstream {frames1} ({time.perf_counter() - t:.2f} s)")


@pytest.mark.parametrize("h,w", SIZES)
def test_layout_matches_processor_scaled_down(h, w):
    """The same at frame 64 / longest edge 256 (the smolvlm_debug scale)."""
    image = Image.new("RGB", (w, h), (90, 140, 200))
    proc = _processor(**SMALL)
    rows, cols, frames, _ = _reference(proc, image)
    lay = split_layout(h, w, **SMALL, tokens_per_frame=4)
    _check_layout(lay, rows, cols, frames, proc.cut_from[-1])
    rows1, cols1, frames1, _ = _reference(_processor(**SMALL, splitting=False), image)
    _check_layout(split_layout(h, w, **SMALL, tokens_per_frame=4, do_splitting=False), rows1, cols1, frames1, None)
    print(f"{h}x{w} @64/256: resized {lay.resized}, tiles {lay.rows}x{lay.cols} upstream {rows}x{cols}, frames "
          f"{lay.num_frames} upstream {frames}; unsplit frames {frames1}")


@pytest.mark.parametrize("frame,longest_edge", [(512, 2048), (64, 256), (364, 1456), (500, 2048), (512, 8192),
                                                (512, 6000), (512, 300)])
def test_layout_matches_upstream_pipeline_sweep(frame, longest_edge, monkeypatch):
    """Hundreds of sizes (1 .. 20000 px a side) through upstream's own `_preprocess` with Pillow's resampling
    replaced by a shape-only stub: the size arithmetic, `resize_for_vision_encoder` and `split_images` are
    upstream's. Covers the 4096 cap (longest edge 8192 / 6000), a frame that does not divide the longest edge
    (500 / 2048) and a longest edge below the frame (300). Also reports where upstream's geometry-only
    `get_number_of_image_patches` disagrees with its own pipeline."""
    from transformers.image_processing_backends import PilBackend

    def shape_only(self, image, size, resample=None, **kwargs):
        return np.zeros((image.shape[0], size.height, size.width), np.uint8)

    monkeypatch.setattr(PilBackend, "resize", shape_only)
    proc = _processor(frame, longest_edge, do_rescale=False, do_normalize=False, do_pad=False)
    rng = np.random.default_rng(frame * 10_000 + longest_edge)
    sizes = SIZES + [(int(a), int(b)) for a, b in np.exp(rng.uniform(0, np.log(20_000), (300, 2)))]
    sizes += [(1, 20_000), (20_000, 1), (20_000, 20_000), (frame, frame), (frame + 1, frame - 1)]
    patches_disagree, longest = [], 0
    for h, w in sizes:
        flat = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (h, w, 3))  # no memory for big sizes
        out = proc(flat, return_row_col_info=True, input_data_format="channels_last")
        rows, cols, frames = out["rows"][0][0], out["cols"][0][0], len(out["pixel_values"][0])
        lay = split_layout(h, w, frame=frame, longest_edge=longest_edge)
        _check_layout(lay, rows, cols, frames, proc.cut_from[-1])
        longest = max(longest, *lay.resized)
        if proc.get_number_of_image_patches(h, w) != ((frames if rows else 0), rows, cols):
            patches_disagree.append((h, w))
    print(f"frame {frame} / longest edge {longest_edge}: {len(sizes)} sizes equal (rows, cols, frames, resized); "
          f"largest resized side {longest}; upstream get_number_of_image_patches disagrees with its pipeline on "
          f"{len(patches_disagree)} sizes {patches_disagree[:4]}")
    assert longest <= 4096
    if longest_edge > 4096:
        assert longest == 4096  # the cap was exercised
    if longest_edge % frame == 0:
        assert not patches_disagree


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_prompt_tokens_match_upstream_prompt_string(factor):
    """`<image>` count and block order of `smolvlm.processing_smolvlm.get_image_prompt_string` at 512 / 2048,
    image_seq_len = (512 / 16)^2 / factor^2, for every size, split and unsplit."""
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    t = frame_tokens(512, 16, factor)
    assert t == {2: 256, 4: 64, 8: 16}[factor]
    counts = []
    for (h, w), splitting in [(s, sp) for s in SIZES for sp in (True, False)]:
        lay = split_layout(h, w, **SMOL, tokens_per_frame=t, do_splitting=splitting)
        prompt = get_image_prompt_string(lay.rows, lay.cols, t, FAKE, IMAGE, GLOBAL)
        assert prompt.count(IMAGE) == prompt_image_tokens(lay) == lay.num_tokens
        labels = re.findall(r"<row_\d+_col_\d+>|<global-img>", prompt)  # one label per frame, in prompt order
        assert labels == [f"<row_{r + 1}_col_{c + 1}>" for r in range(lay.rows) for c in range(lay.cols)] + [GLOBAL]
        assert len(labels) == lay.num_frames
        counts.append(lay.num_tokens)
    print(f"factor {factor} ({t} per frame): {len(counts)} layouts, <image> counts equal, distinct "
          f"{sorted(set(counts))}")


def _tiny_tokenizer():
    """A word-level tokenizer built offline with the SmolVLM special tokens (no download)."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", FAKE, IMAGE, GLOBAL, "<end_of_utterance>", "<video>"]
    special += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    vocab = {tok: i for i, tok in enumerate(special + ["describe", "and", "compare"])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in special])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


@pytest.mark.parametrize("kind", ["smolvlm", "idefics3"])
@pytest.mark.parametrize("splitting,seq_len", [(True, 64), (True, 16), (False, 64)])
def test_token_counts_match_processor(kind, splitting, seq_len, monkeypatch):
    """The real `SmolVLMProcessor` / `Idefics3Processor` (512 / 2048, tiny tokenizer): `<image>` ids in input_ids
    per prompt and frames in pixel_values equal our layouts, for two prompts holding several images."""
    import transformers.models.smolvlm.processing_smolvlm as smolvlm_processing
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor
    from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    # pixels are not compared here: skip rescale / normalise and the batch padding (hundreds of MB at 512)
    image_proc = _processor(**SMOL, splitting=splitting, do_rescale=False, do_normalize=False, do_pad=False)
    if kind == "smolvlm":  # num2words is only used for video prompts; it is not installed here
        monkeypatch.setattr(smolvlm_processing, "num2words", str)
        proc = SmolVLMProcessor(image_proc, _tiny_tokenizer(), SmolVLMVideoProcessor(), image_seq_len=seq_len)
    else:
        proc = Idefics3Processor(image_proc, _tiny_tokenizer(), image_seq_len=seq_len)
    prompts = [[(17, 250), (300, 200), (1, 1)], [(333, 1000), (480, 640)]]  # 5, 13, 17 | 9, 13 frames when split
    text = [" and ".join(["describe <image>"] * len(p)) for p in prompts]
    images = [[Image.new("RGB", (w, h), (30, 60, 90)) for h, w in p] for p in prompts]
    out = proc(text=text, images=images)  # prompts differ in length: lists, not tensors
    image_id = proc.tokenizer.convert_tokens_to_ids(IMAGE)
    for i, sizes in enumerate(prompts):
        layouts = [split_layout(h, w, **SMOL, tokens_per_frame=seq_len, do_splitting=splitting) for h, w in sizes]
        ours = sum(prompt_image_tokens(lay) for lay in layouts)
        theirs = int((np.asarray(out["input_ids"][i]) == image_id).sum())
        frames = len(out["pixel_values"][i])
        print(f"{kind} split={splitting} seq_len={seq_len} prompt {i}: frames {[lay.num_frames for lay in layouts]} "
              f"= {sum(lay.num_frames for lay in layouts)} upstream {frames}; <image> tokens {ours} upstream {theirs}")
        assert ours == theirs == sum(lay.num_tokens for lay in layouts)
        assert frames == sum(lay.num_frames for lay in layouts)


@pytest.mark.parametrize("h,w", [(1, 1), (17, 250), (250, 17), (97, 96), (300, 200), (120, 37), (65, 64), (3, 401)])
@pytest.mark.parametrize("splitting", [True, False])
def test_split_frames_match_processor_pixels(h, w, splitting):
    """Frame pixels of `split_frames` vs upstream pixel_values at 64 / 256, PIL and uint8 CHW tensor inputs."""
    arr = _image(h, w)
    _, _, _, ref = _reference(_processor(**SMALL, splitting=splitting), Image.fromarray(arr))
    worst = 0.0
    for x in (Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1).contiguous()):
        pixels, lay = split_frames(x, **SMALL, tokens_per_frame=4, do_splitting=splitting)
        assert pixels.dtype == torch.float32 and pixels.shape == ref.shape == (lay.num_frames, 3, 64, 64)
        assert lay == split_layout(h, w, **SMALL, tokens_per_frame=4, do_splitting=splitting)
        worst = max(worst, (pixels - ref).abs().max().item())
    tiles = f"{lay.rows}x{lay.cols} tiles + global" if lay.is_split else "single frame"
    print(f"{h}x{w} @64/256 split={splitting}: {lay.num_frames} frames ({tiles}), max |diff| {worst:.2e}")
    assert worst <= TOL


def test_split_frames_match_processor_pixels_at_smolvlm_scale():
    """One real 512 / 2048 case: a small photo-shaped image up-scaled to 1536 x 2048 -> 3 x 4 tiles + global."""
    arr = _image(45, 60)
    t = time.perf_counter()
    _, _, _, ref = _reference(_processor(**SMOL), Image.fromarray(arr))
    pixels, lay = split_frames(Image.fromarray(arr), **SMOL)
    worst = (pixels - ref).abs().max().item()
    print(f"45x60 @512/2048: {lay.rows}x{lay.cols} tiles + global = {lay.num_frames} frames, {lay.num_tokens} tokens, "
          f"max |diff| {worst:.2e} ({time.perf_counter() - t:.2f} s)")
    assert (lay.rows, lay.cols, lay.num_frames, lay.num_tokens) == (3, 4, 13, 832) and pixels.shape == ref.shape
    assert worst <= TOL


def test_pack_split_batch_order():
    """A concatenated batch of images with 5, 1, 13 and 17 frames: each image's tokens are its frames' token
    blocks in frame order (tiles row-major, global last), and nothing crosses between images."""
    t, dim = 4, 3
    layouts = [split_layout(17, 250, **SMOL, tokens_per_frame=t), split_layout(17, 250, **SMOL, tokens_per_frame=t,
                                                                               do_splitting=False),
               split_layout(300, 200, **SMOL, tokens_per_frame=t), split_layout(1, 1, **SMOL, tokens_per_frame=t)]
    frames = [lay.num_frames for lay in layouts]
    assert frames == [5, 1, 13, 17]
    # feature value = image * 10000 + frame * 100 + token, in every channel
    code = torch.cat([i * 10_000 + torch.arange(n)[:, None] * 100 + torch.arange(t)[None] for i, n in enumerate(frames)])
    features = code[..., None].expand(-1, -1, dim).float()
    packed = pack_split_batch(features, layouts)
    for i, (out, lay) in enumerate(zip(packed, layouts, strict=True)):
        assert out.shape == (lay.num_tokens, dim) == (prompt_image_tokens(lay), dim)
        k = torch.arange(lay.num_tokens)
        assert torch.equal(out[:, 0], (i * 10_000 + (k // t) * 100 + k % t).float())  # token k: frame k//t, slot k%t
        assert torch.equal(out, pack_split(features[sum(frames[:i]):sum(frames[:i + 1])], lay))
    assert torch.equal(torch.cat(packed), features.reshape(-1, dim))
    print(f"frames {frames}, tokens {[p.shape[0] for p in packed]}, total {sum(p.shape[0] for p in packed)}")
    with pytest.raises(ValueError, match="frames in all"):
        pack_split_batch(features[1:], layouts)
    with pytest.raises(ValueError, match="do not fit"):
        pack_split(features[:5, :2], layouts[0])


def test_frame_tokens_and_input_checks():
    seq = (frame_tokens(), frame_tokens(512, 16, 2), frame_tokens(512, 16, 8), frame_tokens(364, 14, 2))
    print(f"tokens per frame: SmolVLM 512/16 factors 4, 2, 8 and Idefics3 364/14 factor 2: {seq}")
    assert seq == (64, 256, 16, 169)  # 169 is upstream's image_seq_len default (Idefics3)
    with pytest.raises(ValueError, match="not divisible"):
        frame_tokens(512, 16, 3)
    with pytest.raises(ValueError, match="positive"):
        split_layout(0, 10)
    lay = split_layout(600, 800)  # defaults are SmolVLM's
    print(f"600x800: {lay}")
    assert lay == SplitLayout((600, 800), (1536, 2048), 3, 4, 13, 64, 832) and lay.is_split
    assert split_layout(600, 800, longest_edge=None) == lay  # None = 4 x frame
