"""Composition: `conf/` + `+model=NAME` + overrides -> a validated, typed `VTLabConfig`.

`compose_config` is what the CLI composes (Hydra and OmegaConf errors become one line naming the key);
`to_config` applies the checkpoint-derived architecture (`+model=hf`, vtlab.config.from_checkpoint), converts
to the typed dataclasses and runs every check (vtlab.config.validate); `make_config(model, overrides)` does both.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from vtlab.config.from_checkpoint import apply_checkpoint_architecture
from vtlab.config.presets import compose_raw
from vtlab.config.schema import VTLabConfig
from vtlab.config.validate import validate
from vtlab.errors import ConfigError
from vtlab.families.tiler import resolve_tiling


def compose_config(model: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/config.yaml` + `+model=<model>` + overrides, as the CLI would (no run directory)."""
    args = ([f"+model={model}"] if model else []) + list(overrides)
    try:
        return compose_raw(args)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_message(exc)) from None
    except ValueError as exc:  # Hydra: "Config group override must be a string or a list. Got NoneType"
        raise ConfigError(f"cannot compose {' '.join(args)}: {exc} (a config group such as connector=... cannot be "
                          f"null: pick one of its options)") from None


def check_known_keys(node: DictConfig, schema: type = VTLabConfig, prefix: str = "") -> None:
    """Refuse a key no schema has (`+task.batchsize=8`, `++data.sed=1`): `+`/`++` overrides add keys to the
    composed tree that OmegaConf.to_object would drop silently."""
    names = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        if str(key) == "hydra" and not prefix:
            continue
        if key not in names:
            where = f" of {prefix.rstrip('.')}" if prefix else ""
            raise ConfigError(f"{prefix}{key} is not a known key; valid keys{where}: {', '.join(sorted(names))}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            child_type = OmegaConf.get_type(child)
            if dataclasses.is_dataclass(child_type):
                check_known_keys(child, child_type, f"{prefix}{key}.")


def composition_message(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error: the key, the value's problem and what is valid.

    Hydra's own text ("Could not override 'x.y'. To append to your config use +x.y=...", "Error merging
    override ...") hides the reason in the chained OmegaConf error and suggests `+key`, which the typed
    schema refuses anyway; the OmegaConf error names the key and, for a missing one, its dataclass.
    """
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None)):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return " ".join(str(exc).split())
    key = cause.full_key
    reason = str(cause).split("\n")[0].strip()
    enum = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", reason)
    if enum:  # a closed set (an enum of the schema): name the value and the valid ones
        return f"{key}={enum.group(1)} is unknown; valid: {enum.group(2)} ({key}: {reason})"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and dataclasses.is_dataclass(cause.object_type):
        valid = [f.name for f in dataclasses.fields(cause.object_type)]
        parent = key.rpartition(".")[0]
        return f"{key} is not a known key; valid keys{' of ' + parent if parent else ''}: {', '.join(valid)}"
    return f"{key}: {reason}"


def to_config(cfg: DictConfig | VTLabConfig) -> VTLabConfig:
    """Resolve interpolations, apply checkpoint-derived architecture, validate, return the typed object."""
    if isinstance(cfg, DictConfig):
        check_known_keys(cfg)
        cfg = apply_checkpoint_architecture(cfg)
        try:
            obj = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as exc:
            raise ConfigError(composition_message(exc)) from None
    else:
        obj = cfg
    validate(obj)
    return obj  # type: ignore[return-value]


def effective_config(raw: DictConfig) -> DictConfig:
    """What will run (`--cfg job`): the validated config with interpolations resolved (`text_hidden`) and the
    null defaults that a family decides made explicit (`model.tiling`: the family's own scheme)."""
    cfg = to_config(raw)
    out = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True))
    out.model.tiling = resolve_tiling(cfg.model)
    return out


def make_config(model: str | None, overrides: Sequence[str] = ()) -> VTLabConfig:
    """The validated, typed config of `python -m vtlab +model=<model> <overrides...>` in one call."""
    return to_config(compose_config(model, overrides))
