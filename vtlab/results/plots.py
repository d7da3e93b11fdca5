"""Trade-off plots of a sweep (PNG, matplotlib Agg): visual tokens vs a cost, one series per (model, connector).

A sweep over `connector=...` kinds and `connector.tokens=...` budgets draws one line per kind (iso-budget
comparison); a sweep over factors of one kind draws one line per model, as before."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

# (column, y label, file name)
PLOTS = (
    ("latency_ms", "latency at batch 1, p50 (ms)", "tokens_vs_latency.png"),
    ("throughput_img_s", "throughput (images/s)", "tokens_vs_throughput.png"),
    ("throughput_tokens_s", "throughput (visual tokens/s)", "tokens_vs_token_throughput.png"),
    ("peak_memory_mb", "peak memory (MiB)", "tokens_vs_memory.png"),
    ("flops", "vision FLOPs per image", "tokens_vs_flops.png"),
    ("lm_prefill_flops", "LM prefill FLOPs per image", "tokens_vs_lm_prefill.png"),
    ("ttft_ms", "time to first token, p50 (ms)", "tokens_vs_ttft.png"),  # text.lm=true
    ("kv_cache_mb", "KV cache of the prompt (MiB)", "tokens_vs_kv_cache.png"),
)


def _series(rows: list[dict[str, Any]], y: str) -> dict[str, list[tuple[float, float, Any]]]:
    """series label -> [(tokens, y, factor)] sorted by tokens, from the ok rows that report `y`; the label is
    `model` when the rows use one connector kind, else `model / connector`."""
    ok = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("tokens"), (int, float))
          and isinstance(r.get(y), (int, float))]
    kinds = {r.get("connector") for r in ok}
    out: dict[str, list[tuple[float, float, Any]]] = defaultdict(list)
    for r in ok:
        label = str(r.get("model")) if len(kinds) <= 1 else f"{r.get('model')} / {r.get('connector')}"
        out[label].append((r["tokens"], r[y], r.get("factor")))
    return {label: sorted(points, key=lambda p: p[:2]) for label, points in out.items()}


def write_plots(rows: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """One PNG per cost that at least one ok row reports; returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    for y, label, name in PLOTS:
        series = _series(rows, y)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
        for model, points in sorted(series.items()):
            xs, ys, factors = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=model)
            for x, v, factor in points:
                if factor is not None:
                    ax.annotate(f"f{factor}", (x, v), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log", base=2)
        if y in ("flops", "lm_prefill_flops"):
            ax.set_yscale("log")
        ax.set_xlabel("visual tokens per image (to the LM)")
        ax.set_ylabel(label)
        ax.set_title(f"{title}: tokens vs {label.split(' (')[0]}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
