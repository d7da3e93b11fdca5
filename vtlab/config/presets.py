"""The shipped presets composed by Hydra (`compose_raw`); where the tree lives and what each group offers is
vtlab.tree (standard library only, for the fast `--help`), re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from vtlab.config.schema import register_configs
from vtlab.tree import config_dir, group_options, model_names

__all__ = ["compose_raw", "config_dir", "group_options", "model_names"]


def compose_raw(overrides: Sequence[str]) -> DictConfig:
    """`conf/config.yaml` + overrides composed by Hydra, as the CLI would (no run directory, no validation).

    Inside a running Hydra app the app's search path is reused. Hydra's and OmegaConf's own exceptions pass
    through (vtlab.config.compose turns them into one-line messages).
    """
    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="config", overrides=list(overrides))
