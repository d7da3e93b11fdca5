"""Bad checkpoints give one clear message each, never unpickle code, and never leave a half-loaded model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from ckpt_fixtures import idefics3, llava_next, siglip_vision
from safetensors.torch import save_file

from vtlab.api import build, compose_config, to_config
from vtlab.checkpoints import load_weights
from vtlab.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def siglip_state():
    return {k: v.contiguous() for k, v in siglip_vision().state_dict().items()}


def _file(tmp_path, state, name="w.safetensors"):
    path = tmp_path / name
    save_file(state, str(path))
    return path


def _load_error(path, preset="siglip_debug") -> str:
    stack = build(preset, ["logger=none"])
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(stack, str(path), to_config(compose_config(preset)))
    after = stack.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), "half-loaded"
    print(f"\n[{preset}] {info.value}")
    return str(info.value)


def test_missing_path(tmp_path):
    msg = _load_error(tmp_path / "nope" / "model.safetensors")
    assert "no such file or folder" in msg and "nope" in msg
    with pytest.raises(ConfigError, match="no such file or folder"):
        build("siglip_debug", [f"model.weights={tmp_path / 'absent.safetensors'}"])


def test_layout_not_recognised_says_what_was_found(tmp_path):
    msg = _load_error(_file(tmp_path, {"backbone.conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(2)}))
    assert "layout not recognised" in msg and "backbone.*" in msg and "fc.*" in msg


def test_missing_keys(tmp_path, siglip_state):
    state = dict(siglip_state)
    del state["encoder.layers.1.self_attn.k_proj.weight"]
    del state["post_layernorm.bias"]
    msg = _load_error(_file(tmp_path, state))
    assert "missing keys (2)" in msg
    assert "encoder.layers.1.self_attn.k_proj.weight" in msg and "post_layernorm.bias" in msg
    assert "Nothing was loaded" in msg


def test_missing_connector_is_named_in_the_checkpoint_layout(tmp_path):
    state = {k: v.contiguous() for k, v in idefics3().state_dict().items()
             if k != "model.connector.modality_projection.proj.weight"}
    msg = _load_error(_file(tmp_path, state), preset="smolvlm_debug")
    assert "missing keys (1): model.connector.modality_projection.proj.weight" in msg


def test_unexpected_keys(tmp_path, siglip_state):
    state = {**siglip_state, "encoder.layers.0.self_attn.rel_bias.weight": torch.zeros(4)}
    msg = _load_error(_file(tmp_path, state))
    assert "unexpected keys (1): encoder.layers.0.self_attn.rel_bias.weight" in msg


def test_shape_mismatch_names_key_expected_found(tmp_path, siglip_state):
    state = {**siglip_state, "post_layernorm.weight": torch.ones(33)}
    msg = _load_error(_file(tmp_path, state))
    assert "shape mismatch (1): post_layernorm.weight: expected (32,), found (33,)" in msg


def test_deeper_checkpoint_is_unexpected_keys_and_atomic(tmp_path):
    state = {k: v.contiguous() for k, v in siglip_vision(num_hidden_layers=3).state_dict().items()}
    msg = _load_error(_file(tmp_path, state))
    assert "unexpected keys" in msg and "encoder.layers.2." in msg


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_safetensors(tmp_path, siglip_state, damage):
    good = _file(tmp_path, siglip_state, "good.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good[: len(good) // 2] if damage == "truncated" else os.urandom(2048))
    msg = _load_error(bad)
    assert "truncated or corrupt" in msg and "bad.safetensors" in msg


def test_truncated_torch_file(tmp_path, siglip_state):
    path = tmp_path / "w.pth"
    torch.save(siglip_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    msg = _load_error(path)
    assert "truncated or corrupt" in msg


@pytest.mark.parametrize("content", [b"junk\n", b"\x80\x02}q\x00(X\x01\x00\x00\x00ah\x00u."])
def test_garbage_torch_file(tmp_path, content):
    """Non-zip bytes reach the legacy unpickler, which raises KeyError & co., not only RuntimeError."""
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    msg = _load_error(path)
    assert "truncated or corrupt" in msg and "junk.pt" in msg


def test_missing_shard(tmp_path):
    siglip_vision().save_pretrained(tmp_path, max_shard_size="30KB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    msg = _load_error(tmp_path)
    assert shards[-1].name in msg and "missing" in msg


def test_hf_id_absent_from_cache_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    msg = _load_error("hf://google/siglip-base-patch16-224")
    assert "not in the local Hugging Face cache" in msg
    assert str(tmp_path / "cache" / "models--google--siglip-base-patch16-224") in msg
    assert "never downloads" in msg


class _Exploit:
    """Pickles to `open(marker, 'w')`: unpickling it creates the marker file (proof that code ran)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path, siglip_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**siglip_state, "payload": _Exploit(str(marker))}, path)
    msg = _load_error(path)
    assert "refused" in msg and "weights_only" in msg
    assert not marker.exists(), "the pickled code ran"
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_preset_mismatch_lists_fields_and_the_fitting_preset(tmp_path):
    llava_next().save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as info:
        build("smolvlm_debug", [f"model.weights={tmp_path}", "logger=none"])
    msg = str(info.value)
    print("\n" + msg)
    for field in ("model.family: preset idefics3, checkpoint llava_next", "model.hidden_size: preset 32, checkpoint 36",
                  "model.num_layers: preset 2, checkpoint 6", "connector.kind: preset pixel_unshuffle, checkpoint mlp"):
        assert field in msg
    assert "+model=llavanext_debug" in msg and "+model=hf" in msg


def test_no_preset_fits_points_to_model_hf(tmp_path):
    siglip_vision(num_hidden_layers=3).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as info:
        build("siglip_debug", [f"model.weights={tmp_path}", "logger=none"])
    msg = str(info.value)
    assert "model.num_layers: preset 2, checkpoint 3" in msg and "no shipped preset fits it: use +model=hf" in msg
    stack = build("hf", [f"model.weights={tmp_path}", "logger=none"])
    assert stack.tower.num_layers == 3


def test_model_hf_without_weights():
    with pytest.raises(ConfigError, match=r"\+model=hf takes the whole architecture from a checkpoint: add model.weights"):
        build("hf", ["logger=none"])


def test_cli_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "vtlab", "+model=siglip_debug", f"model.weights={tmp_path / 'missing.safetensors'}",
         "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "vtlab: error: model.weights=" in proc.stderr and "no such file or folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_review_mismatch_names_the_shipped_preset_of_a_vtlab_export(tmp_path):
    """An export carries connector.depth/act in its "vtlab" block; the preset YAMLs leave them to the schema's
    defaults, which the fit search must fill in, or no preset ever fits a vtlab export."""
    from vtlab.checkpoints import export_hf

    export_hf(build("siglip_debug"), to_config(compose_config("siglip_debug")), tmp_path / "exp")
    with pytest.raises(ConfigError) as info:
        to_config(compose_config("smolvlm_debug", [f"model.weights={tmp_path / 'exp'}"]))
    assert "preset(s) that fit: +model=siglip_debug" in str(info.value)
