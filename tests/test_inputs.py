"""Issue 17, classes 4 and 5: silent wrong inputs and tracebacks where one line was promised (config keys and
values, checkpoints: their files, index, cache ids, values and config.json)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import cli

from vtlab.api import build_stack, make_config
from vtlab.checkpoints import export_hf
from vtlab.checkpoints.loader import load_weights
from vtlab.checkpoints.sources import resolve_hf_id, torch_load
from vtlab.errors import CheckpointError, ConfigError


def _one_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vtlab: error: "), proc.stderr[-2000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("override,needle", [
    ("+task.batchsize=8", "task.batchsize is not a known key"),
    ("++data.sed=1", "data.sed is not a known key"),
    ("+bogus=1", "bogus is not a known key"),
    ("model.layer_norm_eps=-1", "model.layer_norm_eps=-1"),
    ("model.layer_norm_eps=nan", "model.layer_norm_eps=nan"),
    ("seed=-1", "seed=-1 must be in"),
    ("seed=4294967296", "seed=4294967296 must be in"),
    ("data.seed=-3", "data.seed=-3 must be in"),
    ("data.train_size=-5", "data.train_size=-5 must be >= 1"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5"),
    ("trainer.accelerator=tpu", "trainer.accelerator=tpu is unknown"),
    ("trainer.num_nodes=0", "trainer.num_nodes=0"),
    ("connector=null", "cannot be null"),
])
def test_bad_config_value_is_refused(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.").replace("+", r"\+")):
        make_config("smolvlm_debug", ["task=train", override])


def test_good_trainer_settings_pass() -> None:
    for override in ("trainer.val_check_interval=2", "trainer.val_check_interval=0.5", "trainer.accelerator=cpu"):
        make_config("smolvlm_debug", ["task=train", override])


@pytest.mark.parametrize("override,needle", [("+task.batchsize=8", "task.batchsize is not a known key"),
                                             ("connector=null", "cannot be null")])
def test_bad_key_from_the_cli_is_one_line(override: str, needle: str) -> None:
    assert needle in _one_line(cli(["+model=smolvlm_debug", "logger=none", override]))


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture()
def exported(tmp_path: Path) -> tuple[Path, object]:
    cfg = make_config("siglip_debug")
    out = tmp_path / "ckpt"
    export_hf(build_stack(cfg), cfg, out)
    return out, cfg


def _edit(folder: Path, fn) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def _first_float(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim == 2)


@pytest.mark.parametrize("how", ["nan", "inf"])
def test_non_finite_weights_are_refused(exported, how: str) -> None:
    folder, cfg = exported

    def poison(t):
        t[_first_float(t)].view(-1)[0] = float(how)

    _edit(folder, poison)
    stack = build_stack(cfg)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        load_weights(stack, str(folder), cfg)
    assert all(torch.equal(before[k], v) for k, v in stack.state_dict().items())  # nothing loaded


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64])
def test_non_floating_weights_are_refused(exported, dtype: torch.dtype) -> None:
    folder, cfg = exported

    def cast(t):
        k = _first_float(t)
        t[k] = t[k].to(dtype)

    _edit(folder, cast)
    with pytest.raises(CheckpointError, match="non-floating dtype"):
        load_weights(build_stack(cfg), str(folder), cfg)


def _shard(folder: Path, weight_map: object, extra: dict[str, torch.Tensor] | None = None) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[: len(keys) // 2]}, str(folder / "a.safetensors"))
    save_file({k: tensors[k] for k in keys[len(keys) // 2 :]} | (extra or {}), str(folder / "b.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_a_key_in_two_shards_is_refused(exported) -> None:
    folder, cfg = exported
    tensors = load_file(str(folder / "model.safetensors"))
    first = sorted(tensors)[0]
    wm = {k: ("a.safetensors" if i < len(tensors) // 2 else "b.safetensors") for i, k in enumerate(sorted(tensors))}
    _shard(folder, wm, extra={first: torch.zeros_like(tensors[first])})  # a stale copy in b
    with pytest.raises(CheckpointError, match=f"'{first}' is in two shards"):
        load_weights(build_stack(cfg), str(folder), cfg)


@pytest.mark.parametrize("weight_map,needle", [([1, 2], "weight_map must map"), ({"x": 3}, "weight_map must map"),
                                               ({"x": "../outside.safetensors"}, "outside its folder"),
                                               ({"x": "/etc/passwd"}, "outside its folder")])
def test_bad_shard_index_is_refused(exported, weight_map, needle: str) -> None:
    folder, cfg = exported
    _shard(folder, weight_map)
    with pytest.raises(CheckpointError, match=needle):
        load_weights(build_stack(cfg), str(folder), cfg)


def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    repo = cache / "models--org--name"
    (repo / "snapshots" / "abc1234").mkdir(parents=True)
    (repo / "refs").mkdir()
    (tmp_path / "x").mkdir()  # what an escape would reach
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return repo


def test_hf_id_cannot_escape_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _cache(tmp_path, monkeypatch)
    assert resolve_hf_id("hf://org/name@abc1234") == repo / "snapshots" / "abc1234"
    for spec in ("hf://org/name@../../x", "hf://org/name@../../../x", "hf://../name", "hf://org/..@main"):
        with pytest.raises(CheckpointError):
            resolve_hf_id(spec)
    (repo / "refs" / "evil").write_text("../../../x")
    with pytest.raises(CheckpointError, match="should hold a commit hash"):
        resolve_hf_id("hf://org/name@evil")
    (repo / "snapshots" / "deadbee").symlink_to(tmp_path / "x")
    with pytest.raises(CheckpointError, match="outside the cache"):
        resolve_hf_id("hf://org/name@deadbee")


def test_compressed_torch_bomb_is_refused_before_allocating(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(64 * 1024 * 1024 // 4)}, plain)  # 64 MiB of zeros
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(CheckpointError, match="decompression bomb"):
        torch_load(bomb, "bomb.pt")
    assert torch_load(plain, "plain.pt")["w"].numel() == 64 * 1024 * 1024 // 4  # a genuine file still loads


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_pickle_refusal_does_not_suggest_weights_only_false(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as info:
        torch_load(path, "evil.pt")
    message = str(info.value)
    assert "weights_only=False" not in message and "never unpickles" in message
    assert "GLOBAL" in message and "system" in message


@pytest.mark.parametrize("edit,needle", [
    ("c['hidden_size'] = 'abc'", "wrong type"),
    ("c['num_hidden_layers'] = [2]", "wrong type"),
    ("c = [1, 2]", "holds a list"),
    ("c['vtlab']['connector']['kind'] = 'bogus'", "connector.kind"),
])
def test_checkpoint_config_json_of_the_wrong_type_is_one_error(exported, edit: str, needle: str) -> None:
    folder, _ = exported
    path = folder / "config.json"
    scope = {"c": json.loads(path.read_text())}
    exec(edit, scope)
    path.write_text(json.dumps(scope["c"]))
    with pytest.raises(CheckpointError, match=needle):
        make_config("hf", [f"model.weights={folder}"])


# ---------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("override", ["model.input_size=100000", "task.batch_size=1000000000",
                                      "model.num_layers=1000000"])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(override: str) -> None:
    with pytest.raises(ConfigError, match=r"cannot fit: it needs at least [\d.]+ GiB .* but the cpu device has [\d.]+ GiB"):
        make_config("smolvlm_debug", ["task.device=cpu", override])


def test_memory_estimate_leaves_real_presets_alone() -> None:
    from vtlab.config.validate import device_memory, memory_estimate

    cfg = make_config("llavanext", ["task.device=cpu"])
    assert 0 < sum(memory_estimate(cfg).values()) < device_memory(torch.device("cpu"))


def test_size_that_cannot_fit_from_the_cli_is_one_line() -> None:
    assert "cannot fit" in _one_line(cli(["+model=smolvlm_debug", "logger=none", "model.num_layers=1000000"]))
