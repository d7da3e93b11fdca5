"""task=train: fast_dev_run, learning beyond chance, kill-and-resume, freeze/optimizer/schedule, compile, NaN, logging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import ONE_THREAD, REPO, TINY, cli, kill_after_first_epoch, make_ctx, run_inproc

from vtlab.api import build
from vtlab.errors import NonFiniteLossError
from vtlab.train.module import OptimSettings, VisionClassifier, warmup_cosine


def test_fast_dev_run_train_cli(tmp_path):
    out = tmp_path / "run"
    proc = cli(["+model=smolvlm_debug", *TINY, "trainer.fast_dev_run=true", f"out_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "train" and result["status"] == "ok"
    assert result["global_step"] == 1 and result["tokens"] == 4 and result["num_classes"] == 4
    assert result["precision"] == "32-true" and result["val_acc"] is not None
    assert result["trainable_params"]["tower"] == 0 and result["trainable_params"]["connector"] > 0  # freeze=tower


def test_tiny_model_beats_chance_twice_within_two_minutes(tmp_path):
    """smolvlm_debug (64 px, 8x8 patches, factor 2 -> 16 tokens) on the coarse synthetic task (count glyphs)."""
    start = time.perf_counter()
    result = run_inproc(tmp_path, [
        "task=train", "logger=none", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "data.task=count", "data.train_size=2048", "data.val_size=256", "task.batch_size=32",
        "connector.factor=2", "task.freeze=none", "task.lr=1e-3", "task.tower_lr=1e-3", "trainer.max_epochs=10",
    ])
    wall = time.perf_counter() - start
    print(f"val_acc {result['val_acc']:.3f} (best {result['best_val_acc']:.3f}, chance {result['chance_acc']}) "
          f"in {result['fit_s']:.1f}s fit / {wall:.1f}s wall, {result['train_images_per_s']:.0f} train img/s")
    assert result["global_step"] == 640
    assert result["val_acc"] >= 2 * result["chance_acc"], result
    assert wall < 120


def _tree(out):
    return json.loads((out / "results.json").read_text())


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    common = ["+model=smolvlm_debug", *TINY, "data.train_size=512", "trainer.max_epochs=4", "task.warmup_steps=8",
              "trainer.deterministic=true", "task.keep_every_n_epochs=1", "task.freeze=none"]
    full = tmp_path / "full"
    proc = cli([*common, f"out_dir={full}"])
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    resume = kill_after_first_epoch(common, killed)
    assert not (killed / "results.json").exists()
    proc = cli([*common, f"out_dir={killed}", f"task.ckpt_path={resume}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _tree(full), _tree(killed)
    assert b["resumed_from"] == str(resume)
    assert a["global_step"] == b["global_step"] == 4 * 512 // 16
    assert a["val_acc"] == b["val_acc"]
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
    sa = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    sb = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=1e-6, rtol=0, msg=key)


def test_resume_refuses_changed_freeze_mode(tmp_path):
    run_inproc(tmp_path, [*TINY, "trainer.max_epochs=1"])
    from vtlab.errors import ConfigError

    with pytest.raises(ConfigError, match="trained with task.freeze=tower, this run has task.freeze=none"):
        run_inproc(tmp_path, [*TINY, "trainer.max_epochs=2", "task.freeze=none", "task.ckpt_path=last"])


def test_freeze_modes_and_inactive_modules():
    stack = build("siglip_debug")  # has a MAP head, which the feature path never runs
    lit = VisionClassifier(stack, 3, freeze="none")
    assert all(not p.requires_grad for p in stack.tower.head.parameters())
    assert all(p.requires_grad for p in stack.tower.blocks.parameters())
    names = {g["name"]: g for g in lit.param_groups()}
    assert set(names) == {"tower", "tower_no_decay", "rest", "rest_no_decay"}
    assert names["tower"]["lr"] == 1e-5 and names["rest"]["lr"] == 1e-3
    assert names["tower_no_decay"]["weight_decay"] == 0.0 and names["rest"]["weight_decay"] == 0.05

    lit = VisionClassifier(build("smolvlm_debug"), 4, freeze="tower", optim=OptimSettings(lr=0.1))
    counts = lit.trainable_parameters()
    assert counts["tower"] == 0 and counts["connector"] > 0 and counts["head"] > 0
    assert {g["name"] for g in lit.param_groups()} == {"rest", "rest_no_decay"}
    lit = VisionClassifier(build("smolvlm_debug"), 4, freeze="stack")
    assert lit.trainable_parameters()["connector"] == 0

    # freeze=tower: one optimizer step changes connector and head, never the tower
    lit = VisionClassifier(build("smolvlm_debug"), 4, freeze="tower", optim=OptimSettings(lr=0.1))
    before = {k: v.clone() for k, v in lit.state_dict().items()}
    opt = torch.optim.AdamW(lit.param_groups())
    loss, _ = lit.loss_and_logits((torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])))
    loss.backward()
    opt.step()
    after = lit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("stack.tower."))
    assert not torch.equal(before["stack.connector.proj.weight"], after["stack.connector.proj.weight"])

    from vtlab.errors import ConfigError

    with pytest.raises(ConfigError, match="task.freeze='all' is unknown; valid: tower, stack, none"):
        VisionClassifier(build("smolvlm_debug"), 4, freeze="all")


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 101) == pytest.approx(0.5)  # half-way through the 90 cosine steps
    assert warmup_cosine(100, 10, 101, min_ratio=0.1) == pytest.approx(0.1)  # the last step is at the floor
    assert warmup_cosine(99, 10, 101, min_ratio=0.1) > 0.1


def test_compile_once_in_place_keeps_checkpoint_keys_clean(tmp_path):
    result = run_inproc(tmp_path, [*TINY, "task.compile=true", "trainer.max_epochs=1", "task.freeze=none"])
    assert result["compile"] is True and result["val_acc"] is not None
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and not any("_orig_mod" in k for k in ckpt["state_dict"])
    assert set(ckpt["state_dict"]) == set(VisionClassifier(build("smolvlm_debug"), 4).state_dict())
    lit = VisionClassifier(build("smolvlm_debug"), 4)
    lit.compile_stack()
    impl = lit.stack.tower._compiled_call_impl
    lit.compile_stack()  # guarded: a second call is a no-op
    assert impl is not None and lit.stack.tower._compiled_call_impl is impl


def test_nan_loss_stops_with_message_and_keeps_checkpoints(tmp_path, monkeypatch):
    original = VisionClassifier.loss_and_logits

    def poisoned(self, batch):
        loss, logits = original(self, batch)
        return (loss * float("nan"), logits) if self.global_step >= 6 else (loss, logits)

    monkeypatch.setattr(VisionClassifier, "loss_and_logits", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        run_inproc(tmp_path, [*TINY, "trainer.max_epochs=5", "task.keep_every_n_epochs=1"])
    message = str(info.value)
    assert "training loss is nan at step 6 (epoch 1)" in message
    assert "checkpoints written before it are intact" in message and "epoch0.ckpt" in message
    ckpt = torch.load(tmp_path / "checkpoints" / "epoch0.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (tmp_path / "checkpoints" / "epoch1.ckpt").exists()
    assert not (tmp_path / "results.json").exists()


def test_nan_message_through_cli(tmp_path):
    proc = cli(["+model=smolvlm_debug", *TINY, "task.lr=1e30", "task.tower_lr=1e30", "task.warmup_steps=0",
                "task.freeze=none", "trainer.gradient_clip_val=null", "trainer.max_epochs=3", f"out_dir={tmp_path}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "vtlab: error: training loss is nan" in proc.stderr or "vtlab: error: training loss is inf" in proc.stderr


def test_csv_logger_writes_per_split_metrics_without_importing_wandb(tmp_path):
    code = (
        "import sys, json; sys.path.insert(0, 'tests');"
        "from pathlib import Path; from train_helpers import TINY, run_inproc;"
        f"run_inproc(Path({str(tmp_path)!r}), [o for o in TINY if o != 'logger=none'] + ['logger=csv', 'trainer.max_epochs=2', 'trainer.log_every_n_steps=1']);"
        "print('WANDB_IMPORTED', 'wandb' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env=os.environ | {"WANDB_MODE": "offline", **ONE_THREAD})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WANDB_IMPORTED False" in proc.stdout
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss_step", "train_acc_step", "val_loss", "val_acc", "train_loss_epoch", "epoch", "step"} <= set(header)
    assert (tmp_path / "summary.csv").exists()


def test_wandb_offline_makes_exactly_one_finished_run(tmp_path):
    wdir = tmp_path / "wandb_dir"
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_DIR": str(wdir), "WANDB_SILENT": "true", **ONE_THREAD}
    proc = subprocess.run([sys.executable, "-m", "vtlab", "+model=smolvlm_debug",
                           *[o for o in TINY if o != "logger=none"], "logger=wandb", "trainer.max_epochs=1",
                           f"out_dir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list(wdir.rglob("offline-run-*"))
    assert len([r for r in runs if r.is_dir()]) == 1, runs
    assert "wandb.run is already" not in proc.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["val_acc"] is not None


def test_train_context_helpers(tmp_path):
    ctx = make_ctx(tmp_path, [*TINY])
    assert ctx.cfg.task.name.value == "train" and ctx.cfg.task.freeze == "tower"


def test_ddp_two_cpu_processes_rank_zero_writes(tmp_path):
    """trainer=ddp on 2 CPU processes (gloo): Lightning relaunches the Hydra command for rank 1; only rank 0 writes."""
    out = tmp_path / "ddp"
    proc = cli(["+model=smolvlm_debug", *[o for o in TINY if o != "logger=none"], "logger=csv", "trainer=ddp",
                "trainer.accelerator=cpu", "trainer.devices=2", "task.batch_size=8", "trainer.max_epochs=2",
                f"out_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["world_size"] == 2
    assert result["global_step"] == 2 * 64 // (8 * 2)  # each rank sees half of every epoch
    assert (out / "checkpoints" / "last.ckpt").exists() and result["best_ckpt"]
    assert proc.stdout.count("results: ") == 1  # one summary line: rank 0 only


def test_fused_adamw_with_bf16_mixed_and_clipping(tmp_path):
    """The GPU default (fused AdamW, bf16-mixed, gradient_clip_val=1) on CPU: Lightning's mixed-precision plugin
    refuses to clip for fused optimizers, so the module clips itself; the step must run and clip."""
    import lightning.pytorch as pl

    from vtlab.data import VtlabDataModule

    class FusedOnCpu(VisionClassifier):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.param_groups(), fused=True)

    ctx = make_ctx(tmp_path, TINY)
    dm = VtlabDataModule(ctx.cfg.data, 64, 16)
    lit = FusedOnCpu(build("smolvlm_debug"), 4, freeze="none", optim=OptimSettings(lr=1e-2))
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1e-3, max_steps=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    before = {k: v.clone() for k, v in lit.state_dict().items()}
    trainer.fit(lit, datamodule=dm)
    opt = trainer.optimizers[0]
    assert opt.defaults["fused"] is True and trainer.global_step == 2
    moved = max((lit.state_dict()[k] - before[k]).abs().max().item() for k in before)
    assert 0 < moved < 0.05  # AdamW's step is bounded by lr; clipping ran without the plugin's RuntimeError


def test_image_size_is_configurable(tmp_path):
    """data.image_size renders the synthetic set at another size (resized to the tower input); model.input_size
    changes what the tower sees (16x16 patches at 128 px, position table interpolated)."""
    r = run_inproc(tmp_path / "a", [*TINY, "trainer.fast_dev_run=true", "data.image_size=96"])
    assert r["input_size"] == 64 and r["grid"] == [8, 8] and r["tokens"] == 4 and r["val_acc"] is not None
    r = run_inproc(tmp_path / "b", [*TINY, "trainer.fast_dev_run=true", "model.input_size=128"])
    assert r["input_size"] == 128 and r["grid"] == [16, 16] and r["tokens"] == 16 and r["val_acc"] is not None
