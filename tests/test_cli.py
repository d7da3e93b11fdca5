"""The command line, as users run it, in subprocesses: the README's main command and every bad input of
issue 2 (one message, a non-zero exit, no Python traceback).

The bad-input commands only import torch and compose a config (~3-5 s each), so the ones selected in this
session are started together, a few at a time, by one fixture; each stays its own test case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import vtlab
from vtlab.api import compose_config
from vtlab.config import model_names

REPO = Path(vtlab.__file__).resolve().parent.parent


def run_vtlab(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full_env.setdefault("WANDB_MODE", "disabled")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vtlab", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def results(cwd: Path) -> dict:
    files = list(cwd.glob("outputs/*/*/results.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


# ---------------------------------------------------------------------------------------------- main command
@pytest.mark.slow
def test_readme_main_command(tmp_path):
    """`python -m vtlab +model=smolvlm connector.factor=4` exactly as in the README (W&B offline, the
    default logger): SmolVLM-256M's stack at 512 px on the CPU (~1 min on 2 cores)."""
    wandb_dir = tmp_path / "tmp"
    wandb_dir.mkdir()
    proc = run_vtlab(
        ["+model=smolvlm", "connector.factor=4"],
        cwd=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    res = results(tmp_path)
    assert res["status"] == "ok" and res["model"] == "smolvlm"
    assert (res["tokens"], res["text_hidden"]) == (64, 576)
    assert (res["grid"], res["patches"], res["feature_dim"], res["factor"]) == ([32, 32], 1024, 768, 4)
    assert [s["shape"] for s in res["stages"]] == [[1, 3, 512, 512], [32, 32], [1, 1024, 768], [1, 64, 576]]
    assert res["params"] == 86_433_024 + 12288 * 576
    assert res["flops"] == res["flops_closed_form"]
    assert res["latency_ms"] > 0 and res["peak_memory_mb"] > 0
    assert "64 tokens x 576" in proc.stdout
    # W&B wrote an offline run under WANDB_DIR (no network, no account)
    assert list(wandb_dir.glob("wandb/offline-run-*")), sorted(p.name for p in wandb_dir.rglob("*"))[:20]
    # the CLI composed exactly what the Python API composes for the same arguments
    api = OmegaConf.to_container(compose_config("smolvlm", ["connector.factor=4"]), resolve=True)
    assert res["config"] == json.loads(json.dumps(api, default=str))


def test_model_without_plus_and_text_hidden_override(tmp_path):
    """`model=smolvlm` (no `+`) is accepted; `text_hidden=N` reaches the stack (small input_size: fast)."""
    proc = run_vtlab(
        ["model=smolvlm", "model.input_size=64", "text_hidden=100", "task.warmup=0", "task.repeats=1", "logger=none"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path)
    assert res["model"] == "smolvlm" and res["config"]["model"]["name"] == "smolvlm-512-16"
    assert (res["grid"], res["tokens"], res["text_hidden"]) == ([4, 4], 1, 100)


def test_debug_preset_runs_with_logger_none(tmp_path):
    proc = run_vtlab(["+model=smolvlm_debug", "logger=none"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path)
    assert (res["tokens"], res["text_hidden"], res["grid"]) == (4, 64, [8, 8])
    assert not (tmp_path / "wandb").exists()
    api = OmegaConf.to_container(compose_config("smolvlm_debug", ["logger=none"]), resolve=True)
    assert res["config"] == json.loads(json.dumps(api, default=str))  # vtlab.build composes what the CLI does


# ---------------------------------------------------------------------------------------------- bad inputs
MODELS = ", ".join(model_names())
BAD_INPUTS = {
    # id: (arguments, fragments the message must contain, exit status: 2 = vtlab's own validation)
    "factor-does-not-divide-grid": (
        ["+model=siglip", "connector.factor=4"],
        ["connector.factor=4 does not divide the 14x14 patch grid", "valid factors: [1, 2, 7, 14]"],
        2,
    ),
    "factor-does-not-divide-floored-grid": (
        ["+model=llavanext", "connector.factor=2"],
        ["connector.factor=2 does not divide the 27x27 patch grid", "384px / 14px", "valid factors: [1, 3, 9, 27]"],
        2,
    ),
    "no-model": ([], ["no model given", "+model=NAME", *model_names()], 2),
    "unknown-model": (["+model=nope"], [f"model=nope is not a known model; valid: {MODELS}"], 2),
    "unknown-model-without-plus": (["model=nope"], [f"model=nope is not a known model; valid: {MODELS}"], 2),
    "unknown-connector": (
        ["+model=smolvlm", "connector=nope"],
        ["connector=nope is not a known connector; valid: avgpool, c_abstractor, identity, ldp, linear, mlp, perceiver, "
         "pixel_unshuffle, qformer"],
        2,
    ),
    "image-smaller-than-a-patch": (
        ["+model=smolvlm", "model.image_size=8"],
        ["model.image_size=8 is smaller than one patch (model.patch_size=16)"],
        2,
    ),
    "input-smaller-than-a-patch": (
        ["+model=smolvlm", "model.input_size=15"],
        ["model.input_size=15 is smaller than one patch (model.patch_size=16)"],
        2,
    ),
    "text-hidden-zero": (["+model=smolvlm", "text_hidden=0"], ["text_hidden=0 must be a positive integer"], 2),
    "text-hidden-size-negative": (
        ["+model=smolvlm", "text.hidden_size=-5"],
        ["text_hidden=-5 must be a positive integer"],
        2,
    ),
    "feature-layer-below-depth": (
        ["+model=llavanext", "model.feature_layers=[-24,-30]"],
        ["model.feature_layers contains -30, outside the tower's depth", "27 layers", "valid indices are -28..27"],
        2,
    ),
    "feature-layer-above-depth": (
        ["+model=llavanext_debug", "model.feature_layers=[7]"],
        ["model.feature_layers contains 7, outside the tower's depth", "6 layers", "valid indices are -7..6"],
        2,
    ),
    "batch-size-zero": (["+model=smolvlm_debug", "task.batch_size=0"], ["task.batch_size=0 must be >= 1"], 2),
    "repeats-zero": (["+model=smolvlm_debug", "task.repeats=0"], ["task.repeats=0 must be >= 1"], 2),
    "wrong-type": (
        ["+model=smolvlm", "connector.factor=abc"],
        ["connector.factor", "'abc'", "could not be converted to Integer"],
        2,
    ),
    "key-typo": (
        ["+model=smolvlm", "connector.factr=2"],
        ["connector.factr is not a known key", "factor, hidden_size"],
        2,
    ),
    "train-negative-lr": (
        ["+model=smolvlm_debug", "task=train", "task.lr=-1"],
        ["task.lr=-1.0 must be >= 0"],
        2,
    ),
    "train-unknown-precision": (
        ["+model=smolvlm_debug", "task=train", "trainer.precision=foo"],
        ["Precision 'foo' is invalid", "bf16-mixed"],
        2,
    ),
    "wrong-type-in-later-sweep-value": (
        ["-m", "+model=smolvlm_debug", "connector.factor=1,abc"],
        ["connector.factor", "'abc'", "could not be converted to Integer"],
        2,
    ),
}


@pytest.fixture(scope="module")
def bad_input_runs(request, tmp_path_factory):
    """Run every selected bad-input command (2 at a time) once; each test case then checks its own."""
    wanted = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.originalname == "test_bad_input" and item.module is request.module
    ]

    def run(case):
        cwd = tmp_path_factory.mktemp(case)
        return case, cwd, run_vtlab([*BAD_INPUTS[case][0], "logger=none"], cwd=cwd, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return {case: (cwd, proc) for case, cwd, proc in pool.map(run, wanted)}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case, bad_input_runs):
    _, fragments, status = BAD_INPUTS[case]
    cwd, proc = bad_input_runs[case]
    assert proc.returncode != 0
    if status is not None:
        assert proc.returncode == status, proc.stderr
        assert proc.stderr.startswith("vtlab: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(cwd.rglob("results.json"))  # nothing ran
