"""The Python API shared by the CLI, the tests and notebooks: the composition root.

`build("smolvlm", overrides=["connector.factor=2"])` composes exactly the Hydra config the CLI composes for
`python -m vtlab +model=smolvlm connector.factor=2`, validates it and returns the `VisionStack`;
`make_config(...)` returns the typed config itself. `build_stack(cfg)` asks the model's family for everything
family-specific (position rule, tiling) and hands the stack its parts whole, then loads `model.weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from vtlab.checkpoints import load_weights as load_checkpoint
from vtlab.checkpoints.sources import resolve
from vtlab.config.compose import compose_config, make_config, to_config
from vtlab.config.schema import TowerKind, VTLabConfig
from vtlab.errors import ConfigError
from vtlab.families import Tiler, get_family
from vtlab.models.connectors import CONNECTORS
from vtlab.models.reduction.stage import Reduction
from vtlab.models.stack import VisionStack
from vtlab.models.towers.pixels import build_pixel_tower
from vtlab.models.vlm import VisionLanguageModel
from vtlab.text.lm import build_lm, lm_folder, load_lm, load_lm_from_vlm, tokenizer_in
from vtlab.text.tokenizer import offline_tokenizer


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
    tower = build_pixel_tower(c.model) if c.model.tower_kind == TowerKind.pixels else family.build_tower(c.model)
    connector = CONNECTORS[str(c.connector.kind)](c.connector, tower.feature_dim, c.text_hidden)
    tiler = Tiler.for_config(c)
    r, prune = c.model.token_merging.r, c.connector.prune
    reduction = Reduction(r, None if prune is None else str(prune), c.connector.prune_tokens) if r or prune else None
    stack = VisionStack(tower, connector, tiler, _newline(tiler, c.text_hidden), input_size=c.model.input_size,
                        reduction=reduction)
    stack.weights = "random init"  # what the tables and results.json say was loaded
    if load_weights and c.model.weights:
        report = load_checkpoint(stack, c.model.weights, c)
        stack.weights = f"{report['source']} (layout {report['layout']})"
    if load_weights and c.model.tower_kind != TowerKind.pixels:
        family.load_parts(stack, c.model, load_checkpoint)  # sub-tower checkpoints (fused towers)
    return stack



def tokenizer_for(c: VTLabConfig, loaded: Any = None, extra_words: Sequence[str] = ()) -> Any:
    """The LM's tokenizer: the one beside `text.weights` / a whole `model.weights` VLM folder, else the offline one
    (with `extra_words`, a data set's vocabulary, as tokens of their own)."""
    if loaded is not None:
        return loaded
    found = tokenizer_in(resolve(c.model.weights).files[0].parent) if c.model.weights else None
    return found if found is not None else offline_tokenizer(c.text.vocab_size, extra_words=extra_words)


def build_vlm_from_config(cfg: DictConfig | VTLabConfig, extra_words: Sequence[str] = ()) -> VisionLanguageModel:
    """Vision stack + causal LM (+ tokenizer) of a config: the LM from `text.weights`, from a whole VLM
    checkpoint in `model.weights`, or random from the text preset (fp32, eval mode). `extra_words`: words the
    offline tokenizer must hold (a data set's vocabulary)."""
    c = to_config(cfg)
    if c.text.weights:
        lm_folder(c.text.weights)  # a missing or foreign LM checkpoint is refused before anything is built
    stack = build_stack(c)
    family = get_family(c.model.family)
    tokenizer = None
    if c.text.weights:
        lm, tokenizer, fields = load_lm(c.text.weights)
        for key, value in fields.items():
            if hasattr(c.text, key) and key != "name":
                setattr(c.text, key, value)
        if c.text.hidden_size != stack.text_hidden:
            raise ConfigError(f"text.weights={c.text.weights}: the LM is {c.text.hidden_size} wide but the connector "
                              f"outputs {stack.text_hidden} (text_hidden); use an LM {stack.text_hidden} wide")
    else:
        try:
            lm = build_lm(c.text)
        except ConfigError as exc:  # an LM class vtlab does not build, read from a whole VLM checkpoint
            if not c.model.weights:
                raise
            raise ConfigError(f"model.weights={c.model.weights}: its language model cannot be built: {exc}") from None
        if c.model.weights:
            load_lm_from_vlm(lm, c.model.weights, family)
    return VisionLanguageModel(stack, lm.eval(), tokenizer_for(c, tokenizer, extra_words), family, c.text).eval()


def build_vlm(model: str, overrides: Sequence[str] = ()) -> VisionLanguageModel:
    """Compose `+model=<model>` with `overrides` as the CLI does, with the LM on (`text.lm=true`), and build the VLM."""
    keep = [o for o in overrides if not o.lstrip("+~").startswith("text.lm=")]
    return build_vlm_from_config(compose_config(model, [*keep, "text.lm=true"]))


def build(model: str, overrides: Sequence[str] = (), **kwargs: Any) -> VisionStack:
    """Compose `+model=<model>` with `overrides` (Hydra override strings) and build the `VisionStack`."""
    return build_stack(compose_config(model, overrides), **kwargs)


__all__ = ["build", "build_stack", "build_vlm", "build_vlm_from_config", "compose_config", "make_config", "to_config"]
