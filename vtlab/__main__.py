"""`python -m vtlab ...`: see vtlab.cli."""

from vtlab.cli import main

main()
