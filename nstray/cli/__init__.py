"""The one ``nstray`` command. Each subcommand group lives in its own module;
heavy imports (torch, ray) happen inside command bodies so ``nstray --help`` is instant."""

from __future__ import annotations

import click

from nstray import __version__
from nstray.cli.datasets import datasets
from nstray.cli.jobs import demo, run, submit
from nstray.cli.optimize import optimize
from nstray.cli.segmentation import eval_seg, segment, train_seg
from nstray.cli.styling import styles, stylize
from nstray.cli.train import train_style
from nstray.cli.weights import weights


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nstray")
def main() -> None:
    """nstray: style every annotated vehicle part with its own style, at dataset scale."""


main.add_command(datasets)
main.add_command(stylize)
main.add_command(styles)
main.add_command(run)
main.add_command(submit)
main.add_command(demo)
main.add_command(optimize)
main.add_command(weights)
main.add_command(train_style)
main.add_command(train_seg)
main.add_command(eval_seg)
main.add_command(segment)
