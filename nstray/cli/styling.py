"""``nstray stylize`` and ``nstray styles ...``: style one image by parts; browse the style bank."""

from __future__ import annotations

import click


@click.command()
def stylize() -> None:
    """Style one image, each annotated part with its own style (see the style plan)."""
    raise click.ClickException("not built yet")


@click.group()
def styles() -> None:
    """Browse the builtin style bank."""
