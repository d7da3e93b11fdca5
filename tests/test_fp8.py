"""`task.dtype=fp8` (vtlab.models.fp8): the parts a CPU can check, and the refusal on CPU.

- per-tensor and per-row e4m3 quantisation round-trip within e4m3 rounding, their scales map amax to 448;
- `Fp8Linear` (torch._scaled_mm, which has a CPU kernel in torch 2.14) equals its dequantised fp32 reference
  within bf16 output rounding, and the bf16 Linear within fp8 rounding, at both granularities; row scales keep a
  token with large activations from costing the other tokens their precision; under autocast it returns the
  autocast dtype, as F.linear does;
- `convert_to_fp8` converts exactly the blocks' Linears with widths divisible by 16 and turns the bf16 GELU
  epilogue off where fc1 was converted; the tower output stays close to bf16;
- bench refuses fp8 on CPU with a one-line ConfigError; gpu-marked: the same on CUDA, relative error vs bf16.
"""

from __future__ import annotations

import pytest
import torch

from vtlab.errors import ConfigError
from vtlab.models.fp8 import E4M3_MAX, GRANULARITIES, Fp8Linear, calibrate_fp8, check_fp8, convert_to_fp8, quantize
from vtlab.models.towers.siglip import VisionTower


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_quantize_round_trip_and_scale():
    t = torch.randn(256, 64) * 3
    q, s = quantize(t)
    assert q.dtype == torch.float8_e4m3fn and s.ndim == 0
    assert abs(q.float().abs().max().item() - E4M3_MAX) < 1e-3
    assert _rel(q.float() * s, t) < 0.05  # e4m3 has 3 mantissa bits: ~2-3 % relative error


def test_row_quantize_has_one_scale_per_row():
    t = torch.randn(40, 64) * torch.logspace(-2, 2, 40).unsqueeze(1)  # rows four decades apart
    q, s = quantize(t, "row")
    assert q.dtype == torch.float8_e4m3fn and s.shape == (40, 1)
    assert torch.allclose(q.float().abs().amax(1), torch.full((40,), E4M3_MAX), atol=1e-3)
    assert max(_rel(q[i].float() * s[i], t[i]) for i in range(40)) < 0.05  # every row at e4m3 precision


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_fp8_linear_equals_its_reference_and_approximates_bf16(granularity):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48).bfloat16()
    f = Fp8Linear(lin, granularity)
    x = torch.randn(3, 5, 64).bfloat16()
    calibrate_fp8(f, [x])  # static: the activation scale from this batch (a no-op for the dynamic scales)
    out = f(x)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 5, 48)
    assert _rel(out, f.reference(x)) < 1e-2  # bf16 output rounding
    assert _rel(out, lin(x)) < 0.08  # fp8 rounding of both operands
    assert set(f.state_dict()) == {"weight_fp8", "weight_scale", "bias"} | ({"input_scale"} if granularity == "static" else set())
    assert f.weight_scale.shape == ((1, 48) if granularity == "row" else ())


def test_static_scales_come_from_calibration_and_saturate_beyond_it():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    f = Fp8Linear(lin, "static")
    x = torch.randn(8, 64)
    with pytest.raises(RuntimeError, match="no activation scale yet: run vtlab.models.fp8.calibrate_fp8"):
        f(x)
    batches = [x, 3 * x, 0.5 * x]
    assert calibrate_fp8(f, batches) == 1
    assert f.input_scale.item() == pytest.approx((3 * x).abs().max().item() / E4M3_MAX, rel=1e-6)  # the largest amax
    assert f.observed_amax is None and f.calibrated
    dynamic = Fp8Linear(lin, "tensor")
    assert _rel(f(3 * x), dynamic(3 * x)) < 1e-6  # at the calibrated amax: the dynamic per-tensor scale
    big = 10 * x  # beyond the calibration: saturates at 448 x scale instead of overflowing
    q = (big / f.input_scale).clamp(-E4M3_MAX, E4M3_MAX)
    assert torch.isfinite(f(big)).all() and q.abs().max().item() == E4M3_MAX
    assert _rel(f(x), f.reference(x)) < 1e-5 and _rel(torch.compile(f)(x), f(x)) < 1e-6  # the compiled cast agrees


def test_row_scales_keep_the_other_tokens_precise_next_to_a_large_one():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48).bfloat16()
    x = torch.randn(40, 64).bfloat16()
    x[7] *= 1e5  # one token with activations five decades above the rest (an outlier token)
    ref = lin(x.float().bfloat16())
    rest = [i for i in range(40) if i != 7]
    err = {g: _rel(Fp8Linear(lin, g)(x)[rest], ref[rest]) for g in ("row", "tensor")}
    assert err["row"] < 0.08 < 0.3 < err["tensor"], err  # per tensor, the other tokens fall into e4m3's subnormals


def test_fp8_linear_under_autocast_returns_the_autocast_dtype():
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(4, 64)
    for g in GRANULARITIES:
        f = Fp8Linear(lin, g)
        calibrate_fp8(f, [x])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert f(x).dtype == torch.bfloat16
        assert f(x).dtype == torch.float32


def test_fp8_granularity_and_tower_refusals():
    with pytest.raises(ValueError, match="granularity 'block'; valid: static, tensor, row"):
        Fp8Linear(torch.nn.Linear(16, 16), "block")
    with pytest.raises(ConfigError, match="task.dtype=fp8 converts the transformer blocks of a native tower; Linear"):
        convert_to_fp8(torch.nn.Linear(16, 16))


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
    assert calibrate_fp8(t, [torch.randn(2, 3, 32, 32).bfloat16()]) == 2 * 4  # static scales, from other images
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
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_fp8_tower_on_cuda_close_to_bf16(granularity):
    dev = torch.device("cuda")
    check_fp8(dev)
    torch.manual_seed(0)
    t = VisionTower(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_layers=4,
                    num_heads=12).to(dev, torch.bfloat16).eval()
    x = torch.randn(4, 3, 224, 224, device=dev, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = t(x)
        convert_to_fp8(t, granularity)
        calibrate_fp8(t, [torch.randn_like(x)])  # static scales from other images
        out = t(x)
        compiled = torch.compile(t)(x)
        lin = next(m for m in t.modules() if isinstance(m, Fp8Linear))
        probe = torch.randn(33, lin.in_features, device=dev, dtype=torch.bfloat16)
        assert _rel(lin(probe), lin.reference(probe)) < 1e-2
    assert _rel(out, ref) < 0.1 and _rel(compiled, ref) < 0.1  # eager and compiled (the cast fused) both near bf16


def test_fp8_scaling_default_is_static_for_bench_and_eval():
    from vtlab.api import compose_config, to_config

    for task in ("bench", "eval"):
        cfg = to_config(compose_config("siglip_debug", [f"task={task}"]))
        assert str(cfg.task.fp8_scaling) == GRANULARITIES[0] == "static"
