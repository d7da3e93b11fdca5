"""Issue 16's fast paths compute the same function as the plain paths, forward and backward.

- patch embedding as one GEMM == the valid-padding conv (fp64 and fp32, incl. 384/14-style remainders the
  conv drops), gradients of input, weight and bias included; state-dict names unchanged;
- `linear_gelu` (the fc1+GELU training path) == fc1 -> GELU with autograd, values and grads, for the tanh GELU
  (fallback forward, custom backward) and the erf GELU (CPU's `_addmm_activation` epilogue, custom backward);
  the device epilogue table is checked on CPU here and on CUDA in the gpu-marked test;
- activation checkpointing per block gives the same loss and gradients;
- the whole tower with every fast path on == the plain tower, forward and backward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vtlab.models.fastpaths import EPILOGUE_GELU, PatchEmbed, configure_fast_paths, fast_paths, gelu_grad, linear_gelu
from vtlab.models.towers.siglip import VisionTower


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("size,patch", [((32, 32), 8), ((384, 384), 14), ((45, 61), 7), ((40, 28), 14)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_patch_gemm_equals_conv_forward_and_backward(size, patch, dtype):
    torch.manual_seed(0)
    pe = PatchEmbed(3, 24, patch).to(dtype)
    x = torch.randn(2, 3, *size, dtype=dtype, requires_grad=True)
    ref, grid = pe.tokens(x)
    assert grid == (size[0] // patch, size[1] // patch)
    assert ref.shape == (2, grid[0] * grid[1], 24)
    go = torch.randn_like(ref)
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(ref, (x, pe.weight, pe.bias), go)
    pe.as_gemm = True
    out, grid2 = pe.tokens(x)
    gx, gw, gb = torch.autograd.grad(out, (x, pe.weight, pe.bias), go)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert grid2 == grid
    for a, b in ((out, ref), (gx, gx_ref), (gw, gw_ref), (gb, gb_ref)):
        assert _rel(a, b) < tol
    # the remainder the conv drops gets no gradient on either path
    assert gx[..., grid[0] * patch :, :].abs().sum() == 0 and gx[..., grid[1] * patch :].abs().sum() == 0
    assert set(pe.state_dict()) == {"weight", "bias"} and pe.weight.shape == (24, 3, patch, patch)


def test_epilogue_gelu_on_cpu_is_the_table_entry():
    x, w, b = torch.randn(7, 16, dtype=torch.float64), torch.randn(12, 16, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    out = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    ref = F.gelu(F.linear(x, w, b), approximate=EPILOGUE_GELU["cpu"])
    assert (out - ref).abs().max() < 1e-12


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_grad_matches_autograd(approximate):
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(F.gelu(x, approximate=approximate).sum(), x)
    assert (gelu_grad(x.detach(), approximate) - g).abs().max() < 1e-12


@pytest.mark.parametrize("approximate", ["tanh", "none"])  # none: CPU's _addmm_activation epilogue runs
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_gelu_equals_plain_forward_and_backward(approximate, dtype):
    torch.manual_seed(0)
    fc = torch.nn.Linear(16, 40).to(dtype)
    x = torch.randn(2, 9, 16, dtype=dtype, requires_grad=True)
    go = torch.randn(2, 9, 40, dtype=dtype)
    ref = F.gelu(fc(x), approximate=approximate)
    grads_ref = torch.autograd.grad(ref, (x, fc.weight, fc.bias), go)
    out = linear_gelu(x, fc, approximate)
    grads = torch.autograd.grad(out, (x, fc.weight, fc.bias), go)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert out.shape == ref.shape and _rel(out, ref) < tol
    for a, b in zip(grads, grads_ref, strict=True):
        assert _rel(a, b) < tol


def test_linear_gelu_under_cpu_autocast_runs_in_the_autocast_dtype():
    fc = torch.nn.Linear(16, 32)
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_gelu(x, fc, "tanh")
        ref = F.gelu(fc(x), approximate="tanh")
    assert out.dtype == torch.bfloat16 and _rel(out, ref) < 1e-2
    out.float().sum().backward()
    assert x.grad is not None and fc.weight.grad is not None and fc.weight.grad.dtype == torch.float32


def _tower(**kw) -> VisionTower:
    torch.manual_seed(0)
    t = VisionTower(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, **kw)
    for p in t.parameters():  # off the (1, 0) LayerNorm init, off zero biases
        p.data.add_(torch.randn_like(p) * 0.05)
    return t


def _loss_and_grads(t: VisionTower, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    t.zero_grad()
    loss = (t(x) ** 2).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in t.parameters() if p.grad is not None]


@pytest.mark.parametrize("feature_layers", [None, [-2, -1]])
def test_tower_with_fast_paths_equals_plain_tower(feature_layers):
    t = _tower(feature_layers=feature_layers).double().train()
    x = torch.randn(2, 3, 36, 35, dtype=torch.float64)  # remainders: 36/8, 35/8
    ref_loss, ref_grads = _loss_and_grads(t, x)
    configure_fast_paths(t, patch_gemm=True, fused_gelu_train=True, activation_checkpointing=True)
    assert fast_paths(t, torch.device("cpu"))["patch_gemm"] and fast_paths(t, torch.device("cpu"))["activation_checkpointing"]
    assert not fast_paths(t, torch.device("cpu"))["fused_gelu_train"]  # CUDA only
    loss, grads = _loss_and_grads(t, x)
    assert abs(loss - ref_loss) / ref_loss < 1e-12
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads, strict=True):
        assert _rel(a, b) < 1e-10


def test_activation_checkpointing_only_in_training_with_grad():
    t = _tower()
    configure_fast_paths(t, activation_checkpointing=True)
    calls = []
    import vtlab.models.towers.siglip as mod

    orig = mod.checkpoint
    mod.checkpoint = lambda fn, x, **kw: (calls.append(1), orig(fn, x, **kw))[1]
    try:
        t.eval()
        with torch.no_grad():
            t(torch.randn(1, 3, 32, 32))
        assert not calls
        t.train()
        t(torch.randn(1, 3, 32, 32)).sum().backward()
        assert len(calls) == 2
    finally:
        mod.checkpoint = orig


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_epilogue_and_fused_training_mlp_match_plain_path():
    from vtlab.models.layers import Mlp

    dev = torch.device("cuda")
    x, w, b = (torch.randn(64, 128, device=dev), torch.randn(256, 128, device=dev), torch.randn(256, device=dev))
    ep = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    assert _rel(ep, F.gelu(F.linear(x, w, b), approximate=EPILOGUE_GELU["cuda"])) < 1e-3
    torch.manual_seed(0)
    mlp = Mlp(128, 512, "gelu_tanh").to(dev)
    xin = torch.randn(4, 50, 128, device=dev, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = mlp(xin)
    grads_ref = torch.autograd.grad(ref.float().square().mean(), [xin, *mlp.parameters()])
    mlp.fused_gelu_train = True
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = mlp(xin)
    grads = torch.autograd.grad(out.float().square().mean(), [xin, *mlp.parameters()])
    assert _rel(out, ref) < 2e-2
    for a, g in zip(grads, grads_ref, strict=True):
        assert _rel(a, g) < 3e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inference_epilogue_under_autocast_runs_in_bf16():
    from vtlab.models.layers import Mlp

    mlp = Mlp(128, 512, "gelu_tanh").cuda()
    mlp.fused_gelu = True
    x = torch.randn(2, 10, 128, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = mlp(x)
        mlp.fused_gelu = False
        ref = mlp(x)
    assert out.dtype == ref.dtype == torch.bfloat16 and _rel(out, ref) < 2e-2


def test_linear_gelu_compiles_fullgraph_with_its_backward():
    fc = torch.nn.Linear(16, 32)

    def f(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return linear_gelu(F.layer_norm(x, (16,)), fc, "none")

    x = torch.randn(4, 16, requires_grad=True)
    torch.compile(f, backend="aot_eager", fullgraph=True)(x).float().sum().backward()
    g, x.grad = x.grad.clone(), None
    f(x).float().sum().backward()
    assert torch.equal(g, x.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_patch_gemm_compiled_bf16_on_cuda_matches_conv():
    pe = PatchEmbed(3, 768, 14).cuda().bfloat16()
    x = torch.randn(8, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref, _ = pe.tokens(x)
        pe.as_gemm = True
        out, _ = torch.compile(pe.tokens, fullgraph=True)(x)
    assert _rel(out, ref) < 1e-2


# ------------------------------------------------------------------------------------------- residual in the GEMM
@pytest.mark.parametrize("feature_layers", [None, [0, -2, -1]])
def test_residual_stream_equals_plain_blocks(feature_layers):
    """`stream_states` (the residual add in the out-projection / fc2 GEMMs, the biases carried in acc) gives the
    plain blocks' hidden states, taps at the embedding and after blocks included, and leaves its input alone."""
    t = _tower(feature_layers=feature_layers).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        emb = t.embed(x)
        ref = t.block_states(emb)
        kept = emb.clone()
        last, states = t.stream_states(emb, t.num_layers, list(range(t.num_layers + 1)))
        assert torch.equal(emb, kept)
        assert _rel(last, ref[-1]) < 1e-12
        for a, b in zip(states, ref, strict=True):
            assert _rel(a, b) < 1e-12
        configure_fast_paths(t, residual_gemm=True)
        assert all(b.streams() for b in t.blocks)
        assert not t.uses_stream(emb, None)  # CUDA inference only: on CPU the tower runs its plain blocks
        assert not fast_paths(t, torch.device("cpu"))["residual_gemm"] and fast_paths(t, torch.device("cuda"))["residual_gemm"]
        assert _rel(t(x), t.run_stack(emb)) == 0.0


def test_residual_addmm_is_in_place_and_compiles():
    from vtlab.models.fastpaths import residual_addmm_

    torch.manual_seed(0)
    r, a, w = torch.randn(2, 5, 8), torch.randn(10, 6), torch.randn(8, 6)
    want = r + (a @ w.t()).view(2, 5, 8)
    ptr = r.data_ptr()
    residual_addmm_(r, a, w)
    assert r.data_ptr() == ptr and _rel(r, want) < 1e-6

    def step(x: torch.Tensor) -> torch.Tensor:
        s = x * 2
        residual_addmm_(s, a, w)
        return s + 1

    x = torch.randn(2, 5, 8)
    assert _rel(torch.compile(step, fullgraph=True)(x), x * 2 + (a @ w.t()).view(2, 5, 8) + 1) < 1e-6


def test_residual_stream_counts_the_flops_of_the_plain_blocks():
    """torch.utils.flop_counter does not look inside a custom op: the residual GEMMs (`residual_addmm_`, the
    out-projection and fc2) carry their own formula, so task=bench and task=profile count the same FLOPs with
    `task.residual_gemm` as without it (the H200 run of tests/test_gpu.py counted 2/3 of smolvlm's FLOPs before)."""
    from vtlab.measure.flops import count_flops
    from vtlab.models.fastpaths import residual_addmm_

    r, a, w = torch.zeros(2, 5, 8), torch.randn(10, 6), torch.randn(8, 6)
    assert count_flops(lambda: residual_addmm_(r, a, w)) == 2 * 10 * 6 * 8
    t = _tower().eval()
    x = torch.randn(2, 3, 32, 32)
    emb = t.embed(x)
    plain = count_flops(lambda: t.block_states(emb))
    assert plain > 0 and count_flops(lambda: t.stream_states(emb.clone(), t.num_layers, [])) == plain


@pytest.mark.parametrize("override,expected", [((), True), (("task.residual_gemm=false",), False)])
def test_bench_and_profile_stream_by_default(override, expected):
    """task.residual_gemm is on by default (measured on the H200, 2026-12-02) for task=bench and task=profile, and
    `false` turns it off; fast_paths reports it for CUDA only."""
    from vtlab.api import build_stack, compose_config, to_config

    for task in ("bench", "profile"):
        cfg = to_config(compose_config("siglip_debug", [f"task={task}", *override]))
        assert cfg.task.residual_gemm is expected
        stack = configure_fast_paths(build_stack(cfg), residual_gemm=cfg.task.residual_gemm)
        assert fast_paths(stack, torch.device("cuda"))["residual_gemm"] is expected
        assert fast_paths(stack, torch.device("cpu"))["residual_gemm"] is False


def test_fp8_blocks_leave_the_residual_stream():
    from vtlab.models.fp8 import convert_to_fp8

    t = _tower()
    configure_fast_paths(t, residual_gemm=True)
    convert_to_fp8(t)
    assert not any(b.residual_gemm or b.streams() for b in t.blocks)


SHIFTED_LN_CHECK = r"""
import json, torch, torch.nn.functional as F
from vtlab.models import kernels
from vtlab.models.kernels import launch_config, shifted_layer_norm, _shifted_layer_norm_op, triton_usable
torch.manual_seed(0)
kernels.LAUNCH_TABLE[(768, 9)] = (4, 2)  # a measured-table entry: 4 rows per program, the last program partial
out = {}
for width, rows in ((1152, 5), (768, 9), (40, 3)):  # padded to 2048 / 1024 / 64 lanes; partial row blocks
    norm = torch.nn.LayerNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2); norm.bias.normal_(0, 0.2)
    for dt in (torch.float32, torch.float16):
        r = (torch.randn(rows, width) * 3 + 1).to(dt)
        shift = (torch.randn(width) * 0.5).to(dt)
        ref = F.layer_norm(r.double() + shift.double(), (width,), norm.weight.double(), norm.bias.double(), 1e-6)
        n = norm.to(dt)
        with torch.no_grad():
            got = shifted_layer_norm(r, shift, n)
        assert triton_usable(r) and got.dtype == dt
        out[f"{width}_{dt}"] = ((got.double() - ref).norm() / ref.norm()).item()
print(json.dumps(out))
"""


def test_shifted_layer_norm_kernel_under_the_triton_interpreter():
    """vtlab.models.kernels' LayerNorm kernel == F.layer_norm(r + shift) (fp32 and fp16; bf16 has no interpreter
    type), at widths that are and are not powers of two, rows not a multiple of the rows per program."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", SHIFTED_LN_CHECK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert len(errs) == 6
    for key, err in errs.items():
        assert err < (1e-6 if "float32" in key else 1e-3), (key, err)


def test_shifted_layer_norm_off_the_kernel_is_torch():
    from vtlab.models.kernels import launch_config, shifted_layer_norm

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(24)
    r, shift = torch.randn(3, 7, 24), torch.randn(24)
    assert torch.equal(shifted_layer_norm(r, shift, norm), norm(r + shift))  # CPU: torch's ops
    # the H200 sweep's fastest launches (experiments/gpu_speed/levers_h200_2026-12-02/call3/ln_sweep.json)
    assert launch_config(1152, 64 * 729) == (2048, 4, 4) and launch_config(768, 256 * 196) == (1024, 4, 4)
    assert launch_config(768, 1024) == (1024, 1, 4) and launch_config(1152, 729) == (2048, 1, 4)
    assert launch_config(4096, 100) == (4096, 1, 8) and launch_config(16384, 100) == (16384, 1, 16)


def test_shifted_layer_norm_launch_table_overrides_the_rule(monkeypatch):
    from vtlab.models import kernels

    monkeypatch.setitem(kernels.LAUNCH_TABLE, (1152, 46656), (1, 4))
    assert kernels.launch_config(1152, 46656) == (2048, 1, 4)
    assert kernels.launch_config(1152, 729) == (2048, 1, 4)  # other row counts keep the rule


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_residual_stream_matches_plain_tower_in_bf16():
    """On CUDA in bf16: the streamed tower (Triton LayerNorm, in-place GEMMs), eager and compiled, is within bf16
    rounding of the plain bf16 tower, both against fp32."""
    t = _tower(feature_layers=None).cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.inference_mode():
        ref32 = t(x)
        t16 = t.to(torch.bfloat16)
        plain = t16(x.bfloat16()).float()
        configure_fast_paths(t16, residual_gemm=True)
        assert t16.uses_stream(t16.embed(x.bfloat16()), None)
        streamed = t16(x.bfloat16()).float()
        compiled = torch.compile(t16)(x.bfloat16()).float()
    assert _rel(streamed, ref32) <= 1.5 * _rel(plain, ref32) + 1e-3
    assert _rel(compiled, ref32) <= 1.5 * _rel(plain, ref32) + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_streamed_tower_is_one_graph():
    """The whole bf16 inference tower with the residual stream and the patch GEMM compiles to one graph (on the
    H200's torch 2.11 `bool(list)` in `uses_stream` broke it after the patch embedding:
    `experiments/gpu_speed/levers_h200_2026-12-02c/call4/graph_breaks.json`)."""
    t = _tower(feature_layers=None).cuda().eval().to(torch.bfloat16)
    configure_fast_paths(t, residual_gemm=True, patch_gemm=True)
    x = torch.randn(2, 3, 32, 32, device="cuda", dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.inference_mode():
        assert t.uses_stream(t.embed(x), None)
        report = torch._dynamo.explain(t)(x)
    assert report.graph_count == 1, [str(b.reason)[:300] for b in report.break_reasons]


STREAM_COMPILE_CHECK = r"""
import torch
from vtlab.models.towers.siglip import VisionTower
torch.manual_seed(0)
t = VisionTower(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4).eval()
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    emb = t.embed(x)
    want = t.stream_states(emb, t.num_layers, None)[0]
    got = torch.compile(lambda e: t.stream_states(e, t.num_layers, None)[0], fullgraph=True)(emb)
print(((got - want).norm() / want.norm()).item())
"""


def test_residual_stream_compiles_as_one_graph():
    """No graph break in the streamed stack with the LayerNorm kernel on (Triton's interpreter stands in for CUDA):
    a break makes the mutated stream a graph input, and CUDA graphs skip graphs that mutate their inputs (the H200
    call that found it ran llavanext's batch 1 at 39.7 ms instead of ~2.3)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", STREAM_COMPILE_CHECK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5
