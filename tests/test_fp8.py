"""`task.dtype=fp8` (vtlab.models.fp8): the parts a CPU can check, and the refusal on CPU.

- per-tensor e4m3 quantisation round-trips within e4m3 rounding, its scale maps amax to 448;
- `Fp8Linear` (torch._scaled_mm, which has a CPU kernel in torch 2.14) equals its dequantised fp32 reference
  within bf16 output rounding, and the bf16 Linear within fp8 rounding;
- `convert_to_fp8` converts exactly the blocks' Linears with widths divisible by 16 and turns the bf16 GELU
  epilogue off where fc1 was converted; the tower output stays close to bf16;
- bench refuses fp8 on CPU with a one-line ConfigError; gpu-marked: the same on CUDA, relative error vs bf16.
"""

from __future__ import annotations

import pytest
import torch

from vtlab.errors import ConfigError
from vtlab.models.fp8 import E4M3_MAX, Fp8Linear, check_fp8, convert_to_fp8, quantize
from vtlab.models.towers.siglip import VisionTower


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_quantize_round_trip_and_scale():
    t = torch.randn(256, 64) * 3
    q, s = quantize(t)
    assert q.dtype == torch.float8_e4m3fn and s.ndim == 0
    assert abs(q.float().abs().max().item() - E4M3_MAX) < 1e-3
    assert _rel(q.float() * s, t) < 0.05  # e4m3 has 3 mantissa bits: ~2-3 % relative error


def test_fp8_linear_equals_its_reference_and_approximates_bf16():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48).bfloat16()
    f = Fp8Linear(lin)
    x = torch.randn(3, 5, 64).bfloat16()
    out = f(x)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 5, 48)
    assert _rel(out, f.reference(x)) < 1e-2  # bf16 output rounding
    assert _rel(out, lin(x)) < 0.08  # fp8 rounding of both operands
    assert set(f.state_dict()) == {"weight_fp8", "weight_scale", "bias"}


def test_convert_to_fp8_converts_the_blocks_linears_only():
    torch.manual_seed(0)
    t = VisionTower(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    use_head=True).bfloat16().eval()
    for m in t.modules():
        if hasattr(m, "fused_gelu"):
            m.fused_gelu = True
    x = torch.randn(2, 3, 32, 32).bfloat16()
    with torch.inference_mode():
        ref = t(x)
    assert convert_to_fp8(t) == 2 * 4  # qkv, proj, fc1, fc2 per block
    assert all(not blk.mlp.fused_gelu for blk in t.blocks) and t.head.mlp.fused_gelu
    assert isinstance(t.head.in_proj, torch.nn.Linear) and isinstance(t.head.mlp.fc1, torch.nn.Linear)
    with torch.inference_mode():
        out = t(x)
    assert _rel(out, ref) < 0.1


def test_fp8_refused_on_cpu():
    with pytest.raises(ConfigError, match="fp8"):
        check_fp8(torch.device("cpu"))


def test_bench_fp8_on_cpu_is_a_config_error(tmp_path):
    from test_bench import make_ctx

    from vtlab.tasks.bench import bench_stack

    with pytest.raises(ConfigError, match="task.dtype=fp8 needs a CUDA GPU"):
        bench_stack(make_ctx(tmp_path, "siglip_debug", "task.dtype=fp8", "task.device=cpu"))


def test_fp8_refused_outside_bench():
    from vtlab.measure.timing import resolve_dtype

    with pytest.raises(ConfigError, match="task=bench"):
        resolve_dtype("fp8", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp8_tower_on_cuda_close_to_bf16():
    dev = torch.device("cuda")
    check_fp8(dev)
    torch.manual_seed(0)
    t = VisionTower(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_layers=4,
                    num_heads=12).to(dev, torch.bfloat16).eval()
    x = torch.randn(4, 3, 224, 224, device=dev, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = t(x)
        convert_to_fp8(t)
        out = t(x)
        lin = next(m for m in t.modules() if isinstance(m, Fp8Linear))
        probe = torch.randn(33, lin.in_features, device=dev, dtype=torch.bfloat16)
        assert _rel(lin(probe), lin.reference(probe)) < 1e-2
    assert _rel(out, ref) < 0.1
