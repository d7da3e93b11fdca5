"""Sweep summaries: a `-m` run with an invalid cell finishes and leaves summary.csv/.md and trade-off PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
from bench_helpers import run_vtlab, wandb_run_info
from omegaconf import OmegaConf

PNG = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_bench_sweep_with_invalid_cell_writes_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_vtlab(["-m", "+model=siglip_debug,smolvlm_debug", "connector.factor=2,7", "task=bench",
                      "task.modes=[eager]", "task.latency_iters=3", "task.repeats=2", "logger=none",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"vtlab: sweep summary (4 cells, 3 ok): {sweep / 'summary.md'}" in proc.stdout
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["model"], r["factor"], r["status"]) for r in rows] == [
        ("siglip_debug", "2", "ok"), ("siglip_debug", "7", "ok"),
        ("smolvlm_debug", "2", "ok"), ("smolvlm_debug", "7", "skipped")]
    skipped = rows[3]
    assert "does not divide the 8x8 patch grid" in skipped["reason"] and skipped["tokens"] == ""
    assert [int(r["tokens"]) for r in rows[:3]] == [49, 4, 16]
    for r in rows[:3]:
        assert float(r["latency_ms"]) > 0 and float(r["throughput_img_s"]) > 0 and r["task"] == "bench"
        assert float(r["latency_ms_eager"]) == float(r["latency_ms"])
    md = (sweep / "summary.md").read_text()
    assert "| 3_smolvlm_debug_f7 | bench | smolvlm_debug |  | 7 | skipped |" in md  # no connector: never built
    assert "4 cells, 3 ok, 1 not run" in md
    for name in ("tokens_vs_latency", "tokens_vs_throughput", "tokens_vs_token_throughput", "tokens_vs_memory",
                 "tokens_vs_flops", "tokens_vs_lm_prefill"):
        _assert_png(sweep / f"{name}.png")
    assert not list(tmp_path.rglob("wandb")) and not (tmp_path / "multirun").exists()  # logger=none: no W&B files


def test_profile_sweep_with_offline_wandb_logs_one_run_per_cell_and_the_sweep(tmp_path: Path) -> None:
    sweep, wandb_dir = tmp_path / "sweep", tmp_path / "wb"
    proc = run_vtlab(["-m", "+model=llavanext_debug", "connector.factor=1,3,4", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path, wandb_mode="offline", WANDB_DIR=str(wandb_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["factor"], r["status"], r["task"]) for r in rows] == [
        ("1", "ok", "profile"), ("3", "ok", "profile"), ("4", "skipped", "profile")]
    _assert_png(sweep / "tokens_vs_latency.png")
    assert not (sweep / "tokens_vs_throughput.png").exists()  # profile measures no throughput
    runs = {info["name"]: info for info in map(wandb_run_info, (wandb_dir / "wandb").glob("offline-run-*"))}
    assert set(runs) == {"llavanext_debug-f1", "llavanext_debug-f3", "sweep-sweep"}
    assert {r["group"] for r in runs.values()} == {"sweep"}
    assert runs["llavanext_debug-f3"]["summary"]["tokens"] == "9"
    assert runs["sweep-sweep"]["job_type"] == "sweep-summary"
    sweep_run = next((wandb_dir / "wandb").glob("offline-run-*/files/media/table/sweep/summary_*.table.json"))
    table = json.loads(sweep_run.read_text())
    assert len(table["data"]) == 3 and "reason" in table["columns"]
    assert list(sweep_run.parent.glob("tokens_vs_latency_ms_table_*.table.json"))  # the scatter's data


def test_summary_of_partial_sweep_orders_jobs_and_keeps_failures(tmp_path: Path) -> None:
    from vtlab.results.sweep import SweepSummary, write_summary

    def cell(name: str, result: dict) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result))

    cell("10_b_f1", {"task": "bench", "status": "ok", "model": "b", "factor": 1, "tokens": 16, "latency_ms": 2.0,
                     "modes": {"eager": {"latency_ms": 2.0, "throughput_img_s": 5.0}}})
    cell("2_a_f1", {"task": "TaskName.bench", "status": "skipped", "model": "a", "factor": 3, "reason": "no"})
    (tmp_path / "3_a_f2").mkdir()
    (tmp_path / "3_a_f2" / "results.json").write_text("{truncated")
    # a cell whose job raised: the callback records it before refreshing the table
    failed_dir = tmp_path / "4_a_f4"
    config = OmegaConf.create({
        "connector": {"factor": 4}, "task": {"name": "bench"},
        "hydra": {"mode": "MULTIRUN", "sweep": {"dir": str(tmp_path)},
                  "runtime": {"output_dir": str(failed_dir), "choices": {"model": "a"}}, "overrides": {"task": []}},
    })

    class Failed:
        status = __import__("hydra.core.utils", fromlist=["JobStatus"]).JobStatus.FAILED
        _return_value = RuntimeError("CUDA error: boom")

    SweepSummary().on_job_end(config, Failed())  # type: ignore[arg-type]
    assert (tmp_path / "summary.csv").exists() and not list(tmp_path.glob("*.png"))  # per job: table only
    rows = write_summary(tmp_path)["rows"]
    assert [r["job"] for r in rows] == ["2_a_f1", "3_a_f2", "4_a_f4", "10_b_f1"]
    assert [r["status"] for r in rows] == ["skipped", "unreadable", "failed", "ok"]
    assert rows[0]["task"] == "bench" and rows[2]["reason"] == "RuntimeError: CUDA error: boom"
    assert rows[3]["throughput_img_s_eager"] == 5.0
    assert [p.name for p in write_summary(tmp_path)["plots"]] == ["tokens_vs_latency.png"]


def test_review_sweep_with_a_failing_cell_goes_on_and_exits_2(tmp_path: Path) -> None:
    """A cell refused by a ConfigError other than an impossible factor (task=eval without a checkpoint) is
    recorded as failed; the next cell still runs, the summary is written, and the command exits with 2."""
    sweep = tmp_path / "sweep"
    proc = run_vtlab(["-m", "+model=smolvlm_debug", "task=eval,profile", "task.repeats=1", "logger=none",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "1 sweep cell(s) failed" in proc.stderr and "task=eval needs task.ckpt_path" in proc.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["task"], r["status"]) for r in rows] == [("eval", "failed"), ("profile", "ok")]
