"""Issue 17: image folders that used to be silently wrong (symlink loops, empty classes), a decompression bomb,
a corrupt image behind DataLoader workers (one line), and task=eval on a val-only folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_data import _Cfg, write_folder
from train_helpers import TINY, cli, run_inproc

from vtlab.data import VtlabDataModule
from vtlab.data.folders import image_folder
from vtlab.errors import ConfigError, DataError


def test_symlink_loop_does_not_multiply_images(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=4)
    (root / "train" / "cat" / "loop").symlink_to(root / "train" / "cat")  # cat/loop -> cat
    (root / "train" / "dog" / "to_cat").symlink_to(root / "train" / "cat")  # a link to a folder already listed
    ds = image_folder(str(root), "train")
    per_class = {c: sum(1 for _, y in ds.samples if y == i) for i, c in enumerate(ds.classes)}
    assert per_class["cat"] == 4  # was 4 * (1 + links until ELOOP)
    assert per_class["dog"] == 4 + 4  # the linked folder counts once, from where it is linked


def test_empty_class_folder_is_refused(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data")
    (root / "train" / "zebra").mkdir()
    with pytest.raises(ConfigError, match=r"class folder\(s\) \['zebra'\] hold no images"):
        image_folder(str(root), "train")


def test_decompression_bomb_png_is_a_data_error(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data")
    bomb = root / "train" / "cat" / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx: over PIL's 2 x MAX_IMAGE_PIXELS, a few KiB on disk
    ds = image_folder(str(root), "train")
    index = [p for p, _ in ds.samples].index(str(bomb))
    with pytest.raises(DataError, match=r"bomb\.png: DecompressionBombError"):
        ds[index]


def test_worker_reraised_data_error_keeps_one_line() -> None:
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nvtlab.errors.DataError: cannot read image a.png: broken')
    assert str(DataError(wrapped)) == "cannot read image a.png: broken"


@pytest.mark.slow
def test_corrupt_image_with_two_workers_is_one_line(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=8, size=16)
    (root / "train" / "cat" / "0.png").write_bytes(b"not a png")
    proc = cli(["+model=smolvlm_debug", *TINY, "data=folder", f"data.root={root}", "data.num_workers=2",
                "task.batch_size=4", f"out_dir={tmp_path / 'run'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vtlab: error: cannot read image ") and "0.png" in last, proc.stderr[-2000:]


def test_eval_datamodule_reads_only_val(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data")
    shutil.rmtree(root / "train")
    dm = VtlabDataModule(_Cfg(root=str(root)), input_size=32, batch_size=64, train=False)
    dm.setup()
    assert dm.classes == ["cat", "dog"] and dm.train_set is None and len(dm.val_set) == 6


@pytest.mark.slow
def test_eval_on_a_val_only_folder_works(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=8, size=16)
    train = run_inproc(tmp_path / "train", [*TINY, "data=folder", f"data.root={root}", "task.batch_size=4"])
    shutil.rmtree(root / "train")
    result = run_inproc(tmp_path / "eval", ["task=eval", "logger=none", "trainer.accelerator=cpu",
                                            "trainer.enable_progress_bar=false", "data=folder", f"data.root={root}",
                                            f"task.ckpt_path={train['last_ckpt']}"])
    assert result["status"] == "ok" and result["num_classes"] == 2 and result["val_acc"] is not None
