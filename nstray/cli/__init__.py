"""The one ``nstray`` command. Each subcommand group lives in its own module;
heavy imports (torch, ray) happen inside command bodies so ``nstray --help`` is instant.

Every nstray user error (a bad config, plan, dataset, image, weights file, an unreachable
store ...) that a command does not handle itself ends here as one ``Error: <message>`` line
on stderr and exit code 1; ``nstray --verbose CMD`` shows the traceback instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import click

from nstray import __version__
from nstray.cli.common import USER_ERRORS, is_user_error, short_warnings
from nstray.cli.datasets import datasets
from nstray.cli.jobs import demo, run, submit
from nstray.cli.optimize import optimize
from nstray.cli.segmentation import eval_seg, segment, train_seg
from nstray.cli.styling import styles, stylize
from nstray.cli.train import train_style
from nstray.cli.video import video
from nstray.cli.weights import weights

__all__ = ["main", "USER_ERRORS", "is_user_error"]


class _Main(click.Group):
    """The top-level group: turns user errors into ``Error: ...`` (exit 1) unless ``--verbose``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if ctx.params.get("verbose") or isinstance(exc, click.exceptions.ClickException) or not is_user_error(exc):
                raise
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nstray")
@click.option("--verbose", is_flag=True, help="Show Ray's own log lines, and the full traceback of errors (for bug reports).")
def main(verbose: bool) -> None:
    """nstray: style every annotated vehicle part with its own style, at dataset scale."""
    if verbose:  # also shows Ray's own log lines (nstray.ray_session.verbose)
        import os

        os.environ["NSTRAY_VERBOSE"] = "1"
    else:
        short_warnings()


main.add_command(datasets)
main.add_command(stylize)
main.add_command(styles)
main.add_command(run)
main.add_command(submit)
main.add_command(demo)
main.add_command(optimize)
main.add_command(weights)
main.add_command(train_style)
main.add_command(video)
main.add_command(train_seg)
main.add_command(eval_seg)
main.add_command(segment)
