"""What a visual-token budget buys a VLM, per question type (issue 15 item 3): accuracy vs tokens, steps to
leave chance and time to first token, with the blind and pixel-probe controls.

Stack (smolvlm-style, everything trained from scratch): the `smolvlm_debug` tower (SigLIP-style ViT, 8 px
patches) at `--px` (64: an 8x8 patch grid, one frame: model.tiling=none), pixel unshuffle at factors 1 / 2 / 4 / 8
(64 / 16 / 4 / 1 visual tokens), and the perceiver and c_abstractor connectors at matching budgets, into
`text=tiny` widened (TEXT). Recipe (the one verified on CPU, tests/test_vlm_tasks.py RECIPE): task=finetune
with train=[connector,lm,tower], AdamW lr 1e-3 (tower 3e-4), warm-up then cosine, batch 64, `--steps` steps,
validation every `--val-every` steps. Data: data=vqa, every question type of the generator.
Controls: `blind` (task.blind=true: the LM sees the question only) and `pixels` (model.tower_kind=pixels: raw
patches into the connector, no tower), at factor 1.

Each cell is its own `python -m vtlab ... task=finetune` process writing `<OUT>/train/<cell>-s<seed>/`
(`--jobs` at once on the GPU; no new cell starts after `--budget-s` seconds: those are listed as not run, never
invented). Steps to leave chance come from each cell's csv/metrics.csv: the first validation step at which a
type's exact match exceeds its level by 0.05, the level being the highest of chance, the majority answer's share and
the blind control's accuracy (`chance_levels`). TTFT comes from
one `python -m vtlab -m ... task=bench text.lm=true` sweep over the same (connector, budget) cells.
Writes results.json, results.md (one table), accuracy_vs_tokens.png (one panel per question type) and curves.png
(learning curves per type) to --out.
Standard library only (+ matplotlib for the plot); the subprocesses need vtlab's dependencies.

GPU (one H200, two rounds of 15 cells, ~4 min each; 2026-12-01 split them over two calls with --budget-s):
                         PYTHONPATH=. python experiments/vqa_study/run.py --out experiments/vqa_study/results_h200
CPU smoke (< 3 min):     PYTHONPATH=. python experiments/vqa_study/run.py --cpu-smoke --out /tmp/vqa_study
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
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

MODEL = "smolvlm_debug"
TEXT = ["text=tiny", "text.hidden_size=128", "text.num_heads=4", "text.num_kv_heads=4", "text.intermediate_size=256",
        "text.num_layers=3"]
# the smolvlm_debug tower widened as in experiments/connector_zoo (4 layers, width 256: 3.2 M parameters), which
# found 5 px glyphs within ~200-1000 steps there; the 32-wide debug tower is kept for --cpu-smoke
TOWER = ["model.hidden_size=256", "model.intermediate_size=1024", "model.num_layers=4", "model.num_heads=4"]
COMMON = ["model.tiling=none", "data=vqa", "logger=csv", "trainer.enable_progress_bar=false", "data.num_workers=2",
          *TEXT]
TRAIN = ["task=finetune", "task.train=[connector,lm,tower]", "task.lr=1e-3", "task.lm_lr=1e-3", "task.tower_lr=3e-4",
         "task.batch_size=64", "data.train_size=16384", "data.val_size=512", "trainer.max_epochs=1000"]
# (cell name, connector overrides, tokens, control overrides)
CELLS = [
    *[(f"pixel_unshuffle-f{f}", ["connector=pixel_unshuffle", f"connector.factor={f}"], 64 // f**2, [])
      for f in (1, 2, 4, 8)],
    *[(f"{k}-t{t}", [f"connector={k}", f"connector.tokens={t}"], t, []) for k in ("perceiver", "c_abstractor")
      for t in (16, 4)],
    ("blind", ["connector=pixel_unshuffle", "connector.factor=1"], 0, ["task.blind=true"]),
    ("pixels", ["connector=pixel_unshuffle", "connector.factor=1"], 64, ["model.tower_kind=pixels", "task.train=[connector,lm]"]),
]
BENCH = ["task=bench", "text.lm=true", "task.modes=[eager]", "task.latency_iters=30", "task.repeats=3", "task.iters=5",
         "logger=none", "model.tiling=none", *TEXT]
CPU_SMOKE_TRAIN = ["trainer.accelerator=cpu", "data.train_size=64", "data.val_size=32", "task.batch_size=16",
                   "data.num_workers=0", "connector.depth=1", "connector.hidden_size=32", "connector.num_heads=2",
                   "connector.num_kv_heads=1", "connector.head_dim=8"]
CPU_SMOKE_BENCH = ["task.device=cpu", "task.latency_iters=2", "task.repeats=1", "task.iters=1",
                   "task.throughput_batch_size=2", "task.warmup=0"]


def vtlab(args: list[str], log: Path, threads: int | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "w") as fh:
        return subprocess.run([sys.executable, "-m", "vtlab", *args], stdout=fh, stderr=subprocess.STDOUT,
                              env=env).returncode


def validation_curve(metrics: Path) -> list[dict]:
    """Every validation row of a cell's csv/metrics.csv: {"step": n, "<qtype>": exact match, ...}."""
    if not metrics.is_file():
        return []
    curve = []
    for row in csv.DictReader(metrics.open()):
        if row.get("val_acc") not in (None, ""):
            curve.append({"step": int(row["step"]), **{k.removeprefix("val_acc_"): float(v) for k, v in row.items()
                                                       if k.startswith("val_acc_") and v not in (None, "")}})
    return curve


def steps_to_leave_chance(curve: list[dict], levels: dict[str, float], margin: float = 0.05) -> dict[str, int | None]:
    """Per question type: the first validation step whose exact match exceeds the type's level + margin."""
    out: dict[str, int | None] = dict.fromkeys(levels)
    for row in curve:
        for qtype, level in levels.items():
            if out[qtype] is None and qtype in row and row[qtype] > level + margin:
                out[qtype] = row["step"]
    return out


def chance_levels(rows: list[dict]) -> dict[str, float]:
    """Per question type, the level a cell must beat to have left chance: the highest of the chance level (one over
    the distinct answers), the majority answer's share and the blind control's final exact match (what the question
    alone gives: e.g. a spatial question names colour or shape, which halves the answers; mean over its seeds)."""
    qtypes = {q for r in rows for q in r.get("chance", {})}
    levels = {}
    for q in qtypes:
        blind = [r["by_type"][q] for r in rows if r["cell"] == "blind" and q in r.get("by_type", {})]
        levels[q] = max([r["chance"][q] for r in rows if q in r.get("chance", {})] +
                        [r["majority"][q] for r in rows if q in r.get("majority", {})] +
                        ([statistics.mean(blind)] if blind else []))
    return levels


def last_validation(metrics: Path) -> dict:
    """The last validation row of a cell's csv/metrics.csv ({} before the first): a running cell's progress."""
    if not metrics.is_file():
        return {}
    last: dict = {}
    for row in csv.DictReader(metrics.open()):
        if row.get("val_acc") not in (None, ""):
            last = row
    return last


def progress_rows(a: argparse.Namespace, cells: list[tuple], done: dict[int, dict]) -> list[dict]:
    """Every cell's row as far as it got: finished rows as they are; a running cell's last validation (its
    status says `running`, so a table written mid-run never passes it off as final); others as not started."""
    rows = []
    for i, (cell, seed) in enumerate(cells):
        if i in done:
            rows.append(done[i])
            continue
        name, _, tokens, _ = cell
        last = last_validation(a.out / "train" / f"{name}-s{seed}" / "csv" / "metrics.csv")
        row = {"cell": name, "tokens": tokens, "seed": seed, "status": "not started"}
        if last:
            row["status"] = f"running (last validation at step {last['step']}: val_acc {float(last['val_acc']):.3f})"
        rows.append(row)
    return rows


def train_cell(a: argparse.Namespace, cell: tuple, seed: int, deadline: float) -> dict:
    name, connector, tokens, control = cell
    folder = a.out / "train" / f"{name}-s{seed}"
    row = {"cell": name, "tokens": tokens, "seed": seed}
    if (folder / "results.json").exists():
        r = json.loads((folder / "results.json").read_text())
    elif time.time() > deadline:
        return row | {"status": "not run (time budget)"}
    else:
        # model.longest_edge = the frame: the images are rendered at the frame size, so the SmolVLM processor's
        # longest-edge resize (default 4 x frame, LANCZOS, then back down) is an identity, not ~3 ms an image
        args = [f"+model={MODEL}", f"model.input_size={a.px}", f"model.longest_edge={a.px}", *COMMON, *TRAIN,
                *connector, *control,
                f"trainer.max_steps={a.steps}", f"trainer.val_check_interval={a.val_every}",
                f"task.warmup_steps={max(1, a.steps // 20)}", f"seed={seed}", f"data.seed={seed}",
                f"out_dir={folder}", *a.set]
        start = time.time()
        rc = vtlab(args, folder / "train.log", a.threads)
        if rc or not (folder / "results.json").exists():
            tail = (folder / "train.log").read_text().splitlines()[-2:]
            return row | {"status": f"failed (exit {rc})", "reason": " / ".join(tail)[-300:]}
        r = json.loads((folder / "results.json").read_text()) | {"wall_s": round(time.time() - start, 1)}
    return row | {"status": r.get("status", "ok"), "control": r.get("control"), "val_acc": r.get("val_acc"),
                  "by_type": r.get("val_acc_by_type", {}), "chance": r.get("chance_by_type", {}),
                  "majority": r.get("majority_by_type", {}), "curve": validation_curve(folder / "csv" / "metrics.csv"),
                  "global_step": r.get("global_step"), "wall_s": r.get("wall_s")}


def bench(a: argparse.Namespace) -> dict[str, float]:
    """TTFT (ms) per cell name from one task=bench sweep with the LM (the controls share factor 1's cost)."""
    sweep = a.out / "bench"
    specs = [c for c in CELLS if not c[3]]
    out: dict[str, float] = {}
    for kind in ("pixel_unshuffle", "perceiver", "c_abstractor"):
        cells = [c for c in specs if c[1][0] == f"connector={kind}"]
        key = "connector.factor" if kind == "pixel_unshuffle" else "connector.tokens"
        values = ",".join(c[1][1].split("=")[1] for c in cells)
        folder = sweep / kind
        if not (folder / "summary.csv").exists():
            vtlab(["-m", f"+model={MODEL}", f"model.input_size={a.px}", f"connector={kind}", f"{key}={values}", *BENCH,
                   *a.bench_set, f"hydra.sweep.dir={folder}"], sweep / f"{kind}.log")
        if (folder / "summary.csv").exists():
            for r in csv.DictReader((folder / "summary.csv").open()):
                if r.get("status") == "ok" and r.get("ttft_ms"):
                    name = f"pixel_unshuffle-f{r['factor']}" if kind == "pixel_unshuffle" else f"{kind}-t{r['tokens']}"
                    out[name] = float(r["ttft_ms"])
    if "pixel_unshuffle-f1" in out:
        out["pixels"] = out["pixel_unshuffle-f1"]  # same connector and LM; the probe's (absent) tower only saves time
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def report(a: argparse.Namespace, rows: list[dict], ttft: dict[str, float], wall: float) -> None:
    qtypes = sorted({q for r in rows for q in r.get("by_type", {})})
    levels = chance_levels(rows)
    for r in rows:
        if "curve" in r:
            r["steps_to_leave_chance"] = steps_to_leave_chance(r["curve"], levels)
    meta = {"model": MODEL, "px": a.px, "text": TEXT, "train": TRAIN, "set": a.set, "steps": a.steps, "val_every": a.val_every,
            "seeds": a.seeds, "wall_s": round(wall, 1), "cpu_smoke": a.cpu_smoke}
    a.out.joinpath("results.json").write_text(json.dumps({"meta": meta, "cells": rows, "ttft_ms": ttft}, indent=2) + "\n")
    head = ["cell", "tokens", "seeds run", *[f"{q} acc" for q in qtypes], *[f"{q} steps to leave chance" for q in qtypes],
            "TTFT ms"]
    lines = [f"# VQA study: accuracy vs visual tokens per question type ({MODEL} tower at {a.px} px, text {TEXT[1:]}, "
             f"{a.steps} steps, seeds {a.seeds})", "",
             f"Wall time {wall:.0f} s. Accuracy: greedy exact match on the val split at the end (mean ± std over the "
             f"seeds that ran). Steps to leave chance: first validation step above the type's level + 0.05, the level "
             f"being the highest of chance, majority answer and the blind control's accuracy (median over the seeds "
             f"that left; '-' = none did). Per type, chance / majority / level: "
             + ", ".join(f"{q} {mean_std([r['chance'][q] for r in rows if q in r.get('chance', {})])} / "
                         f"{mean_std([r['majority'][q] for r in rows if q in r.get('majority', {})])} / "
                         f"{levels.get(q, float('nan')):.3f}" for q in qtypes), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, _, tokens, _ in CELLS:
        done = [r for r in rows if r["cell"] == name and r.get("val_acc") is not None]
        accs = [mean_std([r["by_type"][q] for r in done if q in r["by_type"]]) for q in qtypes]
        leave = []
        for q in qtypes:
            steps = [r.get("steps_to_leave_chance", {}).get(q) for r in done]
            hit = sorted(s for s in steps if s is not None)
            leave.append(f"{statistics.median(hit):.0f} ({len(hit)}/{len(steps)})" if hit else "-")
        t = ttft.get(name)
        lines.append(f"| {name} | {tokens} | {len(done)} | " + " | ".join(accs + leave) +
                     f" | {f'{t:.2f}' if t is not None else '-'} |")
    missing = [r for r in rows if r.get("val_acc") is None]
    if missing:
        lines += ["", "Cells without a result:", ""] + [f"- {r['cell']} s{r['seed']}: {r['status']} {r.get('reason', '')}"
                                                       for r in missing]
    a.out.joinpath("results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if not qtypes:
        return
    fig, axes = plt.subplots(1, len(qtypes) + 1, figsize=(4.2 * (len(qtypes) + 1), 3.8), squeeze=False)
    for ax, q in zip(axes[0], qtypes, strict=False):
        for kind, marker in (("pixel_unshuffle", "o"), ("perceiver", "s"), ("c_abstractor", "^")):
            pts = []
            for name, _, tokens, control in CELLS:
                if name.startswith(kind) and not control:
                    v = [r["by_type"][q] for r in rows if r["cell"] == name and q in r.get("by_type", {})]
                    if v:
                        pts.append((tokens, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0))
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker=marker,
                            capsize=3, label=kind)
        for name, style in (("blind", "k--"), ("pixels", "g:")):
            v = [r["by_type"][q] for r in rows if r["cell"] == name and q in r.get("by_type", {})]
            if v:
                ax.axhline(statistics.mean(v), color=style[0], linestyle=style[1:], label=f"{name} control")
        levels = [r["chance"][q] for r in rows if q in r.get("chance", {})]
        if levels:
            ax.axhline(statistics.mean(levels), color="grey", linewidth=0.8, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_title(q)
        ax.set_xlabel("visual tokens per image")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("exact match (mean ± std over seeds)")
    axes[0][-2].legend(fontsize=7)
    cost = axes[0][-1]  # what each budget costs, on the same token axis
    for kind, marker in (("pixel_unshuffle", "o"), ("perceiver", "s"), ("c_abstractor", "^")):
        pts = sorted((tokens, ttft[name]) for name, _, tokens, control in CELLS
                     if name.startswith(kind) and not control and name in ttft)
        if pts:
            cost.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=kind)
    cost.set_xscale("log", base=2)
    cost.set_title("cost: time to first token (bench, bs 1)")
    cost.set_xlabel("visual tokens per image")
    cost.set_ylabel("TTFT ms")
    cost.grid(True, alpha=0.3)
    if ttft:
        cost.legend(fontsize=7)
    fig.suptitle(f"VQA study: {MODEL} {a.px} px, {a.steps} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out / "accuracy_vs_tokens.png", dpi=120)
    plt.close(fig)
    learning_curves(a, rows, qtypes, levels, plt)


def learning_curves(a: argparse.Namespace, rows: list[dict], qtypes: list[str], levels: dict[str, float], plt) -> None:
    """curves.png: per question type, every cell's validation exact match against the step (mean over its seeds,
    at the steps all of them validated), with the level a cell must beat to have left chance."""
    fig, axes = plt.subplots(1, len(qtypes), figsize=(4.2 * len(qtypes), 3.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, q in zip(axes[0], qtypes, strict=True):
        for n, (name, _, tokens, _) in enumerate(CELLS):
            curves = [{p["step"]: p[q] for p in r.get("curve", []) if q in p} for r in rows if r["cell"] == name]
            curves = [c for c in curves if c]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            style = "--" if name in ("blind", "pixels") else "-"
            ax.plot(steps, [statistics.mean(c[s] for c in curves) for s in steps], style, linewidth=1.2,
                    color=colours[n % len(colours)], label=f"{name} ({tokens})")
        if q in levels:
            ax.axhline(levels[q] + 0.05, color="grey", linewidth=0.8, linestyle=":", label="level + 0.05")
        ax.set_title(q)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"val exact match (mean of {len(a.seeds.split(','))} seeds)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"VQA study learning curves: {MODEL} {a.px} px (cell (visual tokens))", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out / "curves.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "experiments/vqa_study/results")))
    p.add_argument("--px", type=int, default=64)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--jobs", type=int, default=15, help="training processes at once on the GPU")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP threads per training process (default: the cores / --jobs, at least 1; each process "
                        "otherwise takes every core, and 15 of them oversubscribe a 16-core host ~15 times)")
    p.add_argument("--report-every", type=float, default=30.0, help="rewrite results.md / .json this often (s)")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no new training cell after this many s")
    p.add_argument("--set", action="append", default=[], help="extra override for every training cell")
    p.add_argument("--bench-set", action="append", default=[], help="extra override for the bench sweeps")
    p.add_argument("--cpu-smoke", action="store_true", help="a few tiny CPU cells (< 3 min)")
    p.add_argument("--ttft-from", type=Path, default=None,
                   help="an earlier call's results.json: its TTFT rows are used and the bench is not run again")
    a = p.parse_args()
    if not a.cpu_smoke:
        a.set, a.bench_set = TOWER + a.set, TOWER + a.bench_set
    if a.cpu_smoke:
        a.steps, a.val_every, a.seeds, a.jobs, a.threads, a.budget_s = 4, 2, "0", 2, 1, 3600.0
        a.set, a.bench_set = CPU_SMOKE_TRAIN + a.set, CPU_SMOKE_BENCH + a.bench_set
        keep = {"pixel_unshuffle-f4", "perceiver-t4", "blind", "pixels"}
        CELLS[:] = [c for c in CELLS if c[0] in keep]
    if a.threads is None:
        a.threads = max(1, (os.cpu_count() or 2) // a.jobs)
    seeds = [int(s) for s in a.seeds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + a.budget_s
    cells = [(c, s) for s in seeds for c in CELLS]  # seed 0 of every cell first
    done: dict[int, dict] = {}
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = {pool.submit(train_cell, a, c, s, deadline): i for i, (c, s) in enumerate(cells)}
        pending = set(futures)
        while pending:  # the table is rewritten every --report-every s: a timeout loses at most that much
            finished, pending = wait(pending, timeout=a.report_every)
            for f in finished:
                done[futures[f]] = f.result()
            report(a, progress_rows(a, cells, done), {}, time.time() - start)
    rows = [done[i] for i in range(len(cells))]
    report(a, rows, {}, time.time() - start)  # the trainings are on disk before the bench starts
    print(f"[train] {sum(r.get('val_acc') is not None for r in rows)}/{len(rows)} cells in {time.time() - start:.0f} s",
          flush=True)
    if a.ttft_from:  # an earlier call's bench (same cells, same stack): not measured again
        ttft = json.loads(a.ttft_from.read_text()).get("ttft_ms", {})
    else:
        ttft = bench(a)  # after the trainings: TTFT measured on a quiet GPU
    wall = time.time() - start
    report(a, rows, ttft, wall)
    ok = sum(r.get("val_acc") is not None for r in rows)
    print(f"[done] {ok}/{len(rows)} training cells, {len(ttft)} TTFT cells, {wall:.0f} s: {a.out / 'results.md'}")


if __name__ == "__main__":
    main()
