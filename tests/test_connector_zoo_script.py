"""experiments/connector_zoo/run.py on CPU with its tiny setting (--cpu-smoke): bench sweep + training cells,
then results.json / results.md / accuracy_vs_tokens.png in $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_writes_table_plot_and_json(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(OUT=str(tmp_path / "out"), PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, str(REPO / "experiments/connector_zoo/run.py"), "--cpu-smoke",
                           "--kinds", "pixel_unshuffle,perceiver"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    result = json.loads((out / "results.json").read_text())
    cells = result["cells"]
    assert len(cells) == 4 and all(c["val_acc"] is not None for c in cells), cells
    assert {(b["kind"], b["tokens"]) for b in result["bench"]} == {(k, t) for k in ("pixel_unshuffle", "perceiver")
                                                                   for t in (1, 4)}
    md = (out / "results.md").read_text()
    assert "| perceiver | 4 |" in md and (out / "accuracy_vs_tokens.png").stat().st_size > 0
    print("[script]", proc.stdout.strip().splitlines()[-1])
