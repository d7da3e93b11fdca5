"""`task.attention_backend=cudnn_safe` (vtlab.models.sdpa): the per-shape rule reproduces the H200 NaN grid, the
layers resolve it per call (key length, mask, one query), and on CPU it computes what `auto` computes, forward
and backward. The CUDA side (cuDNN picked at a clean length, flash at 64 keys) is in tests/test_gpu.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend

from vtlab.models.layers import Attention
from vtlab.models.reduction.tome import tome_block_forward
from vtlab.models.sdpa import (
    BACKENDS,
    CPU_BACKENDS,
    NO_CUDNN,
    CudnnWhereClean,
    configure,
    configure_attention,
    cudnn_is_clean,
    layer_kernels,
    pinned,
)

GRID = Path(__file__).resolve().parents[1] / "experiments/training/results/h200_2026-12-01d_sdpa_nan_grid.json"


def test_rule_reproduces_every_row_of_the_h200_grid():
    """Every cuDNN row of the device grid: NaN gradients exactly where cudnn_is_clean says no (shifted logits),
    none where it says yes; flash is clean everywhere."""
    rows = json.loads(GRID.read_text())["rows"]
    checked = 0
    for r in rows:
        b, h, sq, sk, d = r["bhqkd"]
        bad = r["dq"] + r["dk"] + r["dv"] + r["out_nonfinite"] > 0
        if r["backend"] == "flash":
            assert not bad, r
        elif r["shift"] <= -100:  # every logit of a row strongly negative: the trigger
            assert bad == (not cudnn_is_clean(sq, sk)), r
            checked += 1
        else:
            assert not bad, r
    assert checked == 72  # 18 key lengths x 2 head dims x 2 shifts


@pytest.mark.parametrize(("q", "k", "masked", "clean"), [
    (196, 196, False, True), (729, 729, False, True), (1024, 1024, False, True), (64, 64, False, False),
    (576, 576, False, False), (1, 256, False, False), (256, 256, True, False)])
def test_policy_resolves_per_shape(q, k, masked, clean):
    kernels = layer_kernels(CudnnWhereClean(), q, k, masked)
    assert (kernels[0] == SDPBackend.CUDNN_ATTENTION) == clean
    assert kernels[-len(NO_CUDNN):] == list(NO_CUDNN)  # the safe kernels always follow


def test_plain_settings_pass_through():
    assert layer_kernels(None, 64, 64) is None
    assert layer_kernels([SDPBackend.MATH], 64, 64) == [SDPBackend.MATH]


def test_cudnn_safe_is_no_cudnn_process_wide_and_accepted_on_cpu():
    assert BACKENDS["cudnn_safe"] == NO_CUDNN and "cudnn_safe" in CPU_BACKENDS
    with pinned("cudnn_safe"):
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()


def test_configure_attention_sets_the_policy_and_leaves_the_gelu_setting():
    attn = Attention(32, 4)
    mlp_like = torch.nn.Module()
    mlp_like.fused_gelu = True
    root = torch.nn.ModuleDict({"attn": attn, "mlp": mlp_like})
    configure_attention(root, "cudnn_safe")
    assert isinstance(attn.sdpa_backends, CudnnWhereClean) and mlp_like.fused_gelu is True
    configure(root, "no_cudnn", fused_gelu=False)
    assert attn.sdpa_backends == list(NO_CUDNN) and mlp_like.fused_gelu is False


def test_attention_under_cudnn_safe_equals_auto_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 64, 32, requires_grad=True)
    ref = attn(x)
    ref.sum().backward()
    g_ref, x.grad = x.grad.clone(), None
    configure_attention(attn, "cudnn_safe")
    out = attn(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, g_ref)


def test_tome_with_sizes_never_asks_for_cudnn(monkeypatch):
    """ToMe's proportional attention adds a mask (log sizes): masked calls stay on the no_cudnn kernels."""
    from vtlab.models import layers
    from vtlab.models.reduction import tome

    seen: list[tuple[bool, list]] = []
    real = tome.layer_kernels

    def spy(setting, q, k, masked=False):  # noqa: ANN001
        kernels = real(setting, q, k, masked)
        seen.append((masked, kernels))
        return kernels

    monkeypatch.setattr(tome, "layer_kernels", spy)
    block = layers.Block(32, 4, 64, 1e-6, "gelu_tanh")
    configure_attention(block, "cudnn_safe")
    x = torch.randn(2, 128, 32)
    x, size = tome_block_forward(block, x, None, 8)  # first block: no sizes yet, 128 keys (clean)
    tome_block_forward(block, x, size, 8)  # sizes now: a mask
    assert seen[0][0] is False and seen[0][1][0] == SDPBackend.CUDNN_ATTENTION
    assert seen[1][0] is True and seen[1][1] == list(NO_CUDNN)
