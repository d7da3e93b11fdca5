"""Hydra callback that summarises a `-m` sweep in its sweep directory.

Registered in `conf/config.yaml` under `hydra.callbacks`. After every job of a multirun it refreshes
`summary.csv` and `summary.md` (so a sweep that stops early still leaves its table, a failed cell
included); at the end it also writes the trade-off plots (`tokens_vs_*.png`), prints the summary's path,
and with `logger=wandb` logs one extra W&B run holding the sweep's table and scatters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def write_summary(sweep_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write summary.csv, summary.md (and the PNGs) for `sweep_dir`; return the rows and the paths."""
    from vtlab.summary import collect, write_csv, write_markdown

    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    title = f"vtlab sweep {sweep_dir.name}"
    out: dict[str, Any] = {
        "rows": rows,
        "csv": write_csv(rows, sweep_dir / "summary.csv"),
        "markdown": write_markdown(rows, sweep_dir / "summary.md", title),
        "plots": [],
    }
    if plots:
        from vtlab.plots import write_plots

        out["plots"] = write_plots(rows, sweep_dir, title)
    return out


def _is_multirun(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.mode")).endswith("MULTIRUN")


def _record_failure(config: DictConfig, job_return: JobReturn) -> None:
    """Give a failed cell a results.json (status `failed`, the error as reason) so the summary shows it."""
    out_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir")))
    path = out_dir / "results.json"
    if path.exists():
        return
    error = job_return._return_value  # the exception Hydra caught
    model = OmegaConf.select(config, "hydra.runtime.choices.model")
    factor = OmegaConf.select(config, "connector.factor", default=None)
    result = {
        "task": str(OmegaConf.select(config, "task.name", default="")),
        "status": "failed",
        "reason": f"{type(error).__name__}: {error}"[:2000],
        "run_name": f"{model}-f{factor}",
        "model": model,
        "factor": factor,
        "overrides": list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


class SweepSummary(Callback):
    """`hydra.callbacks.sweep_summary._target_: vtlab.sweep.SweepSummary`."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        try:
            if job_return.status == JobStatus.FAILED:
                _record_failure(config, job_return)
            write_summary(Path(str(config.hydra.sweep.dir)), plots=False)
        except Exception as exc:  # a summary never fails a job
            print(f"vtlab: sweep summary not refreshed: {exc}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        summary = write_summary(sweep_dir)
        rows = summary["rows"]
        ok = sum(r["status"] == "ok" for r in rows)
        print(f"vtlab: sweep summary ({len(rows)} cells, {ok} ok): {summary['markdown'].resolve()}")
        print(f"vtlab: table {summary['csv'].resolve()}; plots: {', '.join(p.name for p in summary['plots']) or 'none'}")
        logger = OmegaConf.select(config, "logger")
        if logger is not None:
            from vtlab.tracking import log_sweep

            group = OmegaConf.select(logger, "group") or sweep_dir.name
            log_sweep(rows, sweep_dir, logger, group, summary["plots"])
