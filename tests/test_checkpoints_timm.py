"""timm `vit_*_siglip_*` state dicts (fused qkv, pos_embed (1, N, D), attn_pool) and vtlab/Lightning files."""

from __future__ import annotations

import pytest
import torch
from ckpt_fixtures import max_diff, pixels, timm_siglip
from safetensors.torch import save_file

from vtlab.api import build, compose_config, to_config

TOL = 1e-5


@pytest.fixture(scope="module")
def timm_model():
    return timm_siglip()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_matches_timm_forward(timm_model, tmp_path, fmt):
    state = timm_model.state_dict()
    assert state["pos_embed"].dim() == 3 and "attn_pool.kv.weight" in state and "blocks.0.attn.qkv.weight" in state
    path = tmp_path / f"timm_siglip.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    stack = build("siglip_debug", [f"model.weights={path}", "logger=none"]).eval()
    x = pixels(112)
    with torch.no_grad():
        ref_tokens = timm_model.forward_features(x)  # post-norm tokens
        ref_pooled = timm_model.forward_head(ref_tokens, pre_logits=True)  # MAP pool
        feats = stack.features(x)
        d_feat, d_pool = max_diff(ref_tokens, feats), max_diff(ref_pooled, stack.tower.pool(feats))
        # Prismatic-style tap: second-to-last block output, not normed == hidden_states[-2]
        ref_mid = timm_model.forward_intermediates(x, indices=[0], intermediates_only=True, norm=False,
                                                   output_fmt="NLC")[0]
        d_mid = max_diff(ref_mid, stack.tower.hidden_states(x)[1])
    print(f"timm {fmt}: tower {d_feat:.2e}, pooled {d_pool:.2e}, block-1 tap {d_mid:.2e}")
    assert d_feat <= TOL and d_pool <= TOL and d_mid <= TOL


def test_timm_with_model_hf_needs_heads_then_matches(timm_model, tmp_path):
    """A bare timm file has no config.json: +model=hf reads shapes and asks for what shapes cannot tell."""
    path = tmp_path / "timm.pth"
    torch.save(timm_model.state_dict(), path)
    with pytest.raises(Exception, match="model.num_heads"):
        to_config(compose_config("hf", [f"model.weights={path}"]))
    cfg = to_config(compose_config("hf", [f"model.weights={path}", "model.num_heads=4"]))
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.patch_size, cfg.model.image_size) == (32, 2, 8, 112)
    assert cfg.model.use_head is True
    stack = build("hf", [f"model.weights={path}", "model.num_heads=4"]).eval()
    x = pixels(112)
    with torch.no_grad():
        assert max_diff(timm_model.forward_features(x), stack.features(x)) <= TOL


def test_vtlab_and_lightning_checkpoints(tmp_path):
    """A vtlab state dict and a Lightning-style {'state_dict': {'<prefix>.tower...'}} both load (weights_only)."""
    src = build("smolvlm_debug", ["logger=none"]).eval()
    plain = tmp_path / "stack.pt"
    torch.save(src.state_dict(), plain)
    lightning = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": {**{"stack." + k: v for k, v in src.state_dict().items()},
                                                              "head.weight": torch.zeros(4, 64)}}, lightning)
    x = pixels(64)
    for path in (plain, lightning):
        dst = build("smolvlm_debug", [f"model.weights={path}", "logger=none", "seed=7"]).eval()
        for k, v in src.state_dict().items():
            assert torch.equal(v, dst.state_dict()[k]), (path.name, k)
        with torch.no_grad():
            assert torch.equal(src(x), dst(x))


def test_timm_classifier_is_ignored(tmp_path):
    """A timm model with a classifier (`head.weight`, num_classes > 0): the tower still loads, the head is skipped."""
    model = timm_siglip(num_classes=5)
    assert "head.weight" in model.state_dict()
    path = tmp_path / "cls.pth"
    torch.save(model.state_dict(), path)
    stack = build("siglip_debug", [f"model.weights={path}", "logger=none"]).eval()
    x = pixels(112)
    with torch.no_grad():
        assert max_diff(model.forward_features(x), stack.features(x)) <= TOL

