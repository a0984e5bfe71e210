"""Running an ``nstray`` click command as a Ray job entrypoint (``jobs/*.py``): exit codes instead of exceptions."""

from __future__ import annotations

import sys

import click


def run_command(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run ``command`` on ``argv`` (default ``sys.argv[1:]``): 0 done, 1 it could not run (message on stderr),
    2 bad options (usage shown)."""
    try:
        command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return 2
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 1
    return 0
