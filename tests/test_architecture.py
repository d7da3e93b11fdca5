"""The architecture of issue 11, checked: adding a family is one module plus a preset YAML (a test family of
its own runs build, profile and a checkpoint round trip); no family name is dispatched on outside
vtlab/families; the import graph has no cycles and no function-level imports of vtlab's own modules."""

from __future__ import annotations

import ast
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vtlab
from vtlab.checkpoints import export_hf
from vtlab.config import presets
from vtlab.families import FAMILIES, Layout, register_family
from vtlab.families.base import apply_rules
from vtlab.families.pixels import normalise, resize, to_uint8_hwc
from vtlab.families.siglip import VISION_DEFAULTS, SiglipTowerFamily, hf_vision_config, tower_fields
from vtlab.results.record import RunContext
from vtlab.tasks.profile import profile_stack

PACKAGE = Path(vtlab.__file__).resolve().parent


class ToyFamily(SiglipTowerFamily):
    """A made-up upstream model: a SigLIP tower under `toy_tower.`, its own pixels and config.json."""

    name = "toyvit"
    model_types = ("toyvit",)
    hub_prefix = "toy_tower."
    resample = Image.Resampling.NEAREST
    mean = (0.25, 0.25, 0.25)
    std = (0.5, 0.5, 0.5)

    def detect(self, keys: list[str], keyset: set[str], hf_prefix: str | None) -> Layout | None:
        if hf_prefix != self.hub_prefix:
            return None
        return Layout("ToyVit (toy_tower.*)", self.name, "hf", hf_prefix, "toy_projector.", carries_connector=True)

    def connector_key_to_native(self, rel: str) -> str | None:
        return apply_rules([(r"proj\.weight", "connector.proj.weight")], rel)

    def connector_native_to_hf(self, name: str) -> str | None:
        return "toy_projector.proj.weight" if name == "connector.proj.weight" else None

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        out = {"model.family": self.name, "model.feature_layers": None, "model.use_head": False,
               "connector.kind": "pixel_unshuffle", "connector.bias": False, "connector.factor": int(conf["factor"])}
        out.update(tower_fields(conf["vision"], VISION_DEFAULTS, where))
        return out

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        return {"model_type": self.name, "vision": hf_vision_config(cfg.model), "factor": cfg.connector.factor}


PRESET = """# @package _global_
# A test family's preset: one YAML is all a new family needs besides its module.
defaults:
  - override /connector: pixel_unshuffle
  - override /text: tiny
model:
  name: toy-debug
  family: toyvit
  image_size: 32
  patch_size: 8
  hidden_size: 32
  intermediate_size: 64
  num_layers: 2
  num_heads: 4
connector:
  factor: 2
"""


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(presets.config_dir(), conf)
    (conf / "model" / "toy_debug.yaml").write_text(PRESET)
    monkeypatch.setattr(presets, "config_dir", lambda: conf)
    family = register_family(ToyFamily())
    yield family
    FAMILIES.pop(family.name)


def test_a_family_of_its_own_builds_profiles_and_round_trips_its_checkpoint(toy_family, tmp_path) -> None:
    stack = vtlab.build("toy_debug").eval()
    assert stack.grid == (4, 4) and stack.num_tokens == 4 and stack.tiler.family is toy_family

    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    frames, plan = stack.tiler.frames(image)  # tiling none: the family's own single frame
    expected = normalise(resize(to_uint8_hwc(image), 32, 32, Image.Resampling.NEAREST), (0.25,) * 3, (0.5,) * 3)
    assert plan.frames == 1 and torch.equal(frames[0], expected)

    raw = vtlab.compose_config("toy_debug", ["logger=none"])
    result = profile_stack(RunContext(cfg=vtlab.to_config(raw), raw=raw, out_dir=tmp_path, model_choice="toy_debug"))
    assert result["tokens"] == 4 and result["flops"] == result["flops_closed_form"] > 0

    cfg = vtlab.make_config("toy_debug")
    out = export_hf(stack, cfg, tmp_path / "export")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "toy_projector.proj.weight" in names and "toy_tower.encoder.layers.0.self_attn.q_proj.weight" in names
    x = torch.randn(2, 3, 32, 32)
    for model, extra in (("hf", []), ("toy_debug", [])):  # architecture from config.json, and the preset checked
        again = vtlab.build(model, [f"model.weights={out}", *extra]).eval()
        with torch.no_grad():
            assert torch.equal(again(x), stack(x))
    assert vtlab.make_config("hf", [f"model.weights={out}"]).model.family == "toyvit"


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_family_name_is_dispatched_on_outside_the_registry() -> None:
    """No string literal equal to a family name appears in code outside vtlab/families (comparisons, dict keys,
    defaults): the rest of the code asks the family. Checked over the AST of every module."""
    names = set(FAMILIES)
    found = []
    for path in _python_files():
        if "families" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not found, found


def _import_graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in _python_files()}
    graph: dict[str, set[str]] = defaultdict(set)
    inner: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vtlab"):
                targets = [f"{node.module}.{a.name}" for a in node.names]
                target = next((t for t in targets if t in modules), node.module)
                if id(node) in top:
                    graph[name].add(target)
                else:
                    inner.append(f"{name}: from {node.module} import ...")
    return graph, inner


# the one justified exception: the entry point answers --help before importing torch, Hydra and Lightning
LAZY_BY_DESIGN = {"vtlab.__main__: from vtlab.cli import ..."}


def test_import_graph_has_no_cycles_and_no_function_level_imports_of_vtlab() -> None:
    graph, inner = _import_graph()
    assert not set(inner) - LAZY_BY_DESIGN, inner
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_reading_the_config_does_not_import_torchvision_lightning_or_transformers() -> None:
    """A refused command answers before any heavy import: `vtlab.config` (schema and validation) stays off
    torchvision, Lightning and transformers (a refused command took ~8.8 s on 2 cores, ~6.4 s without
    torchvision, which came in through the conversations folder check)."""
    import subprocess
    import sys

    code = ("import sys, vtlab.config, vtlab.config.compose; "
            "print(sorted(m for m in ('torchvision', 'lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
