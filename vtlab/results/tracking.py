"""Experiment trackers: W&B (offline by default), CSV, or none, behind one small interface.

`wandb` is imported only when `logger=wandb`, so runs with `logger=csv|none` never need it. One W&B run per
job, named from the config (`smolvlm-f4`), grouped by sweep directory, with the full config logged and the
result's scalars in the run summary; `finish()` always calls `wandb.finish()` so that the next job of a
multirun gets its own run. A tracker never fails a run: logging errors are reported and swallowed.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from vtlab.results.record import TEXT_KEYS as SUMMARY_TEXT_KEYS
from vtlab.results.record import RunContext, process_rank
from vtlab.results.summary import columns


def scalars(result: dict[str, Any]) -> dict[str, float | int]:
    """The flat numeric entries of a result (nested dicts are flattened with '/')."""
    out: dict[str, float | int] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)

    for key, value in result.items():
        if key not in ("config", "device_info", "stages"):
            walk(key, value)
    return out


def wandb_mode(configured: str) -> str:
    """`WANDB_MODE` from the environment beats `logger.mode` (wandb.init's own argument would beat the env)."""
    return os.environ.get("WANDB_MODE") or configured


def wandb_dir(default: Path) -> str:
    """`WANDB_DIR` from the environment, else the run's own directory (W&B writes `<dir>/wandb/`)."""
    path = os.environ.get("WANDB_DIR") or str(default)
    os.makedirs(path, exist_ok=True)
    return path


class Tracker:
    """No-op tracker (`logger=none`)."""

    def log_result(self, result: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class CsvTracker(Tracker):
    """Writes the result's scalars to `summary.csv` in the run dir (train/eval step metrics go through
    Lightning's CSVLogger to `csv/metrics.csv`, see vtlab.trainer)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def log_result(self, result: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        flat = scalars(result)
        with open(self.out_dir / "summary.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["key", "value"])
            writer.writerows(sorted(flat.items()))


class WandbTracker(Tracker):
    def __init__(self, ctx: RunContext) -> None:
        import wandb  # lazy: only logger=wandb needs it

        self.wandb = wandb
        lg = ctx.cfg.logger
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=lg.project,
            entity=lg.entity,
            name=ctx.run_name,
            group=ctx.group,
            job_type=str(ctx.cfg.task.name),
            tags=[f"model={ctx.model_choice}", f"factor={ctx.cfg.connector.factor}", *lg.tags],
            config=ctx.config_dict() | {"hydra/overrides": ctx.overrides, "hydra/job_num": ctx.job_num},
            dir=wandb_dir(ctx.out_dir),
            mode=wandb_mode(lg.mode),
            reinit="finish_previous",
        )

    def log_result(self, result: dict[str, Any]) -> None:
        try:
            for key, value in scalars(result).items():
                self.run.summary[key] = value
            self.run.summary["status"] = result.get("status", "ok")
            for key in SUMMARY_TEXT_KEYS:  # strings to group and filter dashboard panels by
                if isinstance(result.get(key), str):
                    self.run.summary[key] = result[key]
        except Exception as exc:  # a tracker never fails a run
            print(f"vtlab: W&B logging failed: {exc}", file=sys.stderr)

    def finish(self) -> None:
        try:
            self.wandb.finish()
        except Exception as exc:
            print(f"vtlab: wandb.finish() failed: {exc}", file=sys.stderr)


def open_tracker(ctx: RunContext) -> Tracker:
    kind = str(ctx.cfg.logger.kind)
    # DDP ranks > 0 (Lightning's launcher sets LOCAL_RANK in the processes it starts; torchrun sets RANK) log nothing.
    if process_rank() != 0:
        return Tracker()
    if kind == "none" or (kind == "wandb" and wandb_mode(ctx.cfg.logger.mode) == "disabled"):
        return Tracker()
    if kind == "csv":
        return CsvTracker(ctx.out_dir)
    try:
        return WandbTracker(ctx)
    except Exception as exc:  # no network, no account, broken install: keep the run going
        print(f"vtlab: W&B unavailable ({exc}); results are still written to {ctx.out_dir}", file=sys.stderr)
        return Tracker()


SWEEP_SCATTERS = (("latency_ms", "tokens vs latency (ms, batch 1)"), ("throughput_img_s", "tokens vs throughput (images/s)"))


def log_sweep(rows: list[dict[str, Any]], sweep_dir: Path, logger: Any, group: str, plots: list[Path]) -> None:
    """One extra W&B run for a finished sweep: the summary table, tokens-vs-cost scatters and the PNGs.

    `logger` is the logger config (kind, mode, project, entity, tags). Never raises.
    """
    if str(getattr(logger.kind, "value", logger.kind)) != "wandb" or wandb_mode(logger.mode) == "disabled":
        return
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            project=logger.project, entity=logger.entity, name=f"sweep-{group}", group=group,
            job_type="sweep-summary", tags=["sweep-summary", *logger.tags],
            config={"sweep_dir": str(sweep_dir), "cells": len(rows)},
            dir=wandb_dir(sweep_dir), mode=wandb_mode(logger.mode), reinit="finish_previous",
        )
        try:
            cols = columns(rows)
            table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows], allow_mixed_types=True)
            logged: dict[str, Any] = {"sweep/summary": table}
            for y, title in SWEEP_SCATTERS:
                points = [[str(r["model"]), r["factor"], r["tokens"], r[y]] for r in rows
                          if r.get("status") == "ok" and r.get(y) is not None and r.get("tokens") is not None]
                if points:
                    data = wandb.Table(columns=["model", "factor", "tokens", y], data=points)
                    logged[f"sweep/tokens_vs_{y}"] = wandb.plot.scatter(data, "tokens", y, title=title)
            for path in plots:
                logged[f"sweep/{path.stem}"] = wandb.Image(str(path))
            run.log(logged)
            run.summary["cells"] = len(rows)
            run.summary["cells_ok"] = sum(r.get("status") == "ok" for r in rows)
        finally:
            wandb.finish()
    except Exception as exc:  # a tracker never fails a run
        print(f"vtlab: W&B sweep logging failed: {exc}", file=sys.stderr)
