"""Load transformers checkpoints (saved by the tests, offline) and match the transformers forward in fp32."""

from __future__ import annotations

import pytest
import torch
from ckpt_fixtures import LLAVA_LAYERS, idefics3, llava_next, max_diff, pixels, siglip_full, siglip_vision
from safetensors.torch import save_file

from vtlab.api import build, compose_config, to_config
from vtlab.checkpoints import load_weights

TOL = 1e-5
SHARD = "30KB"  # small enough that every tiny model is written as several shards + index json


def _build(preset: str, path, *extra: str):
    return build(preset, [f"model.weights={path}", "logger=none", *extra]).eval()


@pytest.fixture(scope="module")
def siglip_ckpt(tmp_path_factory):
    model = siglip_vision()
    plain = tmp_path_factory.mktemp("siglip")
    sharded = tmp_path_factory.mktemp("siglip_sharded")
    model.save_pretrained(plain)
    model.save_pretrained(sharded, max_shard_size=SHARD)
    return model, plain, sharded


@pytest.fixture(scope="module")
def idefics3_ckpt(tmp_path_factory):
    model = idefics3()
    plain = tmp_path_factory.mktemp("idefics3")
    sharded = tmp_path_factory.mktemp("idefics3_sharded")
    model.save_pretrained(plain)
    model.save_pretrained(sharded, max_shard_size=SHARD)
    return model, plain, sharded


@pytest.fixture(scope="module")
def llava_ckpt(tmp_path_factory):
    model = llava_next()
    plain = tmp_path_factory.mktemp("llava")
    sharded = tmp_path_factory.mktemp("llava_sharded")
    model.save_pretrained(plain)
    model.save_pretrained(sharded, max_shard_size=SHARD)
    return model, plain, sharded


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_siglip_vision_model_matches_transformers(siglip_ckpt, sharded):
    model, plain, shards = siglip_ckpt
    path = shards if sharded else plain
    assert sharded == (path / "model.safetensors.index.json").is_file()
    stack = _build("siglip_debug", path / "model.safetensors.index.json" if sharded else path)
    x = pixels(112)
    with torch.no_grad():
        ref = model(pixel_values=x)
        feats = stack.features(x)
        d_feat = max_diff(ref.last_hidden_state, feats)
        d_pool = max_diff(ref.pooler_output, stack.tower.pool(feats))
    print(f"siglip {'sharded' if sharded else 'single'}: tower {d_feat:.2e}, pooled {d_pool:.2e}")
    assert d_feat <= TOL and d_pool <= TOL


def test_siglip_hub_v4_layout_and_single_file(siglip_ckpt, tmp_path):
    """The hub / transformers-v4 layout (`vision_model.*`), given as one safetensors file."""
    model, _, _ = siglip_ckpt
    state = {"vision_model." + k: v.contiguous() for k, v in model.state_dict().items()}
    file = tmp_path / "siglip_v4.safetensors"
    save_file(state, str(file))
    stack = _build("siglip_debug", file)
    x = pixels(112)
    with torch.no_grad():
        d = max_diff(model(pixel_values=x).last_hidden_state, stack.features(x))
    assert d <= TOL


def test_full_siglip_model_ignores_text_tower(tmp_path):
    model = siglip_full()
    model.save_pretrained(tmp_path)
    stack = _build("siglip_debug", tmp_path)
    x = pixels(112)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=x)
        d = max_diff(ref.last_hidden_state, stack.features(x))
        d_pool = max_diff(ref.pooler_output, stack.tower.pool(stack.features(x)))
    print(f"SiglipModel: tower {d:.2e}, pooled {d_pool:.2e}")
    assert d <= TOL and d_pool <= TOL


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_idefics3_matches_transformers(idefics3_ckpt, sharded):
    model, plain, shards = idefics3_ckpt
    stack = _build("smolvlm_debug", shards if sharded else plain)
    x = pixels(64)
    with torch.no_grad():
        last = model.model.vision_model(pixel_values=x).last_hidden_state
        ref_tokens = model.model.connector(last)
        d_feat = max_diff(last, stack.features(x))
        d_conn = max_diff(ref_tokens, stack(x))
        # the model's own image-feature path: pixel_values (B, frames, 3, H, W) -> per-image token lists
        d_model = max_diff(torch.stack(list(model.model.get_image_features(x[:, None]).pooler_output)), stack(x))
    print(f"idefics3 {'sharded' if sharded else 'single'}: tower {d_feat:.2e}, connector {d_conn:.2e}, model {d_model:.2e}")
    assert d_feat <= TOL and d_conn <= TOL and d_model <= TOL


def _llava_prepack(model, pixel_values, image_sizes):
    """LlavaNext image features before `pack_image_features`, captured at the projector's output."""
    captured = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model.model.get_image_features(pixel_values, image_sizes, vision_feature_layer=LLAVA_LAYERS,
                                       vision_feature_select_strategy="full")
    finally:
        hook.remove()
    return captured[0]


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_llava_next_matches_transformers(llava_ckpt, sharded):
    model, plain, shards = llava_ckpt
    stack = _build("llavanext_debug", shards if sharded else plain)
    x = pixels(66, batch=3)  # one image of 2x... crops: base + tiles, as get_image_features sees them
    with torch.no_grad():
        hs = model.model.vision_tower(pixel_values=x, output_hidden_states=True).hidden_states
        ref_feats = torch.cat([hs[i] for i in LLAVA_LAYERS], dim=-1)
        d_feat = max_diff(ref_feats, stack.features(x))
        d_proj = max_diff(model.model.multi_modal_projector(ref_feats), stack(x))
        # one 66x132 image -> best pinpoint (66, 132): base crop + 2 tiles = 3 crops
        prepack = _llava_prepack(model, x[None], torch.tensor([[66, 132]]))
        d_prepack = max_diff(prepack, stack(x))
    d_newline = max_diff(model.model.image_newline, stack.image_newline)
    print(f"llava_next {'sharded' if sharded else 'single'}: tower {d_feat:.2e}, projector {d_proj:.2e}, "
          f"pre-pack features {d_prepack:.2e}, image_newline {d_newline:.2e}")
    assert d_feat <= TOL and d_proj <= TOL and d_prepack <= TOL and d_newline == 0
    assert "image_newline" in stack.state_dict()  # kept as a persistent buffer


def test_llava_next_runtime_v5_layout(llava_ckpt, tmp_path):
    """`model.vision_tower.*` / `model.multi_modal_projector.*` (a raw v5 state_dict) loads too."""
    model, _, _ = llava_ckpt
    file = tmp_path / "runtime.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    assert any(k.startswith("model.vision_tower.embeddings") for k in model.state_dict())
    stack = _build("llavanext_debug", file)
    x = pixels(66)
    with torch.no_grad():
        hs = model.model.vision_tower(pixel_values=x, output_hidden_states=True).hidden_states
        ref = model.model.multi_modal_projector(torch.cat([hs[i] for i in LLAVA_LAYERS], dim=-1))
        assert max_diff(ref, stack(x)) <= TOL


def test_llava_next_hub_layout(llava_ckpt, tmp_path):
    """The hub / v4 on-disk names: `vision_tower.vision_model.*`."""
    model, plain, _ = llava_ckpt
    from safetensors.torch import load_file

    state = load_file(str(plain / "model.safetensors"))
    state = {("vision_tower.vision_model." + k[len("vision_tower."):]) if k.startswith("vision_tower.") else k: v
             for k, v in state.items()}
    file = tmp_path / "hub.safetensors"
    save_file(state, str(file))
    stack = _build("llavanext_debug", file)
    x = pixels(66)
    with torch.no_grad():
        hs = model.model.vision_tower(pixel_values=x, output_hidden_states=True).hidden_states
        assert max_diff(torch.cat([hs[i] for i in LLAVA_LAYERS], dim=-1), stack.features(x)) <= TOL


@pytest.mark.parametrize("preset,fixture,size", [
    ("siglip_debug", "siglip_ckpt", 112), ("smolvlm_debug", "idefics3_ckpt", 64), ("llavanext_debug", "llava_ckpt", 66),
])
def test_model_hf_takes_architecture_from_checkpoint(preset, fixture, size, request):
    _, path, _ = request.getfixturevalue(fixture)
    named = to_config(compose_config(preset, [f"model.weights={path}"]))
    hf = to_config(compose_config("hf", [f"model.weights={path}"]))
    for field in ("family", "image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "layer_norm_eps", "hidden_act", "use_head", "feature_layers"):
        assert getattr(hf.model, field) == getattr(named.model, field), field
    assert (hf.connector.kind, hf.connector.factor, hf.text_hidden) == (
        named.connector.kind, named.connector.factor, named.text_hidden) or preset == "siglip_debug"
    a, b = _build(preset, path), _build("hf", path)
    x = pixels(size)
    with torch.no_grad():
        assert torch.equal(a.features(x), b.features(x))


def test_hf_cache_id(siglip_ckpt, tmp_path, monkeypatch):
    """hf://org/name resolves through the local cache layout (refs/main -> snapshots/<sha>), offline."""
    model, plain, _ = siglip_ckpt
    repo = tmp_path / "hub" / "models--tiny-org--tiny-siglip"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in plain.iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    stack = _build("siglip_debug", "hf://tiny-org/tiny-siglip")
    x = pixels(112)
    with torch.no_grad():
        assert max_diff(model(pixel_values=x).last_hidden_state, stack.features(x)) <= TOL
    stack2 = _build("siglip_debug", "hf://tiny-org/tiny-siglip@0123abcd")
    tower1, tower2 = stack.tower.state_dict(), stack2.tower.state_dict()  # the connector is not in a SigLIP file
    assert tower1.keys() == tower2.keys() and all(torch.equal(tower1[k], tower2[k]) for k in tower1)


def test_load_weights_reports_what_it_did(llava_ckpt):
    _, plain, _ = llava_ckpt
    stack = build("llavanext_debug", ["logger=none"])
    report = load_weights(stack, str(plain), None)
    assert report["family"] == "llava_next"
    assert any("MAP head" in s for s in report["skipped"])  # HF builds the unused SigLIP head; the preset has none
    assert report["ignored"] > 0  # the text model
