"""The siglip2 family and its naflex tiling (issue 12): raw images of several aspect ratios through vtlab equal
`Siglip2VisionModel` on `Siglip2ImageProcessorPil` inputs (padded, masked) at max |diff| <= 1e-5 fp32;
checkpoints, export, profile / sweep over `model.max_num_patches`, and the budget errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_parity import max_diff
from hf_parity import perturb_ as _perturb
from PIL import Image
from torch import nn
from transformers import Siglip2VisionConfig, Siglip2VisionModel
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

import vtlab
from vtlab.api import build, build_stack, make_config
from vtlab.checkpoints import export_hf
from vtlab.errors import ConfigError
from vtlab.measure.flops import stage_costs

TOL = 1e-5
SIZES = [(50, 80), (90, 30), (40, 40), (17, 200)]
REPO = Path(vtlab.__file__).resolve().parent.parent


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    return _perturb(module, seed, scale).eval()


def report(name: str, diff: float) -> None:
    print(f"[siglip2-family] {name} max|diff| = {diff:.2e}")
    assert diff <= TOL, (name, diff)


def images(sizes=SIZES) -> list[Image.Image]:
    return [Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8))
            for i, (h, w) in enumerate(sizes)]


def tiny_siglip2() -> Siglip2VisionModel:
    torch.manual_seed(0)
    cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              patch_size=4, num_patches=16, attn_implementation="eager")
    return perturb_(Siglip2VisionModel(cfg))


def run_vtlab(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "vtlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    hf = tiny_siglip2()
    folder = tmp_path_factory.mktemp("siglip2")
    hf.save_pretrained(folder)
    return hf, folder


@pytest.mark.parametrize("budget", [16, 30, 64])
def test_naflex_tokens_equal_siglip2_vision_model_on_processor_inputs(ckpt, budget):
    hf, folder = ckpt
    stack = build("hf", [f"model.weights={folder}", f"model.max_num_patches={budget}", "logger=none"]).eval()
    assert stack.tiler.tiling == "naflex" and type(stack.tower).__name__ == "Siglip2Tower"
    ims = images()
    ref_in = Siglip2ImageProcessorPil(patch_size=4, max_num_patches=budget)(ims, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**ref_in).last_hidden_state
        tokens = stack.encode_images(ims)
        feats = [stack.tower(f) for f in (stack.tiler.frames(im)[0] for im in ims)]
    for i, (im, out) in enumerate(zip(ims, tokens, strict=True)):
        n = int(ref_in["pixel_attention_mask"][i].sum())
        plan = stack.plan(im.height, im.width)
        assert plan.tokens == n == out.shape[0] and list(ref_in["spatial_shapes"][i]) == plan.detail["grid"]
        report(f"naflex budget={budget} {im.height}x{im.width} tower", max_diff(feats[i][0], ref[i, :n]))
        with torch.no_grad():
            report(f"naflex budget={budget} {im.height}x{im.width} tokens", max_diff(out, stack.connector(ref[i:i + 1, :n], (n, 1))[0]))


def test_export_round_trip_and_a_checkpoint_of_another_family(ckpt, tmp_path):
    cfg = make_config("siglip2_debug")
    stack = perturb_(build_stack(cfg))
    out = export_hf(stack, cfg, tmp_path / "e")
    hf = Siglip2VisionModel.from_pretrained(out, attn_implementation="eager").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref_in = Siglip2ImageProcessorPil(patch_size=4, max_num_patches=16)(images([(40, 40)]), return_tensors="pt")
    again = build("siglip2_debug", [f"model.weights={out}"]).eval()
    with torch.no_grad():
        report("siglip2_debug export -> preset + model.weights", max_diff(again(x), stack(x)))
        ref = hf(**ref_in).last_hidden_state
        frame = stack.tiler.frames(images([(40, 40)])[0])[0]
        report("siglip2_debug export -> Siglip2VisionModel.from_pretrained", max_diff(stack.tower(frame), ref))
    with pytest.raises(ConfigError, match=r"model.family: preset clip, checkpoint siglip2"):
        make_config("clip_debug", [f"model.weights={ckpt[1]}"])


def test_patch_budget_errors():
    with pytest.raises(ConfigError, match=r"model.max_num_patches=0 is below one patch"):
        make_config("siglip2_debug", ["model.max_num_patches=0"])
    with pytest.raises(ConfigError, match=r"model.max_num_patches=16 is not a setting of family siglip "):
        make_config("siglip_debug", ["model.max_num_patches=16"])
    with pytest.raises(ConfigError, match=r"connector.factor=2 does not divide the 3x5 NaFlex patch grid of a 50x80"):
        make_config("siglip2_debug", ["connector=pixel_unshuffle", "connector.factor=2", "data.image_size=[50,80]"])
    ok = build("siglip2_debug", ["connector=pixel_unshuffle", "connector.factor=2", "data.image_size=[40,40]"])
    assert ok.plan(40, 40).tokens == 4  # 4x4 grid, factor 2


@pytest.mark.parametrize("hw", [(50, 80), (16, 16), (200, 17)])
def test_profile_flops_closed_form_equal_counted_for_naflex_frames(hw):
    stack = build("siglip2_debug").eval()
    plan = stack.plan(*hw)
    costs = stage_costs(stack, torch.randn(stack.input_shape(1, plan)))
    for row in ("tower", "connector"):
        r = costs.row(row)
        assert r["flops"] == r["flops_closed_form"] > 0, (hw, row, r)
    assert costs.features.shape[1] == plan.tokens


@pytest.mark.slow
def test_sweep_over_the_patch_budget(tmp_path):
    """`python -m vtlab -m +model=siglip2_debug model.max_num_patches=16,64 task=profile data.image_size=[50,80]`."""
    proc = run_vtlab(["-m", "+model=siglip2_debug", "model.max_num_patches=16,64", "task=profile",
                      "data.image_size=[50,80]", "logger=none", "task.repeats=1", "task.warmup=0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in tmp_path.glob("multirun/**/results.json")]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    stack16, stack64 = (build("siglip2_debug", [f"model.max_num_patches={b}"]) for b in (16, 64))
    assert sorted(r["tokens"] for r in rows) == sorted([stack16.plan(50, 80).tokens, stack64.plan(50, 80).tokens])
    assert all(r["flops"] == r["flops_closed_form"] for r in rows)


def test_cli_budget_below_one_patch_is_one_line(tmp_path):
    proc = run_vtlab(["+model=siglip2_debug", "model.max_num_patches=0", "logger=none"], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("vtlab: error: model.max_num_patches=0"), lines


def test_so400m_naflex_preset_on_meta():
    with torch.device("meta"):
        stack = build_stack(make_config("siglip2_so400m_naflex"))
    assert stack.tower.native_grid == 16 and stack.tower.hidden_size == 1152 and len(stack.tower.blocks) == 27
    plan = stack.plan(768, 1024)  # 3:4 -> the largest grid under 256 patches
    assert plan.detail["grid"] == [14, 18] and plan.tokens == 252 and stack.tiler.max_num_patches == 256
