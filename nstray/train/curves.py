"""Loss curves of a training run: CSV, JSON and a PNG plot (matplotlib, Agg: no display needed).

A history is a list of rows ``{"step": int, "content": float, "style": float, "tv": float,
"total": float, ...}`` (one per optimizer step, weighted terms averaged over the workers).
These functions return bytes/text; the caller writes them (local or ``s3://``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence

__all__ = ["history_csv", "history_json", "render_loss_curves", "smooth"]

_TERMS = ("content", "style", "tv", "total")


def _columns(history: Sequence[Mapping[str, float]]) -> list[str]:
    cols = ["step"] + [t for t in _TERMS if any(t in r for r in history)]
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


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` values (the first ones average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def render_loss_curves(history: Sequence[Mapping[str, float]], title: str | None = None) -> bytes:
    """A PNG of the weighted loss terms per step (log scale; raw values faint, a moving average on top)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty loss history")
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [int(r["step"]) for r in history]
    window = max(1, len(history) // 50)
    for i, term in enumerate(_TERMS):
        values = [float(r.get(term, 0.0)) for r in history]
        if not any(v > 0 for v in values):
            continue
        color = "black" if term == "total" else f"C{i}"
        masked = [v if v > 0 else math.nan for v in values]
        if window > 1:
            ax.plot(steps, masked, color=color, lw=0.6, alpha=0.3)
        avg = [v if v > 0 else math.nan for v in smooth(values, window)]
        ax.plot(steps, avg, color=color, lw=1.5 if term == "total" else 1.2, ls="--" if term == "total" else "-",
                label=term)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss")
    ax.set_title(title or "training losses")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
