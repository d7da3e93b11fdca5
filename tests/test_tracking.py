"""Trackers: offline W&B with no account or network, WANDB_MODE/WANDB_DIR respected, csv and none."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bench_helpers import run_vtlab, wandb_records, wandb_run_info

BENCH = ["+model=smolvlm_debug", "task=bench", "task.modes=[eager]", "task.latency_iters=3", "task.repeats=2"]
DASHBOARD_KEYS = {"tokens", "latency_ms", "latency_ms_p90", "throughput_img_s", "throughput_tokens_s", "peak_memory_mb",
                  "flops", "tflops", "mfu", "lm_prefill_flops", "params", "status", "model", "attention_backend",
                  "device_name", "dtype", "modes/eager/latency_ms"}


def test_offline_wandb_run_writes_files_and_summary(tmp_path: Path) -> None:
    wandb_dir, run_dir = tmp_path / "wb", tmp_path / "run"
    proc = run_vtlab([*BENCH, f"hydra.run.dir={run_dir}"], cwd=tmp_path, wandb_mode="offline",
                     WANDB_DIR=str(wandb_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (offline,) = (wandb_dir / "wandb").glob("offline-run-*")
    assert (offline / "files").is_dir() and (offline / "logs").is_dir()
    assert not (run_dir / "wandb").exists()  # WANDB_DIR beats the run directory
    info = wandb_run_info(offline)
    assert (info["name"], info["job_type"]) == ("smolvlm_debug-f4", "bench")
    assert DASHBOARD_KEYS <= set(info["summary"])
    assert json.loads(info["summary"]["tokens"]) == 4 and json.loads(info["summary"]["model"]) == "smolvlm_debug"
    results = json.loads((run_dir / "results.json").read_text())
    assert json.loads(info["summary"]["latency_ms"]) == pytest.approx(results["latency_ms"])
    (path,) = offline.glob("run-*.wandb")
    config_keys = {item.key for rec in wandb_records(path) if rec.WhichOneof("record_type") == "run"
                   for item in rec.run.config.update}
    assert {"model", "connector", "task", "text", "hydra/overrides"} <= config_keys  # the full config


def test_logger_none_and_csv_write_no_wandb_files(tmp_path: Path) -> None:
    wandb_dir = tmp_path / "wb"

    def run(logger: str):  # the two runs at once (each is mostly import time on one core)
        return run_vtlab([*BENCH, f"logger={logger}", f"hydra.run.dir={tmp_path / logger}"], cwd=tmp_path,
                         wandb_mode="offline", WANDB_DIR=str(wandb_dir))
    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(("none", "csv"), pool.map(run, ("none", "csv")), strict=True))
    for logger, proc in procs.items():
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / logger / "results.json").exists()
    assert not wandb_dir.exists() and not list(tmp_path.rglob("wandb"))
    assert not (tmp_path / "none" / "summary.csv").exists()
    summary = {row["key"]: row["value"] for row in csv.DictReader((tmp_path / "csv" / "summary.csv").open())}
    assert summary["tokens"] == "4" and float(summary["throughput_img_s"]) > 0


def test_online_without_account_or_network_still_finishes(tmp_path: Path) -> None:
    proc = run_vtlab([*BENCH, "logger.mode=online", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                     wandb_mode="online", HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "cfg"),
                     WANDB_BASE_URL="http://127.0.0.1:9", timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B unavailable" in proc.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "ok"


def test_wandb_mode_and_dir_follow_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtlab.api import compose_config, to_config
    from vtlab.results.record import RunContext
    from vtlab.results.tracking import Tracker, open_tracker, wandb_dir, wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert wandb_mode("offline") == "offline" and wandb_dir(tmp_path / "run") == str(tmp_path / "run")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "env"))
    assert wandb_mode("offline") == "disabled" and wandb_dir(tmp_path / "run") == str(tmp_path / "env")
    raw = compose_config("smolvlm_debug", [])
    tracker = open_tracker(RunContext(cfg=to_config(raw), raw=raw, out_dir=tmp_path, model_choice="smolvlm_debug"))
    assert type(tracker) is Tracker  # disabled: the no-op tracker, nothing written
    assert not list(tmp_path.rglob("wandb"))


def test_scalars_flatten_modes_and_skip_non_numbers() -> None:
    from vtlab.results.tracking import scalars

    flat = scalars({"tokens": 64, "latency_ms": 1.5, "model": "smolvlm", "ok": True, "latency_ms_all": [1.0, 2.0],
                    "modes": {"eager": {"latency_ms": 1.5, "status": "ok"}, "cudagraphs": {"status": "skipped"}},
                    "config": {"seed": 0}, "device_info": {"threads": 2}, "stages": [{"flops": 1}]})
    assert flat == {"tokens": 64, "latency_ms": 1.5, "modes/eager/latency_ms": 1.5}


def test_log_sweep_is_a_no_op_without_wandb(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from vtlab.results.tracking import log_sweep

    for kind, mode in (("none", "offline"), ("csv", "offline"), ("wandb", "disabled")):
        logger = OmegaConf.create({"kind": kind, "mode": mode, "project": "p", "entity": None, "tags": []})
        log_sweep([{"model": "a", "tokens": 4, "status": "ok", "latency_ms": 1.0}], tmp_path, logger, "g", [])
    assert not list(tmp_path.iterdir())
