"""Issue 17, class 1: a run folder belongs to one run (lock, refusals that write nothing, unique sweep dirs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import ONE_THREAD, REPO, TINY, cli, make_ctx

from vtlab.errors import CheckpointError, ConfigError
from vtlab.results.record import record_not_run, write_json_atomic
from vtlab.results.rundir import LOCK, acquire, check_foreign, check_out_dir, claimed, held_by_other, release
from vtlab.tasks import run_task

PROFILE = ["+model=siglip_debug", "logger=none", "task.repeats=1", "task.warmup=0"]


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("vtlab: error: "), proc.stderr[-2000:]
    return lines[-1]


def _live_lock(folder: Path) -> subprocess.Popen:
    """A lock held by a live process of this host (a sleeping child)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(), "started": "now"}))
    return child


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    lock = acquire(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not held_by_other(tmp_path)
    release(lock)
    assert not lock.exists()
    with claimed(tmp_path) as held:
        assert held is not None and held.exists()
    assert not (tmp_path / LOCK).exists()


def test_second_run_into_held_folder_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    child = _live_lock(tmp_path)
    try:
        with pytest.raises(ConfigError, match="in use by run pid"):
            acquire(tmp_path)
        assert held_by_other(tmp_path)
        proc = cli([*PROFILE, f"out_dir={tmp_path}"])
        assert "in use by run pid" in _error_line(proc)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]  # nothing written, the lock untouched
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == child.pid
    finally:
        child.kill()
        child.wait()


def test_stale_lock_of_a_dead_pid_is_recovered(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    lock = acquire(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release(lock)
    (tmp_path / LOCK).write_text("")  # a lock whose writer died before writing it
    release(acquire(tmp_path))


def test_lock_of_another_host_is_not_presumed_stale(tmp_path: Path) -> None:
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(ConfigError, match="elsewhere"):
        acquire(tmp_path)


@pytest.mark.parametrize("kind", ["file", "devnull", "readonly", "uncreatable"])
def test_out_dir_that_cannot_hold_a_run_is_one_line(tmp_path: Path, kind: str) -> None:
    if kind == "file":
        target = tmp_path / "f"
        target.write_text("x")
    elif kind == "devnull":
        target = Path("/dev/null")
    elif kind == "readonly":
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o500)
    else:
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "sub"
    if kind == "readonly" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    with pytest.raises(ConfigError, match="out_dir="):
        check_out_dir(target)


def test_out_dir_devnull_from_the_cli_is_one_line_before_any_work() -> None:
    proc = cli([*PROFILE, "out_dir=/dev/null"])
    assert "not a folder" in _error_line(proc)
    assert "results:" not in proc.stdout


def test_sweep_with_fixed_out_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"task": "profile"}')
    proc = cli(["-m", *PROFILE, "connector.factor=1,2", f"out_dir={tmp_path}"])
    assert "hydra.sweep.dir" in _error_line(proc)
    assert (tmp_path / "results.json").read_text() == '{"task": "profile"}'


def test_refused_cell_record_writes_nothing_over_what_it_protects(tmp_path: Path) -> None:
    from vtlab.api import compose_config

    raw = compose_config("siglip_debug", [])
    (tmp_path / "results.json").write_text('{"task": "train", "status": "ok"}')
    assert record_not_run(raw, tmp_path, "siglip_debug", "would overwrite", [], status="failed") is None
    assert json.loads((tmp_path / "results.json").read_text()) == {"task": "train", "status": "ok"}
    held = tmp_path / "held"
    child = _live_lock(held)
    try:
        assert record_not_run(raw, held, "siglip_debug", "held", [], status="failed") is None
        assert not (held / "results.json").exists()
    finally:
        child.kill()
        child.wait()


def test_train_into_a_folder_holding_a_profile_result_is_refused(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "results.json", {"task": "profile", "status": "ok"})
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ConfigError, match=r"another task.s results.json \(task=profile\)"):
        run_task(make_ctx(tmp_path, TINY))
    assert (tmp_path / "results.json").read_text() == before
    assert not (tmp_path / LOCK).exists()  # the refusal released the folder


def test_overwrite_true_allows_replacing_another_tasks_record(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"task": "profile"}')
    check_foreign(tmp_path, "train", overwrite=True)
    with pytest.raises(ConfigError, match="overwrite=true"):
        check_foreign(tmp_path, "train", overwrite=False)


def test_csv_logger_into_a_sweep_dir_does_not_replace_its_summary(tmp_path: Path) -> None:
    (tmp_path / "summary.csv").write_text("model,factor\nsiglip_debug,1\n")
    (tmp_path / "summary.md").write_text("# vtlab sweep\n")
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    proc = cli([*PROFILE, "logger=csv", f"out_dir={tmp_path}"])
    assert "holds a -m sweep" in _error_line(proc)
    assert (tmp_path / "summary.csv").read_text() == "model,factor\nsiglip_debug,1\n"


def test_sweep_dirs_started_in_one_second_differ() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vtlab.config.presets import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        a = compose("config", ["+model=siglip_debug"], return_hydra_config=True)
        b = compose("config", ["+model=siglip_debug"], return_hydra_config=True)
    dirs = [OmegaConf.select(c, "hydra.sweep.dir") for c in (a, b)]
    assert dirs[0] != dirs[1], dirs  # microseconds in the name


def test_sweep_into_a_dir_holding_an_earlier_sweep_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0_cell").mkdir()
    (tmp_path / "0_cell" / "results.json").write_text('{"task": "profile", "status": "ok"}')
    proc = cli(["-m", *PROFILE, "connector.factor=1,2", f"hydra.sweep.dir={tmp_path}"])
    assert "earlier sweep" in _error_line(proc)
    assert (tmp_path / "0_cell" / "results.json").read_text() == '{"task": "profile", "status": "ok"}'


def test_export_hf_onto_a_checkpoint_refuses_unless_overwrite(tmp_path: Path) -> None:
    from vtlab.api import build_stack, make_config
    from vtlab.checkpoints import export_hf

    cfg = make_config("siglip_debug")
    stack = build_stack(cfg)
    export_hf(stack, cfg, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        export_hf(stack, cfg, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    export_hf(stack, cfg, tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


_CELL_BUG = """
import sys
import vtlab.tasks as tasks
from vtlab.tasks import profile
calls = []
def run(ctx, tracker):
    calls.append(ctx.out_dir)
    if len(calls) == {bad}:
        raise {exc}
    return profile.run(ctx, tracker)
tasks.TASKS["profile"] = tasks.Task(profile.check, run)
from vtlab.cli import main
sys.argv = ["vtlab", "-m", *{args!r}]
main()
"""


def _sweep_with(tmp_path: Path, bad: int, exc: str) -> subprocess.CompletedProcess:
    args = [*PROFILE, "connector.factor=1,2,4", f"hydra.sweep.dir={tmp_path}"]
    env = os.environ | {"WANDB_MODE": "disabled", **ONE_THREAD}
    return subprocess.run([sys.executable, "-c", _CELL_BUG.format(bad=bad, exc=exc, args=args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sweep_cell_raising_a_non_vtlab_exception_is_recorded_and_the_sweep_finishes(tmp_path: Path) -> None:
    proc = _sweep_with(tmp_path, 2, "ZeroDivisionError('a bug')")
    assert "1 sweep cell(s) failed" in _error_line(proc)
    rows = {json.loads(p.read_text())["factor"]: json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")}
    assert rows[2]["status"] == "failed" and "ZeroDivisionError: a bug" in rows[2]["reason"]
    assert rows[1]["status"] == "ok" and rows[4]["status"] in ("ok", "skipped")  # the sweep went on
    assert (tmp_path / "summary.csv").exists() and list(tmp_path.glob("tokens_vs_*.png"))


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_leaves_the_summary_and_plots_of_finished_cells(tmp_path: Path) -> None:
    proc = _sweep_with(tmp_path, 2, "KeyboardInterrupt()")
    assert proc.returncode != 0
    assert "sweep interrupted" in proc.stderr
    summary = (tmp_path / "summary.csv").read_text()
    assert "ok" in summary and "interrupted" in summary
    assert list(tmp_path.glob("tokens_vs_*.png"))
    assert not list(tmp_path.glob("2_*"))  # the third cell never started
