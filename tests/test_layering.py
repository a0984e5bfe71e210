"""The package layering holds: tensor code knows nothing of Ray, storage or the CLI; the data layer knows no Ray.

Checked on the source (every import statement, function-level ones included), so a lazy import cannot hide a
dependency, and at run time (importing the stylizer loads neither Ray nor boto3).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nstray"

# tensor code: networks, losses, compositing, masks, flow and stabilization
PURE = ["compose.py", "masks.py", "models/*.py", "stylize/*.py", "video/flow.py", "video/stabilize.py",
        "video/metrics.py", "video/masks.py", "models/segmentation.py"]
PURE_FORBIDDEN = ("ray", "boto3", "botocore", "nstray.storage", "nstray.cli", "nstray.pipeline", "click")
DATA_FORBIDDEN = ("ray", "nstray.pipeline", "nstray.cli", "click")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _files(patterns: list[str]) -> list[Path]:
    found = sorted({p for pat in patterns for p in PKG.glob(pat) if p.name != "__init__.py"})
    assert found
    return found


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for f in files:
        for name in sorted(_imports(f)):
            if any(name == x or name.startswith(x + ".") for x in forbidden):
                bad.append(f"{f.relative_to(PKG.parent) if f.is_relative_to(PKG.parent) else f} imports {name}")
    return bad


def test_tensor_code_imports_no_ray_storage_or_cli():
    assert _violations(_files(PURE), PURE_FORBIDDEN) == []


def test_the_data_layer_imports_no_ray():
    assert _violations(_files(["data/*.py"]), DATA_FORBIDDEN) == []


def test_the_check_catches_a_lazy_forbidden_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import numpy\ndef f():\n    from nstray import storage\n    import ray.data\n")
    assert _violations([f], PURE_FORBIDDEN) == [f"{f} imports nstray.storage", f"{f} imports ray.data"]


@pytest.mark.parametrize("module", ["nstray.stylize.parts", "nstray.compose", "nstray.models.multistyle"])
def test_importing_tensor_code_loads_no_ray_or_boto(module):
    code = (f"import sys, {module}; bad = [m for m in ('ray', 'boto3', 'nstray.cli', 'nstray.pipeline') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
