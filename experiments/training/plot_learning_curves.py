"""Plot an accuracy-vs-tokens run: val accuracy per step for every cell, and final accuracy vs visual tokens.

Reads what `accuracy_vs_tokens.py` leaves in `--out`: `results.json` (one row per factor and seed) and each
cell's `csv/metrics.csv` (Lightning's CSVLogger: one val_acc row per validation). Writes
`<run>/learning_curves.png` and prints the curves as text.

    python experiments/training/plot_learning_curves.py experiments/training/results/<run>/lr1e-4
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from accuracy_vs_tokens import cell_dir  # beside this file


def val_curve(cell: Path) -> list[tuple[int, float]]:
    with open(cell / "csv" / "metrics.csv") as f:
        return [(int(r["step"]) + 1, float(r["val_acc"])) for r in csv.DictReader(f) if r.get("val_acc")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    a = ap.parse_args()
    rows = [r for r in json.loads((a.run / "results.json").read_text()) if r.get("val_acc") is not None]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = sorted({r["factor"] for r in rows})
    colours = dict(zip(factors, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    first_seed = min(r["seed"] for r in rows)  # one legend entry per factor
    for r in rows:
        curve = val_curve(cell_dir(a.run, r["factor"], r["seed"]))
        print(f"f{r['factor']} seed {r['seed']}: " + " ".join(f"{s}:{v:.3f}" for s, v in curve))
        left.plot(*zip(*curve, strict=True), "o-", ms=3, color=colours[r["factor"]], alpha=0.8,
                  label=f"f{r['factor']} ({r['tokens']} tokens)" if r["seed"] == first_seed else None)
    chance = rows[0]["chance_acc"]
    left.axhline(chance, color="gray", ls=":", label="chance")
    left.set(xlabel="optimizer step", ylabel="val accuracy", title="val accuracy during training (one line per seed)")
    left.legend(fontsize=7)
    tokens = sorted({r["tokens"] for r in rows})
    for f in factors:
        pts = [r for r in rows if r["factor"] == f]
        right.scatter([r["tokens"] for r in pts], [r["val_acc"] for r in pts], color=colours[f], zorder=3)
    medians = [statistics.median(r["val_acc"] for r in rows if r["tokens"] == t) for t in tokens]
    right.plot(tokens, medians, "k-", lw=1, label="median over seeds")
    right.axhline(chance, color="gray", ls=":", label="chance")
    right.set_xscale("log", base=2)
    right.set(xlabel="visual tokens per image", ylabel="final val accuracy", title="final accuracy (dots: seeds)")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(a.run / "learning_curves.png", dpi=150)
    print(f"wrote {a.run / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
