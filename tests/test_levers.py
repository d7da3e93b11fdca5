"""Issue 16 levers wired into the tasks: bench records `fast_paths`, train's options reach the model and the
optimizer, and the compiled AdamW step computes the same update as the plain one."""

from __future__ import annotations

import pytest
import torch
from test_bench import FAST, make_ctx

from vtlab.models.fastpaths import PatchEmbed
from vtlab.train.module import OptimSettings, VisionClassifier, adamw, compile_optimizer_step


def test_bench_records_fast_paths(tmp_path):
    from vtlab.tasks.bench import bench_stack

    r = bench_stack(make_ctx(tmp_path, "siglip_debug", "task.modes=[eager]", "task.patch_gemm=true", *FAST))
    fp = r["fast_paths"]
    assert fp["patch_gemm"] is True and fp["fused_gelu_inference"] is False  # epilogue: CUDA only
    assert fp["fp8_linears"] == 0 and fp["attention"] == r["attention_backend"]
    assert fp["cudagraphs_throughput_captured"] is None and r["fp8"] is None
    r2 = bench_stack(make_ctx(tmp_path / "b", "siglip_debug", "task.modes=[eager]", *FAST))
    assert r2["fast_paths"]["patch_gemm"] is False


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]


def test_compiled_optimizer_step_equals_plain_step():
    ref, new = _params(), _params()
    groups = lambda ps: [{"params": ps[:1], "lr": 1e-2, "weight_decay": 0.1}, {"params": ps[1:], "lr": 3e-2,  # noqa: E731
                                                                                "weight_decay": 0.0}]
    opt_ref = torch.optim.AdamW(groups(ref))
    opt = compile_optimizer_step(torch.optim.AdamW(groups(new), foreach=True), backend="aot_eager")
    for step in range(3):
        for ps, o in ((ref, opt_ref), (new, opt)):
            def closure(ps=ps, step=step):
                loss = sum((p**2).sum() for p in ps) * (step + 1)
                loss.backward()
                return loss
            o.zero_grad()
            assert o.step(closure) is not None
    for a, b in zip(ref, new, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


def test_adamw_plain_path_unchanged_on_cpu():
    opt = adamw([{"params": _params(), "lr": 1e-3}], (0.9, 0.999), compiled=False)
    assert isinstance(opt, torch.optim.AdamW) and not opt.defaults["fused"]


def test_train_options_reach_the_model(tmp_path):
    from test_cli import results, run_vtlab

    proc = run_vtlab(["+model=siglip_debug", "task=train", "logger=none", "trainer.max_steps=2", "trainer.max_epochs=1",
                      "task.patch_gemm=true", "task.activation_checkpointing=true", "task.freeze=none"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    assert r["fast_paths"]["patch_gemm"] and r["fast_paths"]["activation_checkpointing"]
    assert r["compile_optimizer"] is False


def test_classifier_keeps_conv_state_dict_names():
    from vtlab.api import build

    lit = VisionClassifier(build("siglip_debug"), 3, optim=OptimSettings())
    assert isinstance(lit.stack.tower.patch_embed, PatchEmbed)
    assert "stack.tower.patch_embed.weight" in lit.state_dict()
    assert lit.stack.tower.patch_embed.weight.ndim == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_cudagraphs_captures_the_throughput_batch(tmp_path):
    from vtlab.tasks.bench import bench_stack

    r = bench_stack(make_ctx(tmp_path, "siglip_debug", "task.modes=[cudagraphs]", "task.patch_gemm=true", *FAST))
    assert r["modes"]["cudagraphs"]["status"] == "ok", r["modes"]
    assert r["modes"]["cudagraphs"]["cudagraph_skips"] == 0
    assert r["fast_paths"]["cudagraphs_throughput_captured"] is True
    assert r["fast_paths"]["patch_gemm"] and r["fast_paths"]["fused_gelu_inference"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs sm89+")
def test_bench_fp8_records_its_error(tmp_path):
    from vtlab.tasks.bench import bench_stack

    r = bench_stack(make_ctx(tmp_path, "siglip_debug", "task.modes=[eager,compile]", "task.dtype=fp8", *FAST))
    assert r["fp8"]["linears"] > 0 and 0 < r["fp8"]["rel_err_vs_bf16"] < 0.1
    assert r["fast_paths"]["fp8_linears"] == r["fp8"]["linears"] and r["dtype"] == "bfloat16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_adamw_on_cuda_equals_fused_adamw():
    def make() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(64, 32, device="cuda")), torch.nn.Parameter(torch.randn(32, device="cuda"))]

    ref, new = make(), make()
    opt_ref = adamw([{"params": ref, "lr": 1e-2, "weight_decay": 0.05}], (0.9, 0.999), compiled=False)
    opt = adamw([{"params": new, "lr": 1e-2, "weight_decay": 0.05}], (0.9, 0.999), compiled=True)
    assert opt_ref.defaults["fused"] and torch.is_tensor(opt.param_groups[0]["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    sched_ref = torch.optim.lr_scheduler.LambdaLR(opt_ref, lambda s: 1.0 / (s + 1))
    for _ in range(4):
        for ps, o, s in ((ref, opt_ref, sched_ref), (new, opt, sched)):
            o.zero_grad()
            sum((p**3).sum() for p in ps).backward()
            o.step()
            s.step()
    for a, b in zip(ref, new, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_patch_gemm_auto_is_the_gemm_on_cuda_only_and_bad_values_are_refused(tmp_path):
    """task.patch_gemm defaults to auto: the conv on CPU (recorded as such), the GEMM wherever the input is CUDA."""
    import subprocess
    import sys

    import torch

    from vtlab.models.fastpaths import configure_fast_paths, fast_paths
    from vtlab.tasks.bench import bench_stack

    pe = PatchEmbed(3, 8, 4)
    configure_fast_paths(pe, patch_gemm="auto")
    assert pe.as_gemm is None
    assert not pe.uses_gemm(torch.device("cpu")) and pe.uses_gemm(torch.device("cuda"))
    assert fast_paths(pe, torch.device("cpu"))["patch_gemm"] is False
    assert fast_paths(pe, torch.device("cuda"))["patch_gemm"] is True
    r = bench_stack(make_ctx(tmp_path, "siglip_debug", "task.modes=[eager]", *FAST))
    assert r["fast_paths"]["patch_gemm"] is False  # the default on CPU
    bad = subprocess.run([sys.executable, "-m", "vtlab", "+model=siglip_debug", "task.patch_gemm=sometimes",
                          "logger=none", f"out_dir={tmp_path / 'bad'}"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "vtlab: error: task.patch_gemm='sometimes' is not valid; valid: auto" in bad.stderr
