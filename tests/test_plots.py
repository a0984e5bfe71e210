"""The shared loss-history plot: training and optimization histories, smoothing, level markers; torch-free."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nstray.plots import render_loss_plot, smooth

REPO = Path(__file__).resolve().parents[1]


def test_smooth_is_a_trailing_moving_average():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([2.0, 4.0], 1) == [2.0, 4.0]


@pytest.mark.parametrize("levels", [False, True])
def test_renders_short_and_long_histories(levels):
    for n in (5, 240):  # 240 steps: raw values faint, a moving average on top
        history = [{"step": i + 1, "content": 1.0 / (i + 1), "style": 2.0, "tv": 0.0, "total": 2 + 1.0 / (i + 1)}
                   for i in range(n)]
        if levels:  # optimization rows: a resolution level each, the average restarts at level changes
            history = [{**r, "level": 3 * i // n} for i, r in enumerate(history)]
        png = Image.open(io.BytesIO(render_loss_plot(history, title="t")))
        assert png.format == "PNG" and png.size == (700, 400)


def test_empty_history_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        render_loss_plot([])


def test_import_is_torch_free():
    code = "import sys, nstray.plots, nstray.train.curves; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
