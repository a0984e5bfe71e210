"""The pure video modules import no Ray, storage or CLI; the video data layer imports no Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["nstray.video.flow", "nstray.video.stabilize", "nstray.video.metrics", "nstray.video.masks"]
DATA = ["nstray.data.masksource", "nstray.data.video_annotations", "nstray.data.synth_video"]


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", PURE)
def test_pure_video_modules(module):
    loaded = _loaded_after_import(module)
    assert not {m for m in loaded if m == "ray" or m.startswith(("ray.", "nstray.storage", "nstray.cli", "click"))}


@pytest.mark.parametrize("module", DATA)
def test_video_data_layer_has_no_ray(module):
    assert not {m for m in _loaded_after_import(module) if m == "ray" or m.startswith("ray.")}
