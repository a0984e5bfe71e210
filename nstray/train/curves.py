"""Loss curves of a training run as CSV and JSON (the PNG plot is :func:`nstray.plots.render_loss_plot`).

A history is a list of rows ``{"step": int, "content": float, "style": float, "tv": float,
"total": float, ...}`` (one per optimizer step, weighted terms averaged over the workers).
These functions return text; the caller writes it (local or ``s3://``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence

from nstray.plots import LOSS_TERMS

__all__ = ["history_csv", "history_json"]


def _columns(history: Sequence[Mapping[str, float]]) -> list[str]:
    cols = ["step"] + [t for t in LOSS_TERMS if any(t in r for r in history)]
    extra = sorted({k for r in history for k in r} - set(cols))
    return cols + extra


def history_csv(history: Sequence[Mapping[str, float]]) -> str:
    """The history as CSV text, one row per step (``step, content, style, tv, total, …``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(history), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in writer.fieldnames})
    return buf.getvalue()


def history_json(history: Sequence[Mapping[str, float]], **extra: object) -> str:
    """The history (and any ``extra`` fields, e.g. the run's settings) as JSON text."""
    return json.dumps({**extra, "history": [dict(r) for r in history]}, indent=1, allow_nan=False)
