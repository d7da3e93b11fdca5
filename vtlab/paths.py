"""Where the shipped Hydra config tree lives, however vtlab was installed.

The tree is the top-level `conf/` of the repository, installed as the package `vtlab.conf` (a
package-dir mapping in pyproject.toml). In a wheel or an editable install `vtlab.conf` is importable; in
a bare source checkout on `PYTHONPATH` (or when a checkout's `vtlab/` shadows an installed copy) it is not,
and the tree is the `conf/` folder beside the package. Both resolve to a real directory.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from importlib import resources
from pathlib import Path


@cache
def config_dir() -> Path:
    """The directory holding config.yaml and the group folders."""
    try:
        if importlib.util.find_spec("vtlab.conf") is not None:
            found = Path(str(resources.files("vtlab.conf")))
            if (found / "config.yaml").is_file():
                return found
    except (ModuleNotFoundError, TypeError):
        pass
    beside = Path(__file__).resolve().parent.parent / "conf"
    if (beside / "config.yaml").is_file():
        return beside
    raise FileNotFoundError(
        "vtlab's config tree was not found: neither the package 'vtlab.conf' nor "
        f"{beside} exists; reinstall vtlab (pip install .)"
    )


def group_options(group: str) -> list[str]:
    """The YAML options shipped in conf/<group>/ (what `group=NAME` accepts)."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml"))
