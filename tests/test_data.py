"""Data for task=train/eval: the synthetic glyph set, SigLIP preprocessing, image folders, their error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vtlab.data import DataError, GlyphCount, GlyphSpec, VtlabDataModule, siglip_transform
from vtlab.data.folders import image_folder
from vtlab.data.sampler import EpochShuffleSampler
from vtlab.data.synthetic import glyph_masks
from vtlab.errors import ConfigError


def test_synthetic_is_deterministic_per_seed_split_index():
    spec = GlyphSpec(64)
    a, b = GlyphCount(spec, 8, "train", seed=0), GlyphCount(spec, 8, "train", seed=0)
    for i in range(8):
        xa, ya = a.raw(i)
        xb, yb = b.raw(i)
        assert torch.equal(xa, xb) and ya == yb
    assert not torch.equal(a.raw(0)[0], GlyphCount(spec, 8, "train", seed=1).raw(0)[0])
    assert not torch.equal(a.raw(0)[0], GlyphCount(spec, 8, "val", seed=0).raw(0)[0])
    with pytest.raises(IndexError):
        a.raw(8)


def test_count_plus_needs_shape_not_intensity():
    """Every image has the same number of glyph pixels whatever its label: only the glyph shape carries it."""
    spec = GlyphSpec(64, num_classes=4, distractors=3)
    ds = GlyphCount(spec, 64)
    g = spec.glyph
    assert g == 5 and spec.num_glyphs == 6
    plus, cross = glyph_masks(g)
    assert plus.sum() == cross.sum() == 2 * g - 1
    labels = []
    for i in range(64):
        img, label = ds.raw(i)
        labels.append(label)
        bright = (img >= 128).any(0).sum().item()  # background is < 48, glyphs are >= 128
        assert bright == spec.num_glyphs * (2 * g - 1)
    assert set(labels) == {0, 1, 2, 3}
    assert GlyphSpec(512).glyph == 13  # below one 16 px patch of SmolVLM's tower


def test_count_task_label_is_number_of_glyphs():
    spec = GlyphSpec(64, num_classes=4, task="count")
    ds = GlyphCount(spec, 32)
    for i in range(32):
        img, label = ds.raw(i)
        assert (img >= 128).any(0).sum().item() == label * (2 * spec.glyph - 1)


@pytest.mark.parametrize("task", ["count", "count_plus"])
def test_glyphs_per_class_scales_the_plus_count(task):
    """Dense variant for large images: label k means k * glyphs_per_class "+" glyphs (count_plus keeps the total
    glyph count, so intensity still carries nothing)."""
    spec = GlyphSpec(256, num_classes=4, distractors=0, task=task, glyphs_per_class=8)
    plus, _ = glyph_masks(spec.glyph)
    ds = GlyphCount(spec, 24)
    for i in range(24):
        img, label = ds.raw(i)
        bright = (img >= 128).any(0).numpy()
        glyphs = label * 8 if task == "count" else spec.num_glyphs
        assert bright.sum() == glyphs * plus.sum()
    assert spec.num_glyphs == 3 * 8  # (num_classes - 1) * glyphs_per_class + 0 distractors
    with pytest.raises(ConfigError, match="data.glyphs_per_class=0 must be >= 1"):
        GlyphCount(GlyphSpec(64, glyphs_per_class=0), 4)


def test_synthetic_rejects_impossible_specs():
    with pytest.raises(ConfigError, match="cannot place"):
        GlyphCount(GlyphSpec(32, num_classes=10, distractors=20), 4)
    with pytest.raises(ConfigError, match="data.task='bogus' is unknown"):
        GlyphCount(GlyphSpec(64, task="bogus"), 4)


@pytest.mark.parametrize("size", [0, 1, 4, 6])
def test_review_even_or_tiny_glyph_size_is_refused(size):
    """An even glyph has one pixel more as "x" than as "+" (the diagonals do not cross): intensity would leak
    the label. 0 used to fall back to the default silently."""
    if size >= 2:
        plus, cross = glyph_masks(size)
        assert cross.sum() == plus.sum() + 1
    with pytest.raises(ConfigError, match=f"data.glyph_size={size} must be an odd number >= 3"):
        GlyphCount(GlyphSpec(64, glyph_size=size), 4)


def test_siglip_transform_matches_processor_arithmetic():
    """Resize (PIL bicubic, as SiglipImageProcessor) then (x / 255 - 0.5) / 0.5."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out = siglip_transform(32)(img)
    ref = np.asarray(img.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255.0
    ref = torch.from_numpy((ref - 0.5) / 0.5).permute(2, 0, 1)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()[:, :32, :32]
    torch.testing.assert_close(siglip_transform(32)(t), t.float() / 127.5 - 1.0)


def test_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochShuffleSampler(20, seed=3)
    s.set_epoch(1)
    first = list(s)
    again = EpochShuffleSampler(20, seed=3)
    again.set_epoch(1)
    assert list(again) == first and sorted(first) == list(range(20))
    s.set_epoch(2)
    assert list(s) != first


def write_folder(root, classes=("cat", "dog"), per_class=3, size=24):
    """root/{train,val}/<class>/<i>.png, class k tinted so that the classes differ."""
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = np.full((size, size, 3), 40, dtype=np.uint8)
                arr[..., k % 3] = 200 + i
                Image.fromarray(arr).save(folder / f"{i}.png")
    return root


class _Cfg:
    def __init__(self, **kw):
        self.kind, self.root, self.image_size, self.num_classes = "folder", None, None, 4
        self.distractors, self.glyph_size, self.task, self.glyphs_per_class = 3, None, "count_plus", 1
        self.train_size, self.val_size, self.num_workers, self.seed = 16, 8, 0, 0
        self.__dict__.update(kw)


def test_image_folder_datamodule(tmp_path):
    root = write_folder(tmp_path / "data")
    dm = VtlabDataModule(_Cfg(root=str(root)), input_size=32, batch_size=2)
    dm.setup()
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert len(dm.train_set) == 6 and len(list(dm.train_dataloader())) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: (r / "train").mkdir(parents=True), "has no 'val/' folder"),
        (lambda r: [(r / s).mkdir(parents=True) for s in ("train", "val")], "is empty: it needs one sub-folder per class"),
        (lambda r: [(r / s / "a").mkdir(parents=True) for s in ("train", "val")], "no images in them"),
    ],
    ids=["missing-root", "missing-val", "empty-split", "classes-without-images"],
)
def test_bad_folders_have_clear_messages(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(ConfigError, match=message):
        image_folder(str(root), "train" if "val" not in message else "val")


def test_missing_root_setting_and_class_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="data=folder needs data.root=PATH"):
        image_folder(None, "train")
    root = write_folder(tmp_path / "data")
    (root / "val" / "dog").rename(root / "val" / "fox")
    dm = VtlabDataModule(_Cfg(root=str(root)), input_size=32, batch_size=2)
    with pytest.raises(ConfigError, match=r"different classes \(only in train: \['dog'\], only in val: \['fox'\]\)"):
        dm.setup()


def test_unreadable_image_names_the_file(tmp_path):
    root = write_folder(tmp_path / "data")
    bad = root / "train" / "cat" / "broken.png"
    bad.write_bytes(b"this is not a png")
    ds = image_folder(str(root), "train", siglip_transform(32))
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png.*remove or replace the file"):
        ds[index]


def test_preset_transform_follows_the_family():
    """siglip: BICUBIC (SiglipImageProcessor); idefics3 (SmolVLM): LANCZOS, as its global frame."""
    from vtlab.api import compose_config, to_config
    from vtlab.families import frame_transform as preset_transform

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8))
    for model, resample in (("siglip_debug", Image.BICUBIC), ("smolvlm_debug", Image.LANCZOS)):
        cfg = to_config(compose_config(model))
        out = preset_transform(cfg.model, 32)(img)
        ref = np.asarray(img.resize((32, 32), resample), dtype=np.float32) / 255.0
        torch.testing.assert_close(out, torch.from_numpy((ref - 0.5) / 0.5).permute(2, 0, 1), atol=1e-6, rtol=0)
    synthetic, _ = GlyphCount(GlyphSpec(32), 1).raw(0)  # uint8 CHW at the target size: unchanged up to scaling
    torch.testing.assert_close(preset_transform(cfg.model, 32)(synthetic), synthetic.float() / 127.5 - 1.0)


def test_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from vtlab.data.images import IMAGE_EXTENSIONS

    assert IMAGE_EXTENSIONS == tuple(IMG_EXTENSIONS)
