"""Every `python -m vtlab` command of README.md's bash blocks is either run here on CPU (with its quick
variant) and checked against what the README says it produces, or listed in LEFT_OUT with the reason."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PREFIX = "python -m vtlab"


def readme_commands() -> list[str]:
    """The vtlab command lines of the README's ```bash blocks (comments, redirections and line breaks removed)."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if PREFIX in line:
                cmd = line[line.index(PREFIX):].split("  #")[0].split(" > ")[0]
                out.append(" ".join(cmd.split()))
    return out


FULL_SIZE = "a full-size random-init tower on CPU (minutes on 2 cores); its path is run by the quick main-job variant"
LEFT_OUT = {
    f"{PREFIX} +model=smolvlm connector.factor=4": "run below as its README quick variant (task.quick=true)",
    f"{PREFIX} +model=smolvlm connector.factor=2": FULL_SIZE,
    f"{PREFIX} +model=llavanext connector=pixel_unshuffle connector.factor=3 text=vicuna_7b text.lm=false": FULL_SIZE,
    f"{PREFIX} +model=siglip model.input_size=448": FULL_SIZE,
    f"{PREFIX} -m +model=siglip,smolvlm,llavanext connector.factor=1,2,4": "a 9-cell full-size sweep; the sweep path "
    "is run by the smolvlm_debug task.quick sweep",
    f"{PREFIX} +model=smolvlm data.image_size=[1536,2048]": "13 full frames per image (the README gives 70 s for "
    "its quick look); tiling is run by the smolvlm_debug sweep at 64x64 / 128x128",
    f"{PREFIX} +model=llavanext data.image_size=[600,800]": "7 frames of SigLIP-so400m: long on CPU",
    f"{PREFIX} -m +model=smolvlm task=bench data.image_size=[512,512],[1024,1024],[1536,2048] connector.factor=2,4,8":
        "9 full benches: hours on CPU (the README says so); its tiny twin is run",
    f"{PREFIX} +model=smolvlm model.weights=/ckpts/SmolVLM-256M-Instruct": "needs a checkpoint on disk",
    f"{PREFIX} +model=hf model.weights=hf://ibm-granite/granite-vision-3.2-2b": "needs the checkpoint in the HF cache",
    f"{PREFIX} +model=smolvlm task=bench": "10.7 min on 2 cores (the README says so); run as task.quick=true",
    f"{PREFIX} -m +model=siglip,smolvlm,llavanext connector.factor=1,2,4 task=bench": "a full-size bench sweep: hours",
    f"{PREFIX} +experiment=quick_train": "run and checked by tests/test_quick_train.py",
    f"{PREFIX} +model=smolvlm task=train logger=csv": "full-size training: about an hour on CPU (the README says so)",
    f"{PREFIX} +model=smolvlm task=train task.freeze=none task.tower_lr=1e-5 task.compile=true trainer.max_epochs=5":
        "full-size, compiled, 5 epochs: GPU work",
    f"{PREFIX} +model=smolvlm task=train data=folder data.root=/data/pets data.num_workers=8": "needs an image folder",
    f"{PREFIX} +model=smolvlm task=eval task.ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt": "a placeholder path",
    f"{PREFIX} +model=smolvlm task=train logger=csv connector.factor=$f out_dir=runs/f$f": "one GPU per job (a loop)",
}


def _result(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def _main_job(out: Path, proc: subprocess.CompletedProcess) -> None:
    r = _result(out)  # README: shapes, params, FLOPs, latency, peak memory; 64 tokens x 576; random weights
    assert r["task"] == "profile" and r["tokens"] == 64 and r["text_hidden"] == 576 and r["weights"] == "random init"
    assert r["quick"] and r["flops"] > 0 and r["latency_ms"] > 0 and "weights: random init" in proc.stdout
    assert (out / "vtlab.log").is_file()


def _text_hidden(out: Path, proc: subprocess.CompletedProcess) -> None:
    assert _result(out)["text_hidden"] == 1024 and _result(out)["tokens"] == 64


def _bench_quick(out: Path, proc: subprocess.CompletedProcess) -> None:
    r = _result(out)
    assert r["task"] == "bench" and list(r["modes"]) == ["eager"] and r["settings"]["quick"]
    assert 0 < r["mfu"] <= 1 and "latency_spread" in r["modes"]["eager"]


def _debug_train(out: Path, proc: subprocess.CompletedProcess) -> None:
    r = _result(out)  # README: "seconds, on CPU"
    assert r["task"] == "train" and r["global_step"] == 1 and "train smolvlm_debug-f4: 1 steps, val_acc" in proc.stdout


def _help(out: Path, proc: subprocess.CompletedProcess) -> None:
    assert "+model=NAME is required" in proc.stdout and "config groups" in proc.stdout


def _tiny_sweep(out: Path, proc: subprocess.CompletedProcess) -> None:
    # README: one directory per cell, summary.csv/.md and the six tokens_vs_*.png in the sweep directory
    cells = sorted(p.parent.name for p in out.glob("*/results.json"))
    assert len(cells) == 6 and all(_result(out / c)["status"] == "ok" for c in cells)
    assert (out / "summary.md").is_file() and len(list(out.glob("tokens_vs_*.png"))) == 6
    assert {_result(out / c)["image_size"][0] for c in cells} == {64, 128}


# README command -> (what to add for CPU, where the output goes, the check of what the README says)
RUN: dict[str, tuple[list[str], str, Callable[[Path, subprocess.CompletedProcess], None]]] = {
    f"{PREFIX} --help": ([], "", _help),
    f"{PREFIX} +model=smolvlm connector.factor=4 task.quick=true": (["logger=none"], "out_dir", _main_job),
    f"{PREFIX} +model=smolvlm text_hidden=1024 logger=none": (["task.quick=true"], "out_dir", _text_hidden),
    f"{PREFIX} +model=smolvlm task=bench task.quick=true": (["logger=none"], "out_dir", _bench_quick),
    f"{PREFIX} +model=smolvlm_debug task=train trainer.fast_dev_run=true logger=none": ([], "out_dir", _debug_train),
    f"{PREFIX} -m +model=smolvlm_debug task=bench task.quick=true data.image_size=[64,64],[128,128] "
    "connector.factor=1,2,4 logger=none": ([], "hydra.sweep.dir", _tiny_sweep),
}


def test_every_readme_command_is_run_or_left_out_with_a_reason():
    commands = readme_commands()
    assert len(commands) >= 20
    unaccounted = [c for c in commands if c not in RUN and c not in LEFT_OUT]
    assert not unaccounted, f"README commands neither run by tests/test_readme.py nor left out: {unaccounted}"
    stale = [c for c in [*RUN, *LEFT_OUT] if c not in commands]
    assert not stale, f"entries for commands the README no longer has: {stale}"
    assert all(LEFT_OUT.values())


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RUN))
def test_readme_command_on_cpu(command, tmp_path):
    extra, where, check = RUN[command]
    out = tmp_path / "out"
    args = shlex.split(command)[3:] + extra + ([f"{where}={out}"] if where else [])
    env = os.environ | {"WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "vtlab", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check(out, proc)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
