"""``nstray train-style``: train a new feed-forward style (Johnson network or a new CIN style) on Ray Train."""

from __future__ import annotations

import click


@click.command("train-style")
def train_style() -> None:
    """Train a feed-forward network for a style image on Ray Train (DDP across workers)."""
    raise click.ClickException("not built yet")
