"""``nstray run``, ``nstray submit``, ``nstray demo``: the dataset job on Ray."""

from __future__ import annotations

import click


@click.command()
def run() -> None:
    """Run a dataset job (CONFIG.yaml) on the current Ray cluster, or a local one."""
    raise click.ClickException("not built yet")


@click.command()
def submit() -> None:
    """Submit a dataset job to a Ray cluster through the Ray Jobs API and follow its logs."""
    raise click.ClickException("not built yet")


@click.command()
def demo() -> None:
    """Generate sample data, style it by parts on local Ray, and say where the results are."""
    raise click.ClickException("not built yet")
