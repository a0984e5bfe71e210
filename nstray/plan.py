"""The style plan: which style each annotated part gets, how strongly, and how parts meet.

A plan is a YAML file (or a dict) with a bank of named ``styles`` and a ``parts`` table that
maps COCO category names to styles::

    styles:
      a: {kind: multistyle, index: 3}                 # or a name from STYLE_NAMES
      mix: {kind: multistyle, weights: {3: 0.5, 7: 0.5}}
      b: {kind: arbitrary, image: styles/starry.jpg}  # local path or s3:// URI
      c: {kind: feedforward, weights: s3://bucket/models/vg.pt}   # trained by `nstray train-style`
    parts:
      wheel: {style: a, scale: 2.0}
      hood: {style: b, strength: 0.8, preserve_color: true}
      front_door: {style: [a, b]}      # a list: one is sampled per (image, variant, seed)
      background: {style: none}        # pixels outside every annotated part (label -1)
    default: {style: none}             # optional: categories not listed in parts (default: untouched)
    edges: {feather_px: 0}
    overlaps: smaller-on-top           # or a priority list of category names (first = on top)

Everything is checked when the plan is loaded, so a typo fails before any model loads or any
job starts; each error names the field path (``parts.hood.strength``) and, for unknown names,
lists the valid ones. Relative style-image paths resolve against the plan file's folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Annotated, Any, Literal, NamedTuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nstray import storage
from nstray.models.builtin_styles import STYLE_NAMES

__all__ = [
    "PlanError",
    "MultiStyleSpec",
    "ArbitrarySpec",
    "FeedforwardSpec",
    "StyleSpec",
    "PartSpec",
    "PartChoice",
    "Edges",
    "Plan",
    "NONE",
    "BACKGROUND",
    "load_plan",
    "style_names",
]

NONE = "none"
"""The reserved style name meaning "keep the original pixels"."""

BACKGROUND = "background"
"""The reserved part name for pixels outside every annotated part (label -1)."""

MAX_SCALE = 8.0
MAX_FEATHER_PX = 64


class PlanError(ValueError):
    """The plan is invalid; the message lists every problem, each with its field path."""


def style_names() -> list[str]:
    """Names of the builtin multi-style network's styles (index = position); torch-free."""
    return list(STYLE_NAMES)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MultiStyleSpec(_Model):
    """A builtin style of the multi-style network: one ``index`` or a blend ``weights: {index: w}``.

    Indices may be given as integers or as names from ``STYLE_NAMES``.
    """

    kind: Literal["multistyle"]
    index: int | str | None = None
    weights: dict[int | str, float] | None = None

    @field_validator("index", mode="after")
    @classmethod
    def _digits_are_indices(cls, v: int | str | None) -> int | str | None:
        # "3" (e.g. after a JSON round trip, where keys become strings) means index 3
        return int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v

    @field_validator("weights", mode="after")
    @classmethod
    def _digit_keys_are_indices(cls, v: dict[int | str, float] | None) -> dict[int | str, float] | None:
        if v is None:
            return v
        return {(int(k) if isinstance(k, str) and k.strip().lstrip("-").isdigit() else k): w for k, w in v.items()}

    def vector(self) -> list[float]:
        """The normalized style-weight vector (length ``len(STYLE_NAMES)``) this style means."""
        n = len(style_names())
        w = [0.0] * n
        if self.index is not None:
            w[_style_index(self.index)] = 1.0
        else:
            assert self.weights is not None
            for k, v in self.weights.items():
                w[_style_index(k)] += float(v)
        total = sum(w)
        return [x / total for x in w]


class ArbitrarySpec(_Model):
    """Any picture as the style (arbitrary-style network).

    ``image`` is one path/URI, or a blend ``{path: weight}`` of several style images whose
    style vectors are mixed. ``style_size`` is the side the style image is resized to for the
    style-prediction network (its centre square is used).
    """

    kind: Literal["arbitrary"]
    image: str | dict[str, float]
    style_size: int = Field(256, ge=64, le=1024)

    def images(self) -> dict[str, float]:
        """``{uri: normalized weight}`` of the style images."""
        items = {self.image: 1.0} if isinstance(self.image, str) else dict(self.image)
        total = sum(items.values())
        return {k: v / total for k, v in items.items()}


class FeedforwardSpec(_Model):
    """A trained feed-forward checkpoint (``nstray train-style``: a Johnson network or a new CIN style).

    ``weights``: a local path (relative to the plan file), an ``s3://`` URI or a registry name; it
    is read when the stylizer loads (:func:`nstray.stylize.feedforward.load_feedforward`).
    """

    kind: Literal["feedforward"]
    weights: str


StyleSpec = Annotated[Union[MultiStyleSpec, ArbitrarySpec, FeedforwardSpec], Field(discriminator="kind")]


class PartSpec(_Model):
    """How one category (or the background) is styled.

    ``style``: a style name, ``none``, or a list to sample from per variant.
    ``strength``: 0 keeps the original, 1 is the full style (a pixel blend).
    ``preserve_color``: keep the original chroma, take only the stylized luminance.
    ``scale``: style the part's region at ``scale``× its size (finer strokes on small parts).
    """

    style: str | list[str]
    strength: float = Field(1.0, ge=0.0, le=1.0)
    preserve_color: bool = False
    scale: float = Field(1.0, ge=1.0, le=MAX_SCALE)

    @field_validator("style", mode="before")
    @classmethod
    def _none_is_none(cls, v: Any) -> Any:
        if v is None:
            return NONE
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list of styles; give at least one style name (or none)")
            return [NONE if x is None else x for x in v]
        return v

    def choices(self) -> list[str]:
        """The style names this part may take."""
        return [self.style] if isinstance(self.style, str) else list(self.style)


class PartChoice(NamedTuple):
    """One part's (or the background's) resolved style: ``spec`` is None when the plan leaves it untouched."""

    category: str
    style: str
    spec: PartSpec | None

    @property
    def styled(self) -> bool:
        """Whether the plan styles it in this draw (a style other than ``none``; strength 0 counts as styled)."""
        return self.style != NONE and self.spec is not None


class Edges(_Model):
    """``feather_px``: width of the soft edge, inside each part (0 = hard edges)."""

    feather_px: int = Field(0, ge=0, le=MAX_FEATHER_PX)


class Plan(_Model):
    """A validated style plan (see the module docstring for the YAML shape)."""

    styles: dict[str, StyleSpec] = Field(default_factory=dict)
    parts: dict[str, PartSpec] = Field(default_factory=dict)
    default: PartSpec | None = None
    edges: Edges = Field(default_factory=Edges)
    overlaps: Literal["smaller-on-top"] | list[str] = "smaller-on-top"

    def spec_for(self, category: str) -> PartSpec | None:
        """The part spec that applies to ``category`` (``background`` included); None = untouched."""
        spec = self.parts.get(category)
        if spec is None and category != BACKGROUND:
            spec = self.default
        return spec

    def choose(self, category: str, variant: int = 0, seed: int = 0, key: str | int = "") -> str:
        """The style name ``category`` gets in this variant (``none`` = keep the original).

        Lists are sampled with a hash of (seed, key, variant, category), so the choice is the
        same in every process and on every machine. ``key`` (e.g. the image id) makes different
        images draw independently; without it every image of a variant draws alike.
        """
        spec = self.spec_for(category)
        if spec is None:
            return NONE
        choices = spec.choices()
        if len(choices) == 1:
            return choices[0]
        digest = hashlib.blake2b(f"{seed}\x1f{key}\x1f{variant}\x1f{category}".encode(), digest_size=8).digest()
        return choices[int.from_bytes(digest, "big") % len(choices)]

    def resolve(self, categories: Sequence[str], variant: int = 0, seed: int = 0,
                key: str | int = "") -> list[PartChoice]:
        """Plan → parts: the background (label −1) first, then part ``k`` (label ``k``), each with its drawn style.

        The one place where a record's parts meet the plan (the stylizer and ``nstray optimize`` both
        build their regions from it); a category drawn twice gets the same style (see :meth:`choose`).
        """
        return [PartChoice(c, self.choose(c, variant, seed, key), self.spec_for(c)) for c in (BACKGROUND, *categories)]

    def may_style(self, category: str) -> bool:
        """Whether some draw gives ``category`` a style (a list may hold ``none`` and styles)."""
        spec = self.spec_for(category)
        return spec is not None and any(c != NONE for c in spec.choices())

    def used_styles(self) -> set[str]:
        """Style names (from the bank) that some part, the background or the default may take."""
        specs = list(self.parts.values()) + ([self.default] if self.default else [])
        return {name for s in specs for name in s.choices() if name != NONE}

    def kinds(self) -> set[str]:
        """The network kinds the used styles need (``multistyle``, ``arbitrary``, ``feedforward``)."""
        return {self.styles[n].kind for n in self.used_styles()}


def _style_index(value: int | str) -> int:
    names = style_names()
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if value not in names:
            raise ValueError(f"unknown builtin style {value!r}; valid names: {', '.join(names)}")
        return names.index(value)
    idx = int(value)
    if not 0 <= idx < len(names):
        raise ValueError(f"style index {idx} is out of range; valid: 0 to {len(names) - 1}")
    return idx


def _loc(loc: tuple) -> str:
    """``('styles', 'a', 'multistyle', 'index')`` -> ``styles.a.index`` (drops pydantic's union tag)."""
    parts = [str(p) for p in loc]
    if len(parts) > 2 and parts[0] == "styles" and parts[2] in ("multistyle", "arbitrary", "feedforward"):
        del parts[2]
    return ".".join(parts)


_FIELDS: dict[str, type[BaseModel]] = {
    "": Plan, "styles.multistyle": MultiStyleSpec, "styles.arbitrary": ArbitrarySpec,
    "styles.feedforward": FeedforwardSpec, "parts": PartSpec, "default": PartSpec, "edges": Edges,
}


def _describe(err: dict) -> str:
    loc = err["loc"]
    path = _loc(loc) or "<plan>"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        if not parent:
            model = Plan
        elif parent[0] == "styles" and len(parent) >= 3:
            model = _FIELDS.get(f"styles.{parent[2]}", Plan)
        else:
            model = _FIELDS.get(str(parent[0]), Plan)
        msg = f"unknown key; valid keys: {', '.join(model.model_fields)}"
    elif err["type"] == "union_tag_invalid":
        msg = "unknown style kind; valid kinds: multistyle, arbitrary, feedforward"
    elif err["type"] == "union_tag_not_found":
        msg = "a style needs a kind; valid kinds: multistyle, arbitrary, feedforward"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return f"{path}: {msg}"


def _check(plan: Plan, categories: list[str] | None) -> list[str]:
    """Cross-field checks pydantic cannot do alone; returns error lines."""
    problems: list[str] = []
    valid_styles = sorted(plan.styles) + [NONE]
    for name, spec in plan.styles.items():
        if name == NONE:
            problems.append(f"styles.{NONE}: '{NONE}' is reserved (it means: keep the original pixels); rename it")
        if isinstance(spec, MultiStyleSpec):
            if (spec.index is None) == (spec.weights is None):
                problems.append(f"styles.{name}: give exactly one of index or weights")
                continue
            entries = [("index", spec.index)] if spec.index is not None else [
                (f"weights.{k}", k) for k in (spec.weights or {})
            ]
            for field, value in entries:
                try:
                    _style_index(value)
                except ValueError as exc:
                    problems.append(f"styles.{name}.{field}: {exc}")
            if spec.weights is not None:
                if any(v < 0 for v in spec.weights.values()) or sum(spec.weights.values()) <= 0:
                    problems.append(f"styles.{name}.weights: weights must be non-negative and not all zero")
        elif isinstance(spec, ArbitrarySpec):
            images = {spec.image: 1.0} if isinstance(spec.image, str) else spec.image
            if not images:
                problems.append(f"styles.{name}.image: give a style image path or s3:// URI")
            elif any(v < 0 for v in images.values()) or sum(images.values()) <= 0:
                problems.append(f"styles.{name}.image: blend weights must be non-negative and not all zero")
            for uri in images:
                if not str(uri).strip():
                    problems.append(f"styles.{name}.image: an empty path")
    tables = [(f"parts.{cat}", spec) for cat, spec in plan.parts.items()]
    if plan.default is not None:
        tables.append(("default", plan.default))
    for path, spec in tables:
        for i, choice in enumerate(spec.choices()):
            if choice != NONE and choice not in plan.styles:
                where = f"{path}.style" + (f"[{i}]" if isinstance(spec.style, list) else "")
                problems.append(f"{where}: unknown style {choice!r}; valid styles: {', '.join(valid_styles)}")
    if categories is not None:
        valid = list(categories)
        for cat in plan.parts:
            if cat != BACKGROUND and cat not in valid:
                problems.append(
                    f"parts.{cat}: unknown category {cat!r}; valid categories: {', '.join(valid + [BACKGROUND])}"
                )
        if isinstance(plan.overlaps, list):
            for i, cat in enumerate(plan.overlaps):
                if cat not in valid:
                    problems.append(f"overlaps[{i}]: unknown category {cat!r}; valid categories: {', '.join(valid)}")
    if isinstance(plan.overlaps, list) and len(set(plan.overlaps)) != len(plan.overlaps):
        problems.append("overlaps: a category is listed twice")
    return problems


def _resolve_paths(plan: Plan, base_dir: str | os.PathLike | None) -> Plan:
    """Make relative style-image paths absolute against ``base_dir`` (s3:// URIs stay as they are)."""
    if base_dir is None:
        return plan

    def fix(uri: str) -> str:
        if storage.is_s3(uri):
            return uri
        if str(base_dir).startswith("s3://"):
            return uri if uri.startswith("/") else storage.join(str(base_dir), uri)
        p = Path(storage.parse(uri).path).expanduser()
        return str(p if p.is_absolute() else (Path(base_dir) / p).resolve())

    styles: dict[str, Any] = {}
    for name, spec in plan.styles.items():
        if isinstance(spec, ArbitrarySpec):
            image = fix(spec.image) if isinstance(spec.image, str) else {fix(k): v for k, v in spec.image.items()}
            spec = spec.model_copy(update={"image": image})
        elif isinstance(spec, FeedforwardSpec) and not spec.weights.startswith(("package://", "torchvision://")):
            looks_like_path = "/" in spec.weights or "." in spec.weights
            if looks_like_path:
                spec = spec.model_copy(update={"weights": fix(spec.weights)})
        styles[name] = spec
    return plan.model_copy(update={"styles": styles})


def load_plan(
    source: str | os.PathLike | dict | Plan,
    *,
    base_dir: str | os.PathLike | None = None,
    categories: list[str] | None = None,
) -> Plan:
    """Load and validate a plan from a YAML path/URI, a dict, or a ``Plan``.

    ``base_dir``: folder relative style-image paths resolve against (default: the plan file's
    folder; for a dict, paths stay as given). ``categories``: the dataset's category names;
    when given, every part and overlap name must be one of them (or ``background``).
    Raises :class:`PlanError` listing every problem with its field path.
    """
    if isinstance(source, Plan):
        data: Any = source.model_dump()
    elif isinstance(source, dict):
        data = source
    else:
        uri = str(source)
        try:
            text = storage.read_bytes(uri).decode("utf-8")
        except storage.StorageError as exc:
            raise PlanError(f"cannot read the style plan: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PlanError(f"{uri}: not valid YAML: {exc}") from None
        if base_dir is None:
            base_dir = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else Path(storage.parse(uri).path).resolve().parent
    if not isinstance(data, dict):
        raise PlanError(f"a style plan must be a mapping with styles/parts/edges/overlaps, got {type(data).__name__}")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise PlanError("invalid style plan:\n  " + "\n  ".join(lines)) from None
    problems = _check(plan, categories)
    if problems:
        raise PlanError("invalid style plan:\n  " + "\n  ".join(problems))
    return _resolve_paths(plan, base_dir)
