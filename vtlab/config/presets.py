"""The shipped presets: where the Hydra config tree lives, however vtlab was installed, and what each group offers.

The tree is the top-level `conf/` of the repository (the users asked for it at the top level), installed as the
package `vtlab.conf` (a package-dir mapping in pyproject.toml). A checkout's own `conf/` beside its `vtlab/`
wins (so a second checkout or worktree on `PYTHONPATH` reads its own tree, not an editable install's); in a
wheel the package `vtlab.conf` is used. Both resolve to a real directory.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from vtlab.config.schema import register_configs


@cache
def config_dir() -> Path:
    """The directory holding config.yaml and the group folders."""
    beside = Path(__file__).resolve().parent.parent.parent / "conf"
    if (beside / "config.yaml").is_file():
        return beside
    try:
        if importlib.util.find_spec("vtlab.conf") is not None:
            found = Path(str(resources.files("vtlab.conf")))
            if (found / "config.yaml").is_file():
                return found
    except (ModuleNotFoundError, TypeError):
        pass
    raise FileNotFoundError(
        "vtlab's config tree was not found: neither the package 'vtlab.conf' nor "
        f"{beside} exists; reinstall vtlab (pip install .)"
    )


def group_options(group: str) -> list[str]:
    """The YAML options shipped in conf/<group>/ (what `group=NAME` accepts)."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def model_names() -> list[str]:
    """The model presets shipped in conf/model (what `+model=` accepts)."""
    return group_options("model")


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
