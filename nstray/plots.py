"""The loss-history plot shared by optimization (``nstray optimize --loss-plot``) and training (``losses.png``).

A history is a list of rows ``{"step": int, "content": float, "style": float, "tv": float,
"total": float, ...}``, one per step; optimization rows also carry ``"level"`` (coarse-to-fine
resolution level). Torch-free, and matplotlib (Agg: no display needed) is imported only when
rendering, so :mod:`~nstray.stylize` and :mod:`~nstray.train` can both use it without depending on
each other. Returns PNG bytes; the caller writes them (local or ``s3://``).

Segmentation adds :func:`render_metric_plot` (validation mIoU per epoch) and :func:`render_confusion`
(``nstray eval-seg --confusion``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

__all__ = ["LOSS_TERMS", "render_confusion", "render_loss_plot", "render_metric_plot", "smooth"]

LOSS_TERMS = ("content", "style", "tv", "total")


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` values (the first ones average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _level_starts(history: Sequence[Mapping[str, float]]) -> list[int]:
    """Indices where a new resolution level begins (0 first); ``[0]`` for histories without ``"level"``."""
    return [0] + [i for i in range(1, len(history)) if history[i].get("level") != history[i - 1].get("level")]


def render_loss_plot(history: Sequence[Mapping[str, float]], title: str | None = None) -> bytes:
    """A PNG of the weighted loss terms per step.

    Log scale; from 100 steps on the raw values are drawn faint and a moving average
    (window = steps/50) on top. The average restarts at each resolution level (a level's losses
    are on another scale than the previous one's), and dashed grey lines mark the level changes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty loss history")
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [int(r["step"]) for r in history]
    window = max(1, len(history) // 50)
    starts = _level_starts(history)
    for i, term in enumerate(LOSS_TERMS):
        values = [float(r.get(term, 0.0)) for r in history]
        if not any(v > 0 for v in values):
            continue
        color = "black" if term == "total" else f"C{i}"
        masked = [v if v > 0 else math.nan for v in values]
        if window > 1:
            ax.plot(steps, masked, color=color, lw=0.6, alpha=0.3)
        averaged = [a for s, e in zip(starts, starts[1:] + [len(values)]) for a in smooth(values[s:e], window)]
        avg = [v if v > 0 else math.nan for v in averaged]
        ax.plot(steps, avg, color=color, lw=1.5 if term == "total" else 1.2, ls="--" if term == "total" else "-",
                label=term)
    for start in starts[1:]:
        ax.axvline(steps[start] - 0.5, color="grey", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss")
    ax.set_title(title or "losses")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_metric_plot(history: Sequence[Mapping[str, float]], keys: Sequence[str], title: str | None = None, *,
                       x: str = "step", ylabel: str = "value") -> bytes:
    """A PNG of ``keys`` over ``x`` (linear scale, markers): e.g. validation mIoU and pixel accuracy per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty history")
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [r[x] for r in history]
    for key in keys:
        ax.plot(xs, [math.nan if r.get(key) is None else float(r[key]) for r in history], marker="o", ms=3, label=key)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ", ".join(keys))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def render_confusion(matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str | None = None) -> bytes:
    """A PNG of a confusion matrix (rows: true class, columns: predicted), each row normalized to sum 1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"confusion matrix must be {n}x{n} for {n} labels")
    rows = [[float(v) / max(sum(row), 1e-12) for v in row] for row in matrix]
    side = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalized)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if rows[i][j] >= 0.01:
                    ax.text(j, i, f"{rows[i][j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i][j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _png(fig)
