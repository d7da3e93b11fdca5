"""Trade-off plots of a sweep (PNG, matplotlib Agg): visual tokens vs a cost.

One series per (model, connector, input image size), its points the connector factors (labelled f1, f2, ...),
so an image-size sweep draws one line per size instead of one zig-zag per model (the legend gives each size's
frame count: two sizes planned to the same frames draw the same line). Every PNG has its own title
(the sweep and the quantity), axes with units, and a subtitle naming the device, dtype and the bench mode the
numbers come from.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

# (column, y label with unit, file name, the column naming the mode the value comes from)
PLOTS = (
    ("latency_ms", "latency at batch 1, p50 (ms)", "tokens_vs_latency.png", "latency_mode"),
    ("throughput_img_s", "throughput (images/s)", "tokens_vs_throughput.png", "throughput_mode"),
    ("throughput_tokens_s", "token throughput (visual tokens/s)", "tokens_vs_token_throughput.png", "throughput_mode"),
    ("peak_memory_mb", "peak memory (MiB)", "tokens_vs_memory.png", "throughput_mode"),
    ("flops", "vision FLOPs per image (FLOP)", "tokens_vs_flops.png", None),
    ("lm_prefill_flops", "LM prefill FLOPs per image (FLOP)", "tokens_vs_lm_prefill.png", None),
    ("ttft_ms", "time to first token, p50 (ms)", "tokens_vs_ttft.png", None),  # text.lm=true
    ("kv_cache_mb", "KV cache of the prompt (MiB)", "tokens_vs_kv_cache.png", None),
)

Series = dict[tuple[str, str, str], list[tuple[float, float, Any]]]


def _series(rows: list[dict[str, Any]], y: str) -> Series:
    """(model, connector, image) -> [(tokens, y, factor)] sorted by tokens, from the ok rows that report `y`."""
    out: Series = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and isinstance(r.get("tokens"), (int, float)) and isinstance(r.get(y), (int, float)):
            image = str(r.get("image") or "native") + (f" ({r['frames']} frames)" if r.get("image") and r.get("frames") else "")
            key = (str(r.get("model")), str(r.get("connector") or "?"), image)
            out[key].append((r["tokens"], r[y], r.get("factor")))
    return {key: sorted(points) for key, points in out.items()}


def _distinct(rows: list[dict[str, Any]], key: str) -> str:
    values = sorted({str(r[key]) for r in rows if r.get("status") == "ok" and r.get(key) is not None})
    return ", ".join(values) if values else "n/a"


def subtitle(rows: list[dict[str, Any]], mode_key: str | None) -> str:
    """`device NAME, dtype D[, mode M]` over the ok rows (several values joined by commas)."""
    parts = [f"device {_distinct(rows, 'device_name')}", f"dtype {_distinct(rows, 'dtype')}"]
    if mode_key and any(r.get(mode_key) for r in rows):
        parts.append(f"mode {_distinct(rows, mode_key)}")
    return "; ".join(parts)


def write_plots(rows: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """One PNG per cost that at least one ok row reports; returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    for y, label, name, mode_key in PLOTS:
        series = _series(rows, y)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=100)
        for (model, connector, image), points in sorted(series.items()):
            xs, ys, _ = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{model}, {connector}, {image}")
            for x, v, factor in points:
                if factor is not None:
                    ax.annotate(f"f{factor}", (x, v), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log", base=2)
        if y in ("flops", "lm_prefill_flops"):
            ax.set_yscale("log")
        ax.set_xlabel("visual tokens per image, to the LM (tokens, log2)")
        ax.set_ylabel(label)
        fig.suptitle(f"{title}: visual tokens vs {label}", fontsize=10)
        ax.set_title(subtitle(rows, mode_key), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, title="model, connector, image", title_fontsize=7)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
