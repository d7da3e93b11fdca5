"""task.attention_backend in training: by default (`cudnn_safe`) cuDNN SDPA is off process-wide (its backward can
give NaN gradients on H100/H200) and vtlab's own attention layers hold the per-shape policy that takes it where it
is clean; the choice is recorded, and a backend the device lacks is refused with a message."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from train_helpers import TINY, cli, make_ctx, one_thread

from vtlab.models.sdpa import CudnnWhereClean
from vtlab.tasks import train as train_task
from vtlab.train import trainer as trainer_mod


class _SdpaFlags(pl.Callback):
    """Records the process-wide SDPA backend flags seen inside a training step."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool, bool]] = []
        self.layer_settings: set[str] = set()  # repr of every tower attention layer's sdpa_backends

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        b = torch.backends.cuda
        self.seen.append((b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.math_sdp_enabled()))
        self.layer_settings |= {repr(m.sdpa_backends) for m in pl_module.stack.tower.modules() if hasattr(m, "sdpa_backends")}


def _fit_with_flags(tmp_path, monkeypatch, *overrides: str) -> tuple[dict, _SdpaFlags]:
    flags = _SdpaFlags()
    real = trainer_mod.build_trainer  # looked up by vtlab.train.trainer.fit_run, which task=train calls
    monkeypatch.setattr(trainer_mod, "build_trainer", lambda ctx, tracker, cbs: real(ctx, tracker, [*cbs, flags]))
    ctx = make_ctx(tmp_path, [*TINY, "trainer.max_steps=2", *overrides])
    with one_thread():
        result, _ = train_task.train(ctx, None)
    return result, flags


def test_training_default_is_cudnn_safe_no_cudnn_process_wide_policy_in_the_layers(tmp_path, monkeypatch):
    before = torch.backends.cuda.cudnn_sdp_enabled()
    result, flags = _fit_with_flags(tmp_path, monkeypatch)
    assert result["attention_backend"] == "cudnn_safe"
    assert flags.seen and all(s == (False, True, True) for s in flags.seen)  # heads, connectors: no cuDNN
    assert flags.layer_settings == {repr(CudnnWhereClean())}  # the tower's layers: cuDNN where clean
    assert torch.backends.cuda.cudnn_sdp_enabled() == before  # restored after fit


def test_training_no_cudnn_pins_every_layer_without_cudnn(tmp_path, monkeypatch):
    result, flags = _fit_with_flags(tmp_path, monkeypatch, "task.attention_backend=no_cudnn")
    assert result["attention_backend"] == "no_cudnn"
    assert flags.seen and all(s == (False, True, True) for s in flags.seen)
    (setting,) = flags.layer_settings
    assert "FLASH_ATTENTION" in setting and "CUDNN" not in setting


def test_training_attention_backend_auto_leaves_pytorch_choice(tmp_path, monkeypatch):
    result, flags = _fit_with_flags(tmp_path, monkeypatch, "task.attention_backend=auto")
    assert result["attention_backend"] == "auto"
    assert flags.seen and all(s[0] == torch.backends.cuda.cudnn_sdp_enabled() for s in flags.seen)


def test_training_backend_without_cpu_kernel_is_refused(tmp_path):
    proc = cli(["+model=smolvlm_debug", *TINY, "task.attention_backend=cudnn", "trainer.fast_dev_run=true",
                f"out_dir={tmp_path}"])
    assert proc.returncode == 2
    assert "vtlab: error: task.attention_backend=cudnn has no CPU kernel; on CPU use one of: auto, flash, math, " \
           "no_cudnn, cudnn_safe" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "results.json").exists()


def test_unknown_training_backend_names_the_valid_ones(tmp_path):
    proc = cli(["+model=smolvlm_debug", *TINY, "task.attention_backend=fast", "trainer.fast_dev_run=true",
                f"out_dir={tmp_path}"])
    assert proc.returncode == 2
    assert "task.attention_backend=fast is unknown; valid: auto, cudnn, flash, efficient, math, no_cudnn, " \
           "cudnn_safe" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "results.json").exists()

