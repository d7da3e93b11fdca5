"""Whole VLMs against transformers (fp32, CPU, tiny configs written with save_pretrained by the tests).

A tiny `Idefics3ForConditionalGeneration` / `LlavaNextForConditionalGeneration` / `LlavaForConditionalGeneration`
(LLaVA-1.5: CLIP tower, hidden_states[-2] without the class token, 2-layer MLP) with random weights everywhere
(tower, connector, image_newline, Llama LM) is saved with the offline tokenizer; vtlab loads the whole folder
with `+model=hf model.weights=DIR` (tower, connector and LM together; LLaVA-1.5 in the v5 saved, hub and v5
runtime layouts), builds the prompt with the family's image layout and the tokenizer's chat template, and must
give the transformers model's logits on the same input_ids and pixel_values (max |diff| <= 1e-4) and the same 16
greedy tokens. `LlavaForConditionalGeneration` with a SigLIP tower (strategy full) is checked with the weights
copied in.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ckpt_fixtures import LLAVA, LLAVA_LAYERS, SMOLVLM, _randomise
from hf_parity import copy_hf_tower, copy_linear, max_diff
from safetensors.torch import load_file, save_file

from vtlab.api import build_vlm, make_config
from vtlab.text.lm import hf_text_config
from vtlab.text.tokenizer import offline_tokenizer

TOL = 1e-4
STEPS = 16
PROMPT = "How many plus signs are in this image?"


def _image(h: int, w: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _text(preset: str) -> dict:
    conf = hf_text_config(make_config(preset, ["text.lm=true"]).text)
    conf["num_hidden_layers"] = 2
    return conf


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def idefics3_dir(tmp_path_factory):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    tok = offline_tokenizer(1000)
    cfg = Idefics3Config(vision_config=SMOLVLM, text_config=_text("smolvlm_debug"), scale_factor=4,
                         image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = _randomise(Idefics3ForConditionalGeneration(cfg), 0)
    return model, _save(model, tok, tmp_path_factory.mktemp("idefics3_vlm"))


@pytest.fixture(scope="module")
def llava_next_dir(tmp_path_factory):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    tok = offline_tokenizer(1000)
    s = LLAVA["image_size"]
    cfg = LlavaNextConfig(vision_config={**LLAVA, "model_type": "siglip_vision_model"},
                          text_config=_text("llavanext_debug"), vision_feature_layer=LLAVA_LAYERS,
                          vision_feature_select_strategy="full", projector_hidden_act="gelu",
                          multimodal_projector_bias=True,
                          image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
                          image_token_index=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = _randomise(LlavaNextForConditionalGeneration(cfg), 1)
    return model, _save(model, tok, tmp_path_factory.mktemp("llava_next_vlm"))


# LLaVA-1.5 as llava15_debug spells it: CLIP ViT (quick GELU, eps 1e-5), tap -2, class token dropped
CLIP_VISION = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                   num_attention_heads=4, image_size=56, patch_size=7, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def llava15_vlm(path, text: dict | None = None):
    """A tiny whole `LlavaForConditionalGeneration` (llava15_debug's sizes, or `text` as its LM) saved to `path`."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok = offline_tokenizer(1000)
    cfg = LlavaConfig(vision_config=CLIP_VISION, text_config=text or _text("llava15_debug"), vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      image_token_index=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = _randomise(LlavaForConditionalGeneration(cfg), 3)
    return model, _save(model, tok, path)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return llava15_vlm(tmp_path_factory.mktemp("llava_vlm"))


LLAVA_LAYOUTS = {"v5 saved": "(v5 saved: vision_tower.*)", "hub": "(hub / v4: vision_tower.vision_model.*)",
                 "v5 runtime": "(v5 runtime: model.vision_tower.*)"}


def _relayout(path, out, layout: str):
    """The folder `path` (v5 save_pretrained: `vision_tower.*`, `language_model.model.*`) in another layout:
    the hub's (`vision_tower.vision_model.*`) or the v5 runtime state dict's (`model.*`, `lm_head.*`)."""
    renames = {"hub": [("vision_tower.", "vision_tower.vision_model.")],
               "v5 runtime": [("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
                              ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head.")]}[layout]
    out.mkdir()
    tensors = {}
    for key, value in load_file(str(path / "model.safetensors")).items():
        old, new = next(((o, n) for o, n in renames if key.startswith(o)), ("", ""))
        tensors[new + key[len(old):]] = value
    save_file(tensors, str(out / "model.safetensors"))
    for f in path.iterdir():
        if f.name != "model.safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _inputs(vlm, image):
    pixels, plan = vlm.stack.tiler.frames(image)
    ids = vlm.prompt_ids([plan], PROMPT, STEPS)
    return ids, pixels, plan


def _hf_generate(model, **inputs) -> list[int]:
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 1
    out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.slow
def test_idefics3_vlm_logits_and_greedy_tokens(idefics3_dir):
    model, path = idefics3_dir
    vlm = build_vlm("hf", [f"model.weights={path}", "logger=none"])
    image = _image(100, 150)  # 64px frames, longest edge 256 -> 192x256: 3x4 tiles + global
    ids, pixels, plan = _inputs(vlm, image)
    assert plan.rows == 3 and plan.cols == 4
    assert int((ids == vlm.image_token_id).sum()) == plan.tokens == 13 * 4
    assert vlm.tokenizer.convert_ids_to_tokens(ids[0, :4].tolist())[0] == "<|im_start|>"
    with torch.no_grad():
        ours = vlm(ids, pixel_values=pixels, plans=[plan]).logits
        ref = model(input_ids=ids, pixel_values=pixels[None]).logits
    d = max_diff(ours, ref)
    print(f"idefics3 VLM logits max |diff| {d:.2e} over {tuple(ref.shape)}")
    assert d <= TOL
    tokens = vlm.generate([image], PROMPT, STEPS, stop_at_eos=False)
    assert tokens == _hf_generate(model, input_ids=ids, pixel_values=pixels[None])
    assert len(tokens) == STEPS


@pytest.mark.slow
def test_llava_next_vlm_logits_and_greedy_tokens(llava_next_dir):
    model, path = llava_next_dir
    vlm = build_vlm("hf", [f"model.weights={path}", "logger=none"])
    image = _image(70, 130)  # best pinpoint 132x132: base + 2x2 tiles, unpadded to 10x18 (+ newlines)
    ids, pixels, plan = _inputs(vlm, image)
    assert plan.frames == 5 and plan.tokens == 81 + 10 * 19
    sizes = torch.tensor([[70, 130]])
    with torch.no_grad():
        ours = vlm(ids, pixel_values=pixels, plans=[plan]).logits
        ref = model(input_ids=ids, pixel_values=pixels[None], image_sizes=sizes).logits
    d = max_diff(ours, ref)
    print(f"llava_next VLM logits max |diff| {d:.2e} over {tuple(ref.shape)}, {plan.tokens} visual tokens")
    assert d <= TOL
    tokens = vlm.generate([image], PROMPT, STEPS, stop_at_eos=False)
    assert tokens == _hf_generate(model, input_ids=ids, pixel_values=pixels[None], image_sizes=sizes)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LLAVA_LAYOUTS))
def test_llava15_vlm_logits_and_greedy_tokens(llava_dir, layout, tmp_path):
    """LLaVA-1.5 (CLIP tower, tap -2 minus CLS, mlp2x_gelu, 64 `<image>` tokens) loaded whole from each layout;
    the transformers model sees `CLIPImageProcessorPil`'s pixels, vtlab its own family preprocessing."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model, path = llava_dir
    if layout != "v5 saved":
        path = _relayout(path, tmp_path / "relaid", layout)
    vlm = build_vlm("hf", [f"model.weights={path}", "logger=none"])
    assert LLAVA_LAYOUTS[layout] in vlm.stack.weights  # the layout vtlab recognised
    image = _image(90, 120)  # shortest edge -> 56, centre crop 56: one frame, 8 x 8 patches, CLS dropped
    ids, pixels, plan = _inputs(vlm, image)
    assert plan.tokens == int((ids == vlm.image_token_id).sum()) == 64
    processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    hf_pixels = processor(image, return_tensors="pt").pixel_values
    assert max_diff(pixels, hf_pixels) <= 1e-5
    with torch.no_grad():
        ours = vlm(ids, pixel_values=pixels, plans=[plan]).logits
        ref = model(input_ids=ids, pixel_values=hf_pixels).logits
        vlm.stack.connector.layers["linear_2"].bias.add_(0.5)  # the visual tokens do reach the logits
        moved = max_diff(vlm(ids, pixel_values=pixels, plans=[plan]).logits, ref)
        vlm.stack.connector.layers["linear_2"].bias.sub_(0.5)
    d = max_diff(ours, ref)
    print(f"llava-1.5 ({layout}) VLM logits max |diff| {d:.2e} over {tuple(ref.shape)}, {plan.tokens} visual tokens")
    assert d <= TOL and moved > 100 * TOL
    tokens = vlm.generate([image], PROMPT, STEPS, stop_at_eos=False)
    assert tokens == _hf_generate(model, input_ids=ids, pixel_values=hf_pixels)
    assert len(tokens) == STEPS


@pytest.mark.slow
def test_llava_siglip_full_vlm_logits_and_greedy_tokens():
    """LLaVA-1.5 layout (N tokens at <image>) with a SigLIP tower: siglip family, tap -1 (pre-LN), 2-layer MLP."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vlm = build_vlm("siglip_debug", ["model.use_head=false", "model.feature_layers=[-1]", "connector=mlp",
                                     "logger=none"])
    tok = vlm.tokenizer
    m = vlm.stack.tower
    cfg = LlavaConfig(vision_config={"model_type": "siglip_vision_model", "hidden_size": m.hidden_size,
                                     "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                     "image_size": 112, "patch_size": 8, "hidden_act": "gelu_pytorch_tanh",
                                     "layer_norm_eps": 1e-6},
                      text_config=hf_text_config(vlm.text), vision_feature_layer=-1,
                      vision_feature_select_strategy="full", projector_hidden_act="gelu",
                      image_token_index=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    model = _randomise(LlavaForConditionalGeneration(cfg), 2)
    with torch.no_grad():
        copy_hf_tower(model.model.vision_tower, vlm.stack.tower)
        copy_linear(model.model.multi_modal_projector.linear_1, vlm.stack.connector.layers["linear_1"])
        copy_linear(model.model.multi_modal_projector.linear_2, vlm.stack.connector.layers["linear_2"])
        vlm.lm.load_state_dict({"model." + k: v for k, v in model.model.language_model.state_dict().items()}
                               | {"lm_head.weight": model.lm_head.weight})
    image = _image(90, 120)
    ids, pixels, plan = _inputs(vlm, image)
    assert plan.tokens == 196
    with torch.no_grad():
        ours = vlm(ids, pixel_values=pixels, plans=[plan]).logits
        ref = model(input_ids=ids, pixel_values=pixels).logits
    d = max_diff(ours, ref)
    print(f"llava (siglip, full) VLM logits max |diff| {d:.2e}")
    assert d <= TOL
    with torch.no_grad():  # the visual tokens do reach the logits: a changed projector changes them
        vlm.stack.connector.layers["linear_2"].bias.add_(0.5)
        moved = max_diff(vlm(ids, pixel_values=pixels, plans=[plan]).logits, ref)
        vlm.stack.connector.layers["linear_2"].bias.sub_(0.5)
    assert moved > 100 * TOL
    assert vlm.generate([image], PROMPT, STEPS, stop_at_eos=False) == _hf_generate(model, input_ids=ids,
                                                                                  pixel_values=pixels)


@pytest.mark.slow
@pytest.mark.parametrize("fixture,cls,size", [
    ("idefics3_dir", "Idefics3ForConditionalGeneration", (100, 150)),
    ("llava_next_dir", "LlavaNextForConditionalGeneration", (70, 130)),
    ("llava_dir", "LlavaForConditionalGeneration", (90, 120)),
])
def test_export_round_trip_generates_the_same_tokens(fixture, cls, size, request, tmp_path):
    """export_vlm writes a folder `from_pretrained` of the transformers class loads (tower, connector, LM,
    tokenizer) and that generates vtlab's tokens; vtlab loads it back to the same tokens too."""
    import transformers

    from vtlab.text.export import export_vlm

    _, path = request.getfixturevalue(fixture)
    vlm = build_vlm("hf", [f"model.weights={path}", "logger=none"])
    cfg = make_config("hf", [f"model.weights={path}", "text.lm=true", "logger=none"])
    image = _image(*size)
    tokens = vlm.generate([image], PROMPT, STEPS, stop_at_eos=False)
    out = export_vlm(vlm, cfg, tmp_path / "export")
    hf = getattr(transformers, cls).from_pretrained(out, local_files_only=True).eval()
    ids, pixels, _ = _inputs(vlm, image)
    extra = {"image_sizes": torch.tensor([list(size)])} if "Next" in cls else {}
    frames = pixels if cls == "LlavaForConditionalGeneration" else pixels[None]  # (images, frames, ...) when tiled
    assert _hf_generate(hf, input_ids=ids, pixel_values=frames, **extra) == tokens
    again = build_vlm("hf", [f"model.weights={out}", "logger=none"])
    assert again.generate([image], PROMPT, STEPS, stop_at_eos=False) == tokens


@pytest.mark.slow
@pytest.mark.parametrize("fixture,preset,lm", [("idefics3_dir", "smolvlm_debug", "text_model"),
                                               ("llava_dir", "llava15_debug", "language_model")])
def test_named_preset_loads_the_whole_checkpoint_lm_too(fixture, preset, lm, request):
    """`+model=<preset> model.weights=DIR text.lm=true`: the preset's LM (its sizes fit) takes the folder's LM
    tensors and tokenizer, as +model=hf does; a preset whose LM does not fit is refused, naming the mismatch."""
    from vtlab.errors import CheckpointError

    model, path = request.getfixturevalue(fixture)
    vlm = build_vlm(preset, [f"model.weights={path}", "logger=none"])
    ref = {"model." + k: v for k, v in getattr(model.model, lm).state_dict().items()} | {"lm_head.weight": model.lm_head.weight}
    assert all(torch.equal(v, ref[k]) for k, v in vlm.lm.state_dict().items())
    with pytest.raises(CheckpointError, match="language model does not fit"):
        build_vlm(preset, [f"model.weights={path}", "text.num_layers=3", "logger=none"])
