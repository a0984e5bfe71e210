"""A job's inputs are read-only to it: the output location must not overlap what the job reads.

Checked before any work (before Ray starts, before a lease or a single byte is written): the output may
not equal or contain the input annotations, the images root or a file the plan reads (style images,
trained weights), and may not lie inside the images root. Local paths are compared after resolving
symlinks; S3 URIs by bucket and key prefix. Pure path logic over :func:`nstray.storage.inside`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nstray import storage
from nstray.config import ConfigError

__all__ = ["OutputOverlapsInput", "job_inputs", "check_output"]


class OutputOverlapsInput(ConfigError):
    """The output location overlaps an input: writing there could overwrite the user's data."""


def _is_location(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and (storage.is_s3(value) or "/" in value)


def job_inputs(annotations: str | None, images: str, plan: Mapping[str, Any] | None = None,
               segment_model: str | None = None) -> dict[str, str]:
    """``{config field: location}`` of everything a dataset job reads."""
    found = {"input.images": images}
    if annotations:
        found["input.annotations"] = annotations
    if _is_location(segment_model):
        found["segment.model"] = str(segment_model)
    for name, spec in ((plan or {}).get("styles") or {}).items():
        if isinstance(spec, Mapping):
            for key in ("image", "weights"):
                if _is_location(spec.get(key)):
                    found[f"plan.styles.{name}.{key}"] = str(spec[key])
    return found


def check_output(output: str, inputs: Mapping[str, str], *, images_field: str = "input.images") -> None:
    """Raise :class:`OutputOverlapsInput` naming both locations when ``output`` equals or contains an input,
    or lies inside the images root (``inputs[images_field]``)."""
    problems = []
    for field, uri in inputs.items():
        if storage.inside(uri, output):
            what = "is" if storage.inside(output, uri) else "contains"
            problems.append(f"output {output} {what} {field} ({uri})")
        elif field == images_field and storage.inside(output, uri):
            problems.append(f"output {output} lies inside {field} ({uri})")
    if problems:
        raise OutputOverlapsInput(
            "refusing to run: the job would write where it reads, and could overwrite your data:\n  "
            + "\n  ".join(problems)
            + "\n  fix: set output to a new folder or prefix outside the dataset, e.g. a sibling folder such as "
              "<dataset>-styled (nstray never writes into its inputs)")
