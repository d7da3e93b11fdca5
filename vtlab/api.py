"""The Python API shared by the CLI, the tests and notebooks.

`build("smolvlm", overrides=["connector.factor=2"])` composes exactly the Hydra config the CLI composes
for `python -m vtlab +model=smolvlm connector.factor=2`, validates it and returns the `VisionStack`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from vtlab.config import VTLabConfig, register_configs, validate
from vtlab.connectors import build_connector
from vtlab.errors import ConfigError
from vtlab.paths import config_dir
from vtlab.stack import VisionStack
from vtlab.tiling import Tiler
from vtlab.towers import build_tower


def compose_config(model: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/config.yaml` + `+model=<model>` + overrides, as the CLI would (no run directory)."""
    register_configs()
    args = ([f"+model={model}"] if model else []) + list(overrides)
    try:
        if GlobalHydra.instance().is_initialized():  # inside a running Hydra app: reuse its search path
            return compose(config_name="config", overrides=args)
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return compose(config_name="config", overrides=args)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_message(exc)) from None


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
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and dataclasses.is_dataclass(cause.object_type):
        valid = [f.name for f in dataclasses.fields(cause.object_type)]
        parent = key.rpartition(".")[0]
        return f"{key} is not a known key; valid keys{' of ' + parent if parent else ''}: {', '.join(valid)}"
    return f"{key}: {reason}"


def to_config(cfg: DictConfig | VTLabConfig) -> VTLabConfig:
    """Resolve interpolations, apply checkpoint-derived architecture, validate, return the typed object."""
    if isinstance(cfg, DictConfig):
        cfg = prepare(cfg)
        try:
            obj = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as exc:
            raise ConfigError(str(exc)) from None
    else:
        obj = cfg
    validate(obj)
    return obj  # type: ignore[return-value]


def prepare(cfg: DictConfig) -> DictConfig:
    """Hook for config rewrites that need files (e.g. `+model=hf model.weights=PATH` reads config.json)."""
    try:
        from vtlab.checkpoints.arch import apply_checkpoint_architecture
    except ImportError:
        return cfg
    return apply_checkpoint_architecture(cfg)


def build_stack(cfg: DictConfig | VTLabConfig, load_weights: bool = True) -> VisionStack:
    """Build the stack described by a composed config (random weights unless `model.weights` is set)."""
    c = to_config(cfg)
    tower = build_tower(c.model)
    connector = build_connector(c.connector, in_dim=tower.feature_dim, out_dim=c.text_hidden)
    stack = VisionStack(tower, connector, input_size=c.model.input_size)
    stack.tiler = Tiler.for_config(c)
    if stack.tiler.tiling == "anyres":  # LlavaNext's row separator, initialised as upstream: N(0, 1/sqrt(T))
        gen = torch.Generator().manual_seed(torch.initial_seed() % 2**63)  # leaves the global RNG stream alone
        stack.register_buffer("image_newline", torch.randn(c.text_hidden, generator=gen) * c.text_hidden**-0.5)
    if load_weights and c.model.weights:
        from vtlab.checkpoints import load_weights as _load

        _load(stack, c.model.weights, c)
    return stack


def build(model: str, overrides: Sequence[str] = (), **kwargs: Any) -> VisionStack:
    """Compose `+model=<model>` with `overrides` (Hydra override strings) and build the `VisionStack`."""
    return build_stack(compose_config(model, overrides), **kwargs)
