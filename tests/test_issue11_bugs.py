"""The three measurement / naming bugs of issue 11, each with the test that failed before its fix.

1. `task=bench task.attention_backend=no_cudnn` was refused by a second backend table that lacked it.
2. Skipped cells of an image-size sweep were named without their size, and their `image` column was empty.
3. Counted FLOPs depended on the kernel: the flop counter did not see the fused fc1+GELU epilogue
   (`aten._addmm_activation`), so a CUDA bench under-reported smolvlm's tower by 27 %.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from bench_helpers import run_vtlab

from vtlab.api import build, compose_config, to_config
from vtlab.errors import ConfigError
from vtlab.measure.flops import closed_form_flops, count_flops, stage_costs
from vtlab.models.sdpa import BACKENDS, CPU_BACKENDS, CudnnWhereClean, configure
from vtlab.results.record import RunContext, run_name
from vtlab.tasks.bench import bench_stack


def test_bench_accepts_no_cudnn_the_readme_lists(tmp_path: Path) -> None:
    raw = compose_config("smolvlm_debug", ["task=bench", "task.modes=[eager]", "task.attention_backend=no_cudnn",
                                           "task.latency_iters=2", "task.repeats=1", "logger=none"])
    result = bench_stack(RunContext(cfg=to_config(raw), raw=raw, out_dir=tmp_path, model_choice="smolvlm_debug"))
    assert result["attention_backend_requested"] == "no_cudnn"
    assert result["modes"]["eager"]["status"] == "ok"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_one_backend_table_serves_validation_and_pinning(backend: str) -> None:
    """Every documented backend composes, is validated against the device from the same table, and pins every
    attention layer of a stack (there is no second table to disagree)."""
    cfg = compose_config("smolvlm_debug", ["task=bench", f"task.attention_backend={backend}", "task.device=cpu"])
    if backend in CPU_BACKENDS:
        to_config(cfg)
    else:
        with pytest.raises(ConfigError, match=f"task.attention_backend={backend} has no CPU kernel; on CPU use one "
                                              f"of: {', '.join(CPU_BACKENDS)}"):
            to_config(cfg)
    stack = build("smolvlm_debug")
    configure(stack, backend)
    settings = [m.sdpa_backends for m in stack.modules() if hasattr(m, "sdpa_backends")]
    if backend == "cudnn_safe":  # a per-shape policy in the layers (tests/test_sdpa_policy.py), no_cudnn process-wide
        assert settings and all(isinstance(s, CudnnWhereClean) for s in settings)
        assert BACKENDS[backend] == BACKENDS["no_cudnn"]
        return
    assert {tuple(s or ()) for s in settings} == {tuple(BACKENDS[backend] or ())}


def test_skipped_cells_of_an_image_size_sweep_keep_their_size(tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    proc = run_vtlab(["-m", "+model=smolvlm_debug", "connector.factor=3,4", "data.image_size=[128,128],[64,96]",
                      "task.warmup=0", "task.repeats=1", "logger=none", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    by_name = {r["run_name"]: r for r in rows}
    assert set(by_name) == {"smolvlm_debug-f3-128x128", "smolvlm_debug-f3-64x96", "smolvlm_debug-f4-128x128",
                            "smolvlm_debug-f4-64x96"}, sorted(by_name)
    assert by_name["smolvlm_debug-f3-64x96"]["status"] == "skipped"
    assert by_name["smolvlm_debug-f3-64x96"]["image"] == "64x96"
    assert by_name["smolvlm_debug-f3-128x128"]["image"] == "128x128"
    for cell in sweep.glob("*/results.json"):  # the skipped record and the ok one are named by the same rule
        record = json.loads(cell.read_text())
        assert record["run_name"] == run_name(record["model"], record["factor"], record["task"], record.get("image")
                                              and [int(v) for v in record["image"].split("x")])


def test_fused_gelu_epilogue_is_counted_like_the_addmm_it_replaces() -> None:
    m, k, n = 5, 7, 3
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    fused = count_flops(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True))
    plain = count_flops(lambda: torch.addmm(b, x, w.t()))
    assert fused == plain == 2 * m * k * n


def test_counted_flops_do_not_depend_on_the_fused_epilogue(monkeypatch) -> None:
    """The fused path counted (forced on CPU) equals the plain path and the closed form: a mismatch fails here."""
    from vtlab.models import layers

    stack = build("smolvlm_debug").eval()
    pixels = torch.randn(1, 3, 64, 64)
    plain = stage_costs(stack, pixels)
    configure(stack, fused_gelu=True)
    monkeypatch.setattr(layers.Mlp, "forward", _fused_forward_on_any_device)
    fused = stage_costs(stack, pixels)
    closed = closed_form_flops(stack)
    assert fused.tower_flops == plain.tower_flops == closed["tower"]
    assert fused.connector_flops == plain.connector_flops == closed["connector"]


def _fused_forward_on_any_device(self, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    h = torch._addmm_activation(self.fc1.bias, flat, self.fc1.weight.t(), use_gelu=True)
    return self.fc2(h.view(*x.shape[:-1], h.shape[-1]))
