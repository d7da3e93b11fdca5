"""`vtlab.build_vlm`: the prompt layout per family, forward with labels, bf16 greedy decoding (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vtlab
from vtlab.families import get_family
from vtlab.families.tiler import ImagePlan


@pytest.fixture(scope="module")
def smol():
    torch.manual_seed(0)
    return vtlab.build_vlm("smolvlm_debug")


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_idefics3_prompt_layout():
    fam = get_family("idefics3")
    split = ImagePlan((1, 1), "split", 1, 2, 3, 2, 6, {})
    f, g, i = "<fake_token_around_image>", "<global-img>", "<image>"
    assert fam.image_prompt(split) == f"{f}<row_1_col_1>{i}{i}{f}<row_1_col_2>{i}{i}\n\n{f}{g}{i}{i}{f}"
    assert fam.image_prompt(ImagePlan((1, 1), "split", 0, 0, 1, 2, 2, {})) == f"{f}{g}{i}{i}{f}"
    assert get_family("llava_next").image_prompt(split) == i * 6


def test_forward_with_labels_and_chat_template(smol):
    image = _image(100, 150)
    pixels, plan = smol.stack.tiler.frames(image)
    ids = smol.prompt_ids([plan], "How many plus signs?")
    tokens = smol.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens[:5] == ["<|im_start|>", "user", ":", "<fake_token_around_image>", "<row_1_col_1>"]
    assert tokens[-3:] == ["<|im_start|>", "assistant", ":"] and tokens.count("<image>") == plan.tokens
    labels = ids.clone()
    labels[ids == smol.image_token_id] = -100
    out = smol(ids, images=[image], labels=labels)
    assert out.logits.shape == (1, ids.shape[1], smol.lm.config.vocab_size) and torch.isfinite(out.loss)
    out.loss.backward()  # gradients reach the connector through the merged embeddings
    assert smol.stack.connector.proj.weight.grad is not None
    smol.zero_grad()
    with pytest.raises(ValueError, match="image tokens"):
        smol(ids[:, :10], images=[image])


def test_bf16_greedy_generate_with_kv_cache(smol):
    image = _image(64, 64)
    ref = smol.generate([image], "Describe this image.", 6, stop_at_eos=False)
    half = vtlab.build_vlm("smolvlm_debug")
    half.load_state_dict(smol.state_dict())
    half = half.to(torch.bfloat16)
    tokens = half.generate([image], "Describe this image.", 6, stop_at_eos=False)
    assert len(ref) == len(tokens) == 6 and next(half.lm.parameters()).dtype == torch.bfloat16
    # the KV-cache loop gives the argmax of a full forward pass at every step (fp32)
    ids = smol.prompt_ids([smol.stack.tiler.frames(image)[1]], "Describe this image.")
    full = torch.cat([ids, torch.tensor([ref[:-1]])], dim=1)
    with torch.no_grad():
        logits = smol(full, images=[image]).logits
    assert logits[0, ids.shape[1] - 1:].argmax(-1).tolist() == ref


def test_text_weights_from_a_folder_and_the_hf_cache(tmp_path, monkeypatch):
    """text.weights=DIR | hf://org/name (local cache only): the LM and its tokenizer are loaded, the LM's own
    architecture replaces the preset's fields, and the tokens it generates are the saved model's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from vtlab.text.lm import hf_text_config
    from vtlab.text.tokenizer import offline_tokenizer

    conf = hf_text_config(vtlab.make_config("smolvlm_debug", ["text.lm=true"]).text)
    conf.update(num_hidden_layers=3, rope_theta=5000.0)
    torch.manual_seed(1)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(conf.pop("model_type"), **conf)).eval()
    folder = tmp_path / "lm"
    lm.save_pretrained(folder)
    offline_tokenizer(1000, extra_specials=("<my_marker>",)).save_pretrained(folder)
    vlm = vtlab.build_vlm("smolvlm_debug", [f"text.weights={folder}"])
    assert vlm.text.num_layers == 3 and vlm.text.rope_theta == 5000.0
    assert "<my_marker>" in vlm.tokenizer.get_vocab()  # the folder's tokenizer, not a fresh offline one
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in vlm.lm.state_dict().items())

    repo = tmp_path / "hub" / "models--tiny-org--tiny-lm"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = vtlab.build_vlm("smolvlm_debug", ["text.weights=hf://tiny-org/tiny-lm"])
    cached.stack.load_state_dict(vlm.stack.state_dict())
    image = _image(64, 64)
    assert cached.generate([image], "hi", 5, stop_at_eos=False) == vlm.generate([image], "hi", 5, stop_at_eos=False)


def test_sweep_summary_and_plots_gain_ttft_and_kv_cache(tmp_path):
    import json

    from vtlab.results.sweep import write_summary

    for job, (tokens, ttft, kv) in enumerate([(64, 12.5, 3.4), (256, 20.0, 11.8)]):
        cell = tmp_path / f"{job}_smolvlm_f{job}"
        cell.mkdir()
        (cell / "results.json").write_text(json.dumps({"task": "profile", "model": "smolvlm", "tokens": tokens,
                                                       "ttft_ms": ttft, "kv_cache_mb": kv, "lm_prefill_ms": ttft / 2}))
    out = write_summary(tmp_path)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"ttft_ms", "kv_cache_mb", "lm_prefill_ms"} <= set(header)
    assert {"tokens_vs_ttft.png", "tokens_vs_kv_cache.png"} <= {p.name for p in out["plots"]}


@pytest.mark.slow
def test_compile_vision_gives_the_same_tokens():
    """torch.compile of the tower and the connector (in place) leaves the greedy tokens unchanged (~40 s on CPU)."""
    torch.manual_seed(0)
    vlm = vtlab.build_vlm("smolvlm_debug")
    image = _image(64, 64)
    ref = vlm.generate([image], "hi", 4, stop_at_eos=False)
    vlm.compile_vision()
    assert vlm.generate([image], "hi", 4, stop_at_eos=False) == ref
    assert hasattr(vlm.stack.tower, "_compiled_call_impl") and vlm.stack.tower._compiled_call_impl is not None


def test_sparse_hub_text_config_takes_llama_defaults():
    """llava-hf/llava-1.5-7b-hf's config.json spells out few LM fields; the rest are `LlamaConfig`'s defaults, as
    transformers fills them (and a v5 `rope_parameters` block is read, not shadowed by the default theta)."""
    from transformers import LlamaConfig

    from vtlab.families.siglip import text_fields

    hub = {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": 32064,
           "_name_or_path": "lmsys/vicuna-7b-v1.5"}
    text = text_fields(hub)["text"]
    ref = LlamaConfig(**{k: v for k, v in hub.items() if k != "model_type"})
    assert (text["hidden_size"], text["num_layers"], text["num_heads"], text["num_kv_heads"], text["intermediate_size"],
            text["vocab_size"], text["max_position_embeddings"], text["rms_norm_eps"], text["rope_theta"]) == (
        ref.hidden_size, ref.num_hidden_layers, ref.num_attention_heads, ref.num_key_value_heads,
        ref.intermediate_size, ref.vocab_size, ref.max_position_embeddings, ref.rms_norm_eps,
        ref.rope_parameters["rope_theta"])
    v5 = text_fields({**hub, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}})["text"]
    assert v5["rope_theta"] == 5e5
