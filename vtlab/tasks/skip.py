"""Record a sweep cell that cannot exist (e.g. a factor that does not divide the grid) as skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def record_skipped(raw: DictConfig, out_dir: Path, model_choice: str, reason: str, overrides: list[str], hc: Any,
                   status: str = "skipped") -> Path:
    """results.json with `status` (skipped: the cell cannot exist; failed: it was refused or stopped) and the reason."""
    factor = OmegaConf.select(raw, "connector.factor")
    task = OmegaConf.select(raw, "task.name")
    result = {
        "task": str(getattr(task, "value", task)),  # the enum's value ("bench"), not "TaskName.bench"
        "status": status,
        "reason": reason,
        "run_name": f"{model_choice}-f{factor}",
        "model": model_choice,
        "factor": factor,
        "overrides": overrides,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"vtlab: {status} {result['run_name']}: {reason}")
    return path
