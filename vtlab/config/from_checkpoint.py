"""`+model=hf model.weights=PATH`, and named presets checked against their checkpoint: a composition step.

With `+model=hf` every architecture field is filled from the checkpoint (vtlab.checkpoints.arch: config.json
read by its family, plus the tensor shapes); fields neither can tell must come from the command line, and the
error says which. With a named preset, a checkpoint that disagrees is an error listing every differing field
(`preset X, checkpoint Y`) and the shipped presets that fit (found by composing each, exactly as the CLI
would). A setting the checkpoint carries that the preset leaves null (its family's `carried_fields`, e.g.
LlavaNext's `image_grid_pinpoints`) is taken from the checkpoint, and one the config sets differently is refused.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vtlab.checkpoints.arch import checkpoint_arch
from vtlab.config.presets import compose_raw, model_names
from vtlab.errors import CheckpointError, ConfigError
from vtlab.families import TOWER_ONLY_FAMILY, get_family

HF_PRESET = "hf"


def _preset_values(name: str) -> dict[str, Any]:
    """The comparable fields of a shipped preset, composed as the CLI composes it."""
    cfg = compose_raw([f"+model={name}"])
    out = {f"model.{k}": _value(cfg.model.get(k)) for k in cfg.model if not OmegaConf.is_missing(cfg.model, k)}
    out.update({f"connector.{k}": _value(v) for k, v in cfg.connector.items()})
    out["text_hidden"] = cfg.text.hidden_size
    return out


def _value(v: Any) -> Any:
    v = getattr(v, "value", v)
    if isinstance(v, list | tuple) or OmegaConf.is_list(v):
        return list(v)
    return v


def _differences(arch: dict[str, Any], have: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, preset value, checkpoint value) for every field the checkpoint determines and the preset differs on."""
    diffs: list[tuple[str, Any, Any]] = []

    def get(key: str) -> Any:
        return _value(have.get(key))

    skip = {"layout", "config_json", "grid", "has_head", "text", "name", "model.use_head", "model.pinpoints"}
    for key, ck in arch.items():
        if key in skip or (key == "model.family" and arch.get("layout") is not None
                           and not arch["layout"].carries_connector and _same_tower(ck, get("model.family"))):
            continue  # a bare tower fits the presets of every family that builds the same tower
        if key.startswith("connector.") and key not in ("connector.kind", "connector.factor", "connector.bias",
                                                        "connector.depth", "connector.act"):
            continue
        mine = get(key)
        if key == "model.feature_layers" and mine is not None and ck is not None:
            n = arch.get("model.num_layers") or get("model.num_layers")
            same = [i % (n + 1) for i in mine] == [i % (n + 1) for i in ck]
        elif key == "model.layer_norm_eps" and mine is not None:
            same = abs(float(mine) - float(ck)) <= 1e-12
        else:
            same = mine == ck
        if not same:
            diffs.append((key, mine, ck))
    if arch.get("model.image_size") is None and arch.get("grid") is not None:
        size, patch = get("model.image_size"), get("model.patch_size")
        if size and patch and size // patch != arch["grid"]:
            diffs.append(("model.image_size // model.patch_size (patch grid)", size // patch, arch["grid"]))
    if get("model.use_head") and not arch.get("has_head"):
        diffs.append(("model.use_head", True, False))
    order = ["model.family", "model.image_size", "model.patch_size", "model.hidden_size", "model.intermediate_size",
             "model.num_layers", "model.num_heads"]
    return sorted(diffs, key=lambda d: order.index(d[0]) if d[0] in order else len(order))


def _same_tower(a: Any, b: Any) -> bool:
    """Whether two families build their towers alike (SigLIP's ViT for siglip, idefics3, llava_next)."""
    try:
        return type(get_family(a)).build_tower is type(get_family(b)).build_tower
    except ConfigError:
        return False


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v)


def _fill_hf(cfg: DictConfig, arch: dict[str, Any], path: str) -> None:
    layout = arch["layout"]
    needed = ["model.num_heads", "model.image_size"]
    absent = [k for k in needed if k not in arch and OmegaConf.is_missing(cfg.model, k.split(".")[1])]
    if absent:
        grid = arch.get("grid")
        if "model.image_size" in absent and grid:
            arch["model.image_size"] = grid * arch["model.patch_size"]
            absent.remove("model.image_size")
        if absent:
            raise ConfigError(
                f"+model=hf model.weights={path}: the checkpoint ({layout.name}) has no config.json beside it, and "
                f"{', '.join(absent)} cannot be read from tensor shapes; give them on the command line "
                f"(e.g. {' '.join(f'{k}=N' for k in absent)})"
            )
    family = get_family(arch.get("model.family") or TOWER_ONLY_FAMILY)
    cfg.model.family = family.name
    if "connector.kind" not in arch:
        arch.update(family.hf_defaults(arch))
    if family.needs_feature_layers and "model.feature_layers" not in arch and cfg.model.get("feature_layers") is None:
        raise ConfigError(
            f"+model=hf model.weights={path}: a {family.name} checkpoint without config.json does not say which "
            f"hidden_states feed the projector; give model.feature_layers=[...] (e.g. {family.feature_layers_hint})"
        )
    if family.needs_feature_layers or arch.get("model.feature_layers") is not None:
        cfg.model.use_head = False
    else:
        cfg.model.use_head = bool(arch.get("has_head"))
    for key, value in arch.items():
        if key.startswith(("model.", "connector.")) and key != "model.family":
            section, field = key.split(".", 1)
            if field in list(cfg[section].keys()):
                cfg[section][field] = value
    if "text" in arch:
        for k, v in arch["text"].items():
            if k in list(cfg.text.keys()):
                cfg.text[k] = v
    elif "text_hidden" in arch:
        cfg.text.hidden_size = arch["text_hidden"]
        cfg.text.name = f"text-{arch['text_hidden']}"
    cfg.model.name = arch.get("name") or f"hf-{family.name}" + ("" if layout.family else "-" + layout.style)


def _take_carried(cfg: DictConfig, arch: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Settings the checkpoint carries that the preset may leave open: a null one takes the checkpoint's value;
    a set one that differs is returned as a difference (never silently replaced)."""
    if OmegaConf.is_missing(cfg.model, "family"):
        return []
    diffs = []
    for key in get_family(cfg.model.family).carried_fields:
        if key not in arch:
            continue
        section, name = key.split(".", 1)
        mine = _value(cfg[section].get(name))
        if mine is None:
            cfg[section][name] = arch[key]
        elif [list(p) for p in mine] != [list(p) for p in arch[key]]:
            diffs.append((key, mine, arch[key]))
    return diffs


def apply_checkpoint_architecture(cfg: DictConfig) -> DictConfig:
    """`+model=hf`: fill the model from `model.weights`; a named preset: check it against the checkpoint."""
    model = cfg.get("model")
    if model is None:
        return cfg
    is_hf = not OmegaConf.is_missing(model, "name") and model.name == HF_PRESET
    path = model.get("weights")
    if not path:
        if is_hf:
            raise ConfigError("+model=hf takes the whole architecture from a checkpoint: add model.weights=PATH "
                              "(a safetensors file, a folder, hf://org/name from the local cache, or a timm/vtlab file)")
        return cfg
    try:
        arch = checkpoint_arch(str(path))
        if is_hf:
            _fill_hf(cfg, arch, str(path))
            return cfg
    except (ValueError, TypeError, AttributeError, KeyError, OmegaConfBaseException) as exc:
        if isinstance(exc, ConfigError):
            raise
        reason = " ".join(str(exc).split("\n")[0].split())
        key = getattr(exc, "full_key", None)
        raise CheckpointError(f"model.weights={path}: its config.json has a field of the wrong type or value"
                              f"{f' ({key})' if key else ''}: {reason}; fix or remove config.json") from None
    carried = _take_carried(cfg, arch)
    have = {f"model.{k}": _value(model.get(k)) for k in model if not OmegaConf.is_missing(model, k)}
    have.update({f"connector.{k}": _value(v) for k, v in cfg.connector.items()})
    try:
        have["text_hidden"] = cfg.text_hidden
    except Exception:  # an unresolvable interpolation: nothing to compare
        have["text_hidden"] = None
    diffs = carried + _differences(arch, have)
    if not diffs:
        return cfg
    fits = [n for n in model_names() if n != HF_PRESET and not _differences(arch, _preset_values(n))]
    listed = "; ".join(f"{k}: preset {_fmt(a)}, checkpoint {_fmt(b)}" for k, a, b in diffs)
    fit = (f"preset(s) that fit: {', '.join('+model=' + n for n in fits)}, or +model=hf" if fits
           else "no shipped preset fits it: use +model=hf")
    where = f" (config.json: {arch['config_json']})" if arch.get("config_json") else " (from tensor shapes)"
    raise ConfigError(
        f"model.weights={path} ({arch['layout'].name}) does not match model '{model.get('name')}'{where}: "
        f"{listed}. {fit} model.weights={path} to take the architecture from the checkpoint."
    )
