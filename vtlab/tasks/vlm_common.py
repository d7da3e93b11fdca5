"""What the VLM tasks (align, finetune, VLM eval) share: the VQA splits, the offline tokenizer's words, which
control a run is, the record's header and the accounting of skipped rows (its own module, beside
vtlab.tasks.common, so that profile and bench never import the VQA data side)."""

from __future__ import annotations

import sys
from typing import Any

import torch

from vtlab.data import vqa_sets
from vtlab.data.vqa_batch import answer_stats
from vtlab.text.tokenizer import offline_tokenizer


def vqa_splits(cfg: Any, train: bool = True) -> tuple[Any, Any]:
    """(train split or None, val split) of the VQA set `data` describes (vtlab.data.vqa_sets.vqa_dataset); the
    synthetic set renders at data.image_size, else at the tower's input size (as validation checked it)."""
    size = cfg.model.input_size or cfg.model.image_size
    size = size if isinstance(size, int) else None
    make = vqa_sets.vqa_dataset
    return (make(cfg.data, "train", size) if train else None), make(cfg.data, "val", size)


def vocabulary_of(*splits: Any) -> list[str]:
    """The sorted union of the splits' words: the offline tokenizer's extra words (the same for every split)."""
    return sorted({w for s in splits if s is not None for w in s.vocabulary()})


def check_vocabulary(cfg: Any, words: list[str]) -> None:
    """An offline tokenizer (no text.weights / model.weights tokenizer) must fit the set's words in text.vocab_size."""
    if not cfg.text.weights and not cfg.model.weights:
        offline_tokenizer(cfg.text.vocab_size, extra_words=words)  # ConfigError naming text.vocab_size


def control_of(cfg: Any, blind: bool) -> str:
    """Which control a VLM run is: `blind` (no image), `pixels` (no tower) or `none` (the model itself)."""
    if blind:
        return "blind"
    return "pixels" if str(cfg.model.tower_kind) == "pixels" else "none"


def vlm_facts(cfg: Any, vlm: Any, val_rows: Any, blind: bool) -> dict[str, Any]:
    """The header of an align / finetune / VLM eval record: the stack's budget, the LM, the data and its levels."""
    stats = answer_stats(val_rows.answers)
    chance_of = getattr(val_rows.dataset, "chance", None)  # a VQADataset knows its exact levels (OCR: ~0, not 1/rows)
    for qtype, s in stats.items():
        if chance_of is not None:
            s["chance"] = float(chance_of(qtype))
    rows = sum(s["rows"] for s in stats.values()) or 1
    sample = val_rows.dataset[val_rows.indices[0]] if val_rows.indices else None
    plan = vlm.stack.tiler.plan(sample.image.height, sample.image.width) if sample is not None and sample.image else None
    return {
        "grid": list(vlm.stack.grid),
        "tokens_per_frame": vlm.stack.num_tokens,
        "tokens": 0 if blind else (plan.tokens if plan else vlm.stack.num_tokens),
        "frames": 0 if blind else (plan.frames if plan else 1),
        "text_hidden": vlm.stack.text_hidden,
        "lm": cfg.text.name,
        "lm_params": sum(p.numel() for p in vlm.lm.parameters()),
        "data": str(cfg.data.kind),
        "control": control_of(cfg, blind),
        "question_types": sorted(stats),
        "chance_acc": sum(s["chance"] * s["rows"] for s in stats.values()) / rows,
        "majority_acc": sum(s["majority"] * s["rows"] for s in stats.values()) / rows,
        "chance_by_type": {q: s["chance"] for q, s in stats.items()},
        "majority_by_type": {q: s["majority"] for q, s in stats.items()},
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def skipped_rows(**rows: Any) -> dict[str, dict[str, int]]:
    """{split: {skipped (by the data set), too_long (for the LM's context), used}} of each split's Rows."""
    return {name: {"skipped": r.skipped, "too_long": r.too_long, "used": len(r.indices)}
            for name, r in rows.items() if r is not None}


def report_skipped(skipped: dict[str, dict[str, int]], context: int) -> None:
    """One stderr line per split that lost rows (never silently)."""
    for split, n in skipped.items():
        if n["skipped"] or n["too_long"]:
            print(f"vtlab: {split} split: {n['skipped']} row(s) skipped by the data set, {n['too_long']} longer than "
                  f"the LM's context text.max_position_embeddings={context}; {n['used']} used", file=sys.stderr)
