"""Every shipped config composes and validates, and every (model, connector, factor 1..8) cell is either a
valid stack with the right token count or rejected with the documented message.

Composition goes through `vtlab.api.compose_config`, i.e. the same `conf/config.yaml` + `+model=NAME` +
overrides the CLI composes. Real-size stacks are only built on the meta device.
"""

from __future__ import annotations

import atexit
import copy
import functools
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import vtlab
from vtlab.api import compose_config, to_config
from vtlab.config import model_names, valid_factors
from vtlab.errors import ConfigError, InvalidCellError

CONF = Path(vtlab.__file__).resolve().parent.parent / "conf"
GROUPS = ("connector", "text", "task", "logger", "trainer", "data")
# data.root is ??? in these YAMLs; conversations checks its JSONL files at validation (empty ones pass: the rows
# are read by the task)
CONVERSATIONS = Path(tempfile.mkdtemp(prefix="vtlab-conversations-"))
for _name in ("train.jsonl", "val.jsonl"):
    (CONVERSATIONS / _name).touch()
atexit.register(shutil.rmtree, CONVERSATIONS, True)
OVERRIDES_NEEDED = {("data", "folder"): ["data.root=/nonexistent/images"],
                    ("data", "conversations"): [f"data.root={CONVERSATIONS}"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def is_checkpoint_preset(name: str) -> bool:
    """Presets whose architecture comes from a checkpoint (`+model=hf model.weights=PATH`): fields are ???."""
    return OmegaConf.is_missing(OmegaConf.load(CONF / "model" / f"{name}.yaml").model, "image_size")


ARCH_PRESETS = [m for m in options("model") if not is_checkpoint_preset(m)]
CKPT_PRESETS = [m for m in options("model") if is_checkpoint_preset(m)]

# patch grid side per preset (towers-and-connectors.md (a) and the *_debug comments)
GRID = {"siglip": 14, "smolvlm": 32, "llavanext": 27, "siglip_debug": 14, "smolvlm_debug": 8, "llavanext_debug": 9}
GRID |= {"clip_l14_336": 24, "llava15": 24, "clip_debug": 8, "llava15_debug": 8,  # issue 12 families
         "dinov2_l14": 16, "dinov2_l14_reg": 16, "dinov2_debug": 8, "dinov2_reg_debug": 8,
         "siglip2_so400m_naflex": 16, "siglip2_debug": 4, "dinosiglip": 16, "dinosiglip_debug": 8}
GRID |= {"idefics2": 70, "idefics2_debug": 8}  # issue 13: Idefics2's 980 px / 14 px tower
FACTORS = {14: [1, 2, 7, 14], 32: [1, 2, 4, 8, 16, 32], 27: [1, 3, 9, 27], 8: [1, 2, 4, 8], 9: [1, 3, 9],
           24: [1, 2, 3, 4, 6, 8, 12, 24], 16: [1, 2, 4, 8, 16], 4: [1, 2, 4], 70: [1, 2, 5, 7, 10, 14, 35, 70]}


def test_the_cell_table_covers_every_shipped_preset():
    assert sorted(GRID) == ARCH_PRESETS
    assert model_names() == options("model")  # what the CLI lists is what is on disk


def test_grid_factor_table_matches_the_validator():
    for side, factors in FACTORS.items():
        assert valid_factors((side, side)) == factors


# ---------------------------------------------------------------------------------------------- cells
# presets whose budget is spelled as a factor; a preset that fixes `connector.tokens` (idefics2's perceiver) has its
# (kind x budget) cells in tests/test_connector_budget.py
FACTOR_PRESETS = [m for m in ARCH_PRESETS if OmegaConf.load(CONF / "model" / f"{m}.yaml").get("connector", {})
                  .get("tokens") is None]
CELLS = [(m, c, f) for m in FACTOR_PRESETS for c in options("connector") for f in range(1, 9)]


@functools.cache
def composed(model: str, connector: str) -> DictConfig:
    """Hydra composition of `+model=<model> connector=<connector>` (~0.3 s each, so once per pair)."""
    return compose_config(model, [f"connector={connector}"])


def cell(model: str, connector: str, factor: int) -> DictConfig:
    """The composed pair with `connector.factor=<factor>` applied as Hydra applies a value override
    (a typed assignment into the structured config: a wrong type would raise here)."""
    cfg = copy.deepcopy(composed(model, connector))
    cfg.connector.factor = factor
    return cfg


def test_a_factor_override_composes_like_the_cell_helper():
    assert cell("smolvlm", "mlp", 2) == compose_config("smolvlm", ["connector=mlp", "connector.factor=2"])


@pytest.mark.parametrize(("model", "connector", "factor"), CELLS, ids=[f"{m}-{c}-f{f}" for m, c, f in CELLS])
def test_cell_is_valid_with_the_right_token_count_or_rejected(model, connector, factor):
    cfg = cell(model, connector, factor)
    side = GRID[model]
    if factor not in FACTORS[side]:
        with pytest.raises(InvalidCellError) as err:
            to_config(cfg)
        message = str(err.value)
        assert message.startswith(f"connector.factor={factor} does not divide the {side}x{side} patch grid of model ")
        assert message.endswith(f"valid factors: {FACTORS[side]}")
        return
    c = to_config(cfg)
    assert c.connector.kind.value == connector
    with torch.device("meta"):
        stack = vtlab.build_stack(c)
    tokens = (side // factor) ** 2
    width = stack.feature_dim * factor**2 if connector == "identity" else c.text_hidden
    assert (stack.grid, stack.num_tokens, stack.text_hidden) == ((side, side), tokens, width)
    feats = torch.empty(1, side * side, stack.feature_dim, device="meta")  # the tower's shape: test_stack.py
    assert stack.connector(feats, stack.grid).shape == (1, tokens, width)


@pytest.mark.parametrize(
    ("model", "factor", "tokens"),
    [("siglip", 1, 196), ("smolvlm", 1, 1024), ("smolvlm", 4, 64), ("llavanext", 1, 729), ("llavanext", 3, 81)],
)
def test_documented_token_counts(model, factor, tokens):
    c = to_config(compose_config(model, [f"connector.factor={factor}"]))
    with torch.device("meta"):
        assert vtlab.build_stack(c).num_tokens == tokens


# ---------------------------------------------------------------------------------------------- shipped configs
def option_sets() -> list[list[str]]:
    """Overrides that together use every option of every group (connector: see the cells above): set i
    takes option i (cycling) of each group, so max(#options) compositions per model cover them all."""
    groups = [g for g in GROUPS if g != "connector"]
    width = max(len(options(g)) for g in groups)
    sets = []
    answers = [o for o in options("data") if o not in ("synthetic", "folder")]  # data with text answers
    needs = {"align": answers, "finetune": answers, "train": ["folder", "synthetic"]}  # task -> data it takes
    for i in range(width):
        picks = [(g, options(g)[i % len(options(g))]) for g in groups]
        task = dict(picks)["task"]
        if task in needs and dict(picks)["data"] not in needs[task]:
            picks = [(g, needs[task][i % len(needs[task])] if g == "data" else o) for g, o in picks]
        sets.append([f"{g}={o}" for g, o in picks] + [x for p in picks for x in OVERRIDES_NEEDED.get(p, [])])
    used = {o for s in sets for o in s}
    for option in options("data"):  # a data option only the tasks above refused: once with task=profile
        if f"data={option}" not in used:
            base = [o.replace("task=" + o.split("=")[1], "task=profile") if o.startswith("task=") else o
                    for o in sets[0] if not o.startswith("data")]
            sets.append([*base, f"data={option}", *OVERRIDES_NEEDED.get(("data", option), [])])
    return sets


SHIPPED = [(m, tuple(o)) for m in ARCH_PRESETS for o in option_sets()]


def test_option_sets_cover_every_option_of_every_group():
    used = {o.split("=")[0]: set() for s in option_sets() for o in s}
    for s in option_sets():
        for o in s:
            used[o.split("=")[0]].add(o.split("=")[1])
    assert {g: sorted(used[g]) for g in GROUPS if g != "connector"} == {g: options(g) for g in GROUPS if g != "connector"}


@pytest.mark.parametrize(("model", "overrides"), SHIPPED, ids=[f"{m}:{','.join(o[:6])}" for m, o in SHIPPED])
def test_every_shipped_option_composes_and_validates_with_every_model(model, overrides):
    cfg = compose_config(model, list(overrides))
    c = to_config(cfg)  # resolves, converts to the typed dataclasses, runs every cross-field rule
    picks = dict(o.split("=", 1) for o in overrides if "." not in o.split("=")[0])
    assert c.model.name == OmegaConf.load(CONF / "model" / f"{model}.yaml").model.name
    assert c.text_hidden == OmegaConf.load(CONF / "text" / f"{picks['text']}.yaml").hidden_size
    assert c.task.name.value == OmegaConf.load(CONF / "task" / f"{picks['task']}.yaml").name
    assert c.logger.kind.value == OmegaConf.load(CONF / "logger" / f"{picks['logger']}.yaml").kind
    assert c.data.kind == OmegaConf.load(CONF / "data" / f"{picks['data']}.yaml").kind
    trainer = OmegaConf.load(CONF / "trainer" / f"{picks['trainer']}.yaml")
    assert all(getattr(c.trainer, k) == v for k, v in trainer.items() if k != "defaults")


@pytest.mark.parametrize("model", CKPT_PRESETS)
def test_checkpoint_preset_without_weights_is_a_config_error(model):
    """`+model=hf` composes; without `model.weights` it fails validation with a ConfigError (no crash)."""
    cfg = compose_config(model)
    with pytest.raises(ConfigError):
        to_config(cfg)


ARCH_FIELDS = [
    "name", "family", "image_size", "patch_size", "num_channels", "hidden_size", "intermediate_size",
    "num_layers", "num_heads", "layer_norm_eps", "hidden_act", "use_head", "feature_layers",
]


@pytest.mark.parametrize("model", ARCH_PRESETS)
def test_model_presets_spell_out_every_architecture_field(model):
    """No upstream default is relied on (towers-and-connectors.md f.6)."""
    node = OmegaConf.load(CONF / "model" / f"{model}.yaml").model
    assert [k for k in ARCH_FIELDS if k not in node] == []


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("siglip", dict(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224,
                        patch_size=16, use_head=True, feature_layers=None, connector="linear", text_hidden=576)),
        ("smolvlm", dict(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=512,
                         patch_size=16, use_head=False, feature_layers=None, connector="pixel_unshuffle",
                         factor=4, text_hidden=576)),
        ("llavanext", dict(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16, image_size=384,
                           patch_size=14, use_head=False, feature_layers=[-24, -20, -12, -1], connector="mlp",
                           factor=1, text_hidden=2048)),
    ],
)
def test_real_presets_match_the_documented_architecture(model, expected):
    """towers-and-connectors.md (a): SigLIP-base-224, SmolVLM-256M tower, Granite-Vision-3.2 tower."""
    c = to_config(compose_config(model))
    assert c.model.layer_norm_eps == 1e-6 and c.model.hidden_act.value == "gelu_tanh"
    got = {k: getattr(c.model, k) for k in expected if hasattr(c.model, k)}
    got.update(connector=c.connector.kind.value, factor=c.connector.factor, text_hidden=c.text_hidden)
    assert {k: got[k] for k in expected} == expected


def test_every_yaml_under_conf_is_covered():
    """A YAML added to conf/ that no test above composes would fail here."""
    covered = {"config.yaml"} | {f"model/{m}.yaml" for m in options("model")}
    covered |= {f"experiment/{e}.yaml" for e in options("experiment")}  # test_every_experiment_validates
    covered |= {f"{g}/{o}.yaml" for g in GROUPS for o in options(g)}
    on_disk = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert on_disk == covered, sorted(on_disk ^ covered)


def test_cli_group_list_matches_the_config_groups():
    from vtlab.cli import GROUPS as CLI_GROUPS

    assert set(CLI_GROUPS) == {"model", "experiment", *GROUPS}
    assert {p.name for p in CONF.iterdir() if p.is_dir() and any(p.glob("*.yaml"))} == {"model", "experiment", *GROUPS}


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_validates(experiment):
    c = to_config(compose_config(None, [f"+experiment={experiment}"]))
    assert c.model.name and c.task.name
    assert not re.search(r"\bmodel\b", OmegaConf.to_yaml(OmegaConf.load(CONF / "config.yaml").defaults))


# ------------------------------------------------------------------ review: values refused before a run
@pytest.mark.parametrize("overrides, fragment", [
    (["task=train", "task.lr=-1"], "task.lr=-1.0 must be >= 0"),
    (["task=train", "task.tower_lr=-1e-5"], "task.tower_lr=-1e-05 must be >= 0"),
    (["task=train", "task.min_lr_ratio=1.5"], "task.min_lr_ratio=1.5 must be in [0, 1]"),
    (["task=train", "task.eval_batch_size=0"], "task.eval_batch_size=0 must be >= 1"),
    (["task=train", "data.num_workers=-1"], "data.num_workers=-1 must be >= 0"),
    (["logger.mode=onlne"], "logger.mode=onlne is unknown; valid: offline, online, disabled"),
])
def test_review_invalid_values_are_refused(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        to_config(compose_config("smolvlm_debug", overrides))
    assert fragment in str(info.value)


@pytest.mark.parametrize("overrides, fragment", [
    (["connector.factr=2"], "connector.factr is not a known key; valid keys of connector: kind, factor"),
    (["text_hidden=abc"], "text_hidden: Value 'abc' of type 'str' could not be converted to Integer"),
    (["connector.kind=foo"], "connector.kind: Invalid value 'foo', expected one of"),
])
def test_review_composition_errors_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        compose_config("smolvlm_debug", overrides)
    assert fragment in str(info.value) and "+connector" not in str(info.value)


def test_review_bad_device_name_is_a_config_error():
    from vtlab.measure.timing import resolve_device

    with pytest.raises(ConfigError, match="task.device=gpu is not a device"):
        resolve_device("gpu")
