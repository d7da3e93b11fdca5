"""The fused family (Prismatic dinosiglip, issue 12): two towers on one image, features concatenated per patch.

Each sub-tower loads its own transformers checkpoint (`model.towers.<name>.weights`, saved by the test) and
the fused output equals [Dinov2WithRegistersModel hidden_states[-2] patch tokens, SiglipVisionModel
hidden_states[-2]] on the same image with each family's normalisation, at max |diff| <= 1e-5 fp32; cost rows
per sub-tower with counted FLOPs = closed form; mismatched grids and widths are refused naming them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_parity import max_diff
from hf_parity import perturb_ as _perturb
from PIL import Image
from torch import nn
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, SiglipVisionConfig, SiglipVisionModel

from vtlab.api import build, make_config
from vtlab.errors import CheckpointError, ConfigError
from vtlab.families import get_family
from vtlab.measure.flops import stage_costs

TOL = 1e-5


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    return _perturb(module, seed, scale).eval()


def report(name: str, diff: float) -> None:
    print(f"[fused-family] {name} max|diff| = {diff:.2e}")
    assert diff <= TOL, (name, diff)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny HF towers with the dinosiglip_debug sub-tower architectures, saved with save_pretrained."""
    torch.manual_seed(0)
    dino = perturb_(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=63, patch_size=7, mlp_ratio=4,
        num_register_tokens=2, attn_implementation="eager")))
    sig = perturb_(SiglipVisionModel(SiglipVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=56, patch_size=7,
        attn_implementation="eager")), seed=1)
    d, s = tmp_path_factory.mktemp("dino"), tmp_path_factory.mktemp("sig")
    dino.save_pretrained(d)
    sig.save_pretrained(s)
    return dino, sig, d, s


def test_fused_tokens_equal_the_two_transformers_towers(ckpts):
    dino, sig, d, s = ckpts
    stack = build("dinosiglip_debug", [f"model.towers.dinov2.weights={d}", f"model.towers.siglip.weights={s}"]).eval()
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    mean_d, std_d = (torch.tensor(v).reshape(1, 3, 1, 1) for v in (get_family("dinov2").mean, get_family("dinov2").std))
    with torch.no_grad():
        ref_d = dino(pixel_values=(x - mean_d) / std_d, output_hidden_states=True).hidden_states[-2][:, 1 + 2:]
        ref_s = sig(pixel_values=(x - 0.5) / 0.5, output_hidden_states=True).hidden_states[-2]
        out = stack.tower(x)
        report("fused dinov2 part (hidden_states[-2], prefix dropped)", max_diff(out[..., :32], ref_d))
        report("fused siglip part (hidden_states[-2])", max_diff(out[..., 32:], ref_s))
        report("fused tower vs concatenated HF features", max_diff(out, torch.cat([ref_d, ref_s], dim=-1)))
    assert stack(x).shape == (2, 64, 64) and stack.num_tokens == 64


def test_cost_rows_per_sub_tower_counted_equal_closed_form():
    stack = build("dinosiglip_debug").eval()
    costs = stage_costs(stack, torch.rand(2, 3, 56, 56))
    names = [r["name"] for r in costs.stages]
    assert names == ["image", "patch grid", "tower", "tower.dinov2", "tower.siglip", "connector"]
    for row in ("tower", "tower.dinov2", "tower.siglip", "connector"):
        r = costs.row(row)
        assert r["flops"] == r["flops_closed_form"] > 0, (row, r)
    assert costs.row("tower")["flops"] == costs.row("tower.dinov2")["flops"] + costs.row("tower.siglip")["flops"]
    assert costs.row("tower")["params"] == costs.row("tower.dinov2")["params"] + costs.row("tower.siglip")["params"]


def test_preprocessing_hands_each_part_its_familys_pixels():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    stack = build("dinosiglip_debug")
    frame = get_family("fused").preprocess_frame(image, 56)[None]
    report("fused pixels -> siglip part normalisation vs siglip preprocess",
           max_diff(stack.tower.parts()["siglip"].norm(frame)[0], get_family("siglip").preprocess_frame(image, 56)))


def test_fused_config_errors(ckpts):
    with pytest.raises(ConfigError, match=r"the patch grids differ: dinov2 8x8 \(56px / 7px\), siglip 9x9 \(63px / 7px\)"):
        make_config("dinosiglip_debug", ["model.towers.siglip.image_size=63"])
    with pytest.raises(ConfigError, match=r"model.hidden_size=60 must be the fused channel width 56"):
        make_config("dinosiglip_debug", ["model.hidden_size=60"])
    with pytest.raises(ConfigError, match=r"model.towers.siglip: model.hidden_act=quick_gelu is not an activation"):
        make_config("dinosiglip_debug", ["model.towers.siglip.hidden_act=quick_gelu"])
    with pytest.raises(ConfigError, match=r"model.towers.siglip: unknown field\(s\) \['bogus'\]"):
        make_config("dinosiglip_debug", ["+model.towers.siglip.bogus=1"])
    with pytest.raises(ConfigError, match=r"model.towers has 1 tower"):
        make_config("dinosiglip_debug", ["~model.towers.siglip"])
    _, _, d, _ = ckpts
    with pytest.raises(CheckpointError, match=r"does not fit model 'dinosiglip-debug.siglip'"):
        build("dinosiglip_debug", [f"model.towers.siglip.weights={d}"])


def test_dinosiglip_preset_on_meta():
    from vtlab.api import build_stack

    with torch.device("meta"):
        stack = build_stack(make_config("dinosiglip"))
    parts = stack.tower.parts()
    assert (stack.num_tokens, stack.feature_dim, stack.text_hidden, stack.grid) == (256, 2176, 4096, (16, 16))
    assert parts["dinov2"].tower.num_register_tokens == 4 and parts["siglip"].tower.depth_used == 26
