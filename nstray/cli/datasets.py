"""``nstray datasets ...``: make, validate and inspect COCO vehicle-part datasets."""

from __future__ import annotations

import click


@click.group()
def datasets() -> None:
    """Make, validate and inspect COCO vehicle-part datasets."""
