"""Check, before any cluster starts, every file a style plan will load.

:func:`nstray.plan.load_plan` checks the plan's *shape* (names, ranges, references) without touching a
file. What the stylizer then loads — the style images of ``kind: arbitrary`` styles, the checkpoints
of ``kind: feedforward`` styles, the builtin networks' weights — used to be read first inside a Ray
actor's constructor, where a missing or broken file killed the actor after many seconds and hundreds
of lines of ``ActorDiedError``. :func:`check_plan_assets` reads each of them once, up front, and
raises one :class:`~nstray.plan.PlanError` listing every problem with its plan field and file.

Only the styles the plan uses are checked (the same set :class:`~nstray.stylize.parts.PartStylizer`
loads).
"""

from __future__ import annotations

from nstray import storage
from nstray.data.images import DEFAULT_MAX_PIXELS
from nstray.plan import ArbitrarySpec, FeedforwardSpec, MultiStyleSpec, Plan, PlanError

__all__ = ["check_plan_assets", "check_style_image"]


def check_style_image(uri: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, limit_hint: str = "limits.max_pixels") -> str | None:
    """Why the style image at ``uri`` cannot be used (``None`` when it can): it must exist, be an image
    within ``max_pixels`` (checked from the header, before decoding) and decode."""
    from nstray.assets import AssetError, load_style_image

    try:
        load_style_image(uri, max_pixels=max_pixels, limit_hint=limit_hint)
    except AssetError as exc:
        return str(exc)
    return None


def check_plan_assets(
    plan: Plan,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit_hint: str = "limits.max_pixels",
    skip_s3: bool = False,
) -> None:
    """Load every file the plan's used styles need, as the stylizer will; raise :class:`PlanError` naming
    each failing plan field (``styles.NAME.image``, ``styles.NAME.weights``) and file.

    ``max_pixels``: the pixel limit for style images (``limit_hint`` names the setting that raises it).
    ``skip_s3``: leave ``s3://`` files unchecked (``nstray submit``: the cluster reads them with its own credentials).
    """
    from nstray import weights

    problems: list[str] = []
    used = sorted(plan.used_styles())
    specs = {name: plan.styles[name] for name in used}

    def builtin(field: str, names: tuple[str, ...]) -> None:
        for ref in names:
            try:
                weights.resolve(ref)
            except (weights.WeightsNotFound, weights.WeightsChecksumError) as exc:
                problems.append(f"{field}: {exc}")
                return

    multi = [n for n, s in specs.items() if isinstance(s, MultiStyleSpec)]
    if multi:
        builtin(f"styles.{multi[0]}", ("multistyle26",))
    arbitrary = [n for n, s in specs.items() if isinstance(s, ArbitrarySpec)]
    if arbitrary:
        builtin(f"styles.{arbitrary[0]}", ("arbitrary_predict", "arbitrary_transform"))
    checked: dict[str, str | None] = {}
    for name, spec in specs.items():
        if isinstance(spec, ArbitrarySpec):
            for uri in spec.images():
                if skip_s3 and storage.is_s3(uri):
                    continue
                if uri not in checked:
                    checked[uri] = check_style_image(uri, max_pixels=max_pixels, limit_hint=limit_hint)
                if checked[uri]:
                    problems.append(f"styles.{name}.image: {checked[uri]}")
        elif isinstance(spec, FeedforwardSpec):
            if skip_s3 and storage.is_s3(spec.weights):
                continue
            if spec.weights not in checked:
                checked[spec.weights] = _feedforward_problem(spec.weights)
            if checked[spec.weights]:
                problems.append(f"styles.{name}.weights: {checked[spec.weights]}")
    if problems:
        raise PlanError("the style plan's files cannot be used:\n  " + "\n  ".join(problems))


def _feedforward_problem(ref: str) -> str | None:
    """Why the feed-forward checkpoint ``ref`` cannot be used: it must load (``weights_only=True``) and fit its network."""
    from nstray.assets import read_checkpoint
    from nstray.stylize.feedforward import FeedforwardError, build_feedforward

    try:
        build_feedforward(read_checkpoint(ref), ref)
    except FeedforwardError as exc:
        return str(exc)
    return None
