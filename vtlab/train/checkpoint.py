"""The training checkpoint of `task=train` / `task=eval`: what it must match, reading it, and the refusals
around it.

A checkpoint is Lightning's, plus `vtlab_arch` (the config fields that decide parameter shapes and meaning:
`architecture()`) and `vtlab_train` (the freeze mode). `check_architecture` lists every field that differs
from the current config; `check_resume` refuses a resume with another freeze mode and a fresh run into a
folder that holds another run's checkpoints. Files are read through vtlab.checkpoints.sources.torch_load
(weights only: nothing is unpickled beyond tensors and plain data).
"""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

from vtlab.checkpoints.sources import torch_load
from vtlab.errors import ArchitectureMismatchError, ConfigError


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def architecture(cfg: Any, num_classes: int) -> dict[str, Any]:
    """The config fields that decide parameter shapes and meaning (what a checkpoint must match)."""
    model = {k: v for k, v in _plain(asdict(cfg.model)).items() if k not in ("weights",)}
    return {
        "model": model,
        "connector": _plain(asdict(cfg.connector)),
        "text_hidden": cfg.text_hidden,
        "head": str(cfg.task.head) if hasattr(cfg.task, "head") else "attention_pool",
        "num_classes": num_classes,
    }


TEXT_RUN_FIELDS = ("weights", "lm", "prompt")  # text.* fields that do not shape the LM


def vlm_architecture(cfg: Any, lora: dict[str, Any]) -> dict[str, Any]:
    """The fields a task=align|finetune checkpoint must match: the vision side, the LM and the LoRA adapters."""
    arch = architecture(cfg, 0)
    for key in ("head", "num_classes"):
        arch.pop(key)
    arch["kind"] = "vlm"
    arch["text"] = {k: v for k, v in _plain(asdict(cfg.text)).items() if k not in TEXT_RUN_FIELDS}
    arch["lora"] = lora
    return arch


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """`vlm` (task=align / finetune) or `classifier` (task=train) from a checkpoint's `vtlab_arch`."""
    return str(ckpt["vtlab_arch"].get("kind", "classifier"))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def architecture_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: checkpoint X, config Y` for every architecture field that differs."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: checkpoint {a.get(k, '<absent>')!r}, config {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a task=train checkpoint on CPU (plain data: torch.load(weights_only=True) through the one safe
    reader of vtlab.checkpoints.sources), with a clear error for a missing or foreign file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"checkpoint {path} does not exist (task.ckpt_path)")
    ckpt = torch_load(p, path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "vtlab_arch" not in ckpt:
        raise ConfigError(f"{path} is not a vtlab task=train checkpoint (no state_dict / vtlab_arch entry)")
    return ckpt


def check_architecture(ckpt: dict[str, Any], current: dict[str, Any], path: str) -> None:
    diff = architecture_diff(ckpt["vtlab_arch"], current)
    if diff:
        name = ckpt["vtlab_arch"].get("model", {}).get("name", "?")
        raise ArchitectureMismatchError(
            f"checkpoint {path} was trained with another architecture (model '{name}'); differing config "
            f"fields: {'; '.join(diff)}. Use the same +model / connector / text / data settings as in training"
        )


def resolve_ckpt_path(value: str | None, out_dir: Path) -> str | None:
    """`task.ckpt_path`: None, a path, or `last` (= `<run dir>/checkpoints/last.ckpt`)."""
    if not value:
        return None
    path = out_dir / "checkpoints" / "last.ckpt" if value == "last" else Path(value).expanduser()
    if not path.is_file():
        hint = " (ckpt_path=last looks in <out_dir>/checkpoints/; set out_dir=RUN_DIR)" if value == "last" else ""
        raise ConfigError(f"task.ckpt_path={value}: no checkpoint file at {path}{hint}")
    return str(path)


def check_fresh_run(out_dir: Path, ckpt_path: str | None, rank: int) -> None:
    """A fresh run (no task.ckpt_path) into a folder holding an earlier run's checkpoints would overwrite them."""
    earlier = sorted((out_dir / "checkpoints").glob("*.ckpt"))
    if earlier and not ckpt_path and rank == 0:  # ranks > 0 share rank 0's folder
        raise ConfigError(
            f"out_dir={out_dir} already holds checkpoints of an earlier run ({earlier[0].name}, ...); a fresh "
            f"run would overwrite them: resume with task.ckpt_path=last, or choose another out_dir (or overwrite=true)"
        )
    if (out_dir / "results.json").is_file() and not ckpt_path and rank == 0:
        raise ConfigError(
            f"out_dir={out_dir} already holds results.json of an earlier run; a fresh run would overwrite it: "
            f"choose another out_dir (or overwrite=true)"
        )


def check_resume(ckpt: dict[str, Any], arch: dict[str, Any], path: str, **settings: Any) -> None:
    """The checkpoint must have this run's architecture and training settings (`freeze` of task=train, `train`
    of task=align / finetune: the optimizer state depends on them)."""
    check_architecture(ckpt, arch, path)
    for key, value in settings.items():
        saved = ckpt.get("vtlab_train", {}).get(key)
        if saved is not None and saved != value:
            show = lambda v: f"[{','.join(v)}]" if isinstance(v, list) else v  # noqa: E731
            raise ConfigError(
                f"checkpoint {path} was trained with task.{key}={show(saved)}, this run has task.{key}={show(value)}; "
                f"resume with task.{key}={show(saved)} (the optimizer state depends on it)"
            )
