"""The VQA study's bookkeeping (experiments/vqa_study/run.py): the level a cell must beat to have left chance, the
first step that beats it, and the report written from finished cells' folders alone (how a study split over
several device calls is merged)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "experiments" / "vqa_study" / "run.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("vqa_study_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_level_is_the_highest_of_chance_majority_and_the_blind_control(study):
    rows = [{"cell": "blind", "by_type": {"count": 0.21, "spatial": 0.16}, "chance": {"count": 0.2, "spatial": 0.18},
             "majority": {"count": 0.203, "spatial": 0.09}},
            {"cell": "blind", "by_type": {"count": 0.23, "spatial": 0.14}, "chance": {"count": 0.2, "spatial": 0.18},
             "majority": {"count": 0.203, "spatial": 0.09}}]
    levels = study.chance_levels(rows)
    assert levels["count"] == pytest.approx(0.22)  # the blind mean beats chance and majority
    assert levels["spatial"] == pytest.approx(0.18)  # chance beats both


def test_steps_to_leave_chance_is_the_first_validation_above_level_plus_margin(study):
    curve = [{"step": 99, "count": 0.24}, {"step": 199, "count": 0.25}, {"step": 299, "count": 0.4}]
    assert study.steps_to_leave_chance(curve, {"count": 0.2, "ocr": 0.0}) == {"count": 299, "ocr": None}


def test_report_from_finished_cell_folders_alone(study, tmp_path, monkeypatch):
    """--budget-s 0 starts nothing: cells with a results.json are read (curve from csv/metrics.csv), the rest are
    listed as not run; TTFT comes from --ttft-from."""
    cell = tmp_path / "train" / "pixel_unshuffle-f1-s0"
    (cell / "csv").mkdir(parents=True)
    (cell / "results.json").write_text(json.dumps({"val_acc": 0.5, "val_acc_by_type": {"count": 0.5},
                                                   "chance_by_type": {"count": 0.2}, "majority_by_type": {"count": 0.25},
                                                   "global_step": 20}))
    (cell / "csv" / "metrics.csv").write_text("epoch,step,val_acc,val_acc_count\n0,9,0.2,0.2\n0,19,0.5,0.5\n")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"ttft_ms": {"pixel_unshuffle-f1": 4.25}}))
    monkeypatch.setattr(sys, "argv", ["run.py", "--out", str(tmp_path), "--budget-s", "0", "--seeds", "0",
                                      "--ttft-from", str(earlier)])
    monkeypatch.setattr(study, "vtlab", lambda *a, **k: pytest.fail("no cell may start"))
    study.main()
    out = json.loads((tmp_path / "results.json").read_text())
    done = [r for r in out["cells"] if r.get("val_acc") is not None]
    assert [(r["cell"], r["steps_to_leave_chance"]["count"]) for r in done] == [("pixel_unshuffle-f1", 19)]
    assert all(r["status"] == "not run (time budget)" for r in out["cells"] if r.get("val_acc") is None)
    table = (tmp_path / "results.md").read_text()
    assert "| pixel_unshuffle-f1 | 64 | 1 | 0.500 | 19 (1/1) | 4.25 |" in table
