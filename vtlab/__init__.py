"""vtlab: configuration-driven experiments on the vision side of vision-language models.

The public names are loaded on first use (PEP 562), so that `python -m vtlab --help` and `import vtlab.tree`
do not pay for importing torch, Hydra and Lightning; `vtlab.build`, `vtlab.VisionStack` etc. work as before.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "VisionStack": "vtlab.models.stack",
    "build": "vtlab.api",
    "build_stack": "vtlab.api",
    "build_vlm": "vtlab.api",
    "compose_config": "vtlab.api",
    "make_config": "vtlab.api",
    "to_config": "vtlab.api",
    "preprocess": "vtlab.families",
}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vtlab' has no attribute {name!r}")
    for attr, module in _LAZY.items():  # bind all at once: `config` (the function) must win over the subpackage
        globals()[attr] = getattr(importlib.import_module(module), attr)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
