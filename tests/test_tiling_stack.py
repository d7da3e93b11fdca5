"""Images of any size through a whole stack: tiles in, packed tokens out, equal to transformers end to end.

- smolvlm_debug: raw images -> `stack.encode_images` vs `Idefics3ImageProcessorPil` + `Idefics3Model.get_image_features`
  (the features of each image's frames, concatenated in the processor's order);
- llavanext_debug: raw images -> `stack.encode_images` vs `LlavaNextImageProcessorPil` +
  `LlavaNextModel.get_image_features` (base + unpadded tiles + image_newline, packed);
- every frame of every image goes through ONE tower call;
- the presets' token budgets for image sizes (spec examples), profile/bench with `data.image_size`, and the
  messages for bad tiling settings.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from hf_parity import copy_idefics3, copy_llava_next, force_eager, max_diff, perturb_, tiny_llama_kwargs, vision_kwargs
from PIL import Image

import vtlab
from vtlab.api import compose_config, to_config
from vtlab.families import Tiler
from vtlab.families.llava_next import default_pinpoints

TOL = 1e-5
SIZES = [(150, 230), (64, 64), (40, 300), (333, 97)]  # (H, W)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 7 * h + w)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(h + w - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@functools.cache
def smolvlm_pair():
    from transformers import Idefics3Config
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Model

    cfg = to_config(compose_config("smolvlm_debug"))
    torch.manual_seed(0)
    hf = perturb_(Idefics3Model(Idefics3Config(vision_config=vision_kwargs(cfg.model),
                                               text_config=tiny_llama_kwargs(cfg.text_hidden),
                                               scale_factor=cfg.connector.factor)).eval())
    force_eager(hf.vision_model)
    stack = vtlab.build("smolvlm_debug").eval()
    copy_idefics3(hf, stack)
    return hf, stack, cfg


@functools.cache
def llavanext_pair():
    from transformers import LlavaNextConfig
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

    cfg = to_config(compose_config("llavanext_debug"))
    m = cfg.model
    pinpoints = [list(p) for p in default_pinpoints(m.image_size)]
    hf_cfg = LlavaNextConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision_kwargs(m)),
        text_config=tiny_llama_kwargs(cfg.text_hidden),
        vision_feature_layer=list(m.feature_layers),
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_token_index=1,
    )
    torch.manual_seed(0)
    hf = perturb_(LlavaNextModel(hf_cfg).eval())
    force_eager(hf.vision_tower)
    stack = vtlab.build("llavanext_debug").eval()
    copy_llava_next(hf, stack)
    stack.image_newline.copy_(hf.image_newline.detach())
    return hf, stack, cfg, pinpoints


def test_smolvlm_encode_images_matches_idefics3_processor_and_model():
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    hf, stack, cfg = smolvlm_pair()
    s = cfg.model.image_size
    proc = Idefics3ImageProcessorPil(size={"longest_edge": 4 * s}, max_image_size={"longest_edge": s},
                                     do_image_splitting=True, resample=Image.Resampling.LANCZOS,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    images = [_image(h, w) for h, w in SIZES]
    enc = proc([[Image.fromarray(a)] for a in images], return_tensors="pt", return_row_col_info=True)  # padded
    with torch.no_grad():
        ours = stack.encode_images(images)
        ref = hf.get_image_features(enc.pixel_values, enc.pixel_attention_mask).pooler_output  # one per image
    counts = [(int(r[0]), int(c[0]), t.shape[0]) for r, c, t in zip(enc.rows, enc.cols, ref, strict=True)]
    diffs = [max_diff(o, r) for o, r in zip(ours, ref, strict=True)]
    print(f"[parity] smolvlm_debug encode_images vs Idefics3 processor + get_image_features: (rows, cols, tokens) "
          f"{counts}, max|diff| {max(diffs):.2e}")
    assert [stack.plan(h, w).tokens for h, w in SIZES] == [c[2] for c in counts]
    assert max(diffs) <= TOL


def test_llavanext_encode_images_matches_llava_next_processor_and_model():
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    hf, stack, cfg, pinpoints = llavanext_pair()
    s = cfg.model.image_size
    proc = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                      image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    images = [_image(h, w) for h, w in SIZES]
    enc = proc([Image.fromarray(a) for a in images], return_tensors="pt")  # padded to the batch's max crops
    with torch.no_grad():
        ours = stack.encode_images(images)
        ref = hf.get_image_features(enc.pixel_values, enc.image_sizes,
                                    vision_feature_select_strategy="full").pooler_output
    diffs = [max_diff(o, r) for o, r in zip(ours, ref, strict=True)]
    tokens = [r.shape[0] for r in ref]
    print(f"[parity] llavanext_debug encode_images vs LlavaNext processor + get_image_features (packed): tokens "
          f"{tokens}, max|diff| {max(diffs):.2e}")
    assert [stack.plan(h, w).tokens for h, w in SIZES] == tokens
    assert max(diffs) <= TOL


@pytest.mark.parametrize("preset", ["smolvlm_debug", "llavanext_debug", "siglip_debug"])
def test_all_frames_go_through_one_tower_call(preset):
    stack = vtlab.build(preset).eval()
    calls = []
    stack.tower.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    images = [_image(h, w) for h, w in SIZES]
    with torch.no_grad():
        batched = stack.encode_images(images)
        assert len(calls) == 1 and calls[0] == sum(stack.plan(h, w).frames for h, w in SIZES)
        one_by_one = [stack.encode_images([im])[0] for im in images]
    diff = max(max_diff(a, b) for a, b in zip(batched, one_by_one, strict=True))
    print(f"{preset}: one tower call of {calls[0]} frames for {len(images)} images; vs one image at a time {diff:.1e}")
    assert diff <= TOL
    assert [t.shape[0] for t in batched] == [stack.plan(h, w).tokens for h, w in SIZES]


def test_preset_token_budgets_match_the_spec_examples():
    """towers-and-connectors.md (c.2), (e): SmolVLM 4x4 + 1 frames at most; Granite 600x800 -> 7 crops, 4725."""
    def plan(model, h, w, *overrides):
        return Tiler.for_config(to_config(compose_config(model, list(overrides)))).plan(h, w)

    p = plan("smolvlm", 1536, 2048)
    assert (p.rows, p.cols, p.frames, p.tokens) == (3, 4, 13, 832)
    assert plan("smolvlm", 1536, 2048, "connector.factor=2").tokens == 13 * 256
    assert plan("smolvlm", 4000, 4000).frames == 17 and plan("smolvlm", 4000, 4000).tokens == 1088
    assert plan("smolvlm", 1536, 2048, "model.tiling=none").tokens == 64
    assert plan("smolvlm", 1536, 2048, "model.longest_edge=1024").frames == 2 * 2 + 1
    p = plan("llavanext", 600, 800)
    assert (p.frames, p.tokens, p.detail["best_resolution"]) == (7, 4725, [768, 1152])
    assert plan("llavanext", 384, 384).tokens == 1485
    assert plan("llavanext", 600, 800, "connector.kind=pixel_unshuffle", "connector.factor=3").tokens == 81 + 18 * 25 + 18  # 18x27 map, 1 column off each side
    assert plan("siglip", 600, 800).tokens == 196 and plan("siglip", 600, 800).frames == 1


def _run(tmp_path, args):
    from test_cli import run_vtlab

    proc = run_vtlab(args + ["logger=none"], cwd=tmp_path)
    return proc


def test_profile_reports_tiles_tokens_and_per_image_flops(tmp_path):
    proc = _run(tmp_path, ["+model=smolvlm_debug", "data.image_size=[150,230]", "task.repeats=2", "out_dir=tiled"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "tiled" / "results.json").read_text())
    proc = _run(tmp_path, ["+model=smolvlm_debug", "task.repeats=2", "out_dir=frame"])
    one = json.loads((tmp_path / "frame" / "results.json").read_text())
    print({k: res[k] for k in ("image_size", "tiling", "rows", "cols", "frames", "tiles", "tokens", "flops",
                               "latency_ms")})
    assert (res["image_size"], res["tiling"], res["rows"], res["cols"], res["frames"]) == ([150, 230], "split", 3, 4, 13)
    assert res["tokens"] == 13 * one["tokens"] and res["flops"] == 13 * one["flops"]
    assert [s["name"] for s in res["stages"]] == ["image", "frames", "patch grid", "tower", "connector", "packed"]
    assert res["stages"][-1]["shape"] == [52, res["text_hidden"]]
    assert one["frames"] == 1 and one["image_size"] is None
    assert res["stages"][1]["detail"] == "150x230 -> 3x4 tiles + global = 13 frames, 52 tokens (split)"


def test_bench_counts_images_of_several_frames(tmp_path):
    proc = _run(tmp_path, ["+model=llavanext_debug", "task=bench", "data.image_size=[100,150]", "task.modes=[eager]",
                           "task.latency_iters=2", "task.iters=1", "task.repeats=1", "task.throughput_batch_size=2",
                           "task.matmul_size=128", "out_dir=b"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    plan = vtlab.build("llavanext_debug").plan(100, 150)
    print({k: res[k] for k in ("tiling", "frames", "tokens", "throughput_img_s", "throughput_tokens_s", "latency_ms")})
    assert (res["tiling"], res["frames"], res["tokens"]) == ("anyres", plan.frames, plan.tokens)
    assert res["throughput_tokens_s"] == pytest.approx(res["throughput_img_s"] * plan.tokens)


@pytest.mark.parametrize(("args", "needle"), [
    (["data.image_size=[1,2,3]"], "data.image_size=[1, 2, 3] is not an image size; give an int (square) or [H, W]"),
    (["data.image_size=[0,64]"], "data.image_size=[0, 64] must be positive"),
    (["model.tiling=tiles"], "model.tiling='tiles' is unknown; valid: none, split, anyres"),
    (["model.longest_edge=32"], "model.longest_edge=32 is smaller than one frame (64px)"),
    (["model.pinpoints=[[64,100]]"], "model.pinpoints contains [64, 100]: each entry must be [H, W], both multiples"),
    (["task=train", "data.image_size=[64,96]"], "data.image_size=[64, 96]: train renders square synthetic images"),
])
def test_bad_tiling_settings_get_one_line_messages(tmp_path, args, needle):
    proc = _run(tmp_path, ["+model=smolvlm_debug", *args])
    print(proc.stderr.strip())
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_sweep_over_image_sizes_and_factors(tmp_path):
    """`-m data.image_size=[64,64],[128,96] connector.factor=2,4`: one cell per (size, factor), named with the size,
    and the summary has image / tiling / frames columns."""
    from test_cli import run_vtlab

    proc = run_vtlab(["-m", "+model=smolvlm_debug", "data.image_size=[64,64],[128,96]", "connector.factor=2,4",
                      "task.repeats=1", "task.warmup=0", "logger=none"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = next((tmp_path / "multirun").iterdir())
    rows = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    got = sorted((r["image"], r["factor"], r["frames"], r["tokens"]) for r in rows)
    print(got)
    plan = {(h, w): vtlab.build("smolvlm_debug").plan(h, w).frames for h, w in [(64, 64), (128, 96)]}
    assert got == sorted((f"{h}x{w}", f, plan[(h, w)], plan[(h, w)] * (8 // f) ** 2)
                         for h, w in [(64, 64), (128, 96)] for f in (2, 4))
    assert {r["run_name"] for r in rows} == {f"smolvlm_debug-f{f}-{s}" for f in (2, 4) for s in ("64x64", "128x96")}
    md = (sweep / "summary.md").read_text()
    assert "| image | tiling | frames |" in md and "| 128x96 | split |" in md


def test_hf_llava_next_checkpoint_brings_its_pinpoints_and_newline(tmp_path):
    """`+model=hf model.weights=DIR` of a saved LlavaNext: the tiler uses the checkpoint's `image_grid_pinpoints`,
    the stack its `image_newline`, and raw images pack exactly as the saved model does."""
    from ckpt_fixtures import llava_next
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    hf = llava_next()
    hf.save_pretrained(tmp_path / "ckpt")
    pinpoints = [list(p) for p in hf.config.image_grid_pinpoints]
    stack = vtlab.build("hf", [f"model.weights={tmp_path / 'ckpt'}"]).eval()
    assert [list(p) for p in stack.tiler.pinpoints] == pinpoints and stack.tiler.tiling == "anyres"
    assert torch.equal(stack.image_newline, hf.model.image_newline.detach())
    s = hf.config.vision_config.image_size
    proc = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                      image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    images = [_image(h, w) for h, w in [(50, 90), (120, 40)]]
    enc = proc([Image.fromarray(a) for a in images], return_tensors="pt")
    hf.model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = hf.model.get_image_features(enc.pixel_values, enc.image_sizes,
                                          vision_feature_select_strategy="full").pooler_output
        ours = stack.encode_images(images)
    diff = max(max_diff(o, r) for o, r in zip(ours, ref, strict=True))
    print(f"hf checkpoint pinpoints {pinpoints}: tokens {[r.shape[0] for r in ref]}, max|diff| {diff:.2e}")
    assert diff <= TOL
