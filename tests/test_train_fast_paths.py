"""The inference fast paths under task=train: task.fused_gelu / task.residual_gemm reach the tower (a frozen tower's
no-grad forward and validation are CUDA inference), and task.frozen_tower_bf16 keeps a frozen tower in bf16 outside
autocast (vtlab.models.stack.VisionStack.freeze_tower_in), with its refusals."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from train_helpers import TINY, make_ctx, one_thread, run_inproc

from vtlab.tasks import train as train_task
from vtlab.train import trainer as trainer_mod


class _FastPathFlags(pl.Callback):
    """The inference fast-path flags of the tower's blocks, seen inside a training step."""

    def __init__(self) -> None:
        self.epilogue: set[bool] = set()
        self.stream: set[bool] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        tower = pl_module.stack.tower
        self.epilogue |= {m.fused_gelu for m in tower.modules() if hasattr(m, "fused_gelu")}
        self.stream |= {m.residual_gemm for m in tower.modules() if hasattr(m, "residual_gemm")}


def _fit_with_fast_paths(tmp_path, monkeypatch, *overrides: str) -> _FastPathFlags:
    flags = _FastPathFlags()
    real = trainer_mod.build_trainer
    monkeypatch.setattr(trainer_mod, "build_trainer", lambda ctx, tracker, cbs: real(ctx, tracker, [*cbs, flags]))
    with one_thread():
        train_task.train(make_ctx(tmp_path, [*TINY, "trainer.max_steps=1", *overrides]), None)
    return flags


def test_training_gives_the_frozen_tower_the_inference_fast_paths(tmp_path, monkeypatch):
    """task.fused_gelu and task.residual_gemm (on by default) reach the tower under task=train: a frozen tower's
    no-grad forward and validation are CUDA inference (the harness's frozen-tower step was timed with the
    epilogue on); `false` keeps them off."""
    on = _fit_with_fast_paths(tmp_path / "on", monkeypatch)
    assert on.epilogue == {True} and on.stream == {True}
    off = _fit_with_fast_paths(tmp_path / "off", monkeypatch, "task.fused_gelu=false", "task.residual_gemm=false")
    assert off.epilogue == {False} and off.stream == {False}


def test_frozen_tower_in_bf16_matches_autocast_and_trains_the_connector():
    """VisionStack.freeze_tower_in (task.frozen_tower_bf16): the frozen tower, cast to bf16 and run outside
    autocast, gives the bf16-autocast forward's tokens within bf16 rounding; the connector still gets gradients,
    the tower none; without autocast the features enter the connector in its dtype."""
    from vtlab.api import build_stack, compose_config, to_config

    torch.manual_seed(0)
    stack = build_stack(to_config(compose_config("siglip_debug", [])))
    x = torch.randn(2, 3, stack.input_size, stack.input_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = stack(x, train_tower=False).float()
    fp32 = stack(x, train_tower=False)
    stack.freeze_tower_in(torch.bfloat16)
    stack.tower.requires_grad_(False)
    assert {p.dtype for p in stack.tower.parameters()} == {torch.bfloat16}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = stack(x, train_tower=False)
    got.float().sum().backward()
    err = ((got.float() - ref).norm() / ref.norm()).item()
    assert err < 2e-2, err
    assert all(p.grad is not None for p in stack.connector.parameters())
    assert all(p.grad is None for p in stack.tower.parameters())
    plain = stack(x, train_tower=False)  # no autocast: the connector runs in fp32 on the bf16 tower's features
    assert plain.dtype == torch.float32 and ((plain - fp32).norm() / fp32.norm()).item() < 2e-2


def test_train_with_the_frozen_tower_in_bf16(tmp_path):
    with one_thread():
        result, _ = train_task.train(make_ctx(tmp_path, [*TINY, "trainer.max_steps=2", "task.frozen_tower_bf16=true"]),
                                     None)
    assert result["frozen_tower_dtype"] == "bfloat16" and result["global_step"] == 2
    state = torch.load(result["last_ckpt"], map_location="cpu", weights_only=False)["state_dict"]
    assert {v.dtype for k, v in state.items() if k.startswith("stack.tower.")} == {torch.bfloat16}
    assert {v.dtype for k, v in state.items() if k.startswith("stack.connector.")} == {torch.float32}
    # task=eval loads it into its own (fp32) tower
    scored = run_inproc(tmp_path / "eval", [*TINY, "task=eval", f"task.ckpt_path={result['last_ckpt']}"])
    assert scored["status"] == "ok" and 0 <= scored["val_acc"] <= 1


def test_frozen_tower_bf16_refusals():
    from vtlab.api import compose_config, to_config
    from vtlab.errors import ConfigError

    for overrides, words in ((["task.freeze=none"], "task.freeze=none trains the tower"),
                             (["model.token_merging.r=2"], "model.token_merging.r / connector.prune")):
        try:
            to_config(compose_config("smolvlm_debug", ["task=train", "task.frozen_tower_bf16=true", *overrides]))
        except ConfigError as exc:
            assert "task.frozen_tower_bf16=true" in str(exc) and words in str(exc), exc
        else:
            raise AssertionError(f"{overrides} accepted")
