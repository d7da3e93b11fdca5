"""State-dict key maps: the one home of renaming checkpoint tensors between an upstream layout and vtlab's names.

A map is a list of rules `(pattern, replacement)` (`Rules`): the first pattern that matches a key *whole*
names it (`re` replacement syntax, `\\1` for a group; `apply_rules`). Tensors that one side keeps apart
and the other fuses (q/k/v projections into one `qkv`, k/v into `kv`, gate/up into `fc1`) are `Fuse`d on
the way in (concatenated on dim 0 in the fuse's part order) and `Split` on the way out (`chunk` on dim 0).

`rename_state` / `unrename_state` are the loops that every module-level HF <-> native mapping runs: the
CLIP, SigLIP2 and DINOv2 towers (vtlab.models.towers), the perceiver and Q-Former connectors
(vtlab.models.connectors). The families' checkpoint engine (vtlab.families, vtlab.checkpoints.layouts)
applies the same `apply_rules` key by key. `strip_prefix` picks a tower out of a larger state dict and
`split_qkv` splits one fused tensor for a hand-written inverse map.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Rules = list[tuple[str, str]]


def apply_rules(rules: Rules, rel: str) -> str | None:
    """The first rule whose pattern matches `rel` whole, applied; None if none does."""
    for pattern, repl in rules:
        m = re.fullmatch(pattern, rel)
        if m:
            return m.expand(repl)
    return None


@dataclass(frozen=True)
class Fuse:
    """Upstream tensors that are one native tensor: a key matching `pattern` whole is part `part` (a
    replacement template, e.g. `\\2` -> "q") of the native `target` (a template); the parts are concatenated
    on dim 0 in `order`."""

    pattern: str
    target: str
    part: str
    order: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """The inverse of a `Fuse`: a native key matching `pattern` whole is chunked on dim 0 into the upstream
    tensors `targets` (replacement templates, in row order)."""

    pattern: str
    targets: tuple[str, ...]


def _first_match(items: tuple[Any, ...], key: str) -> tuple[Any, re.Match[str] | None]:
    """The first of `items` (a Fuse or a Split) whose `pattern` matches `key` whole, with the match."""
    for item in items:
        m = re.fullmatch(item.pattern, key)
        if m:
            return item, m
    return None, None


def _renamed(rules: Rules, key: str, error: str) -> str:
    new = apply_rules(rules, key)
    if new is None:
        raise KeyError(error)
    return new


def rename_state(
    state: dict[str, torch.Tensor],
    rules: Rules,
    fuse: Iterable[Fuse] = (),
    *,
    unknown: str,
    where: str = "",
) -> dict[str, torch.Tensor]:
    """Upstream names -> native names: each key through the first `fuse` that takes it (the fused tensors
    come last, in the order their first part was seen), otherwise through `rules`.

    A key that neither takes raises `KeyError(f"{unknown} {where + key!r}")`; a fused tensor with a part
    missing raises KeyError naming the target and the parts present."""
    fuse = tuple(fuse)
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, tuple[str, ...]], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        f, m = _first_match(fuse, key)
        if m is not None:
            groups.setdefault((m.expand(f.target), f.order), {})[m.expand(f.part)] = value
        else:
            out[_renamed(rules, key, f"{unknown} {where + key!r}")] = value
    for (target, order), parts in groups.items():
        if set(parts) != set(order):
            raise KeyError(f"{target}: only {sorted(parts)} of {list(order)} present")
        out[target] = torch.cat([parts[p] for p in order], dim=0)
    return out


def unrename_state(
    state: dict[str, torch.Tensor],
    rules: Rules,
    split: Iterable[Split] = (),
    *,
    unknown: str,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Native names -> upstream names under `prefix`: each key through the first `split` that takes it,
    otherwise through `rules`; a key that neither takes raises `KeyError(f"{unknown} {key!r}")`."""
    split = tuple(split)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        s, m = _first_match(split, key)
        if m is not None:
            for name, part in zip(s.targets, value.chunk(len(s.targets), dim=0), strict=True):
                out[prefix + m.expand(name)] = part
        else:
            out[prefix + _renamed(rules, key, f"{unknown} {key!r}")] = value
    return out


def split_qkv(state: dict[str, torch.Tensor], key: str, out: dict[str, torch.Tensor], names: Sequence[str]) -> None:
    """native `...qkv.{weight,bias}` (rows q, k, v) -> three HF tensors under `names` (q, k, v order)."""
    for name, part in zip(names, state[key].chunk(3, dim=0), strict=True):
        out[name] = part


def strip_prefix(state: dict[str, torch.Tensor], prefix: str, wrappers: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Keys under `prefix` with it removed (others are left to their owners), then an optional wrapper
    (e.g. `vision_model.`) removed too; a key like `position_ids` (non-persistent in v5) is dropped."""
    picked: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        for wrapper in wrappers:
            if key.startswith(wrapper):
                key = key[len(wrapper) :]
                break
        if key.endswith("position_ids"):
            continue
        picked[key] = value
    return picked
