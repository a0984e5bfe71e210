"""The style plan: YAML shape, up-front validation with field paths and valid names, deterministic sampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nstray.plan import NONE, ArbitrarySpec, FeedforwardSpec, MultiStyleSpec, PlanError, load_plan

REPO = Path(__file__).resolve().parents[1]
CATS = ["body", "hood", "front_door", "wheel", "window"]

PLAN_YAML = """
styles:
  a: {kind: multistyle, index: 3}
  mix: {kind: multistyle, weights: {3: 1, style_07: 3}}
  b: {kind: arbitrary, image: styles/starry.jpg}
  remote: {kind: arbitrary, image: s3://bucket/styles/wave.png}
  c: {kind: feedforward, weights: s3://bucket/models/vg.pt}
parts:
  wheel: {style: a, scale: 2.0}
  hood: {style: b, strength: 0.8, preserve_color: true}
  front_door: {style: [a, b, mix]}
  background: {style: none}
edges: {feather_px: 3}
overlaps: [wheel, hood]
"""


def _errors(data: dict, **kw) -> str:
    with pytest.raises(PlanError) as info:
        load_plan(data, **kw)
    return str(info.value)


def _base() -> dict:
    return {"styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "arbitrary", "image": "x.png"}},
            "parts": {"hood": {"style": "a"}}}


def test_yaml_file_loads_with_paths_resolved_against_its_folder(tmp_path):
    (tmp_path / "plans").mkdir()
    path = tmp_path / "plans" / "p.yaml"
    path.write_text(PLAN_YAML)
    plan = load_plan(path, categories=CATS)
    assert isinstance(plan.styles["a"], MultiStyleSpec) and plan.styles["a"].vector()[3] == 1.0
    mix = plan.styles["mix"].vector()
    assert mix[3] == pytest.approx(0.25) and mix[7] == pytest.approx(0.75) and sum(mix) == pytest.approx(1.0)
    b = plan.styles["b"]
    assert isinstance(b, ArbitrarySpec) and b.image == str(tmp_path / "plans" / "styles" / "starry.jpg")
    assert plan.styles["remote"].image == "s3://bucket/styles/wave.png"  # URIs stay as they are
    assert isinstance(plan.styles["c"], FeedforwardSpec)
    assert plan.parts["wheel"].scale == 2.0 and plan.parts["hood"].preserve_color
    assert plan.parts["hood"].strength == 0.8 and plan.parts["wheel"].strength == 1.0
    assert plan.edges.feather_px == 3 and plan.overlaps == ["wheel", "hood"]
    assert plan.choose("background") == NONE and plan.choose("body") == NONE  # unlisted: untouched
    assert plan.used_styles() == {"a", "b", "mix"} and plan.kinds() == {"multistyle", "arbitrary"}


def test_plan_round_trips_through_json_dump():
    plan = load_plan(__import__("yaml").safe_load(PLAN_YAML), base_dir="/data/plans")
    again = load_plan(plan.model_dump(mode="json", exclude_none=True))
    assert again == plan
    assert again.styles["mix"].vector() == plan.styles["mix"].vector()


def test_unknown_style_name_lists_valid_styles():
    data = _base()
    data["parts"]["hood"] = {"style": "starry"}
    data["parts"]["wheel"] = {"style": ["a", "nope"]}
    msg = _errors(data)
    assert "parts.hood.style: unknown style 'starry'; valid styles: a, b, none" in msg
    assert "parts.wheel.style[1]: unknown style 'nope'" in msg  # every problem is reported at once


def test_unknown_category_lists_valid_categories():
    data = _base()
    data["parts"]["hoood"] = {"style": "a"}
    data["overlaps"] = ["wheel", "wheeel"]
    msg = _errors(data, categories=CATS)
    assert "parts.hoood: unknown category 'hoood'; valid categories: body, hood, front_door, wheel, window, background" in msg
    assert "overlaps[1]: unknown category 'wheeel'" in msg
    load_plan(_base(), categories=CATS)  # known names pass; without categories nothing is checked
    load_plan(data)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"styles": {"a": {"kind": "multistyle", "index": 26}}}, "styles.a.index: style index 26 is out of range; valid: 0 to 25"),
        ({"styles": {"a": {"kind": "multistyle", "index": "mosaic"}}}, "styles.a.index: unknown builtin style 'mosaic'; valid names: style_00"),
        ({"styles": {"a": {"kind": "multistyle", "weights": {3: 0.5, 40: 0.5}}}}, "styles.a.weights.40: style index 40 is out of range"),
        ({"styles": {"a": {"kind": "multistyle", "index": 1, "weights": {2: 1}}}}, "styles.a: give exactly one of index or weights"),
        ({"styles": {"a": {"kind": "multistyle", "weights": {2: 0}}}}, "styles.a.weights: weights must be non-negative and not all zero"),
        ({"styles": {"a": {"kind": "magic"}}}, "styles.a: unknown style kind; valid kinds: multistyle, arbitrary, feedforward"),
        ({"styles": {"a": {"index": 2}}}, "styles.a: a style needs a kind"),
        ({"styles": {"a": {"kind": "feedforward"}}}, "styles.a.weights: Field required"),
        ({"styles": {"a": {"kind": "multistyle", "index": 2, "colour": 1}}}, "styles.a.colour: unknown key; valid keys: kind, index, weights"),
        ({"parts": {"hood": {"style": "a", "strength": 1.5}}}, "parts.hood.strength: Input should be less than or equal to 1"),
        ({"parts": {"hood": {"style": "a", "strength": -0.1}}}, "parts.hood.strength: Input should be greater than or equal to 0"),
        ({"parts": {"hood": {"style": "a", "scale": 0.5}}}, "parts.hood.scale: Input should be greater than or equal to 1"),
        ({"parts": {"hood": {"style": "a", "scale": 100}}}, "parts.hood.scale: Input should be less than or equal to 8"),
        ({"parts": {"hood": {"style": "a", "preserve_colour": True}}}, "parts.hood.preserve_colour: unknown key; valid keys: style, strength, preserve_color, scale"),
        ({"parts": {"hood": {"style": []}}}, "parts.hood.style: Value error, an empty list of styles"),
        ({"edges": {"feather_px": -1}}, "edges.feather_px: Input should be greater than or equal to 0"),
        ({"overlaps": "bigger-on-top"}, "overlaps"),
        ({"stlyes": {}}, "stlyes: unknown key; valid keys: styles, parts, default, edges, overlaps"),
    ],
)
def test_bad_fields_are_named(patch, expected):
    data = _base()
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    assert expected in _errors(data)


def test_builtin_style_names_and_none_spellings():
    plan = load_plan({"styles": {"s": {"kind": "multistyle", "index": "style_05"}},
                      "parts": {"hood": {"style": None}, "wheel": {"style": "s"}}})
    assert plan.styles["s"].vector()[5] == 1.0 and plan.choose("hood") == NONE and plan.choose("wheel") == "s"
    assert "styles.none: 'none' is reserved" in _errors({"styles": {"none": {"kind": "multistyle", "index": 1}}})


def test_bad_files_are_clear(tmp_path):
    with pytest.raises(PlanError, match="cannot read the style plan.*file not found"):
        load_plan(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("styles: [unclosed")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(PlanError, match="must be a mapping"):
        load_plan(bad)


def test_choose_is_deterministic_stable_and_samples_every_choice():
    plan = load_plan(__import__("yaml").safe_load(PLAN_YAML))
    draws = [plan.choose("front_door", variant=v, seed=7) for v in range(60)]
    assert set(draws) == {"a", "b", "mix"}
    assert draws == [plan.choose("front_door", variant=v, seed=7) for v in range(60)]
    assert draws != [plan.choose("front_door", variant=v, seed=8) for v in range(60)]
    by_key = {plan.choose("front_door", variant=0, seed=7, key=k) for k in range(30)}
    assert len(by_key) > 1  # different images draw independently
    # the same draw in a fresh interpreter (no dependence on Python's salted hash())
    code = ("import yaml,sys; from nstray.plan import load_plan; p=load_plan(yaml.safe_load(sys.stdin.read()));"
            "print(','.join(p.choose('front_door', variant=v, seed=7) for v in range(60)))")
    out = subprocess.run([sys.executable, "-c", code], input=PLAN_YAML, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=REPO)
    assert out.stdout.strip().split(",") == draws


def test_resolve_is_background_first_then_each_part_as_choose_draws_it():
    plan = load_plan({"styles": {"a": {"kind": "multistyle", "index": 1}, "b": {"kind": "multistyle", "index": 2}},
                      "parts": {"door": {"style": ["a", "b"], "strength": 0.0}, "hood": {"style": None}},
                      "default": {"style": "b"}})
    for v in range(8):
        got = plan.resolve(["door", "hood", "mirror", "door"], variant=v, seed=3, key=11)
        assert [c.category for c in got] == ["background", "door", "hood", "mirror", "door"]
        assert [c.style for c in got] == [plan.choose(c.category, v, 3, 11) for c in got]
        assert [c.styled for c in got] == [False, True, False, True, True]  # strength 0 is still "styled"
        assert got[1].spec is plan.spec_for("door") and got[0].spec is None
    assert plan.may_style("door") and plan.may_style("mirror") and not plan.may_style("hood")
    assert not plan.may_style("background")


def test_validation_does_not_import_torch():
    """Loading a plan (builtin style names and indices included) stays torch-free: the job driver pays no torch import."""
    code = ("import sys,yaml; from nstray.plan import load_plan, style_names; p=load_plan(yaml.safe_load(sys.stdin.read()));"
            "p.styles['mix'].vector(); assert len(style_names()) == 26; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=PLAN_YAML, capture_output=True, text=True, check=True,
                         env={"PATH": ""}, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_default_applies_to_unlisted_categories_not_background():
    plan = load_plan({"styles": {"a": {"kind": "multistyle", "index": 1}}, "default": {"style": "a", "strength": 0.5}})
    assert plan.choose("mirror") == "a" and plan.spec_for("mirror").strength == 0.5
    assert plan.choose("background") == NONE


def test_plan_on_s3_resolves_relative_style_images_against_its_prefix(s3_bucket):
    from nstray import storage

    storage.write_bytes(s3_bucket + "/plans/p.yaml", PLAN_YAML.encode())
    plan = load_plan(s3_bucket + "/plans/p.yaml")
    assert plan.styles["b"].image == s3_bucket + "/plans/styles/starry.jpg"
    with pytest.raises(PlanError, match="cannot read the style plan.*does not exist"):
        load_plan(s3_bucket + "/plans/missing.yaml")
