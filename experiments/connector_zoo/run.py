"""Accuracy vs visual tokens for every connector kind (issue 13), and the cost of the same cells from task=bench.

Question: at an equal visual-token budget, how do the connectors compare on a task that needs spatial detail
(the synthetic glyph-count set, `data.task=count_plus`)? Recipe: experiments/training/accuracy_vs_tokens.py
(run 4b of experiments/training/README.md section 2): SmolVLM's tower at 128 px (8x8 patches of 16 px,
interpolated positions), 13 px glyphs, full fine-tuning, lr 1e-4 with warm-up, here SHORT (`--steps`, default
400) so that 6 kinds x 3 budgets (4 / 16 / 64 tokens) x 3 seeds fit in < 8 minutes on one H200: `--jobs`
training processes run concurrently on the GPU, and no new cell starts after `--budget-s` seconds (cells not
started are listed as `not run (time budget)`, never invented).

Each cell is its own `python -m vtlab ... task=train` process writing `<OUT>/train/<kind>-t<tokens>-s<seed>/`;
the costs come from one `python -m vtlab -m ... task=bench` sweep over the same (kind, budget) cells
(`<OUT>/bench/summary.csv`). The script imports only the standard library (and matplotlib for the plot, if
present); the vtlab subprocesses need its dependencies (hydra-core, omegaconf, lightning) installed.

Writes to $OUT (or --out): results.json (every cell, accuracy and cost), results.md (table: mean +- std
over seeds per kind and budget, with bench latency / FLOPs / params), accuracy_vs_tokens.png (one line per
kind) and the bench sweep's own summary and plots.

GPU (one H200):  OUT=experiments/connector_zoo/results PYTHONPATH=. python experiments/connector_zoo/run.py
CPU smoke:       OUT=/tmp/cz PYTHONPATH=. python experiments/connector_zoo/run.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KINDS = ["pixel_unshuffle", "perceiver", "qformer", "c_abstractor", "ldp", "avgpool"]
TRAIN = [  # experiments/training/accuracy_vs_tokens.py GPU_DEFAULTS, made short
    "task=train", "logger=csv", "data=synthetic", "data.task=count_plus", "model.input_size=128",
    "data.glyph_size=13", "data.train_size=16384", "data.val_size=1024", "data.num_workers=2",
    "task.batch_size=64", "task.freeze=none", "task.lr=1e-4", "task.tower_lr=1e-4", "task.compile=false",
    "trainer.enable_progress_bar=false", "trainer.max_epochs=100",
]
BENCH = ["task=bench", "model.input_size=128", "task.modes=[eager]", "task.latency_iters=30", "task.repeats=3",
         "task.iters=5", "logger=none"]
# The default recipe ("small"): a 4-layer, 256-wide SigLIP-style tower (the smolvlm_debug preset widened) at 64 px
# (8x8 patches of 8 px, 5 px glyphs: the ratio at which a random tower finds the glyphs quickly), full fine-tuning
# at lr 1e-4, connectors sized to the tower (perceiver / qformer 2 layers). experiments/training/README.md
# section 2 (CPU) saw this tower leave chance at step ~191 with 64 tokens; the 86M-parameter SmolVLM tower at
# 128 px needs 512-1024 steps and ~4x the GPU time per step, which does not fit 54 cells in one device call.
SMALL = ["model.hidden_size=256", "model.intermediate_size=1024", "model.num_layers=4", "model.num_heads=4",
         "text=smollm2_135m", "connector.depth=2", "connector.hidden_size=576", "connector.num_heads=4",
         "connector.head_dim=64", "connector.num_kv_heads=2"]
# one hidden width (576, the LM width) and 4 attention heads for every kind, sized to the 256-wide tower (the
# perceiver / qformer presets are Idefics2's / BLIP-2's full size); per-kind overrides would need one bench
# sweep per kind, and each sweep's start-up costs more device time than its cells
SMALL_KIND: dict[str, list[str]] = {}
CPU_SMOKE = ["trainer.accelerator=cpu", "data.train_size=32", "data.val_size=16", "task.batch_size=16",
             "data.num_workers=0", "connector.depth=1", "connector.hidden_size=32", "connector.num_heads=2", "connector.num_kv_heads=1",
             "connector.head_dim=8"]
CPU_BENCH = ["task.device=cpu", "task.latency_iters=2", "task.repeats=1", "task.iters=1",
             "task.throughput_batch_size=2", "task.warmup=0", "connector.depth=1", "connector.hidden_size=32",
             "connector.num_heads=2", "connector.num_kv_heads=1", "connector.head_dim=8"]


def vtlab(args: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return subprocess.run([sys.executable, "-m", "vtlab", *args], stdout=fh, stderr=subprocess.STDOUT,
                              env=os.environ | {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}).returncode


def train_cell(a: argparse.Namespace, kind: str, tokens: int, seed: int, deadline: float) -> dict:
    cell = a.out / "train" / f"{kind}-t{tokens}-s{seed}"
    row = {"kind": kind, "tokens": tokens, "seed": seed}
    if (kind, tokens, seed) in a.earlier:  # a cell an earlier call measured (--resume-from)
        return a.earlier[(kind, tokens, seed)]
    if (cell / "results.json").exists():
        r = json.loads((cell / "results.json").read_text())
    elif time.time() > deadline:
        return row | {"status": "not run (time budget)"}
    else:
        args = [f"+model={a.model}", *TRAIN, f"trainer.max_steps={a.steps}", f"task.warmup_steps={a.steps // 8}",
                f"connector={kind}", f"connector.tokens={tokens}", f"seed={seed}", f"data.seed={seed}",
                f"out_dir={cell}", *a.kind_set.get(kind, []), *a.set]
        start = time.time()
        rc = vtlab(args, cell / "train.log")
        if rc or not (cell / "results.json").exists():
            tail = (cell / "train.log").read_text().splitlines()[-3:]
            return row | {"status": f"failed (exit {rc})", "reason": " / ".join(tail)}
        r = json.loads((cell / "results.json").read_text()) | {"wall_s": round(time.time() - start, 1)}
    keys = ("val_acc", "best_val_acc", "chance_acc", "val_loss", "wall_s")
    return row | {"status": r.get("status", "ok"), **{k: r.get(k) for k in keys}}


def bench(a: argparse.Namespace) -> dict[tuple[str, int], dict]:
    """One task=bench sweep over every (kind, budget) cell (a kind's own overrides, `a.kind_set`, would need a
    sweep of its own: then one sweep per kind)."""
    groups = [(k, [k]) for k in a.kinds] if a.kind_set else [("all", a.kinds)]
    out = {}
    for name, kinds in groups:
        sweep = a.out / "bench" / name
        if not (sweep / "summary.csv").exists():
            vtlab(["-m", f"+model={a.model}", f"connector={','.join(kinds)}",
                   f"connector.tokens={','.join(map(str, a.budgets))}", *BENCH, *a.bench_set,
                   *a.kind_set.get(name, []), f"hydra.sweep.dir={sweep}"], a.out / f"bench_{name}.log")
        if not (sweep / "summary.csv").exists():
            continue
        for r in csv.DictReader((sweep / "summary.csv").open()):
            if r.get("status") == "ok":
                out[(r["connector"], int(r["tokens"]))] = {k: float(r[k]) if r.get(k) else None
                                                           for k in ("latency_ms", "throughput_img_s", "flops", "params")}
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.3f}" + (f" +- {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"


def report(a: argparse.Namespace, rows: list[dict], costs: dict, wall: float) -> None:
    a.out.joinpath("results.json").write_text(json.dumps(
        {"model": a.model, "steps": a.steps, "wall_s": round(wall, 1), "cells": rows,
         "bench": [{"kind": k, "tokens": t, **v} for (k, t), v in sorted(costs.items())]}, indent=2) + "\n")
    lines = [f"# Connector zoo: accuracy vs visual tokens ({a.model} at {a.px} px, {a.steps} steps, seeds {a.seeds})",
             "", f"Wall time {wall:.0f} s. Accuracy: final val_acc, mean +- std over the seeds that ran.", "",
             "| kind | tokens | val_acc | best val_acc | seeds run | chance | latency ms (b1) | img/s | FLOPs | params |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in a.kinds:
        for t in a.budgets:
            cell = [r for r in rows if r["kind"] == kind and r["tokens"] == t and r.get("val_acc") is not None]
            c = costs.get((kind, t), {})
            chance = cell[0]["chance_acc"] if cell else None
            lines.append(f"| {kind} | {t} | {mean_std([r['val_acc'] for r in cell])} | "
                         f"{mean_std([r['best_val_acc'] for r in cell if r.get('best_val_acc') is not None])} | "
                         f"{len(cell)} | {chance if chance is not None else '-'} | {fmt(c.get('latency_ms'))} | "
                         f"{fmt(c.get('throughput_img_s'))} | {fmt(c.get('flops'))} | {fmt(c.get('params'))} |")
    missing = [r for r in rows if r.get("val_acc") is None]
    if missing:
        lines += ["", "Cells without a result:", ""] + [f"- {r['kind']} t{r['tokens']} s{r['seed']}: {r['status']} "
                                                       f"{r.get('reason', '')}" for r in missing]
    a.out.joinpath("results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(11, 4.4))
    for kind in a.kinds:
        pts = [(t, [r["val_acc"] for r in rows if r["kind"] == kind and r["tokens"] == t and r.get("val_acc") is not None])
               for t in a.budgets]
        pts = [(t, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for t, v in pts if v]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=kind)
        lat = [(t, costs[(kind, t)]["latency_ms"]) for t in a.budgets
               if costs.get((kind, t), {}).get("latency_ms") is not None]
        if lat:
            cx.plot([p[0] for p in lat], [p[1] for p in lat], marker="o", label=kind)
    for axis in (ax, cx):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("visual tokens per image")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    ax.set_ylabel("val accuracy (mean +- std over seeds)")
    ax.set_title(f"accuracy: {a.model} {a.px} px, {a.steps} steps", fontsize=9)
    cx.set_ylabel("batch-1 latency, ms (task=bench, eager)")
    cx.set_title("cost: tower + connector latency", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out / "accuracy_vs_tokens.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "experiments/connector_zoo/results")))
    p.add_argument("--model", default="smolvlm")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--budgets", default="4,16,64")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--recipe", choices=["small", "smolvlm128"], default="small",
                   help="small: the widened smolvlm_debug tower at 64 px (default); smolvlm128: SmolVLM's tower at 128 px")
    p.add_argument("--jobs", type=int, default=12, help="training processes at once on the GPU")
    p.add_argument("--budget-s", type=float, default=380.0, help="start no new training cell after this many s")
    p.add_argument("--set", action="append", default=[], help="extra override for every training cell")
    p.add_argument("--bench-set", action="append", default=[], help="extra override for the bench sweep")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run: smolvlm_debug, 2 steps, 1 seed")
    p.add_argument("--resume-from", type=Path, default=None,
                   help="an earlier call's results.json: its finished cells (and bench rows) are kept, only the rest run")
    a = p.parse_args()
    a.px = 64 if a.cpu_smoke or a.recipe == "small" else 128
    a.kind_set = {}
    if a.recipe == "small" and not a.cpu_smoke:
        a.model = "smolvlm_debug"
        a.kind_set = SMALL_KIND
        a.set, a.bench_set = SMALL + a.set, SMALL + a.bench_set
        TRAIN[TRAIN.index("model.input_size=128")] = "model.input_size=64"
        BENCH[BENCH.index("model.input_size=128")] = "model.input_size=64"
        TRAIN.remove("data.glyph_size=13")  # the set's default at 64 px: 5 px glyphs in 8 px patches
    if a.cpu_smoke:
        a.model, a.steps, a.seeds, a.jobs, a.budget_s = "smolvlm_debug", 2, "0", 2, 3600.0
        a.budgets = "1,4"
        a.set, a.bench_set = CPU_SMOKE + a.set, CPU_BENCH + a.bench_set
        TRAIN[TRAIN.index("model.input_size=128")] = "model.input_size=64"
        BENCH[BENCH.index("model.input_size=128")] = "model.input_size=64"
        TRAIN.remove("data.glyph_size=13")  # 13 px glyphs do not fit a 64 px image: the set's default size
    a.earlier, earlier_costs = {}, {}
    if a.resume_from:
        prev = json.loads(a.resume_from.read_text())
        a.earlier = {(r["kind"], r["tokens"], r["seed"]): r for r in prev["cells"] if r.get("val_acc") is not None}
        earlier_costs = {(r["kind"], r["tokens"]): {k: r.get(k) for k in ("latency_ms", "throughput_img_s", "flops",
                                                                           "params")} for r in prev.get("bench", [])}
    a.kinds = a.kinds.split(",")
    a.budgets = [int(t) for t in a.budgets.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + a.budget_s
    cells = [(k, t, s) for s in seeds for k in a.kinds for t in a.budgets]  # seed 0 of every cell first
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda c: train_cell(a, *c, deadline), cells))
    print(f"[train] {sum(r.get('val_acc') is not None for r in rows)}/{len(rows)} cells in {time.time() - start:.0f} s",
          flush=True)
    report(a, rows, {}, time.time() - start)  # the trainings are on disk before the bench starts
    mark = time.time()
    costs = earlier_costs or bench(a)  # after the trainings: the latencies are measured on a quiet GPU
    print(f"[bench] {len(costs)} cells in {time.time() - mark:.0f} s", flush=True)
    wall = time.time() - start
    report(a, rows, costs, wall)
    ok = sum(r.get("val_acc") is not None for r in rows)
    print(f"[done] {ok}/{len(rows)} training cells, {len(costs)} bench cells, {wall:.0f} s: {a.out / 'results.md'}")


if __name__ == "__main__":
    main()
