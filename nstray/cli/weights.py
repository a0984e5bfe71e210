"""``nstray weights ...``: list, pull and push model weights (air-gapped clusters load them from S3)."""

from __future__ import annotations

import click


@click.group()
def weights() -> None:
    """List, pull and push model weights."""
