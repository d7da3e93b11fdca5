"""task=eval: loss, accuracy and throughput of a task=train checkpoint; clear refusals of wrong checkpoints."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from train_helpers import TINY, cli, run_inproc

from vtlab.errors import ArchitectureMismatchError, ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short training of smolvlm_debug (2 epochs, freeze=none): its run dir."""
    from hydra.core.global_hydra import GlobalHydra

    out = tmp_path_factory.mktemp("trained")
    GlobalHydra.instance().clear()
    result = run_inproc(out, [*TINY, "trainer.max_epochs=2", "task.freeze=none"])
    GlobalHydra.instance().clear()
    return out, result


def test_eval_reproduces_training_metrics_and_reports_throughput(tmp_path, trained):
    run_dir, train_result = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={ckpt}", "task.batch_size=8",
                                   "task.warmup_batches=1"])
    assert result["task"] == "eval" and result["val_images"] == 32
    assert result["val_acc"] == pytest.approx(train_result["val_acc"], abs=1e-6)
    assert result["val_loss"] == pytest.approx(train_result["val_loss"], abs=1e-5)
    assert result["images_per_s"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["val_acc"] == result["val_acc"] and saved["ckpt_path"] == str(ckpt)


def test_eval_best_checkpoint_matches_best_score(tmp_path, trained):
    run_dir, train_result = trained
    best = train_result["best_ckpt"]
    assert best and "best-epoch" in best
    result = run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={best}"])
    assert result["val_acc"] == pytest.approx(train_result["best_val_acc"], abs=1e-6)


def test_fast_dev_run_eval_cli(tmp_path, trained):
    run_dir, _ = trained
    proc = cli(["+model=smolvlm_debug", *TINY, "task=eval", "trainer.fast_dev_run=true",
                f"task.ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"out_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eval smolvlm_debug-f4 on 32 images: val_acc" in proc.stdout
    assert json.loads((tmp_path / "results.json").read_text())["val_acc"] is not None


def test_eval_refuses_another_architecture(tmp_path, trained):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ArchitectureMismatchError) as info:
        run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={ckpt}", "connector.factor=2",
                              "model.num_layers=3"])
    message = str(info.value)
    assert "was trained with another architecture (model 'smolvlm-debug')" in message
    assert "connector.factor: checkpoint 4, config 2" in message
    assert "model.num_layers: checkpoint 2, config 3" in message
    with pytest.raises(ArchitectureMismatchError, match="num_classes: checkpoint 4, config 3"):
        run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={ckpt}", "data.num_classes=3"])


def test_eval_refusal_through_cli_and_train_resume_refusal(tmp_path, trained):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = cli(["+model=siglip_debug", *TINY, "task=eval", f"task.ckpt_path={ckpt}", f"out_dir={tmp_path}"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("vtlab: error: checkpoint ") and "differing config fields:" in proc.stderr
    assert "model.name: checkpoint 'smolvlm-debug', config 'siglip-debug'" in proc.stderr
    with pytest.raises(ArchitectureMismatchError, match="text_hidden: checkpoint 64, config 576"):
        run_inproc(tmp_path, [*TINY, "text=smollm2_135m", f"task.ckpt_path={ckpt}", "task.freeze=none"])


def test_eval_checkpoint_path_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"task=eval needs task.ckpt_path=PATH"):
        run_inproc(tmp_path, [*TINY, "task=eval"])
    with pytest.raises(ConfigError, match="no checkpoint file at"):
        run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={tmp_path / 'nope.ckpt'}"])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(ConfigError, match="is not a vtlab task=train checkpoint"):
        run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={foreign}"])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={garbage}"])


def test_image_folder_train_and_eval(tmp_path):
    """PNG folders written by the test: 2 colour classes; training learns them, eval on the best checkpoint agrees."""
    from test_data import write_folder

    root = write_folder(tmp_path / "data", per_class=8, size=40)
    common = [*TINY, "data=folder", f"data.root={root}", "task.batch_size=8"]
    train = run_inproc(tmp_path / "train", [*common, "trainer.max_epochs=8", "task.freeze=none", "task.lr=3e-3",
                                            "task.tower_lr=3e-3", "task.warmup_steps=2"])
    assert train["num_classes"] == 2 and train["data"] == "folder" and train["global_step"] == 16
    assert train["best_val_acc"] == 1.0
    result = run_inproc(tmp_path / "eval", [*common, "task=eval", f"task.ckpt_path={train['best_ckpt']}"])
    assert result["val_acc"] == 1.0 and result["val_images"] == 16


def test_folder_errors_reach_the_cli(tmp_path):
    from test_data import write_folder

    root = write_folder(tmp_path / "data", per_class=4)
    (root / "train" / "cat" / "0.png").write_bytes(b"broken")
    commands = [["+model=smolvlm_debug", *TINY, "data=folder", f"data.root={tmp_path / 'missing'}", f"out_dir={tmp_path}"],
                ["+model=smolvlm_debug", *TINY, "data=folder", f"data.root={root}", "task.batch_size=2",
                 f"out_dir={tmp_path / 'run'}"]]
    with ThreadPoolExecutor(2) as pool:  # the two refused runs at once (each is mostly import time on one core)
        missing, broken = pool.map(cli, commands)
    assert missing.returncode == 2 and "vtlab: error: data.root=" in missing.stderr and "does not exist" in missing.stderr
    assert broken.returncode == 2, broken.stderr[-2000:]
    assert "vtlab: error: cannot read image" in broken.stderr and "0.png" in broken.stderr


def test_eval_fp8_accuracy_next_to_full_precision(tmp_path, trained, monkeypatch):
    """task.dtype=fp8 evaluates the same checkpoint with the tower's Linears as e4m3 GEMMs (torch._scaled_mm has a
    CPU kernel; the CUDA-only guard is lifted here): the accuracy side of fp8's trade, close to full precision."""
    import vtlab.tasks.evaluate as evaluate

    run_dir, train_result = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(evaluate, "check_fp8", lambda device: None)
    for scaling in ("static", "tensor", "row"):
        result = run_inproc(tmp_path / scaling, [*TINY, "task=eval", f"task.ckpt_path={ckpt}", "task.dtype=fp8",
                                                 f"task.fp8_scaling={scaling}"])
        assert result["fp8"]["linears"] == 2 * 4 and result["fp8"]["scaling"] == scaling  # 2 blocks x 4 Linears
        assert result["val_acc"] == pytest.approx(train_result["val_acc"], abs=0.1)  # 32 images: 3 may flip
        assert result["val_loss"] == pytest.approx(train_result["val_loss"], rel=0.1)


def test_eval_fp8_and_dtype_refusals(tmp_path, trained):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"^task.dtype=fp8 needs a CUDA GPU with fp8 tensor cores"):
        run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={ckpt}", "task.dtype=fp8"])
    with pytest.raises(ConfigError, match=r"^task.dtype=float16: task=eval runs at trainer.precision"):
        run_inproc(tmp_path, [*TINY, "task=eval", f"task.ckpt_path={ckpt}", "task.dtype=float16"])
    proc = cli(["+model=smolvlm_debug", *TINY, "task=eval", f"task.ckpt_path={ckpt}", "task.fp8_scaling=block",
                f"out_dir={tmp_path}"])
    assert proc.returncode == 2 and proc.stderr.startswith("vtlab: error: ")
    assert "task.fp8_scaling" in proc.stderr and "block" in proc.stderr and "row" in proc.stderr, proc.stderr
