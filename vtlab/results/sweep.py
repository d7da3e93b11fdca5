"""Hydra callback that summarises a `-m` sweep in its sweep directory.

Registered in `conf/config.yaml` under `hydra.callbacks`. After every job of a multirun it refreshes
`summary.csv` and `summary.md` (so a sweep that stops early still leaves its table, a failed cell
included); at the end it also writes the trade-off plots (`tokens_vs_*.png`), prints the summary's path,
and with `logger=wandb` logs one extra W&B run holding the sweep's table and scatters.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vtlab.results.plots import write_plots
from vtlab.results.record import RESULTS, record_not_run
from vtlab.results.summary import collect, write_csv, write_markdown
from vtlab.results.tracking import log_sweep


def write_summary(sweep_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write summary.csv, summary.md (and the PNGs) for `sweep_dir`; return the rows and the paths."""
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
        out["plots"] = write_plots(rows, sweep_dir, title)
    return out


def _is_multirun(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.mode")).endswith("MULTIRUN")


def _record_failure(config: DictConfig, job_return: JobReturn) -> None:
    """Give a failed cell a results.json (status `failed`, the error as reason) so the summary shows it."""
    out_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir")))
    if (out_dir / RESULTS).exists():
        return
    error = job_return._return_value  # the exception Hydra caught
    record_not_run(config, out_dir, OmegaConf.select(config, "hydra.runtime.choices.model"),
                   f"{type(error).__name__}: {error}"[:2000],
                   list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []), status="failed")


def earlier_sweep(sweep_dir: Path) -> str | None:
    """The first file of an earlier sweep in `sweep_dir` (its summary or a cell's results.json), else None."""
    for name in ("summary.csv", "summary.md"):
        if (sweep_dir / name).exists():
            return name
    cells = sorted(sweep_dir.glob(f"*/{RESULTS}")) if sweep_dir.is_dir() else []
    return str(cells[0].relative_to(sweep_dir)) if cells else None


class SweepSummary(Callback):
    """`hydra.callbacks.sweep_summary._target_: vtlab.sweep.SweepSummary`."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse a sweep into a folder that holds an earlier sweep (its cells would be overwritten)."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        found = earlier_sweep(sweep_dir)
        if found and not OmegaConf.select(config, "overwrite", default=False):
            print(f"vtlab: error: hydra.sweep.dir={sweep_dir} already holds an earlier sweep ({found}), whose cells "
                  f"this sweep would overwrite; choose another hydra.sweep.dir (or overwrite=true)", file=sys.stderr)
            sys.exit(2)

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
            group = OmegaConf.select(logger, "group") or sweep_dir.name
            log_sweep(rows, sweep_dir, logger, group, summary["plots"])
