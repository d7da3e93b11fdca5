"""The connector zoo wired behind one budget knob (`connector.tokens`), and token reduction (ToMe, pruning).

Every (kind x budget) cell of the shipped presets composes or is refused with the valid budgets; tokens and
factor are two spellings (inconsistent pairs refused naming both); counted FLOPs equal the closed forms for
every kind, with ToMe and with pruning; ToMe r=0 is bit-identical through the stack; a `-m` bench sweep over
kinds x budgets gives one row per cell, skipped cells with the reason, and a tokens-vs-latency plot per kind;
every zoo kind trains under task=train trainer.fast_dev_run=true.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from bench_helpers import run_vtlab
from train_helpers import TINY

from vtlab.api import build_stack
from vtlab.config.compose import make_config
from vtlab.errors import ConfigError, InvalidCellError
from vtlab.measure.flops import stage_costs
from vtlab.models.connectors import CONNECTORS
from vtlab.models.reduction.stage import Reduction
from vtlab.models.stack import VisionStack
from vtlab.results.plots import _series

KINDS = list(CONNECTORS)
ZOO = ["perceiver", "qformer", "c_abstractor", "ldp", "avgpool"]
PRESETS = {"siglip": (16, 64, 256), "smolvlm": (16, 64, 256), "llavanext": (16, 64, 256),
           "idefics2": (16, 64, 256), "siglip_debug": (1, 4, 16), "smolvlm_debug": (1, 4, 16),
           "llavanext_debug": (1, 4, 16), "idefics2_debug": (1, 4, 16)}


@pytest.mark.parametrize("preset", [p if p.endswith("_debug") else pytest.param(p, marks=pytest.mark.slow)
                                    for p in PRESETS])
def test_every_kind_and_budget_cell_composes_or_is_refused(preset: str) -> None:
    made, refused = [], []
    for kind in KINDS:
        for tokens in PRESETS[preset]:
            try:
                cfg = make_config(preset, [f"connector={kind}", f"connector.tokens={tokens}", "logger=none"])
            except InvalidCellError as exc:
                assert f"connector.tokens={tokens}" in str(exc) and "valid tokens: [" in str(exc), str(exc)
                refused.append((kind, tokens))
                continue
            assert cfg.connector.tokens == tokens
            if CONNECTORS[kind].layout == "unshuffle":
                assert cfg.connector.factor is not None
            made.append((kind, tokens))
    print(f"[cells] {preset}: {len(made)} compose, {len(refused)} refused: {refused}")
    assert made
    for kind in ("perceiver", "qformer"):  # set kinds take any budget
        assert all((kind, t) in made for t in PRESETS[preset])


def test_tokens_and_factor_are_two_spellings() -> None:
    a = make_config("smolvlm_debug", ["connector.tokens=16"])  # the preset's factor 4 yields to tokens
    b = make_config("smolvlm_debug", ["connector.factor=2"])
    assert (a.connector.tokens, a.connector.factor) == (b.connector.tokens, b.connector.factor) == (16, 2)
    assert make_config("smolvlm_debug", []).connector.tokens == 4
    with pytest.raises(InvalidCellError, match=r"connector.tokens=16 and connector.factor=4 disagree.*makes 4 tokens"):
        make_config("smolvlm_debug", ["connector.tokens=16", "connector.factor=4"])
    with pytest.raises(InvalidCellError, match=r"connector.tokens=9 is not a budget .*valid tokens: \[1, 4, 16, 64\]"):
        make_config("smolvlm_debug", ["connector.tokens=9"])
    with pytest.raises(InvalidCellError, match=r"valid tokens: \[1, 4, 9, 16, 25, 36, 49, 64\]"):
        make_config("smolvlm_debug", ["connector=ldp", "connector.tokens=2"])
    assert make_config("smolvlm_debug", ["connector=perceiver", "connector.tokens=7"]).connector.factor is None
    with pytest.raises(ConfigError, match=r"connector.tokens=0 must be >= 1"):
        make_config("smolvlm_debug", ["connector.tokens=0"])


def test_inconsistent_budget_is_one_error_line_on_the_cli(tmp_path: Path) -> None:
    proc = run_vtlab(["+model=smolvlm_debug", "connector.tokens=16", "connector.factor=4", "logger=none"], cwd=tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("vtlab: error:")]
    assert len(lines) == 1 and "connector.tokens=16 and connector.factor=4" in lines[0], proc.stderr[-2000:]


def _costs(overrides: list[str], batch: int = 2) -> tuple[VisionStack, object]:
    torch.manual_seed(0)
    stack = build_stack(make_config("smolvlm_debug", overrides)).eval()
    return stack, stage_costs(stack, torch.randn(batch, 3, 64, 64))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tokens", [1, 4, 16])
def test_counted_flops_equal_the_closed_form(kind: str, tokens: int) -> None:
    stack, costs = _costs([f"connector={kind}", f"connector.tokens={tokens}", "connector.depth=2",
                           "connector.hidden_size=64", "connector.num_heads=4", "connector.head_dim=8",
                           "connector.num_kv_heads=2"])
    assert stack.num_tokens == tokens and costs.row("connector")["shape"][1] == tokens
    assert costs.connector_flops == costs.closed_form["connector"]
    assert (costs.connector_flops > 0) == (kind != "identity")
    assert costs.tower_flops == costs.closed_form["tower"]


@pytest.mark.parametrize("overrides", [
    ["connector=perceiver", "connector.tokens=4", "model.token_merging.r=8"],
    ["connector=qformer", "connector.tokens=4", "connector.depth=2", "connector.hidden_size=64",
     "connector.num_heads=4", "model.token_merging.r=5"],
    ["connector=linear", "connector.factor=1", "model.token_merging.r=8"],
    ["connector=perceiver", "connector.tokens=3", "connector.prune=norm", "connector.prune_tokens=10"],
    ["connector=mlp", "connector.factor=1", "connector.prune=attention", "connector.prune_tokens=10", "model.use_head=true"],
    ["connector=perceiver", "connector.tokens=4", "model.token_merging.r=8", "connector.prune=norm",
     "connector.prune_tokens=20"],
], ids=["tome-perceiver", "tome-qformer", "tome-linear", "prune-norm", "prune-attention", "tome+prune"])
def test_reduction_counts_equal_the_closed_forms(overrides: list[str]) -> None:
    stack, costs = _costs(overrides, batch=1)  # the probe's query projection runs once per batch
    n = stack.connector_grid[1]
    assert costs.row("tower")["shape"][1] == n < 64
    assert costs.tower_flops == costs.closed_form["tower"]
    assert costs.connector_flops == costs.closed_form["connector"]
    y = stack(torch.randn(2, 3, 64, 64))
    assert y.shape[:2] == (2, stack.num_tokens)


def test_tome_token_counts() -> None:
    stack = build_stack(make_config("smolvlm_debug", ["connector=perceiver", "connector.tokens=4",
                                                 "model.token_merging.r=8"]))
    assert stack.connector_grid == (1, 64 - 8 - 8)  # 2 blocks, 8 merged in each
    assert stack.features(torch.randn(2, 3, 64, 64)).shape == (2, 48, 32)
    linear = build_stack(make_config("smolvlm_debug", ["connector=linear", "connector.factor=1", "model.token_merging.r=40"]))
    assert linear.num_tokens == 64 - 32 - 16  # r capped at t // 2 per block


def test_tome_r0_is_bit_identical_through_the_stack() -> None:
    torch.manual_seed(0)
    plain = build_stack(make_config("smolvlm_debug", ["connector=perceiver", "connector.tokens=4"])).eval()
    assert build_stack(make_config("smolvlm_debug", ["model.token_merging.r=0"])).reduction is None
    reduced = VisionStack(plain.tower, plain.connector, plain.tiler, reduction=Reduction(r=0))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reduced.features(pixels), plain.features(pixels))
        assert torch.equal(reduced(pixels), plain(pixels))
    from vtlab.models.reduction.tome import tome_forward
    with torch.no_grad():
        assert torch.equal(tome_forward(plain.tower, pixels, 0)[0], plain.tower(pixels))


@pytest.mark.parametrize("overrides, message", [
    (["connector=ldp", "connector.tokens=4", "model.token_merging.r=4"],
     r"model.token_merging.r=4 leaves an unordered token set, which connector.kind=ldp cannot pool as a grid"),
    (["connector=pixel_unshuffle", "model.token_merging.r=4"],
     r"connector.kind=pixel_unshuffle maps them one to one \(connector.factor=1, connector.tokens=56\)"),
    (["connector=perceiver", "model.token_merging.r=4"], r"give the budget of connector.kind=perceiver as connector.tokens"),
    (["connector=perceiver", "connector.tokens=4", "connector.prune=attention", "connector.prune_tokens=8"],
     r"connector.prune=attention scores tokens with the tower's MAP-head probe: set model.use_head=true"),
    (["connector=perceiver", "connector.tokens=4", "connector.prune=norm", "connector.prune_tokens=99"],
     r"connector.prune_tokens=99 exceeds the 64 tokens left"),
    (["connector=perceiver", "connector.tokens=4", "connector.prune=norm"], r"give both"),
    (["connector=perceiver", "connector.tokens=4", "model.token_merging.r=-1"], r"model.token_merging.r=-1 must be >= 0"),
    (["connector=perceiver", "connector.num_heads=6"], r"connector.num_heads=6 is not a multiple of connector.num_kv_heads=4"),
    (["connector=qformer", "connector.hidden_size=50"], r"connector.hidden_size=50 is not divisible by connector.num_heads=12"),
])
def test_reduction_refusals(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config("smolvlm_debug", overrides)


def test_tome_refuses_feature_taps() -> None:
    with pytest.raises(ConfigError, match=r"model.token_merging.r=2 needs the post-LN last layer"):
        make_config("llavanext_debug", ["connector=perceiver", "connector.tokens=4", "model.token_merging.r=2"])


def test_plot_series_per_model_and_connector() -> None:
    rows = [{"status": "ok", "model": "m", "connector": k, "tokens": t, "latency_ms": 1.0 + t, "factor": None}
            for k in ("perceiver", "ldp") for t in (1, 4)]
    rows.append({"status": "skipped", "model": "m", "connector": "ldp", "tokens": 2})
    series = _series(rows, "latency_ms")
    assert set(series) == {("m", "perceiver", "native"), ("m", "ldp", "native")}  # one series per (model, kind, size)
    assert [p[0] for p in series[("m", "ldp", "native")]] == [1, 4]


@pytest.mark.slow
def test_bench_sweep_over_kinds_and_budgets(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    kinds = ["pixel_unshuffle", *ZOO]
    proc = run_vtlab(["-m", "+model=smolvlm_debug", f"connector={','.join(kinds)}", "connector.tokens=1,4,9,16",
                      "task=bench", "task.modes=[eager]", "task.latency_iters=2", "task.repeats=1", "task.iters=1",
                      "task.throughput_batch_size=2", "task.warmup=0", "logger=none", "connector.depth=1",
                      "connector.hidden_size=32", "connector.num_heads=2", "connector.num_kv_heads=1", "connector.head_dim=8",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    cells = {(r["connector"], r["tokens"] or None, r["status"]) for r in rows}
    assert len(rows) == len(kinds) * 4
    for kind in kinds:
        for t in (1, 4, 16):
            assert (kind, str(t), "ok") in cells, (kind, t, cells)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert [r["connector"] for r in skipped] == ["pixel_unshuffle"]  # 9 tokens: no unshuffle factor makes it
    assert "valid tokens: [1, 4, 16, 64]" in skipped[0]["reason"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(float(r["latency_ms"]) > 0 for r in ok)
    md = (sweep / "summary.md").read_text()
    assert "| connector |" in md.splitlines()[2] or "connector" in md
    assert (sweep / "tokens_vs_latency.png").stat().st_size > 0
    print(f"[sweep] {len(ok)} ok, {len(skipped)} skipped: {skipped[0]['reason']}")


@pytest.mark.slow
def test_every_zoo_kind_trains_fast_dev_run(tmp_path: Path) -> None:
    sweep = tmp_path / "train"
    proc = run_vtlab(["-m", "+model=smolvlm_debug", f"connector={','.join(ZOO)}", "connector.tokens=4", *TINY,
                      "trainer.fast_dev_run=true", "connector.depth=1", "connector.hidden_size=32",
                      "connector.num_heads=2", "connector.num_kv_heads=1", "connector.head_dim=8", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted(r["connector"] for r in rows) == sorted(ZOO)
    assert all(r["status"] == "ok" for r in rows), rows
