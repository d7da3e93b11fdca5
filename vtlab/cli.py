"""Command line: `python -m vtlab +model=smolvlm connector.factor=4` (Hydra app, one job per call).

Validation runs before anything is built. A bad value prints one message naming the key, the value and
what is valid, and exits with status 2, without a traceback. Inside a `-m` sweep, a cell that cannot
exist (a factor that does not divide the grid) is recorded as skipped and the sweep goes on; a cell refused
or stopped by any other error (a vtlab one, or a bug) is recorded as failed, the sweep goes on, and the
command exits with 2. Ctrl-C in a sweep still writes the summary and plots of the finished cells. `-m` with
a fixed `out_dir` is refused (use hydra.sweep.dir: each cell gets its own sub-folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vtlab.config.compose import compose_config, effective_config, to_config
from vtlab.config.presets import config_dir, group_options, model_names
from vtlab.config.schema import register_configs
from vtlab.errors import ConfigError, InvalidCellError, VtlabError
from vtlab.results.record import RunContext, process_rank, record_not_run
from vtlab.results.rundir import check_not_held, check_out_dir
from vtlab.results.sweep import write_summary
from vtlab.tasks import run_task
from vtlab.tree import GROUPS

register_configs()


def _fail(message: str) -> None:
    print(f"vtlab: error: {message}", file=sys.stderr)
    sys.exit(2)


FAILED_CELLS: list[str] = []  # sweep cells refused or stopped by a VtlabError (the sweep went on)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _app(raw: DictConfig) -> None:
    hc = HydraConfig.get()
    model_choice = hc.runtime.choices.get("model")
    is_sweep = hc.mode == RunMode.MULTIRUN
    out_dir = Path(raw.get("out_dir") or hc.runtime.output_dir)
    if model_choice is None:
        _fail(f"no model given: add +model=NAME, one of {model_names()} (e.g. python -m vtlab +model=smolvlm)")
    if is_sweep and raw.get("out_dir"):  # every cell would write into one folder, over each other
        _fail(f"out_dir={raw.out_dir} names one run's folder, but -m runs several cells; set hydra.sweep.dir="
              f"{raw.out_dir} instead (each cell then gets its own sub-folder and the sweep its summary)")
    overrides = list(hc.overrides.task)
    def not_run(exc: Exception, status: str) -> None:
        """Outside a sweep: the one-line error. Inside: record the cell (the sweep goes on, its summary shows it)."""
        if not is_sweep:
            _fail(str(exc))
        record_not_run(raw, out_dir, model_choice, str(exc), overrides, status=status)
        if status == "failed":
            FAILED_CELLS.append(f"{out_dir.name}: {exc}")

    try:
        cfg = to_config(raw)
    except InvalidCellError as exc:
        not_run(exc, "skipped")
        return
    except ConfigError as exc:
        not_run(exc, "failed")
        return
    ctx = RunContext(
        cfg=cfg,
        raw=raw,
        out_dir=out_dir,
        model_choice=model_choice,
        is_sweep=is_sweep,
        sweep_dir=Path(hc.sweep.dir) if is_sweep else None,
        job_num=hc.job.num if is_sweep else None,
        overrides=overrides,
    )
    try:
        run_task(ctx)
    except VtlabError as exc:
        not_run(exc, "failed")
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C (Lightning turns it into SystemExit)
        if not is_sweep or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            raise
        record_not_run(raw, out_dir, model_choice, "interrupted (Ctrl-C)", overrides, status="failed")
        summary = write_summary(Path(hc.sweep.dir))  # the finished cells keep their table and plots
        print(f"vtlab: sweep interrupted; summary of the finished cells: {summary['markdown']}", file=sys.stderr)
        raise KeyboardInterrupt from None
    except Exception as exc:  # noqa: BLE001 - a bug in one sweep cell must not end the sweep
        if not is_sweep:
            raise
        not_run(RuntimeError(f"{type(exc).__name__}: {exc}"[:2000]), "failed")


def check_group_choices(argv: list[str]) -> str | None:
    """A message for the first `group=option` argument naming an option that does not exist, else None.

    Hydra would also refuse it, but with its search path and a traceback hint; this names the key, the
    value and the valid choices in one line. Sweep values (`a,b`) are checked one by one; anything with
    Hydra sweep syntax (glob, range, choice) is left to Hydra.
    """
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or any(ch in value for ch in "()[]{}*$"):
            continue
        options = group_options(key)
        for option in value.split(","):
            if option and option != "null" and option not in options:
                plus = "+" if key == "model" else ""
                return f"{key}={option} is not a known {key}; valid: {', '.join(options)} (use {plus}{key}=NAME)"
    return None


def check_composition(argv: list[str]) -> str | None:
    """A message if the overrides do not compose against the typed schema (a key typo, a wrong type, an
    unknown enum value), else None.

    Hydra would refuse them too, but with exit status 1, several lines and a HYDRA_FULL_ERROR hint. Every value of a
    sweep override is checked (with the first value of the others); `hydra.*` overrides and
    anything the override parser rejects are left to Hydra.
    """
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
        base: list[str] = []
        sweeps: list[tuple[int, str, list[str]]] = []
        for o in parsed:
            if o.is_hydra_override():
                continue
            if o.is_sweep_override():
                values = list(o.sweep_string_iterator())
                sweeps.append((len(base), o.get_key_element(), values[1:]))
                base.append(f"{o.get_key_element()}={values[0]}")
            else:
                base.append(o.input_line)
    except Exception:  # noqa: BLE001 - malformed override syntax: Hydra's own parser message is clear
        return None
    variants = [base] + [
        base[:i] + [f"{key}={value}"] + base[i + 1 :] for i, key, values in sweeps for value in values
    ]
    for args in variants:  # the first values, then each other sweep value in turn
        try:
            compose_config(None, args)
        except ConfigError as exc:
            return str(exc)
    return None


def is_multirun(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv)


def check_out_dir_first(argv: list[str]) -> str | None:
    """A message if `out_dir=X` cannot be this run's folder, checked before Hydra creates anything there: `-m`
    with one fixed out_dir, a path that is no writable folder, a folder a live run holds."""
    out = [a.partition("=")[2] for a in argv if a.startswith("out_dir=")]
    if not out or not out[-1] or out[-1] == "null" or process_rank() != 0:  # DDP ranks > 0 share rank 0's folder
        return None
    if is_multirun(argv):
        return (f"out_dir={out[-1]} names one run's folder, but -m runs several cells; set hydra.sweep.dir={out[-1]} "
                f"instead (each cell then gets its own sub-folder and the sweep its summary)")
    try:
        check_out_dir(Path(out[-1]))
        check_not_held(Path(out[-1]))
    except ConfigError as exc:
        return str(exc)
    return None


def run_dir_follows_out_dir(argv: list[str]) -> list[str]:
    """`out_dir=X` (one run) also sets `hydra.run.dir=X`, so Hydra's `.hydra/` and `vtlab.log` land beside
    the run's results.json instead of in ./outputs/<date>/<time>/; an explicit `hydra.run.dir=` wins. A folder
    that already holds an earlier run's `.hydra/` (a resume, an eval, a refused rerun) keeps it: this run's goes
    to `.hydra.<k>/` (vtlab.log is appended to)."""
    out = [a.partition("=")[2] for a in argv if a.startswith("out_dir=")]
    if not out or not out[-1] or out[-1] == "null" or is_multirun(argv):
        return argv
    if any(a.lstrip("+").startswith("hydra.run.dir=") for a in argv):
        return argv
    extra = [f"hydra.run.dir={out[-1]}"]
    target = Path(out[-1])
    if (target / ".hydra").exists() and not any(a.lstrip("+").startswith("hydra.output_subdir=") for a in argv):
        k = 1
        while (target / f".hydra.{k}").exists():
            k += 1
        extra.append(f"hydra.output_subdir=.hydra.{k}")
    return [*argv, *extra]


def cfg_job_request(argv: list[str]) -> bool:
    """True for `--cfg job` / `-c job` outside a sweep (vtlab prints the effective config itself)."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--cfg", "-c") and argv[i + 1] == "job":
            return not is_multirun(argv)
    return False


def check_config(argv: list[str]) -> str | None:
    """A message if the config of a single run fails validation (vtlab.config.validate), else None: refused
    before Hydra starts, so a refused run leaves no run folder behind. Sweeps validate per cell (a cell that
    cannot exist is recorded as skipped)."""
    if is_multirun(argv):
        return None
    args = [a for a in argv if not a.startswith("-") and not a.lstrip("+").startswith("hydra.")]
    if not any(a.startswith("+model=") for a in args):
        return None  # the task function names the missing model (+experiment configs may set one)
    try:
        to_config(compose_config(None, args))
    except ConfigError as exc:
        return str(exc)
    return None


def print_effective_config(argv: list[str]) -> None:
    """`--cfg job`: the config that will run, interpolations resolved and null defaults made explicit."""
    args = [a for a in argv if not a.startswith("-") and a != "job" and not a.lstrip("+").startswith("hydra.")]
    try:
        print(OmegaConf.to_yaml(effective_config(compose_config(None, args))), end="")
    except ConfigError as exc:
        _fail(str(exc))


def main() -> None:
    """Console-script entry point (`vtlab ...`)."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    # `model` is not in the defaults list (so that `+model=NAME` works as the users type it); accept the
    # plain `model=NAME` form too instead of failing with Hydra's "No match in the defaults list".
    sys.argv[1:] = ["+" + a if a.startswith("model=") else a for a in sys.argv[1:]]
    message = check_group_choices(sys.argv[1:]) or check_composition(sys.argv[1:])
    if message:
        _fail(message)
    if cfg_job_request(sys.argv[1:]):
        print_effective_config(sys.argv[1:])
        return
    message = check_config(sys.argv[1:])
    if message:
        _fail(message)
    message = check_out_dir_first(sys.argv[1:])
    if message:
        _fail(message)
    sys.argv[1:] = run_dir_follows_out_dir(sys.argv[1:])
    _app()
    if FAILED_CELLS:  # a -m sweep ran to its end, but not every cell did
        _fail(f"{len(FAILED_CELLS)} sweep cell(s) failed (status failed in the sweep summary): " + "; ".join(FAILED_CELLS))


if __name__ == "__main__":
    main()
