"""Accuracy vs visual tokens: one `task=train` job per connector factor on the synthetic glyph-count set.

Question: how much accuracy does the visual-token budget cost on a task that needs fine spatial detail
(count the small "+" glyphs among "x" glyphs)? The defaults are the recipe that learned on 2026-11-28 (run 4b of
experiments/training/README.md): SmolVLM's tower fed 128 px frames (8x8 patches of 16 px, interpolated position
embeddings), 13 px glyphs, full fine-tuning from random init; pixel-unshuffle factors 1, 2, 4, 8 give 64, 16,
4 and 1 tokens. At the native 512 px (`--set model.input_size=512`, 32x32 patches: 1024 ... 16 tokens) a step
costs ~4x more and nothing left chance within 1000 steps from random init.

Each factor is its own `python -m vtlab ... task=train` process (one launcher job per cell, never an
in-process sweep), writing to `<out>/f<factor>[-s<seed>]/`. The script then collects every `results.json`
into `results.json`, `results.md` and `accuracy_vs_tokens.png` in `--out`. Cells that already have a
results.json are not re-run (delete the folder to redo one), so an interrupted sweep can be continued.

GPU (one H100/H200: 4 cells one after the other, ~3 min each by the measured ~1500-1800 img/s; or one process per cell, see gpu_session_glyph13.sh):
    python experiments/training/accuracy_vs_tokens.py --out experiments/training/results/acc_vs_tokens --seeds 0,1,2
CPU smoke (seconds):
    python experiments/training/accuracy_vs_tokens.py --model smolvlm_debug --factors 1,2,4,8 \
        --out /tmp/avt --set trainer.max_steps=4 --set data.train_size=64 --set data.val_size=32 \
        --set task.batch_size=16 --set task.compile=false --set trainer.accelerator=cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Defaults = run 4b's recipe (override any with --set KEY=VALUE; later values win). Runs 1-3 (512 / 256 / 128 px
# with 5 px glyphs, lr 1e-3 ... 2e-4) stayed at chance; see experiments/training/README.md section 2.
GPU_DEFAULTS = [
    "task=train",
    "logger=csv",
    "data=synthetic",
    "data.task=count_plus",
    "model.input_size=128",
    "data.glyph_size=13",  # 5 px glyphs in 16 px patches: not learned even from raw pixels (cpu_probe_glyph_size)
    "data.train_size=32768",
    "data.val_size=1024",
    "data.num_workers=8",
    "task.batch_size=64",
    "task.freeze=none",
    "task.lr=1e-4",  # 1e-3 never leaves chance with a 576-wide head (results/cpu_diagnosis_head_lr_2026-11-28)
    "task.tower_lr=1e-4",
    "task.warmup_steps=500",
    "task.compile=false",
    "trainer.max_epochs=8",  # 4096 steps
    "trainer.enable_progress_bar=false",
]


def cell_dir(out: Path, factor: int, seed: int) -> Path:
    """The run folder of one (factor, seed) cell: f4, f4-s1, ..."""
    return out / (f"f{factor}" + (f"-s{seed}" if seed else ""))


def run_cell(python: str, model: str, factor: int, seed: int, out: Path, sets: list[str], dry: bool) -> dict | None:
    cell = cell_dir(out, factor, seed)
    result = cell / "results.json"
    if result.exists():
        print(f"[skip] {cell} (results.json exists)")
        return json.loads(result.read_text())
    cmd = [python, "-m", "vtlab", f"+model={model}", *GPU_DEFAULTS, *sets,
           f"connector.factor={factor}", f"seed={seed}", f"data.seed={seed}", f"out_dir={cell}"]
    if (cell / "checkpoints" / "last.ckpt").exists():  # interrupted cell: resume (a fresh run there is refused)
        cmd.append("task.ckpt_path=last")
    print("$ " + " ".join(cmd), flush=True)
    if dry:
        return None
    cell.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(cell / "train.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0 or not result.exists():
        tail = (cell / "train.log").read_text().splitlines()[-15:]
        print(f"[fail] factor {factor} (exit {proc.returncode}); last lines:\n" + "\n".join(tail), flush=True)
        return {"factor": factor, "seed": seed, "status": f"failed (exit {proc.returncode})"}
    print(f"[done] factor {factor} in {time.time() - start:.0f}s", flush=True)
    return json.loads(result.read_text())


def summarise(rows: list[dict], out: Path, model: str) -> None:
    keys = ["factor", "seed", "tokens", "grid", "val_acc", "best_val_acc", "chance_acc", "val_loss",
            "train_images_per_s", "fit_s", "global_step", "precision", "cuda", "status"]
    table = [{k: r.get(k) for k in keys} | {"seed": r.get("config", {}).get("seed", r.get("seed", 0))} for r in rows]
    table.sort(key=lambda r: (r["factor"], r["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"# Accuracy vs visual tokens: {model} on the synthetic glyph-count set", "",
             "| factor | seed | tokens | val_acc (final) | best val_acc | chance | val_loss | train img/s | fit s | status |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in table:
        lines.append(f"| {r['factor']} | {r['seed']} | {r['tokens'] or '-'} | {fmt(r['val_acc'], '.4f')} | "
                     f"{fmt(r['best_val_acc'], '.4f')} | {fmt(r['chance_acc'], '.3f')} | {fmt(r['val_loss'], '.4f')} | "
                     f"{fmt(r['train_images_per_s'], '.0f')} | {fmt(r['fit_s'], '.0f')} | {r['status']} |")
    gpu = next((r["cuda"] for r in table if r.get("cuda")), "cpu")
    lines += ["", f"device: {gpu}; precision: {next((r['precision'] for r in table if r.get('precision')), '-')}"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = [r for r in table if r.get("val_acc") is not None]
    if not ok:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for seed in sorted({r["seed"] for r in ok}):
        pts = [r for r in ok if r["seed"] == seed]
        ax.plot([r["tokens"] for r in pts], [r["val_acc"] for r in pts], "o-", label=f"final, seed {seed}")
        ax.plot([r["tokens"] for r in pts], [r["best_val_acc"] for r in pts], "x--", alpha=0.6, label=f"best, seed {seed}")
        for r in pts:
            ax.annotate(f"f{r['factor']}", (r["tokens"], r["val_acc"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.axhline(ok[0]["chance_acc"], color="gray", ls=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("visual tokens per image")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{model}: accuracy vs tokens ({gpu})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_tokens.png", dpi=150)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smolvlm")
    ap.add_argument("--factors", default="1,2,4,8")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (one training per factor and seed)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--summary-only", action="store_true", help="run nothing; rebuild the table and plot of --out")
    args = ap.parse_args()
    rows = {}
    for seed in [] if args.summary_only else [int(s) for s in args.seeds.split(",")]:
        for factor in [int(f) for f in args.factors.split(",")]:
            row = run_cell(args.python, args.model, factor, seed, args.out, args.set, args.dry_run)
            if row is not None:
                rows[(factor, seed)] = row | {"seed": seed, "factor": factor}
    if args.dry_run:
        return
    for path in sorted(args.out.glob("f*/results.json")):  # cells of earlier calls into the same --out
        r = json.loads(path.read_text())
        key = (r["factor"], r.get("config", {}).get("seed", 0))
        rows.setdefault(key, r | {"seed": key[1]})
    if rows:
        summarise(list(rows.values()), args.out, args.model)


if __name__ == "__main__":
    main()
