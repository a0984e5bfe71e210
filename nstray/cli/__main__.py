"""``python -m nstray.cli``: the same as the ``nstray`` command."""

from nstray.cli import main

main(prog_name="nstray")
