"""Architecture from a checkpoint: config.json fields plus what the tensor shapes say.

Mirrors how transformers reads `SiglipVisionConfig` / `SiglipConfig.vision_config` / `Idefics3Config`
(`vision_config`, `scale_factor`, `text_config.hidden_size`) / `LlavaNextConfig` (`vision_feature_layer`,
`vision_feature_select_strategy`, `projector_hidden_act`, `multimodal_projector_bias`), with the upstream
defaults for fields a config.json leaves out (towers-and-connectors.md (a), f.6). The weights are the truth
for every width, depth, patch and grid; config.json adds what shapes cannot say (heads, image size, eps,
activation, feature layers). A `"vtlab"` block written by `export_hf` restores the exact connector.

`apply_checkpoint_architecture` is called by `vtlab.api.prepare`: with `+model=hf` it fills every
architecture field from the checkpoint; with a named preset it checks the preset against the checkpoint and
raises `ConfigError` listing the differing fields and the preset (or `+model=hf`) that fits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vtlab.checkpoints.layouts import to_native
from vtlab.errors import CheckpointError, ConfigError
from vtlab.paths import config_dir

HF_PRESET = "hf"
_VISION_DEFAULTS = {  # transformers' config-class defaults, used only for fields a config.json omits
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
    "idefics3": dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=16,
                     num_channels=3, image_size=224, patch_size=32, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
}
_ACT = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


def _act(name: str, where: str) -> str:
    if name not in _ACT:
        raise CheckpointError(f"{where}: activation '{name}' is not supported (vtlab: gelu_pytorch_tanh, gelu)")
    return _ACT[name]


def _from_config(conf: dict, where: str) -> dict[str, Any]:
    """Flat architecture dict from a Hugging Face config.json (any of the supported model types)."""
    mt = conf.get("model_type", "")
    out: dict[str, Any] = {}
    if mt == "siglip_vision_model":
        vc, family = conf, "siglip"
    elif mt == "siglip":
        vc, family = conf.get("vision_config") or {}, "siglip"
    elif mt in ("idefics3", "smolvlm"):
        vc, family = conf.get("vision_config") or {}, "idefics3"
        out["connector.kind"] = "pixel_unshuffle"
        out["connector.factor"] = int(conf.get("scale_factor", 2))
        out["connector.bias"] = False
    elif mt == "llava_next":
        vc, family = conf.get("vision_config") or {}, "llava_next"
        if vc.get("model_type", "siglip_vision_model") != "siglip_vision_model":
            raise CheckpointError(f"{where}: LlavaNext with a '{vc.get('model_type')}' tower; vtlab supports SigLIP towers")
        strategy = conf.get("vision_feature_select_strategy", "default")
        if strategy != "full":
            raise CheckpointError(
                f"{where}: vision_feature_select_strategy='{strategy}' drops token 0 (a CLIP CLS); vtlab's SigLIP "
                "stacks keep every token ('full', as Granite-Vision)"
            )
        layers = conf.get("vision_feature_layer", -2)
        out["model.feature_layers"] = [layers] if isinstance(layers, int) else list(layers)
        out["connector.kind"] = "mlp"
        out["connector.factor"] = 1
        out["connector.depth"] = 2
        out["connector.bias"] = bool(conf.get("multimodal_projector_bias", True))
        out["connector.act"] = _act(conf.get("projector_hidden_act", "gelu"), where)
        if conf.get("image_grid_pinpoints"):  # the anyres candidates of this checkpoint (model.pinpoints)
            out["model.pinpoints"] = [[int(h), int(w)] for h, w in conf["image_grid_pinpoints"]]
    else:
        return {}
    defaults = _VISION_DEFAULTS["idefics3" if family == "idefics3" else "siglip"]
    v = {**defaults, **{k: val for k, val in vc.items() if val is not None}}
    out.update({
        "model.family": family,
        "model.image_size": int(v["image_size"]),
        "model.patch_size": int(v["patch_size"]),
        "model.num_channels": int(v["num_channels"]),
        "model.hidden_size": int(v["hidden_size"]),
        "model.intermediate_size": int(v["intermediate_size"]),
        "model.num_layers": int(v["num_hidden_layers"]),
        "model.num_heads": int(v["num_attention_heads"]),
        "model.layer_norm_eps": float(v["layer_norm_eps"]),
        "model.hidden_act": _act(v["hidden_act"], where),
    })
    if family == "siglip":
        out["model.feature_layers"] = None
    if family == "idefics3":
        out["model.use_head"] = False
        out["model.feature_layers"] = None
    tc = conf.get("text_config") if family != "siglip" else None  # SiglipModel's text tower is no LM
    if isinstance(tc, dict) and tc.get("hidden_size"):
        heads = tc.get("num_attention_heads", 1)
        out["text"] = dict(name=str(tc.get("model_type", "text")), hidden_size=int(tc["hidden_size"]),
                           num_layers=int(tc.get("num_hidden_layers", 1)),
                           intermediate_size=int(tc.get("intermediate_size", 4 * tc["hidden_size"])),
                           num_heads=int(heads), num_kv_heads=int(tc.get("num_key_value_heads") or heads),
                           vocab_size=int(tc.get("vocab_size", 0)))
        out["text_hidden"] = int(tc["hidden_size"])
    extra = conf.get("vtlab")
    if isinstance(extra, dict):
        for k, val in (extra.get("connector") or {}).items():
            out[f"connector.{k}"] = val
        if extra.get("text"):
            out["text"] = dict(extra["text"])
            out["text_hidden"] = int(extra["text"]["hidden_size"])
        if extra.get("model_name"):
            out["name"] = extra["model_name"]
    return out


def _from_shapes(layout, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What the tensors themselves say (widths, depth, patch, grid, head, connector widths)."""
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    native = {k: tuple(t.shape) for k, t in to_native(layout, meta).tensors.items()}
    out: dict[str, Any] = {}
    pe = native.get("tower.patch_embed.weight")
    if pe is None or len(pe) != 4:
        return out
    d = pe[0]
    out.update({"model.hidden_size": d, "model.num_channels": pe[1], "model.patch_size": pe[2]})
    if "tower.pos_embed" in native:
        n = native["tower.pos_embed"][0]
        g = math.isqrt(n)
        if g * g == n:
            out["grid"] = g
    blocks = {int(k.split(".")[2]) for k in native if k.startswith("tower.blocks.")}
    if blocks:
        out["model.num_layers"] = max(blocks) + 1
    fc1 = native.get("tower.blocks.0.mlp.fc1.weight")
    if fc1:
        out["model.intermediate_size"] = fc1[0]
    out["has_head"] = any(k.startswith("tower.head.") for k in native)
    if "connector.proj.weight" in native and layout.family == "idefics3":
        t, packed = native["connector.proj.weight"]
        out["text_hidden"] = t
        out["connector.factor"] = math.isqrt(packed // d)
    if "connector.layers.linear_1.weight" in native:
        out["text_hidden"] = native[f"connector.layers.linear_{sum(k.endswith('.weight') and k.startswith('connector.layers.') for k in native)}.weight"][0]
        out["num_taps"] = native["connector.layers.linear_1.weight"][1] // d
    return out


def checkpoint_arch(path: str) -> dict[str, Any]:
    """Architecture read from `path`: config.json (if beside the weights) merged with the tensor shapes."""
    from vtlab.checkpoints.loader import inspect

    source, layout, shapes = inspect(path)
    conf = source.config()
    arch = _from_config(conf, f"checkpoint {path}: {source.config_path}") if conf else {}
    arch["layout"] = layout
    arch["config_json"] = str(source.config_path) if conf and arch.get("model.family") else None
    shape_info = _from_shapes(layout, shapes)
    for key in ("model.hidden_size", "model.num_channels", "model.patch_size", "model.num_layers",
                "model.intermediate_size", "text_hidden"):
        if key in shape_info:
            arch[key] = shape_info[key]
    if "connector.factor" in shape_info and "connector.factor" not in arch:
        arch["connector.factor"] = shape_info["connector.factor"]
    arch["grid"] = shape_info.get("grid")
    arch["has_head"] = shape_info.get("has_head", False)
    if layout.family and "model.family" not in arch:
        arch["model.family"] = layout.family
    return arch


# ---------------------------------------------------------------------------------------------- presets


def _preset_values(name: str) -> dict[str, Any]:
    """The comparable fields of a shipped preset, read from its YAML (model, connector kind/factor, text width)."""
    root = config_dir()
    raw = OmegaConf.to_container(OmegaConf.load(str(root.joinpath("model", f"{name}.yaml"))), resolve=False)
    groups: dict[str, str] = {}
    for entry in raw.get("defaults", []) or []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                groups[k.split("/")[-1].strip()] = v
    out = {f"model.{k}": v for k, v in (raw.get("model") or {}).items()}
    # the schema's defaults first: a connector YAML spells out only what differs (depth, act are not in it)
    from vtlab.config import ConnectorConfig

    conn = {f.name: f.default for f in dataclasses.fields(ConnectorConfig)}
    conn.update(OmegaConf.to_container(OmegaConf.load(str(root.joinpath("connector", f"{groups['connector']}.yaml")))))
    conn.update(raw.get("connector") or {})
    out.update({f"connector.{k}": v for k, v in conn.items() if k != "defaults"})
    if "text" in groups:
        text = OmegaConf.load(str(root.joinpath("text", f"{groups['text']}.yaml")))
        out["text_hidden"] = text.get("hidden_size")
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
                           and ck == "siglip" and not arch["layout"].carries_connector):
            continue
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


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v)


def model_missing_layers(cfg: DictConfig) -> bool:
    return cfg.model.get("feature_layers") is None


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
    family = arch.get("model.family") or "siglip"
    cfg.model.family = family
    if "connector.kind" not in arch:
        if family == "idefics3":
            arch.update({"connector.kind": "pixel_unshuffle", "connector.bias": False})
        elif family == "llava_next":
            arch.update({"connector.kind": "mlp", "connector.factor": 1, "connector.bias": True, "connector.depth": 2})
        else:
            arch.update({"connector.kind": "linear", "connector.factor": 1, "connector.bias": True})
    if family == "llava_next" and "model.feature_layers" not in arch and model_missing_layers(cfg):
        raise ConfigError(
            f"+model=hf model.weights={path}: a LlavaNext checkpoint without config.json does not say which "
            "hidden_states feed the projector; give model.feature_layers=[...] (Granite: [-24,-20,-12,-1])"
        )
    if family == "llava_next" or arch.get("model.feature_layers") is not None:
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
    cfg.model.name = arch.get("name") or f"hf-{family}" + ("" if layout.family else "-" + layout.style)


def apply_checkpoint_architecture(cfg: DictConfig) -> DictConfig:
    """`+model=hf`: fill the model from `model.weights`; a named preset: check it against the checkpoint."""
    from vtlab.config import model_names

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
    arch = checkpoint_arch(str(path))
    if is_hf:
        _fill_hf(cfg, arch, str(path))
        return cfg
    have = {f"model.{k}": _value(model.get(k)) for k in model if not OmegaConf.is_missing(model, k)}
    have.update({f"connector.{k}": _value(v) for k, v in cfg.connector.items()})
    try:
        have["text_hidden"] = cfg.text_hidden
    except Exception:  # an unresolvable interpolation: nothing to compare
        have["text_hidden"] = None
    diffs = _differences(arch, have)
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
