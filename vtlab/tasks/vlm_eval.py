"""`task=eval` of a `task=align|finetune` checkpoint: generation-based evaluation of the VLM on the val split.

What LLaVA's model_vqa + eval scripts do, in one process: greedy generation (`VisionLanguageModel.decode_batch`:
left-padded prompts, the KV cache, stop at eos or `task.max_new_tokens`), exact match after normalisation
(lowercase, punctuation removed, spaces collapsed) overall and per question type, the answer perplexity from
one teacher-forced pass (exp of the mean answer-token cross-entropy, eos included), images/s (vision encode +
generation) and generated tokens/s. The chance level (one over the distinct answers of a type) and the
majority level sit beside the accuracies. Predictions go to `<run dir>/predictions.jsonl` (index, qtype,
question, answer, prediction, correct), written atomically; results.json through the one record writer.

The checkpoint decides the model: its architecture must match the config (the differing fields are listed),
its LoRA settings are rebuilt, its offline tokenizer words reused, and a model trained blind is evaluated
blind (`task.blind` overrides). `task.adapters=DIR` replaces the LoRA weights by a saved adapters folder.
One process on the trainer's accelerator (bf16 autocast on GPU); `vtlab.tasks.evaluate` dispatches here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from typing import Any

import lightning.pytorch as pl
import torch

from vtlab.api import build_vlm_from_config
from vtlab.atomic import atomic_write
from vtlab.config.schema import ANSWER_KINDS
from vtlab.data.module import make_loader
from vtlab.data.vqa_batch import VQACollator, batch_to, fitting_rows, left_padded, normalise_answer
from vtlab.errors import ArchitectureMismatchError, ConfigError
from vtlab.measure.timing import on_gpu
from vtlab.results.record import RunContext
from vtlab.tasks.common import publish
from vtlab.tasks.vlm_common import report_skipped, skipped_rows, vlm_facts, vqa_splits
from vtlab.train.checkpoint import check_architecture, vlm_architecture
from vtlab.train.lora import apply_lora, load_adapters
from vtlab.train.vlm_module import VLMModule, answer_scores

PREDICTIONS = "predictions.jsonl"


def check(ctx: RunContext, ckpt: dict[str, Any], path: str) -> None:
    """A VLM checkpoint needs data with text answers and the architecture it was trained with."""
    kind = ctx.cfg.data.kind
    if kind not in ANSWER_KINDS:
        raise ConfigError(f"task.ckpt_path={path} is a task={ckpt['vtlab_vlm'].get('task', 'align')} (VLM) checkpoint, "
                          f"evaluated by generating answers, but data.kind={kind} has class labels; use data.kind in "
                          f"{', '.join(str(k) for k in ANSWER_KINDS)} (e.g. data=vqa)")
    check_architecture(ckpt, vlm_architecture(ctx.cfg, ckpt["vtlab_arch"].get("lora", {})), path)


def load_vlm(ctx: RunContext, ckpt: dict[str, Any], path: str) -> Any:
    """The VLM of the config with the checkpoint's LoRA structure, tokenizer words and weights."""
    vlm = build_vlm_from_config(ctx.cfg, extra_words=ckpt["vtlab_vlm"].get("words", []))
    apply_lora(vlm, ckpt["vtlab_arch"].get("lora", {}))
    lit = VLMModule(vlm, ckpt.get("vtlab_train", {}).get("train", ["connector"]))
    try:
        lit.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ArchitectureMismatchError(f"checkpoint {path} does not fit the model: {exc}") from None
    if ctx.cfg.task.adapters:
        load_adapters(vlm, ctx.cfg.task.adapters)
    return vlm.eval()


def generate_all(vlm: Any, loader: Any, device: torch.device, max_new_tokens: int, blind: bool,
                 progress: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Greedy answers and teacher-forced answer losses of every row: (rows, timings)."""
    tok = vlm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    rows: list[dict[str, Any]] = []
    timing = {"generate_s": 0.0, "teacher_forced_s": 0.0, "new_tokens": 0}
    batches = len(loader)
    for b, batch in enumerate(loader):
        batch = batch_to(batch, device)
        with torch.inference_mode(), autocast:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            visual = None if blind else vlm.visual_tokens(pixel_values=batch["pixel_values"], plans=batch["plans"])
            ids, mask = left_padded(batch["prompts"], pad)
            made = vlm.decode_batch(ids, mask, visual, max_new_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            embeds = vlm.embed(batch["input_ids"], visual)
            logits = vlm.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
            correct_tf, ce, count = answer_scores(logits, batch["labels"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
        timing["generate_s"] += t1 - t0
        timing["teacher_forced_s"] += t2 - t1
        for i, tokens in enumerate(made):
            timing["new_tokens"] += len(tokens)
            text = tok.decode([t for t in tokens if t != tok.eos_token_id], skip_special_tokens=True).strip()
            answer = batch["answers"][i]
            rows.append({"index": len(rows), "qtype": batch["qtypes"][i], "question": batch["questions"][i],
                         "answer": answer, "prediction": text,
                         "correct": normalise_answer(text) == normalise_answer(answer),
                         "_ce": float(ce[i]), "_tokens": int(count[i])})
        if progress and (b + 1 == batches or (b + 1) % max(1, batches // 10) == 0):
            print(f"eval: {b + 1}/{batches} batches, {len(rows)} answers", file=sys.stderr, flush=True)
    return rows, timing


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and answer perplexity overall and per question type."""
    def stats(sel: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = sum(r["_tokens"] for r in sel)
        return {"accuracy": sum(r["correct"] for r in sel) / len(sel), "rows": len(sel),
                "answer_perplexity": math.exp(sum(r["_ce"] for r in sel) / tokens) if tokens else None}

    types = sorted({r["qtype"] for r in rows})
    return {"all": stats(rows), **{q: stats([r for r in rows if r["qtype"] == q]) for q in types}}


def write_predictions(ctx: RunContext, rows: list[dict[str, Any]]) -> Any:
    lines = "".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in rows).encode()
    return atomic_write(ctx.out_dir / PREDICTIONS, lambda fh: fh.write(lines), "file")


def run(ctx: RunContext, tracker: Any, ckpt: dict[str, Any], path: str) -> dict[str, Any]:
    cfg, t = ctx.cfg, ctx.cfg.task
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    blind = bool(ckpt["vtlab_vlm"].get("blind", False)) if t.blind is None else bool(t.blind)
    trained_by = ckpt["vtlab_vlm"].get("task")
    vlm = load_vlm(ctx, ckpt, path)
    del ckpt
    device = torch.device("cuda" if on_gpu(cfg.trainer.accelerator) else "cpu")
    vlm.to(device)
    if t.compile:
        vlm.compile_vision()
    _, val_set = vqa_splits(cfg, train=False)
    collator = VQACollator(vlm, blind=blind)
    val_rows = fitting_rows(val_set, collator, vlm.context - t.max_new_tokens)
    skipped = skipped_rows(val=val_rows)
    report_skipped(skipped, vlm.context)
    if not val_rows.indices:
        raise ConfigError(f"no val row of data.kind={cfg.data.kind} fits the LM's context "
                          f"text.max_position_embeddings={vlm.context} with task.max_new_tokens={t.max_new_tokens}")
    loader = make_loader(val_rows.subset(), t.batch_size, False, cfg.data.num_workers, cfg.data.seed, collator)
    rows, timing = generate_all(vlm, loader, device, t.max_new_tokens, blind, cfg.trainer.enable_progress_bar)
    summary = summarise(rows)
    predictions = write_predictions(ctx, rows)
    facts = vlm_facts(cfg, vlm, val_rows, blind)
    result = {
        **ctx.header(),
        **facts,
        "ckpt_path": path,
        "adapters": t.adapters,
        "trained_by": trained_by,
        "device": str(device),
        "precision": "bf16 autocast" if device.type == "cuda" else "32-true",
        "max_new_tokens": t.max_new_tokens,
        "val_acc": summary["all"]["accuracy"],
        "val_acc_by_type": {q: s["accuracy"] for q, s in summary.items() if q != "all"},
        "answer_perplexity": summary["all"]["answer_perplexity"],
        "answer_perplexity_by_type": {q: s["answer_perplexity"] for q, s in summary.items() if q != "all"},
        "val_rows": len(rows),
        "rows": skipped,
        "images_per_s": len(rows) / timing["generate_s"] if timing["generate_s"] > 0 else None,
        "generated_tokens_per_s": timing["new_tokens"] / timing["generate_s"] if timing["generate_s"] > 0 else None,
        "generate_s": timing["generate_s"],
        "teacher_forced_s": timing["teacher_forced_s"],
        "predictions": str(predictions),
        "overrides": ctx.overrides,
    }
    types = ", ".join(f"{q} {a:.3f} (chance {facts['chance_by_type'][q]:.3f})" for q, a in result["val_acc_by_type"].items())
    publish(ctx, tracker, result, (
        f"eval {ctx.run_name} on {len(rows)} questions: accuracy {result['val_acc']:.4f} (chance "
        f"{facts['chance_acc']:.3f}; {types}), answer perplexity {result['answer_perplexity']:.3f}, "
        f"{result['images_per_s']:.1f} images/s, {result['generated_tokens_per_s']:.1f} tokens/s, control "
        f"{facts['control']}"))
    return result
