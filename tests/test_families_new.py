"""The clip and dinov2 families (issue 12) end to end: presets, checkpoints, export, preprocessing, costs.

Every parity test saves a tiny transformers / timm model with random (perturbed) weights to a temp folder,
loads it through vtlab's config path (`+model=hf model.weights=DIR` or a preset + `model.weights`) and
compares with the transformers forward in fp32 at max |diff| <= 1e-5; exports are re-read with
`from_pretrained`. Each parity check prints its measured max |diff| (`pytest -s`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from hf_parity import max_diff
from hf_parity import perturb_ as _perturb
from PIL import Image
from safetensors.torch import save_file
from torch import nn
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
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from vtlab.api import build, build_stack, make_config
from vtlab.checkpoints import detect, export_hf
from vtlab.errors import CheckpointError, ConfigError
from vtlab.families import get_family
from vtlab.measure.flops import stage_costs

TOL = 1e-5
CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                   patch_size=8, layer_norm_eps=1e-5)
TEXT = dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=128)
NEW_PRESETS = ["clip_l14_336", "clip_debug", "llava15", "llava15_debug", "dinov2_l14", "dinov2_l14_reg",
               "dinov2_debug", "dinov2_reg_debug"]


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    return _perturb(module, seed, scale).eval()


def report(name: str, diff: float) -> None:
    print(f"[families-new] {name} max|diff| = {diff:.2e}")
    assert diff <= TOL, (name, diff)


def pixels(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hf_stack(path, *extra: str):
    return build("hf", [f"model.weights={path}", "logger=none", *extra]).eval()


def clip_vision() -> CLIPVisionModel:
    torch.manual_seed(0)
    return perturb_(CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION, attn_implementation="eager")))


def tiny_llava() -> LlavaForConditionalGeneration:
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **CLIP_VISION), text_config=TEXT,
                      image_token_index=100, vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    model.set_attn_implementation("eager")
    return perturb_(model)


def dino(registers: int = 0) -> nn.Module:
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7,
              attn_implementation="eager")
    if registers:
        return perturb_(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw, num_register_tokens=registers)))
    return perturb_(Dinov2Model(Dinov2Config(**kw)))


# ---------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", NEW_PRESETS)
def test_new_presets_compose_validate_and_build_on_meta(name):
    cfg = make_config(name)
    assert get_family(cfg.model.family).name in ("clip", "dinov2")  # (siglip2, fused: their own files)
    with torch.device("meta"):
        stack = build_stack(cfg)
    expected = {"clip_l14_336": (576, 4096), "llava15": (576, 4096), "dinov2_l14": (256, 4096),
                "dinov2_l14_reg": (256, 4096)}
    if name in expected:
        assert (stack.num_tokens, stack.text_hidden) == expected[name]
    if name == "llava15":
        assert stack.tower.depth_used == 23 and stack.tower.prefix_tokens == 0
    if name == "dinov2_l14_reg":
        assert stack.tower.num_register_tokens == 4 and stack.grid == (16, 16)


def test_family_fields_are_refused_where_they_do_not_belong():
    with pytest.raises(ConfigError, match=r"model.num_registers=2 is not a setting of family siglip .*dinov2"):
        make_config("siglip_debug", ["model.num_registers=2"])
    with pytest.raises(ConfigError, match=r"model.select_strategy=full is not a setting of family dinov2"):
        make_config("dinov2_debug", ["model.select_strategy=full"])
    with pytest.raises(ConfigError, match=r"model.hidden_act=gelu_tanh is not an activation of family clip"):
        make_config("clip_debug", ["model.hidden_act=gelu_tanh"])
    with pytest.raises(ConfigError, match=r"model.hidden_act=quick_gelu is not an activation of family siglip"):
        make_config("siglip_debug", ["model.hidden_act=quick_gelu"])
    with pytest.raises(ConfigError, match="connector.act=quick_gelu is a tower activation"):
        make_config("clip_debug", ["connector.act=quick_gelu"])
    with pytest.raises(ConfigError, match=r"model.num_registers=-1 must be >= 0"):
        make_config("dinov2_debug", ["model.num_registers=-1"])
    with pytest.raises(ConfigError, match=r"intermediate_size=61: a DINOv2 MLP .* gives 60 for hidden_size=28"):
        make_config("dinov2_debug", ["model.intermediate_size=61", "model.hidden_size=28"])


def test_kept_prefix_tokens_need_a_tokenwise_connector():
    with pytest.raises(ConfigError, match=r"keeps 1 prefix token.*connector.kind=pixel_unshuffle"):
        make_config("clip_debug", ["model.select_strategy=full", "connector=pixel_unshuffle", "connector.factor=2"])
    with pytest.raises(ConfigError, match=r"keeps 3 prefix token.*connector.factor=2"):
        make_config("dinov2_reg_debug", ["model.keep_prefix=true", "connector.factor=2"])
    full = build("clip_debug", ["model.select_strategy=full"]).eval()
    kept = build("dinov2_reg_debug", ["model.keep_prefix=true"]).eval()
    for stack, prefix in ((full, 1), (kept, 3)):
        with torch.no_grad():
            out = stack(pixels(2, 3, stack.input_size, stack.input_size))
        assert out.shape[1] == stack.num_tokens == 64 + prefix
        assert stack.stages()["tower"].shape[1] == 64 + prefix


# ---------------------------------------------------------------------------------------------- CLIP
def test_clip_vision_model_and_clip_model_folders_load_with_their_architecture(tmp_path):
    vision = clip_vision()
    vision.save_pretrained(tmp_path / "v")
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(1)
    both = perturb_(CLIPModel(CLIPConfig(vision_config=CLIP_VISION, text_config=text)), seed=1)
    both.save_pretrained(tmp_path / "c")
    x = pixels(2, 3, 32, 32)
    for name, folder, hf in (("CLIPVisionModel", "v", vision), ("CLIPModel", "c", both.vision_model)):
        stack = hf_stack(tmp_path / folder)
        m = stack.tower
        assert (type(m).__name__, m.num_layers, m.hidden_size, m.patch_size, m.image_size) == ("ClipTower", 3, 32, 8, 32)
        with torch.no_grad():
            ref = hf(pixel_values=x, output_hidden_states=True)
            report(f"+model=hf {name} tokens (CLS dropped)", max_diff(stack.tower(x), ref.last_hidden_state[:, 1:]))
            full = hf_stack(tmp_path / folder, "model.select_strategy=full").tower
            report(f"+model=hf {name} select_strategy=full", max_diff(full(x), ref.last_hidden_state))
            report(f"{name} pooler_output", max_diff(full.pool(full(x)), ref.pooler_output))
    assert "CLIPModel" in detect(list(both.state_dict())).name


def test_llava15_checkpoint_matches_get_image_features(tmp_path):
    llava = tiny_llava()
    llava.save_pretrained(tmp_path / "l")
    stack = hf_stack(tmp_path / "l")
    c = stack.connector
    assert stack.tower.feature_layers == [2] and stack.tower.depth_used == 2
    assert (str(c.kind), c.factor, stack.text_hidden, stack.num_tokens) == ("mlp", 1, 48, 16)
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        ref = llava.model.get_image_features(pixel_values=x)
        ref = getattr(ref, "pooler_output", ref)
        ref = torch.stack(list(ref)) if isinstance(ref, list | tuple) else ref
        report("LLaVA-1.5 stack vs LlavaModel.get_image_features", max_diff(stack(x), ref.reshape(2, 16, 48)))
    # the v5 runtime layout (model.vision_tower.*, model.multi_modal_projector.*) loads to the same stack
    save_file({k: v.contiguous() for k, v in llava.state_dict().items() if "lm_head" not in k and "embed_tokens" not in k},
              str(tmp_path / "runtime.safetensors"))
    runtime = build("llava15_debug", ["model.weights=" + str(tmp_path / "runtime.safetensors"), "text.hidden_size=48",
                                      "model.image_size=32", "model.patch_size=8", "model.num_layers=3"]).eval()
    with torch.no_grad():
        report("LLaVA-1.5 v5 runtime layout", max_diff(runtime(x), stack(x)))


def test_timm_clip_state_dict_loads(tmp_path):
    from timm.layers import LayerNorm
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
                            pre_norm=True, class_token=True, global_pool="token", num_classes=0,
                            norm_layer=partial(LayerNorm, eps=1e-5), act_layer="quick_gelu")
    perturb_(vit)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    assert detect(list(vit.state_dict())).name.startswith("timm vit_*_clip_*")
    stack = hf_stack(tmp_path / "timm.safetensors", "model.num_heads=4", "model.hidden_act=quick_gelu",
                     "model.layer_norm_eps=1e-5")
    assert stack.grid == (4, 4) and type(stack.tower).__name__ == "ClipTower"
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        report("timm CLIP forward_features vs vtlab post_norm(tokens)",
               max_diff(stack.tower.post_norm(stack.tower(x)), vit.forward_features(x)[:, 1:]))


def test_clip_export_round_trip(tmp_path):
    x = pixels(2, 3, 56, 56)
    for preset in ("clip_debug", "llava15_debug"):
        cfg = make_config(preset)
        stack = build_stack(cfg).eval()
        perturb_(stack)
        out = export_hf(stack, cfg, tmp_path / preset)
        again = hf_stack(out)
        with torch.no_grad():
            report(f"{preset} export -> +model=hf", max_diff(again(x), stack(x)))
            if preset == "clip_debug":
                hf = CLIPVisionModel.from_pretrained(out, attn_implementation="eager").eval()
                report("clip_debug export -> CLIPVisionModel.from_pretrained",
                       max_diff(hf(pixel_values=x).last_hidden_state[:, 1:], stack.tower(x)))
            else:
                hf = LlavaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
                ref = hf.model.get_image_features(pixel_values=x)
                ref = getattr(ref, "pooler_output", ref)
                ref = torch.stack(list(ref)) if isinstance(ref, list | tuple) else ref
                report("llava15_debug export -> LlavaForConditionalGeneration.from_pretrained",
                       max_diff(ref.reshape(stack(x).shape), stack(x)))


# ---------------------------------------------------------------------------------------------- DINOv2
@pytest.mark.parametrize("registers", [0, 3])
def test_dinov2_folders_load_with_their_architecture(registers, tmp_path):
    hf = dino(registers)
    hf.save_pretrained(tmp_path)
    stack = hf_stack(tmp_path)
    t = stack.tower
    assert (type(t).__name__, t.num_register_tokens, t.num_layers, stack.grid) == ("Dinov2Tower", registers, 2, (4, 4))
    for size in (28, 42):
        x = pixels(2, 3, size, size)
        st = stack if size == 28 else hf_stack(tmp_path, f"model.input_size={size}")
        with torch.no_grad():
            ref = hf(pixel_values=x).last_hidden_state
            report(f"dinov2 registers={registers} at {size}px (prefix dropped)", max_diff(st.tower(x), ref[:, 1 + registers:]))
            kept = hf_stack(tmp_path, f"model.input_size={size}", "model.keep_prefix=true")
            report(f"dinov2 registers={registers} at {size}px keep_prefix", max_diff(kept.tower(x), ref))


def test_dinov2_export_round_trip(tmp_path):
    for preset, cls in (("dinov2_debug", Dinov2Model), ("dinov2_reg_debug", Dinov2WithRegistersModel)):
        cfg = make_config(preset)
        stack = perturb_(build_stack(cfg))
        out = export_hf(stack, cfg, tmp_path / preset)
        x = pixels(2, 3, 56, 56)
        hf = cls.from_pretrained(out, attn_implementation="eager").eval()
        again = build(preset, [f"model.weights={out}"]).eval()
        with torch.no_grad():
            report(f"{preset} export -> {cls.__name__}.from_pretrained",
                   max_diff(hf(pixel_values=x).last_hidden_state[:, 1 + cfg.model.num_registers:], stack.tower(x)))
            report(f"{preset} export -> preset + model.weights", max_diff(again(x), stack(x)))


# ---------------------------------------------------------------------------------------------- errors
def test_checkpoint_of_another_family_is_refused(tmp_path):
    dino(0).save_pretrained(tmp_path / "d")
    clip_vision().save_pretrained(tmp_path / "c")
    with pytest.raises(ConfigError, match=r"model.family: preset clip, checkpoint dinov2"):
        make_config("clip_debug", [f"model.weights={tmp_path / 'd'}"])
    with pytest.raises(ConfigError, match=r"model.family: preset dinov2, checkpoint clip"):
        make_config("dinov2_debug", [f"model.weights={tmp_path / 'c'}"])
    with pytest.raises(ConfigError, match=r"model.family: preset siglip, checkpoint clip"):
        make_config("siglip_debug", [f"model.weights={tmp_path / 'c'}"])


def test_llava_next_with_a_clip_tower_is_a_clear_error():
    keys = ["vision_tower.vision_model.embeddings.class_embedding", "vision_tower.vision_model.pre_layrnorm.weight",
            "vision_tower.vision_model.embeddings.patch_embedding.weight", "image_newline"]
    with pytest.raises(CheckpointError, match="LlavaNext checkpoint with a CLIP tower"):
        detect(keys)


# ---------------------------------------------------------------------------------------------- pixels
def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("hw", [(300, 200), (64, 97), (336, 336)])
def test_preprocessing_matches_the_pil_processors(hw):
    image = _image(*hw)
    for size in (56, 336):
        hf = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        ref = torch.as_tensor(np.asarray(hf(image, return_tensors="np")["pixel_values"][0]))
        report(f"clip preprocess {hw} -> {size}", max_diff(get_family("clip").preprocess_frame(image, size), ref))
    hf = BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                              image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
    ref = torch.as_tensor(np.asarray(hf(image, return_tensors="np")["pixel_values"][0]))
    report(f"dinov2 preprocess {hw} -> 224", max_diff(get_family("dinov2").preprocess_frame(image, 224), ref))


# ---------------------------------------------------------------------------------------------- costs
@pytest.mark.parametrize("preset", ["clip_debug", "llava15_debug", "dinov2_debug", "dinov2_reg_debug"])
def test_closed_form_flops_equal_counted(preset):
    stack = build(preset).eval()
    costs = stage_costs(stack, pixels(2, 3, stack.input_size, stack.input_size))
    for row in ("tower", "connector"):
        r = costs.row(row)
        assert r["flops"] == r["flops_closed_form"] > 0, (row, r)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_bench_sweep_over_the_towers_has_a_row_per_tower(tmp_path):
    """`python -m vtlab -m +model=siglip_debug,clip_debug,dinov2_debug,siglip2_debug task=bench task.modes=[eager]
    logger=none` in a subprocess: one ok results.json per tower."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import vtlab

    repo = Path(vtlab.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    presets = ["siglip_debug", "clip_debug", "dinov2_debug", "siglip2_debug", "llava15_debug"]
    proc = subprocess.run([sys.executable, "-m", "vtlab", "-m", "+model=" + ",".join(presets), "task=bench",
                           "task.modes=[eager]", "logger=none", "task.iters=1", "task.latency_iters=2",
                           "task.repeats=1", "task.warmup=0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in tmp_path.glob("multirun/**/results.json")]
    assert sorted(r["model"] for r in rows) == sorted(presets), [r.get("model") for r in rows]
    assert all(r["status"] == "ok" for r in rows)


def test_cli_error_for_a_checkpoint_of_another_family(tmp_path):
    """One line `vtlab: error: ...`, before any work."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import vtlab

    dino(0).save_pretrained(tmp_path / "d")
    repo = Path(vtlab.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "vtlab", "+model=clip_debug", f"model.weights={tmp_path / 'd'}",
                           "logger=none"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vtlab: error: ") and "model.family: preset clip" in lines[0], lines


@pytest.mark.parametrize("preset", ["llava15_debug", "dinov2_reg_debug", "siglip2_debug"])
def test_new_towers_train_one_step(preset):
    """task=train's module (inactive modules frozen, no-decay groups from the tower) takes one AdamW step."""
    from vtlab.train.module import VisionClassifier

    stack = build(preset)
    module = VisionClassifier(stack, 2, freeze="none")
    groups = module.param_groups()
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(stack.tower.pos_embed) in no_decay
    if preset == "llava15_debug":  # block 3 is past the tap -2: never run, frozen
        assert not any(p.requires_grad for p in stack.tower.blocks[2].parameters())
    opt = torch.optim.AdamW(groups)
    before = {n: p.detach().clone() for n, p in stack.tower.named_parameters() if p.requires_grad}
    loss = torch.nn.functional.cross_entropy(module(pixels(2, 3, stack.input_size, stack.input_size)),
                                             torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(not torch.equal(p, before[n]) for n, p in stack.tower.named_parameters()
                                        if p.requires_grad and p.grad is not None)
    assert sum(p.grad is not None for p in stack.tower.parameters()) > 0
