"""Scaled-dot-product attention: ONE table of backends, pinning (process-wide and per block), detection.

`BACKENDS` maps every value `task.attention_backend` accepts to the SDPA kernels it allows (`auto`: PyTorch's
own choice). The config schema builds its `task.attention_backend` enum from this table, the CLI lists it, profile / bench / train pin
through `pinned()` (process-wide: compiled graphs, validation and DDP ranks see it) and `configure()` (inside
every block's forward, so that a traced graph is bound as well), and `detect_backend()` records the kernel
that actually ran, found by watching the aten ops dispatched during one eager forward.

PyTorch's default SDPA priority has changed between releases, so a benchmark pins and always records.
`no_cudnn` (PyTorch's choice without cuDNN) leaves cuDNN out: on H100/H200 the cuDNN SDPA backward returned
NaN gradients (pytorch/pytorch#196678, NVIDIA/cudnn-frontend#1072; it killed 5 of 8 trainings on 2026-11-28,
experiments/training/README.md), while flash / efficient / math are clean. `cudnn_safe`, the training tasks'
default since 2026-12-01, is `no_cudnn` process-wide (heads, connectors, language models, transformers towers),
but vtlab's own attention layers take cuDNN at the shapes where its backward is clean (`cudnn_is_clean`: an H200
grid of 18 key lengths x head dims 64 and 72 had NaN exactly at key length % 128 == 64,
experiments/training/results/h200_2026-12-01d_sdpa_nan_grid.json), since there it is the faster kernel (cuDNN's
backward took 17.2 ms of a smolvlm step where flash's took 26.9 ms; +10 % img/s, experiments/gpu_speed/README.md).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vtlab.errors import ConfigError
from vtlab.models.fastpaths import configure_fast_paths

NO_CUDNN = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
WITH_CUDNN = (SDPBackend.CUDNN_ATTENTION, *NO_CUDNN)

BACKENDS: dict[str, tuple[SDPBackend, ...] | None] = {
    "auto": None,
    "cudnn": (SDPBackend.CUDNN_ATTENTION,),
    "flash": (SDPBackend.FLASH_ATTENTION,),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION,),
    "math": (SDPBackend.MATH,),
    "no_cudnn": NO_CUDNN,
    "cudnn_safe": NO_CUDNN,  # process-wide; inside vtlab's attention layers: per shape, cudnn_is_clean()
}
CPU_BACKENDS = ("auto", "flash", "math", "no_cudnn", "cudnn_safe")  # what SDPA implements on CPU


def cudnn_is_clean(query_len: int, key_len: int, masked: bool = False) -> bool:
    """Whether cuDNN's SDPA backward is clean at this shape (H100/H200, cuDNN 9.19, bf16), from the device grid of
    `experiments/training/sdpa_nan_check.py --grid`: NaN in dQ when a row's logits are all strongly negative at key
    lengths % 128 == 64 and with masks (pytorch/pytorch#196678), and with one query (NVIDIA/cudnn-frontend#1072)."""
    return not masked and query_len > 1 and key_len % 128 != 64


class CudnnWhereClean:
    """The `cudnn_safe` setting of one attention layer: cuDNN first where `cudnn_is_clean`, else `no_cudnn`."""

    def kernels(self, query_len: int, key_len: int, masked: bool = False) -> list[SDPBackend]:
        return list(WITH_CUDNN if cudnn_is_clean(query_len, key_len, masked) else NO_CUDNN)

    def __repr__(self) -> str:
        return "cudnn_safe"


def layer_kernels(setting: Any, query_len: int, key_len: int, masked: bool = False) -> list[SDPBackend] | None:
    """The SDPA kernels an attention layer pins for one call: its `sdpa_backends` setting (None: PyTorch's
    choice, a list, or a CudnnWhereClean policy resolved at this query / key length and mask)."""
    return setting.kernels(query_len, key_len, masked) if isinstance(setting, CudnnWhereClean) else setting

# fused aten op -> the name recorded in results (anything else that SDPA calls decomposes: "math")
KERNELS = {
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def _name(backend: Any) -> str:
    return str(getattr(backend, "value", backend))


def check_backend(backend: Any, device: torch.device, key: str = "task.attention_backend") -> None:
    """Raise ConfigError for an unknown backend or one the device cannot run."""
    name = _name(backend)
    if name not in BACKENDS:
        raise ConfigError(f"{key}={name} is unknown; valid: {', '.join(BACKENDS)}")
    if device.type == "cpu" and name not in CPU_BACKENDS:
        raise ConfigError(f"{key}={name} has no CPU kernel; on CPU use one of: {', '.join(CPU_BACKENDS)}")


def pinned(backend: Any) -> contextlib.AbstractContextManager[Any]:
    """Context that restricts SDPA to the named backend or set (`auto`: PyTorch's own choice)."""
    kernels = BACKENDS[_name(backend)]
    return contextlib.nullcontext() if kernels is None else sdpa_kernel(list(kernels))


def configure_attention(module: nn.Module, backend: Any = "auto") -> nn.Module:
    """Pin the SDPA backend inside every attention layer of `module` (in place; layers opt in by having an
    `sdpa_backends` attribute): None for `auto`, the kernel list, or for `cudnn_safe` a CudnnWhereClean policy."""
    name = _name(backend)
    kernels = BACKENDS[name]
    for m in module.modules():
        if hasattr(m, "sdpa_backends"):
            m.sdpa_backends = CudnnWhereClean() if name == "cudnn_safe" else None if kernels is None else list(kernels)
    return module


def configure(module: nn.Module, backend: Any = "auto", fused_gelu: bool = False) -> nn.Module:
    """`configure_attention`, and set the fused fc1+GELU inference epilogue of every MLP (in place; MLPs opt in
    by having a `fused_gelu` attribute)."""
    configure_attention(module, backend)
    return configure_fast_paths(module, fused_gelu=fused_gelu)


class _SdpaCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class _FusedKernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        name = func.overloadpacket.__name__
        kwargs = kwargs or {}
        if name in KERNELS:
            self.seen[KERNELS[name]] += 1
        elif name == "scaled_dot_product_attention":
            # under inference_mode the composite op reaches this mode whole: decompose it (with the mode
            # active again) to see which kernel it picks, as torch.utils.flop_counter does
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def _watch() -> Iterator[tuple[_SdpaCalls, _FusedKernels]]:
    calls, kernels = _SdpaCalls(), _FusedKernels()
    with calls, kernels:
        yield calls, kernels


def detect_backend(fn: Callable[[], Any], requested: str) -> dict[str, Any]:
    """Run `fn` once (eager) under the pinned backend and report which SDPA kernels ran, per call.

    `ran` is the kernel of most calls (the tower's blocks; a MAP head's one-query attention may differ),
    `kernels` counts every call, e.g. {"flash_cpu": 2, "math": 1}.
    """
    with _watch() as (calls, kernels):
        fn()
    counts = dict(kernels.seen)
    math_calls = calls.calls - sum(counts.values())
    if math_calls > 0:
        counts["math"] = counts.get("math", 0) + math_calls
    ran = max(counts, key=lambda k: counts[k]) if counts else "none"
    return {"requested": requested, "ran": ran, "kernels": counts, "sdpa_calls": calls.calls}
