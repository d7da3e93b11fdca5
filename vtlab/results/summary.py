"""One table for a whole `-m` sweep: read every `<sweep_dir>/*/results.json`, write `summary.csv` and `summary.md`.

Works for any task that writes results.json (bench, profile, ...). Skipped cells (`status: skipped`,
written by vtlab.tasks.skip) and failed ones keep their row with the reason, so the table shows the whole
grid that was asked for.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

COLUMNS = (
    "job", "task", "model", "connector", "factor", "image", "tiling", "frames", "status", "tokens", "patches", "text_hidden", "params", "flops",
    "lm_prefill_flops", "latency_ms", "latency_ms_p90", "latency_mode", "throughput_img_s", "throughput_tokens_s",
    "throughput_mode", "tflops", "mfu", "peak_memory_mb", "lm_prefill_ms", "ttft_ms", "kv_cache_mb", "dtype", "device_name", "attention_backend", "run_name",
    "reason",
)
MODE_KEYS = ("latency_ms", "throughput_img_s")  # also reported per mode: latency_ms_eager, throughput_img_s_compile...


def _job_order(path: Path) -> tuple[int, str]:
    head = path.parent.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.parent.name)


def _plain(value: Any) -> Any:
    """`TaskName.bench` -> `bench` (older skip records stored the enum's str)."""
    if isinstance(value, str) and value.startswith("TaskName."):
        return value.removeprefix("TaskName.")
    return value


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per cell directory of the sweep, in job order."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("*/results.json"), key=_job_order):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            result = {"status": "unreadable", "reason": f"{path.name}: {exc}"}
        row: dict[str, Any] = {key: _plain(result.get(key)) for key in COLUMNS}
        row["job"] = path.parent.name
        row["status"] = result.get("status", "ok")
        row["reason"] = result.get("reason") or result.get("error")
        if row["connector"] is None:  # the connector kind lives in the record's config
            row["connector"] = ((result.get("config") or {}).get("connector") or {}).get("kind")
        if row["device_name"] is None:
            row["device_name"] = (result.get("device_info") or {}).get("device_name")
        for mode, m in (result.get("modes") or {}).items():
            for key in MODE_KEYS:
                row[f"{key}_{mode}"] = m.get(key)
        rows.append(row)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The fixed columns, then per-mode ones, dropping any column that no row fills."""
    extra = sorted({k for r in rows for k in r if k not in COLUMNS})
    tiled = any(r.get("image") for r in rows)  # tiling / frames columns only for sweeps over input image sizes
    return [c for c in (*COLUMNS, *extra) if (c in ("job", "status") or any(r.get(c) is not None for r in rows))
            and (tiled or c not in ("tiling", "frames"))]


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    cols = columns(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in cols})
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if abs(value) >= 1e9:
            return f"{value:.3e}"
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int) and abs(value) >= 1e6:
        return f"{value:.3e}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_markdown(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    cols = columns(rows)
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    skipped = sum(r["status"] != "ok" for r in rows)
    lines += ["", f"{len(rows)} cells, {len(rows) - skipped} ok, {skipped} not run (see `status` and `reason`)."]
    path.write_text("\n".join(lines) + "\n")
    return path
