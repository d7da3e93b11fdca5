"""Where the shipped Hydra config tree lives, however vtlab was installed, and what each group offers.

Standard library only, so that `vtlab --help` can list the groups without importing torch or Hydra.
The tree is the top-level `conf/` of the repository, installed as the package `vtlab.conf` (a package-dir
mapping in pyproject.toml). A checkout's own `conf/` beside its `vtlab/` wins (so a second checkout or
worktree on `PYTHONPATH` reads its own tree, not an editable install's); in a wheel the package `vtlab.conf`
is used. Both resolve to a real directory.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from importlib import resources
from pathlib import Path

# The config groups a user picks with `group=NAME` (Hydra's internal `schema` group is not one of them).
GROUPS = ("model", "connector", "text", "task", "logger", "trainer", "data", "experiment")


@cache
def config_dir() -> Path:
    """The directory holding config.yaml and the group folders."""
    beside = Path(__file__).resolve().parent.parent / "conf"
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


def group_summary(group: str, option: str) -> str:
    """The first comment line of conf/<group>/<option>.yaml (its one-line description), or ''."""
    for line in (config_dir() / group / f"{option}.yaml").read_text().splitlines():
        text = line.strip()
        if text.startswith("#") and not text.startswith("# @package"):
            return text.lstrip("# ").strip()
        if text and not text.startswith("#"):
            break
    return ""
