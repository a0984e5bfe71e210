"""``nstray optimize``: optimization-based NST (Gatys), per-part styles, reconstructions."""

from __future__ import annotations

import click


@click.command()
def optimize() -> None:
    """Optimize an image toward content and style (Gatys et al.), optionally per part."""
    raise click.ClickException("not built yet")
