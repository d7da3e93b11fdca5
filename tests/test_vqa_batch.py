"""The VQA collator and the context-length filter: sizing images without pixels and caching prompts change
nothing (vtlab.data.vqa_batch)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vtlab import compose_config, to_config
from vtlab.api import build_vlm_from_config
from vtlab.data.vqa_batch import VQACollator, fitting_rows
from vtlab.data.vqa_sets import vqa_dataset


@pytest.fixture(scope="module")
def vlm_and_set():
    cfg = compose_config("smolvlm_debug", ["data=vqa", "model.tiling=none", "text=tiny", "task=align",
                                           "data.train_size=48", "data.val_size=16"])
    c = to_config(cfg)
    ds = vqa_dataset(c.data, "train", image_size=64)
    return build_vlm_from_config(c, extra_words=ds.vocabulary()), ds


def test_fitting_rows_from_text_and_size_equals_reading_every_sample(vlm_and_set):
    vlm, ds = vlm_and_set
    collator = VQACollator(vlm)
    fast = fitting_rows(ds, collator, vlm.context)
    slow_keep = [i for i in range(len(ds)) if collator.length(ds[i]) <= vlm.context]  # rendered samples
    assert fast.indices == slow_keep and fast.too_long == 0
    assert all(ds.image_hw(i) == (ds[i].image.height, ds[i].image.width) for i in range(4))
    tight = fitting_rows(ds, VQACollator(vlm), context=min(collator.length(ds[i]) for i in range(len(ds))))
    assert 0 < len(tight.indices) < len(ds) and tight.too_long == len(ds) - len(tight.indices)


def test_cached_prompts_are_the_uncached_ids(vlm_and_set):
    vlm, ds = vlm_and_set
    cached = VQACollator(vlm)
    batch_a = cached([ds[i] for i in range(8)])
    batch_b = cached([ds[i] for i in range(8)])  # every prompt now from the cache
    fresh = VQACollator(vlm)
    for i in range(8):
        s = ds[i]
        plan = vlm.stack.tiler.plan(s.image.height, s.image.width)
        direct = fresh.ids(vlm.prompt_text([plan], s.question))
        assert batch_a["prompts"][i] == direct == batch_b["prompts"][i]
    assert batch_a["input_ids"].equal(batch_b["input_ids"]) and batch_a["labels"].equal(batch_b["labels"])
    assert len(cached._prompts) <= 8


def test_conversation_images_are_sized_from_their_headers(tmp_path):
    from vtlab.data.conversations import Conversations  # noqa: F401  (the folder format of the VQA tasks)

    Image.new("RGB", (40, 24)).save(tmp_path / "a.png")
    rows = [{"id": "r0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat is it ?"},
                                                             {"from": "gpt", "value": "a cat"}]}]
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = to_config(compose_config("smolvlm_debug", ["data=conversations", f"data.root={tmp_path}", "task=align"]))
    ds = vqa_dataset(c.data, "train")
    assert ds.image_hw(0) == (24, 40) == (ds[0].image.height, ds[0].image.width)
