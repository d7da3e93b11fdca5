"""One results record per run: its name, its header and the one writer of `results.json`.

Every task, every skipped or failed sweep cell, the sweep summary and the trackers go through here (the
lightning-hydra-template's `task_wrapper` idea, made explicit): `run_name()` is the only derivation of a
run's name (`smolvlm-f4`, `smolvlm-f4-1536x2048` with an input image size for profile / bench),
`RunContext.write_result()` and `record_not_run()` the only writers. A record is written to a temporary
file in the same folder, flushed to disk and renamed over the old one, so a reader (or a kill) never sees a
half-written file. Inside a `-m` sweep the group is the sweep directory's name so that W&B groups one
sweep's cells together.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vtlab.atomic import write_json_atomic
from vtlab.config.schema import VTLabConfig, image_size_of
from vtlab.errors import ConfigError, WriteError
from vtlab.logs import process_rank  # noqa: F401  (re-exported: the tasks read the rank here)
from vtlab.models.connectors import CONNECTORS
from vtlab.results.rundir import held_by_other

RESULTS = "results.json"
# the string fields of a record that dashboards group and filter by (W&B run summary, sweep summary)
TEXT_KEYS = ("model", "run_name", "task", "dtype", "device_name", "torch_version", "attention_backend",
             "latency_mode", "throughput_mode", "tiling", "image")
SIZED_TASKS = ("profile", "bench")  # tasks whose runs are named with their input image size


def run_name(model: str, factor: Any, task: Any = None, image_size: Any = None, connector: Any = None,
             tokens: Any = None) -> str:
    """`smolvlm-f4`, or `smolvlm-f4-1536x2048` with an input image size (task=profile / bench); a connector
    kind that does not unshuffle is named with its budget: `smolvlm-perceiver-t64`."""
    kind = str(getattr(connector, "value", connector)) if connector is not None else None
    if kind in CONNECTORS and CONNECTORS[kind].layout != "unshuffle":
        name = f"{model}-{kind}-t{tokens}"
    else:
        name = f"{model}-f{factor}"
    try:
        size = image_size_of(image_size)
    except ConfigError:
        size = None
    if size is not None and str(getattr(task, "value", task)) in SIZED_TASKS:
        name += f"-{size[0]}x{size[1]}"
    return name


def image_label(image_size: Any) -> str | None:
    """`1536x2048` for an input image size, else None (the summary's `image` column)."""
    try:
        size = image_size_of(image_size)
    except ConfigError:
        return None
    return None if size is None else f"{size[0]}x{size[1]}"


@dataclass
class RunContext:
    cfg: VTLabConfig
    raw: DictConfig  # the composed config (for logging it whole)
    out_dir: Path
    model_choice: str
    is_sweep: bool = False
    sweep_dir: Path | None = None
    job_num: int | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def run_name(self) -> str:
        c = self.cfg.connector
        return run_name(self.model_choice, c.factor, self.cfg.task.name, self.cfg.data.image_size, c.kind, c.tokens)

    @property
    def group(self) -> str | None:
        if self.cfg.logger.group:
            return self.cfg.logger.group
        return self.sweep_dir.name if self.sweep_dir is not None else None

    def config_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.raw, resolve=True, throw_on_missing=False)  # type: ignore[return-value]

    def header(self) -> dict[str, Any]:
        """The fields every record of this run starts with."""
        return {"task": str(self.cfg.task.name), "status": "ok", "run_name": self.run_name,
                "model": self.model_choice, "factor": self.cfg.connector.factor,
                "connector": str(self.cfg.connector.kind)}

    def write_result(self, result: dict[str, Any]) -> Path:
        """The run's `results.json`: the header, `result`, the overrides and the whole config."""
        record = self.header() | result
        record.setdefault("overrides", self.overrides)
        record["config"] = self.config_dict()
        return write_json_atomic(self.out_dir / RESULTS, record)

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        return write_json_atomic(self.out_dir / name, payload)


def record_not_run(raw: DictConfig, out_dir: Path, model_choice: str | None, reason: str, overrides: list[str],
                   status: str = "skipped") -> Path | None:
    """results.json of a cell that did not run: `skipped` (it cannot exist) or `failed` (refused or stopped).

    A refusal writes nothing over what it protects: an existing results.json, a folder held by another live
    run or a folder that cannot be written are left alone (the reason is printed; None is returned)."""
    factor = OmegaConf.select(raw, "connector.factor", default=None)
    kind = OmegaConf.select(raw, "connector.kind", default=None)
    kind = None if kind is None else str(getattr(kind, "value", kind))
    tokens = OmegaConf.select(raw, "connector.tokens", default=None)
    task = OmegaConf.select(raw, "task.name", default=None)
    image_size = OmegaConf.select(raw, "data.image_size", default=None)
    model = str(model_choice)
    record = {
        "task": str(getattr(task, "value", task)),
        "status": status,
        "reason": reason,
        "run_name": run_name(model, factor, task, image_size, kind, tokens),
        "model": model,
        "factor": factor,
        "connector": kind,
        "tokens": tokens,
        "image": image_label(image_size),
        "overrides": overrides,
    }
    print(f"vtlab: {status} {record['run_name']}: {reason}")
    if (out_dir / RESULTS).exists() or held_by_other(out_dir):
        return None
    try:
        return write_json_atomic(out_dir / RESULTS, record)
    except WriteError as exc:
        print(f"vtlab: no record written for {record['run_name']}: {exc}", file=sys.stderr)
        return None
