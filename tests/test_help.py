"""`vtlab --help` (vtlab's own page, fast: no torch/Hydra/Lightning import) and `--cfg job` (what will run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vtlab.api import compose_config
from vtlab.config.compose import effective_config
from vtlab.help import COMMON_KEYS
from vtlab.tree import GROUPS, config_dir, group_options

REPO = Path(__file__).resolve().parent.parent


def _vtlab(args: list[str], cwd: Path, *python: str) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *python, "-m", "vtlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_help_is_vtlabs_page_and_imports_nothing_heavy(tmp_path):
    start = time.perf_counter()
    proc = _vtlab(["--help"], tmp_path, "-X", "importtime")
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("vtlab: configuration-driven experiments on the vision side")
    assert "+model=NAME is required" in out
    for group in GROUPS:  # every group with every option shipped in conf/
        lines = out.splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("  ") and ln.split()[0].lstrip("+") == group)
        block = [lines[start]] + [ln for ln in lines[start + 1:] if ln.startswith(" " * 28)][:8]  # wrapped lines
        listed = " ".join(" ".join(block).split()[2:] if "(required)" in block[0] else " ".join(block).split()[1:])
        assert ", ".join(group_options(group)) in listed, (group, listed)
    assert "schema" not in {p.name for p in config_dir().iterdir()} and "\n  schema" not in out
    for key, default, _ in COMMON_KEYS:
        assert f"{key}={default}" in out
    assert "python -m vtlab +experiment=quick_train" in out and "--hydra-help" in out
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "hydra", "lightning", "omegaconf", "numpy"}, imported & {"torch", "hydra"}
    cumulative_us = sum(int(line.split("|")[1]) for line in proc.stderr.splitlines()
                        if line.startswith("import time:") and "|" in line and line.split("|")[1].strip().isdigit()
                        and not line.split("|")[2].startswith(" " * 2))  # top-level imports only
    print(f"--help: {wall:.2f}s wall, {cumulative_us / 1e6:.3f}s of top-level imports")
    assert cumulative_us < 2e6 and wall < 5  # wall includes the interpreter start on a busy 2-core machine


def test_help_defaults_match_the_schema():
    """The static table of --help says what composing the config gives."""
    profile = compose_config("smolvlm")
    bench, train = compose_config("smolvlm", ["task=bench"]), compose_config("smolvlm", ["task=train"])
    evaluate = compose_config("smolvlm", ["task=eval"])
    table = {key: default for key, default, _ in COMMON_KEYS}
    assert table["task.batch_size"] == f"{profile.task.batch_size} / {train.task.batch_size} / {evaluate.task.batch_size}"
    assert table["task.modes"] == "[" + ",".join(bench.task.modes) + "]"
    assert table["task.freeze"] == train.task.freeze and table["trainer.max_epochs"] == str(train.trainer.max_epochs)
    assert table["task.quick"] == str(profile.task.quick).lower() == str(bench.task.quick).lower()
    assert table["logger"] == profile.logger.kind and table["seed"] == str(profile.seed)
    assert table["task.dtype"] == profile.task.dtype
    for key in ("model.weights", "model.tiling", "data.image_size", "out_dir", "task.ckpt_path"):
        assert OmegaConf.select(train, key) is None and table[key] == "null", key
    assert OmegaConf.to_yaml(profile).count("text_hidden: ${text.hidden_size}") == 1  # the raw interpolation


@pytest.mark.slow
def test_cfg_job_shows_what_will_run(tmp_path):
    proc = _vtlab(["+model=smolvlm", "text=smollm2_360m", "--cfg", "job"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.text_hidden == 960 and cfg.model.tiling == "split" and cfg.connector.factor == 4
    assert "${" not in proc.stdout and not list(tmp_path.iterdir())  # resolved, and no run folder
    assert effective_config(compose_config("llavanext_debug")).model.tiling == "anyres"
    assert effective_config(compose_config("siglip_debug", ["model.tiling=split"])).model.tiling == "split"
