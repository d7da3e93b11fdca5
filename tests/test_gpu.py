"""CUDA checks (marked `gpu`: skipped without a CUDA device; run on the H200 and recorded in experiments/gpu_tests/).

- the fused fc1 + tanh-GELU epilogue (cuBLASLt, `torch._addmm_activation`) against an fp32 reference, no worse
  than the plain bf16 path;
- every bench mode (eager, compile, cudagraphs) runs and gives the eager outputs within bf16 rounding;
- counted FLOPs equal the closed form on CUDA whatever kernels run (fused epilogue, flash / cuDNN / efficient SDPA);
- every attention backend in the one table runs the tower (or is refused with its message) and matches math;
- `cudnn_safe` takes cuDNN only at clean key lengths, and its gradients stay finite at the NaN trigger.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vtlab.api import build, compose_config, to_config
from vtlab.measure.flops import closed_form_flops, stage_costs
from vtlab.measure.modes import MODES, make_runner
from vtlab.models.sdpa import BACKENDS, configure, detect_backend, pinned
from vtlab.results.record import RunContext
from vtlab.tasks.bench import bench_stack

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def test_fused_gelu_epilogue_is_as_accurate_as_the_plain_bf16_path() -> None:
    torch.manual_seed(0)
    stack32 = build("smolvlm").to(CUDA).eval()
    x = torch.randn(4, 3, 512, 512, device=CUDA)
    with torch.inference_mode():
        ref = stack32(x)
        stack = stack32.to(torch.bfloat16)
        plain = stack(x.bfloat16())
        configure(stack, fused_gelu=True)
        fused = stack(x.bfloat16())
    e_plain, e_fused = _rel(plain, ref), _rel(fused, ref)
    print(f"smolvlm bf16 relative error vs fp32: plain {e_plain:.3e}, fused epilogue {e_fused:.3e}")
    assert e_fused <= 1.1 * e_plain + 1e-4 and e_fused < 2e-2


@pytest.mark.parametrize("mode", MODES)
def test_every_bench_mode_runs_within_bf16_rounding_of_fp32(mode: str) -> None:
    """Each mode's bf16 output is as close to the fp32 reference as eager bf16 is (within 1.5x)."""
    torch.manual_seed(0)
    stack = build("siglip").to(CUDA).eval()
    x = torch.randn(8, 3, 224, 224, device=CUDA)
    with torch.inference_mode():
        ref = stack(x).clone()
        stack = stack.to(torch.bfloat16)
        configure(stack, fused_gelu=True)
        xb = x.bfloat16()
        eager = stack(xb).clone()
        run = make_runner(mode, stack)
        for _ in range(3):  # CUDA graphs record on the 2nd-3rd call
            out = run(xb)
        out = out.clone()
    e_eager, e_mode = _rel(eager, ref), _rel(out, ref)
    print(f"mode {mode}: relative error vs fp32 {e_mode:.3e} (eager bf16 {e_eager:.3e})")
    assert e_mode <= 1.5 * e_eager
    torch._dynamo.reset()


@pytest.mark.parametrize("preset", ["siglip", "smolvlm", "llavanext"])
def test_counted_flops_equal_the_closed_form_on_cuda(preset: str) -> None:
    stack = build(preset).to(CUDA, torch.bfloat16).eval()
    configure(stack, fused_gelu=True)  # the kernels a CUDA bench runs
    pixels = torch.randn(stack.input_shape(1), device=CUDA, dtype=torch.bfloat16)
    costs = stage_costs(stack, pixels)
    closed = closed_form_flops(stack)
    print(f"{preset}: tower counted {costs.tower_flops:,} vs closed {closed['tower']:,}")
    assert costs.tower_flops == closed["tower"] and costs.connector_flops == closed["connector"]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_attention_backend_runs_the_tower(backend: str) -> None:
    """Each backend runs the kernel it names, within 1.5x of the bf16 math kernel's error against fp32."""
    torch.manual_seed(0)
    stack = build("siglip").to(CUDA).eval()
    x = torch.randn(4, 3, 224, 224, device=CUDA)
    with torch.inference_mode():
        ref = stack(x)
        stack, xb = stack.to(torch.bfloat16), x.bfloat16()
        with pinned("math"):
            math = stack(xb)
        configure(stack, backend)
        with pinned(backend):
            out = stack(xb)
            ran = detect_backend(lambda: stack(xb), backend)
    e_math, e_out = _rel(math, ref), _rel(out, ref)
    print(f"backend {backend}: ran {ran['ran']} ({ran['kernels']}), relative error vs fp32 {e_out:.3e} "
          f"(bf16 math {e_math:.3e})")
    assert e_out <= 1.5 * e_math
    if backend not in ("auto", "no_cudnn"):
        assert ran["ran"] == ("cudnn" if backend == "cudnn_safe" else backend)  # 196 keys: clean for cuDNN


@pytest.mark.parametrize(("tokens", "expected"), [(196, "cudnn"), (256, "cudnn"), (64, "flash"), (576, "flash")])
def test_cudnn_safe_takes_cudnn_only_at_clean_key_lengths_and_its_gradients_are_finite(tokens, expected) -> None:
    """The layer policy on the device: cuDNN where cudnn_is_clean, flash at key length % 128 == 64, and a
    backward through strongly negative logits (the NaN trigger) gives finite gradients either way."""
    from vtlab.models.layers import Attention
    from vtlab.models.sdpa import configure_attention

    torch.manual_seed(0)
    attn = configure_attention(Attention(768, 12), "cudnn_safe").to(CUDA, torch.bfloat16)
    with torch.no_grad():  # q row 0 = 1 and k row 0 = -150 sqrt(d): every logit about -150
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        for h in range(12):
            attn.qkv.bias[h * 64] = 1.0
            attn.qkv.bias[768 + h * 64] = -150.0 * 8.0
        attn.qkv.weight[1536:] = torch.randn(768, 768, device=CUDA, dtype=torch.bfloat16) * 0.05
    x = torch.randn(4, tokens, 768, device=CUDA, dtype=torch.bfloat16, requires_grad=True)
    with pinned("cudnn_safe"):
        ran = detect_backend(lambda: attn(x), "cudnn_safe")
        attn(x).float().square().sum().backward()
    assert ran["ran"] == expected
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_bench_on_cuda_records_flops_equal_to_the_closed_form(tmp_path: Path) -> None:
    raw = compose_config("smolvlm", ["task=bench", "task.modes=[eager]", "task.latency_iters=5", "task.iters=2",
                                     "task.repeats=2", "logger=none"])
    result = bench_stack(RunContext(cfg=to_config(raw), raw=raw, out_dir=tmp_path, model_choice="smolvlm"))
    assert result["fused_gelu"] is True
    assert result["flops"] == result["flops_closed_form"]
    assert result["mfu"] is not None and 0 < result["mfu"] < 1
