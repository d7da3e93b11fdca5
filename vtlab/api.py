"""The Python API shared by the CLI, the tests and notebooks: the composition root.

`build("smolvlm", overrides=["connector.factor=2"])` composes exactly the Hydra config the CLI composes for
`python -m vtlab +model=smolvlm connector.factor=2`, validates it and returns the `VisionStack`;
`config(...)` returns the typed config itself. `build_stack(cfg)` asks the model's family for everything
family-specific (position rule, tiling) and hands the stack its parts whole, then loads `model.weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from vtlab.checkpoints import load_weights as load_checkpoint
from vtlab.config.compose import compose_config, config, to_config
from vtlab.config.schema import VTLabConfig
from vtlab.families import Tiler, get_family
from vtlab.models.connectors import CONNECTORS
from vtlab.models.stack import VisionStack


def _newline(tiler: Tiler, width: int) -> torch.Tensor | None:
    """LlavaNext's row separator when the tiling packs with one, initialised as upstream: N(0, 1/sqrt(T))."""
    if not tiler.needs_newline:
        return None
    gen = torch.Generator().manual_seed(torch.initial_seed() % 2**63)  # leaves the global RNG stream alone
    return torch.randn(width, generator=gen) * width**-0.5


def build_stack(cfg: DictConfig | VTLabConfig, load_weights: bool = True) -> VisionStack:
    """Build the stack described by a composed config (random weights unless `model.weights` is set)."""
    c = to_config(cfg)
    family = get_family(c.model.family)
    tower = family.build_tower(c.model)
    connector = CONNECTORS[str(c.connector.kind)](c.connector, tower.feature_dim, c.text_hidden)
    tiler = Tiler.for_config(c)
    stack = VisionStack(tower, connector, tiler, _newline(tiler, c.text_hidden), input_size=c.model.input_size)
    stack.weights = "random init"  # what the tables and results.json say was loaded
    if load_weights and c.model.weights:
        report = load_checkpoint(stack, c.model.weights, c)
        stack.weights = f"{report['source']} (layout {report['layout']})"
    return stack



def build(model: str, overrides: Sequence[str] = (), **kwargs: Any) -> VisionStack:
    """Compose `+model=<model>` with `overrides` (Hydra override strings) and build the `VisionStack`."""
    return build_stack(compose_config(model, overrides), **kwargs)


__all__ = ["build", "build_stack", "compose_config", "config", "to_config"]
