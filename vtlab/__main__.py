"""`python -m vtlab ...` and the `vtlab` console script: `--help` is answered here, before anything heavy.

The help page needs only the standard library (vtlab.help); everything else goes to vtlab.cli, which imports
Hydra and torch.
"""

from __future__ import annotations

import sys

from vtlab.help import help_text, wants_help


def main() -> None:
    if wants_help(sys.argv[1:]):
        print(help_text())
        return
    from vtlab.cli import main as cli_main  # deferred: the --help path above must not import torch/Hydra

    cli_main()


if __name__ == "__main__":
    main()
