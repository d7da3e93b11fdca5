"""`task.fused_norm` (each residual add and the LayerNorm after it as one Triton kernel, forward and backward:
vtlab.models.kernels.add_layer_norm, Block.fused_step, TowerBase.fused_norm_states) and `task.gelu_kernel` (fc1's
bias + tanh GELU as one kernel whose backward reduces the bias gradient: kernels.linear_bias_gelu) compute the plain
blocks' function and gradients.

The kernels run under Triton's interpreter (`TRITON_INTERPRET=1`, in a subprocess: the flag is read at import)
standing in for CUDA. The interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest), so exact
checks are in fp32 / fp16 and bf16 autocast is checked to bf16 tolerance; the gpu-marked test runs bf16 on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vtlab.models.fastpaths import configure_fast_paths, fast_paths
from vtlab.models.towers.siglip import VisionTower


def _interpreted(code: str) -> dict:
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


OP_CHECK = r"""
import json, torch
from torch import nn
from vtlab.models import kernels
from vtlab.models.kernels import add_layer_norm, triton_usable
torch.manual_seed(0)
kernels.BACKWARD_PROGRAMS_PER_SM = 1  # 4 programs on the interpreter's "device": each loops over several row blocks
out = {}

def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

cases = [(1152, 9, torch.float32, torch.float32, True, None),
         (768, 37, torch.float32, torch.float16, True, None),
         (40, 3, torch.float16, torch.float16, False, None),
         (72, 8200, torch.float32, torch.float32, True, None),  # several rows per program
         (768, 37, torch.float32, torch.float16, True, (2, 8, 1)),  # LN_BACKWARD_TABLE: 2 rows per program, 8 warps
         (72, 50, torch.float32, torch.float32, True, (4, 4, 8))]  # more programs than row blocks
for width, rows, xd, bd, with_dh, launch in cases:
    kernels.LN_BACKWARD_TABLE.clear()
    if launch is not None:
        kernels.LN_BACKWARD_TABLE[(width, rows)] = launch
    norm = nn.LayerNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2); norm.bias.normal_(0, 0.2)
    norm = norm.to(xd)
    x = (torch.randn(rows, width) * 3 + 1).to(xd).requires_grad_()
    br = torch.randn(rows, width).to(bd).requires_grad_()
    gy = torch.randn(rows, width)
    gh = torch.randn(rows, width)
    assert triton_usable(x)
    h, y = add_layer_norm(x, br, norm)
    loss = (y.double() * gy.double()).sum() + ((h.double() * gh.double()).sum() if with_dh else 0)
    got = [h, y, *torch.autograd.grad(loss, [x, br, norm.weight, norm.bias])]
    x64 = x.detach().double().requires_grad_(); b64 = br.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_(); bias64 = norm.bias.detach().double().requires_grad_()
    h64 = x64 + b64
    y64 = torch.nn.functional.layer_norm(h64, (width,), w64, bias64, 1e-6)
    loss64 = (y64 * gy.double()).sum() + ((h64 * gh.double()).sum() if with_dh else 0)
    ref = [h64, y64, *torch.autograd.grad(loss64, [x64, b64, w64, bias64])]
    names = ["h", "y", "dx", "dbranch", "dweight", "dbias"]
    key = f"{width}_{xd}_{bd}" + (f"_{launch}" if launch else "")
    out[key] = {n: rel(a, b) for n, a, b in zip(names, got, ref)}
    out[key]["dtypes"] = [str(t.dtype) for t in got]
print(json.dumps(out))
"""


GELU_CHECK = r"""
import json, torch
from torch import nn
from vtlab.models import kernels
from vtlab.models.kernels import linear_bias_gelu
torch.manual_seed(0)
out = {}
fwd0, bwd0 = kernels.GELU_FWD_LAUNCH, kernels.GELU_BWD_LAUNCH
for rows, k, width, dt, fwd, bwd in ((37, 24, 300, torch.float32, None, None),
                                     (70, 16, 128, torch.float16, None, None),
                                     (5, 8, 40, torch.float32, None, None),
                                     (37, 24, 300, torch.float32, (8, 256, 4), (16, 64, 4, 1)),  # looping programs
                                     (70, 16, 128, torch.float16, (64, 32, 8), (8, 128, 8, 16))):
    kernels.GELU_FWD_LAUNCH, kernels.GELU_BWD_LAUNCH = fwd or fwd0, bwd or bwd0
    fc = nn.Linear(k, width).to(dt)
    with torch.no_grad():
        fc.bias.normal_(0, 1.0)
    x = torch.randn(rows, k).to(dt).requires_grad_()
    gy = torch.randn(rows, width)
    y = linear_bias_gelu(x, fc)
    got = [y, *torch.autograd.grad((y.double() * gy.double()).sum(), [x, fc.weight, fc.bias])]
    x64 = x.detach().double().requires_grad_(); w64 = fc.weight.detach().double().requires_grad_()
    b64 = fc.bias.detach().double().requires_grad_()
    y64 = torch.nn.functional.gelu(x64 @ w64.t() + b64, approximate="tanh")
    ref = [y64, *torch.autograd.grad((y64 * gy.double()).sum(), [x64, w64, b64])]
    out[f"{width}_{dt}_{fwd}_{bwd}"] = [((a.double() - b).norm() / b.norm()).item() for a, b in zip(got, ref)]
kernels.GELU_FWD_LAUNCH, kernels.GELU_BWD_LAUNCH = fwd0, bwd0
# the ops read inputs at their own row stride (Inductor pads a 4304-wide GEMM output's rows to 4352): rows of a wider
# buffer, (2, 9, 300) in a (2, 9, 320) allocation, give the contiguous inputs' results exactly
wide_u, wide_dy = torch.randn(2, 9, 320), torch.randn(2, 9, 320)
u, dy, b = wide_u[..., :300], wide_dy[..., :300], torch.randn(300)
assert not u.is_contiguous() and u.reshape(-1, 300).stride(0) == 320
y = torch.ops.vtlab.bias_gelu_fwd(u, b)
du, db = torch.ops.vtlab.bias_gelu_bwd(dy, u, b)
y0 = torch.ops.vtlab.bias_gelu_fwd(u.contiguous(), b)
du0, db0 = torch.ops.vtlab.bias_gelu_bwd(dy.contiguous(), u.contiguous(), b)
assert y.is_contiguous() and du.is_contiguous()
out["padded_rows"] = [float((y - y0).abs().max()), float((du - du0).abs().max()), float((db - db0).abs().max())]
print(json.dumps(out))
"""


def test_bias_gelu_kernels_equal_autograd_under_the_interpreter():
    """linear_bias_gelu == tanh-GELU(fc(x)) against fp64 autograd: output and the gradients of x, weight and bias
    (the bias gradient reduced in the backward kernel), widths not a multiple of the column tile, rows not of the
    row tile."""
    res = _interpreted(GELU_CHECK)
    assert res.pop("padded_rows") == [0.0, 0.0, 0.0]
    for key, errs in res.items():
        tol = 3e-3 if "float16" in key else 1e-5
        assert max(errs) < tol, (key, errs)


def test_bias_gelu_ops_take_any_input_layout():
    """Both bias_gelu ops carry torch.Tag.flexible_layout: Inductor hands them its own (padded) layouts instead of
    copying their inputs into the eager strides first."""
    for op in (torch.ops.vtlab.bias_gelu_fwd.default, torch.ops.vtlab.bias_gelu_bwd.default):
        assert torch.Tag.flexible_layout in op.tags, op


def test_add_layer_norm_kernels_equal_autograd_under_the_interpreter():
    """h = x + branch and LayerNorm(h), and the gradients of x, the branch, weight and bias, against fp64 autograd:
    fp32 to fp32 rounding, fp16 to fp16 rounding; a mixed fp32 residual + fp16 branch gives the branch its own
    dtype's gradient; rows that do not fill a program, widths padded to a power of two, programs looping over rows."""
    res = _interpreted(OP_CHECK)
    for key, errs in res.items():
        dtypes = errs.pop("dtypes")
        xd, bd = key.split("_")[1:3]
        assert dtypes[2] == xd and dtypes[3] == bd, (key, dtypes)
        tol = 1e-5 if "float16" not in key else 2e-3
        for name, err in errs.items():
            if name == "dbranch" and bd != xd:
                assert err < 2e-3, (key, name, err)  # the fp32 gradient rounded once to fp16
            elif "float16" in xd:
                assert err < 2e-3, (key, name, err)
            else:
                assert err < tol, (key, name, err)


TOWER_CHECK = r"""
import json, torch
from vtlab.models.fastpaths import configure_fast_paths
from vtlab.models.towers.siglip import VisionTower

def tower(**kw):
    torch.manual_seed(0)
    t = VisionTower(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, **kw)
    for p in t.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return t

def run(t, x, autocast):
    t.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = t(x)
    torch.manual_seed(1)  # a random projection: the post-LayerNorm output's square is nearly constant
    loss = (out.float() * torch.randn(out.shape)).sum()
    loss.backward()
    return out.detach().float(), [p.grad.clone() for p in t.parameters() if p.grad is not None]

def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

res = {}
x = torch.randn(2, 3, 32, 32)
for taps in (None, [1, -1], [0, 2]):
    for autocast in (False, True):
        plain = tower(feature_layers=taps)
        fused = configure_fast_paths(tower(feature_layers=taps), fused_norm=True, gelu_kernel=True)
        assert fused.uses_fused_norm(x, None) and not plain.uses_fused_norm(x, None)
        a, ga = run(plain, x, autocast)
        b, gb = run(fused, x, autocast)
        assert len(ga) == len(gb)
        res[f"{taps}_{autocast}"] = [rel(b, a), max(rel(p, q) for p, q in zip(gb, ga))]
print(json.dumps(res))
"""


def test_tower_with_fused_norm_equals_plain_tower_forward_and_backward():
    """The whole tower with both kernels (3 blocks, the post-LayerNorm fused with the last add; taps at the embedding, inside and at
    the last block) with `fused_norm` == the plain tower: output and every parameter's gradient, in fp32 and under
    bf16 autocast (the interpreter's truncating bf16 casts: bf16 tolerance)."""
    res = _interpreted(TOWER_CHECK)
    for key, (out_err, grad_err) in res.items():
        tol = 2e-2 if key.endswith("True") else 1e-5
        assert out_err < tol and grad_err < tol * 3, (key, out_err, grad_err)


COMPILE_CHECK = r"""
import json, torch
from vtlab.models.fastpaths import configure_fast_paths
from vtlab.models.towers.siglip import VisionTower
torch.manual_seed(0)
t = configure_fast_paths(VisionTower(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2,
                                     num_heads=4), fused_norm=True, gelu_kernel=True)
x = torch.randn(2, 3, 32, 32)
g = torch.randn(2, 16, 32)  # a random projection: the post-LayerNorm output's square is nearly constant
want = t(x)
(want * g).sum().backward()
ref = [p.grad.clone() for p in t.parameters()]
t.zero_grad()
got = torch.compile(t, fullgraph=True)(x)
(got * g).sum().backward()
print(json.dumps([((got - want).norm() / want.norm()).item(),
                  max(((p.grad - r).norm() / r.norm().clamp(min=1e-30)).item() for p, r in zip(t.parameters(), ref))]))
"""


def test_fused_norm_compiles_fullgraph_with_its_backward():
    """torch.compile keeps the forward and backward kernels whole (custom ops with register_autograd): no graph
    break, same output and gradients as eager."""
    out_err, grad_err = _interpreted(COMPILE_CHECK)
    assert out_err < 1e-5 and grad_err < 1e-4


def test_fused_norm_is_off_the_kernel_on_cpu_and_off_with_checkpointing_or_a_mask():
    """Without CUDA (and without the interpreter) the tower runs its plain blocks; activation checkpointing (which
    wraps whole blocks) and a key mask keep the plain loop too; fast_paths reports the setting for CUDA."""
    torch.manual_seed(0)
    t = VisionTower(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)
    configure_fast_paths(t, fused_norm=True, gelu_kernel=True)
    x = torch.randn(2, 3, 32, 32)
    emb = t.embed(x)
    assert all(b.fuses_norm() for b in t.blocks)
    assert not t.uses_fused_norm(emb, None)  # CPU, no interpreter
    assert fast_paths(t, torch.device("cuda"))["fused_norm"] and not fast_paths(t, torch.device("cpu"))["fused_norm"]
    assert fast_paths(t, torch.device("cuda"))["gelu_kernel"]
    plain = [b.mlp.fc2(b.mlp.act(b.mlp.fc1(emb))) for b in t.blocks]  # CPU: the plain MLP
    assert all(torch.equal(b.mlp(emb), want) for b, want in zip(t.blocks, plain, strict=True))
    configure_fast_paths(t, fused_norm=False)
    assert not fast_paths(t, torch.device("cuda"))["fused_norm"]


def test_train_task_passes_fused_norm_to_the_tower():
    """`task.fused_norm` of task=train reaches every block (vtlab.tasks.train configures the stack with it)."""
    from vtlab.api import compose_config, to_config

    cfg = to_config(compose_config("siglip_debug", ["task=train", "task.gelu_kernel=false"]))
    assert cfg.task.fused_norm is True and cfg.task.gelu_kernel is False
    default = to_config(compose_config("siglip_debug", ["task=train"]))
    assert default.task.fused_norm is True and default.task.gelu_kernel is True  # both training kernels: default
    off = to_config(compose_config("siglip_debug", ["task=train", "task.fused_norm=false"]))
    assert off.task.fused_norm is False


@pytest.mark.gpu
def test_cuda_fused_norm_tower_matches_plain_tower_in_bf16_autocast():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    # MLP width 688: 1376-byte rows, which Inductor pads to 128 bytes in the compiled tower (the bias_gelu ops then
    # read padded rows, as at llavanext's 4304)
    kw = dict(image_size=64, patch_size=8, hidden_size=1152, intermediate_size=688, num_layers=3, num_heads=16)
    plain = VisionTower(**kw).cuda()
    fused = VisionTower(**kw).cuda()
    fused.load_state_dict(plain.state_dict())
    configure_fast_paths(fused, fused_norm=True, gelu_kernel=True)
    compiled = VisionTower(**kw).cuda()
    compiled.load_state_dict(plain.state_dict())
    configure_fast_paths(compiled, fused_norm=True, gelu_kernel=True)
    x = torch.randn(4, 3, 64, 64, device="cuda")
    g = torch.randn(4, 64, 1152, device="cuda")
    outs, grads = [], []
    for t, fn in ((plain, plain), (fused, fused), (compiled, torch.compile(compiled))):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(x)
        (out.float() * g).sum().backward()
        outs.append(out.float())
        grads.append([p.grad.float() for p in t.parameters()])
    assert fused.uses_fused_norm(fused.embed(x), None)
    for got, grad in ((outs[1], grads[1]), (outs[2], grads[2])):
        assert ((got - outs[0]).norm() / outs[0].norm()).item() < 1e-2
        for a, b in zip(grad, grads[0], strict=True):
            assert ((a - b).norm() / b.norm().clamp(min=1e-30)).item() < 3e-2


@pytest.mark.gpu
def test_cuda_fused_norm_training_forward_is_one_graph():
    """The fine-tuning forward with both training kernels compiles to one graph. On the H200's torch 2.11 Dynamo
    could not trace `bool(list)` in `uses_fused_norm` / `uses_stream` and broke the graph there
    (`levers_h200_2026-12-02c/call4/graph_breaks.json`: two graphs, the patch embedding and the stack)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    t = VisionTower(image_size=64, patch_size=8, hidden_size=256, intermediate_size=688, num_layers=2,
                    num_heads=4).cuda().train()
    configure_fast_paths(t, fused_norm=True, gelu_kernel=True)
    x = torch.randn(2, 3, 64, 64, device="cuda")
    torch._dynamo.reset()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        report = torch._dynamo.explain(t)(x)
    assert report.graph_count == 1, [str(b.reason)[:300] for b in report.break_reasons]


def test_activation_names_are_strict_and_every_tanh_name_takes_the_gelu_kernel():
    """One `activation` (vtlab.models.layers) for towers and connectors: transformers' tanh-GELU names all give the
    tanh GELU and mark the MLP for the GELU kernels (`Mlp.tanh_gelu`), and an unknown name raises instead of
    silently becoming the erf GELU (mlp_layout_probe.py's first H200 run timed the erf GELU on both sides that way)."""
    from vtlab.models.layers import Mlp, QuickGELU, activation
    from vtlab.models.towers import common

    assert common.activation is activation
    for name in ("gelu_tanh", "gelu_pytorch_tanh", "gelu_new"):
        act = activation(name)
        assert isinstance(act, torch.nn.GELU) and act.approximate == "tanh"
        assert Mlp(8, 16, name).tanh_gelu
    assert activation("gelu").approximate == "none" and not Mlp(8, 16, "gelu").tanh_gelu
    assert isinstance(activation("quick_gelu"), QuickGELU) and isinstance(activation("silu"), torch.nn.SiLU)
    with pytest.raises(ValueError, match="unsupported activation 'relu6'; valid: gelu_tanh"):
        activation("relu6")
