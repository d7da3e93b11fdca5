"""Kernel choices for the native tower on a GPU: the SDPA backend and the fused fc1+GELU epilogue.

PyTorch's default SDPA backend priority has changed between releases; on Hopper the cuDNN backend is
1.4-1.6x the flash (FA2) backend at the towers' shapes (performance.md section 6), so vtlab pins it
explicitly and records what ran. Neither choice changes the function computed, only rounding.
"""

from __future__ import annotations

from torch import nn
from torch.nn.attention import SDPBackend

from vtlab.towers.layers import Attention, Mlp

BACKENDS = {
    "auto": None,
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}


def configure_kernels(module: nn.Module, attention: str = "auto", fused_gelu: bool = False) -> nn.Module:
    """Pin the attention backend and the fused GELU epilogue on every block of `module` (in place)."""
    if attention not in BACKENDS:
        from vtlab.errors import ConfigError

        raise ConfigError(f"attention backend {attention!r} is unknown; valid: {', '.join(BACKENDS)}")
    for m in module.modules():
        if isinstance(m, Attention):
            m.backends = BACKENDS[attention]
        elif isinstance(m, Mlp):
            m.fused_gelu = fused_gelu
    return module
