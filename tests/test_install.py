"""The non-editable install: a wheel built from the sources carries every YAML under conf/ (as the
`vtlab.conf` package) and `python -m vtlab` runs from it, from a directory outside the repository.

The sources are copied to a temporary directory first, so the build writes no build/ or *.egg-info into
the working tree. The build uses the installed setuptools (`--no-build-isolation`: no network needed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import vtlab

REPO = Path(vtlab.__file__).resolve().parent.parent


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_wheel_contains_the_configs_and_runs_from_another_directory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "vtlab", src / "vtlab", ignore=ignore)
    shutil.copytree(REPO / "conf", src / "conf", ignore=ignore)

    pip("wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "-q", cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("vtlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {f"vtlab/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert "vtlab/conf/config.yaml" in yamls
    assert sorted(yamls - names) == []
    assert {"vtlab/conf/__init__.py", "vtlab/__main__.py", "vtlab/cli.py"} <= names

    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel), "-q", cwd=tmp_path)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONPATH=str(site), WANDB_MODE="disabled")

    where = subprocess.run(
        [sys.executable, "-c", "import vtlab.conf as c, vtlab.cli as m; print(m.__file__); print(c.__file__)"],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=120,
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(site) for line in where.stdout.split()), where.stdout  # not the repo

    proc = subprocess.run(
        [sys.executable, "-m", "vtlab", "+model=smolvlm_debug", "logger=none"],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = run_dir.glob("outputs/*/*/results.json")
    res = json.loads(result.read_text())
    assert (res["status"], res["tokens"], res["text_hidden"]) == ("ok", 4, 64)


def test_pyproject_lists_every_package() -> None:
    """Every folder of vtlab/ with an __init__.py is in pyproject's explicit packages list (else the wheel lacks it)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vtlab").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
