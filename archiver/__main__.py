"""``python -m archiver``: the command line (how the supervisor starts its workers)."""

from .cli import main

main()
