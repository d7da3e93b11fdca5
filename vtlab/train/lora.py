"""LoRA on the LM and / or the vision tower through peft (`task.lora_lm`, `task.lora_tower`).

Mirrors peft's own path: `get_peft_model(module, LoraConfig(r, lora_alpha, lora_dropout, target_modules))` wraps
the side in a `PeftModel` (the base weights frozen, `lora_A` / `lora_B` trainable; attribute access passes
through to the wrapped module, so the stack and the VLM use it unchanged), `PeftModel.save_pretrained` writes
the adapter folder (`adapter_config.json` + `adapter_model.safetensors`) that `PeftModel.from_pretrained` of the
same base loads, and `load_peft_weights` + `set_peft_model_state_dict` put a saved folder's weights back.

`check_targets` refuses a target module the side does not have before anything is built: the names of its
linear layers are read from a copy built on the meta device (no memory, no weights). peft itself only
refuses a target list of which NOTHING matches; one misspelt name among several would be silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtlab.api import build_stack
from vtlab.errors import ConfigError
from vtlab.text.lm import build_lm

SIDES = ("lm", "tower")


def linear_names(module: nn.Module) -> list[str]:
    """The last name component of every nn.Linear in `module` (what peft's target_modules match), sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear) and name})


def side_module(vlm: Any, side: str) -> nn.Module:
    return vlm.lm if side == "lm" else vlm.stack.tower


def set_side(vlm: Any, side: str, module: nn.Module) -> None:
    if side == "lm":
        vlm.lm = module
    else:
        vlm.stack.tower = module


def check_targets(side: str, lora: Any, module: nn.Module) -> None:
    """Every `task.lora_<side>.target_modules` entry names a linear layer of `module` (ConfigError otherwise)."""
    valid = linear_names(module)
    for name in lora.targets(side):
        if name not in valid:
            raise ConfigError(f"task.lora_{side}.target_modules contains {name!r}, not a linear layer of the {side} "
                              f"({type(module).__name__}); valid: {', '.join(valid)}")


def meta_sides(cfg: Any) -> dict[str, nn.Module]:
    """The LM and the tower of `cfg`, built on the meta device (structure only), for `check_targets`."""
    with torch.device("meta"):
        return {"lm": build_lm(cfg.text), "tower": build_stack(cfg, load_weights=False).tower}


def lora_settings(task: Any) -> dict[str, dict[str, Any]]:
    """{side: {r, alpha, dropout, target_modules}} of the sides with LoRA on (r > 0): part of the architecture."""
    out = {}
    for side in SIDES:
        lora = getattr(task, f"lora_{side}", None)
        if lora is not None and lora.r:
            out[side] = {"r": lora.r, "alpha": float(lora.alpha), "dropout": float(lora.dropout),
                         "target_modules": lora.targets(side)}
    return out


def apply_lora(vlm: Any, settings: dict[str, dict[str, Any]]) -> Any:
    """Wrap each side of `settings` in a peft `PeftModel` with its LoRA adapters (in place on the VLM)."""
    if not settings:
        return vlm
    from peft import LoraConfig, get_peft_model

    for side, s in settings.items():
        conf = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                          target_modules=list(s["target_modules"]))
        set_side(vlm, side, get_peft_model(side_module(vlm, side), conf))
    return vlm


def save_adapters(vlm: Any, folder: Path) -> dict[str, str]:
    """`save_pretrained` of every side that carries LoRA into `folder/<side>`; {side: path}."""
    from peft import PeftModel

    out = {}
    for side in SIDES:
        module = side_module(vlm, side)
        if isinstance(module, PeftModel):
            module.save_pretrained(str(folder / side))
            out[side] = str(folder / side)
    return out


def load_adapters(vlm: Any, folder: str) -> list[str]:
    """Put the LoRA weights of a `save_adapters` folder (`<folder>/lm`, `<folder>/tower`) into the VLM's adapters;
    the sides loaded. A folder without adapters, or adapters for a side without LoRA, is a ConfigError."""
    from peft import PeftModel, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    root = Path(folder).expanduser()
    found = [side for side in SIDES if (root / side / "adapter_config.json").is_file()]
    if not found:
        raise ConfigError(f"task.adapters={folder}: no peft adapters there (expected {folder}/lm or {folder}/tower "
                          f"with adapter_config.json, as task=finetune writes to <run dir>/adapters)")
    for side in found:
        module = side_module(vlm, side)
        if not isinstance(module, PeftModel):
            raise ConfigError(f"task.adapters={folder} holds {side} adapters but this model has no LoRA on the {side}; "
                              f"use the task.lora_{side} settings of the run that wrote them")
        result = set_peft_model_state_dict(module, load_peft_weights(str(root / side), device="cpu"))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ConfigError(f"task.adapters={folder}/{side} does not fit this model's LoRA (r / target modules): "
                              f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}")
    return found
