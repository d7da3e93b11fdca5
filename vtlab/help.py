"""`vtlab --help`: vtlab's own help page, built from the shipped conf/ tree and a static table of common keys.

Standard library only (vtlab.tree lists the groups): `python -m vtlab --help` must print in well under 2 s, so
nothing here may import torch, Hydra or Lightning. `--hydra-help` still shows Hydra's page. The defaults in
`COMMON_KEYS` are checked against the typed schema by tests/test_help.py, so the page cannot drift.
"""

from __future__ import annotations

import textwrap

from vtlab.tree import GROUPS, group_options

HELP_FLAGS = ("--help", "-h")

# (key, default as composed for the task it belongs to, meaning)
COMMON_KEYS: tuple[tuple[str, str, str], ...] = (
    ("connector.factor", "<preset's>", "pixel-unshuffle factor per axis; must divide the patch grid"),
    ("text_hidden", "${text.hidden_size}", "width the visual tokens are projected to"),
    ("model.weights", "null", "checkpoint file, folder or hf://org/name (local cache only; random init if null)"),
    ("model.tiling", "null", "split | anyres | naflex | none; null: the family's own"),
    ("data.image_size", "null", "profile/bench: input image size, int or [H,W] (tiled); train: render size"),
    ("task.quick", "false", "profile/bench: a quick look (few iterations, small batch, eager only)"),
    ("task.modes", "[eager,compile,cudagraphs]", "bench: the modes measured (cudagraphs: CUDA only)"),
    ("task.batch_size", "1 / 32 / 64", "profile / train / eval batch"),
    ("task.dtype", "auto", "bf16 on CUDA, fp32 on CPU"),
    ("task.freeze", "tower", "train: tower | stack | none"),
    ("task.ckpt_path", "null", "train: resume from it (or `last`); eval: the checkpoint to score"),
    ("trainer.max_epochs", "1", "train: epochs"),
    ("logger", "wandb", "wandb (offline) | csv | none"),
    ("out_dir", "null", "run directory (results.json, vtlab.log); null: outputs/<date>/<time>/"),
    ("seed", "0", "global seed"),
)

EXAMPLES = (
    ("python -m vtlab +model=smolvlm connector.factor=4", "profile one configuration (random weights)"),
    ("python -m vtlab +model=smolvlm task=bench task.quick=true", "latency and throughput, quick CPU look"),
    ("python -m vtlab -m +model=siglip,smolvlm connector.factor=1,2,4 task=bench", "a sweep (summary + plots)"),
    ("python -m vtlab +experiment=quick_train", "fine-tune a tiny model that learns in about a minute on CPU"),
    ("python -m vtlab +model=smolvlm --cfg job", "print the effective config and exit"),
)


def _wrapped(label: str, text: str, width: int = 28) -> str:
    lines = textwrap.wrap(text, 110 - width) or [""]
    return "\n".join([f"  {label:<{width - 2}}{lines[0]}", *(" " * width + line for line in lines[1:])])


def help_text() -> str:
    """The whole page."""
    parts = [
        "vtlab: configuration-driven experiments on the vision side of vision-language models. Pick a vision",
        "tower, a connector and a visual-token budget; measure what each costs (shapes, FLOPs, latency,",
        "throughput, memory: task=profile, task=bench) and buys (accuracy after fine-tuning: task=train, task=eval;",
        "a VLM's answers with the LM in the loop: task=align, task=finetune, then task=eval).",
        "",
        "usage: python -m vtlab +model=NAME [group=OPTION ...] [key=value ...]     (the `vtlab` command is the same)",
        "       python -m vtlab -m +model=A,B key=v1,v2 ...                        (a sweep: one run per cell)",
        "",
        "+model=NAME is required (or +experiment=NAME, which sets one).",
        "",
        "config groups (group=OPTION, read from conf/):",
    ]
    for group in GROUPS:
        label = "+model (required)" if group == "model" else "+experiment" if group == "experiment" else group
        parts.append(_wrapped(label, ", ".join(group_options(group))))
    parts += ["", "common keys (key=default):"]
    parts += [_wrapped(f"{key}={default}", meaning, 44) for key, default, meaning in COMMON_KEYS]
    parts += ["", "examples:"]
    parts += [f"  {cmd}\n      {what}" for cmd, what in EXAMPLES]
    parts += [
        "",
        "other flags:",
        _wrapped("--cfg job", "print the effective config of the command (interpolations resolved) and exit"),
        _wrapped("--hydra-help", "Hydra's own help (launchers, sweepers, override syntax)"),
        _wrapped("-m, --multirun", "run a sweep over comma-separated values"),
        "",
        "Bad input prints one line `vtlab: error: ...` and exits with status 2. More: README.md.",
    ]
    return "\n".join(parts)


def wants_help(argv: list[str]) -> bool:
    """True when the command asks for vtlab's help page (not `--hydra-help`)."""
    return any(arg in HELP_FLAGS for arg in argv)
