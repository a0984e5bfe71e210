"""The job config (validation, paths, fingerprint) and the job's pure planning parts (placement, resume,
errors, COCO out, manifest parts) — no Ray needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nstray.config import ConfigError, ResourcesConfig, load_config
from nstray.data.coco import RecordError
from nstray.pipeline import outputs
from nstray.pipeline.job import place, plan_work

PLAN = {
    "styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 12}},
    "parts": {"wheel": {"style": ["a", "b"]}, "hood": {"style": "b"}, "background": {"style": "none"}},
}
CONTRACT = {
    "input": {"annotations": "s3://bucket/coco/annotations.json", "images": "s3://bucket/coco/images"},
    "output": "s3://bucket/styled/run-1",
    "variants": 2,
    "seed": 7,
    "plan": PLAN,
    "resources": {"actors": 4, "gpus_per_actor": 1, "batch_size": 8},
    "limits": {"max_pixels": 40000000},
    "format": {"type": "png", "quality": 95},
}


def _error(data: dict, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data, **kw)
    return str(info.value)


def test_the_contract_shape_loads_with_its_values():
    cfg = load_config(CONTRACT)
    assert cfg.input.annotations == "s3://bucket/coco/annotations.json"
    assert cfg.output == "s3://bucket/styled/run-1"
    assert (cfg.variants, cfg.seed) == (2, 7)
    assert (cfg.resources.actors, cfg.resources.gpus_per_actor, cfg.resources.batch_size) == (4, 1, 8)
    assert cfg.limits.max_pixels == 40_000_000
    assert (cfg.format.type, cfg.format.quality, cfg.format.ext) == ("png", 95, "png")
    plan = cfg.load_plan()
    assert plan.parts["wheel"].choices() == ["a", "b"]
    # GPU jobs keep stages apart (CPU tasks feed the GPUs); CPU jobs fuse them into the actors
    assert not cfg.resources.fused() and ResourcesConfig(gpus_per_actor=0).fused()


def test_defaults_and_a_yaml_file_with_relative_paths(tmp_path: Path):
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.yaml").write_text(yaml.safe_dump(PLAN))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"input": {"annotations": "data/ann.json", "images": "data/images"},
                                    "output": "styled", "plan": "plans/p.yaml"}))
    cfg = load_config(path)
    assert cfg.input.annotations == str(tmp_path / "data" / "ann.json")  # relative to the config file
    assert cfg.input.images == str(tmp_path / "data" / "images")
    assert cfg.output == str(tmp_path / "styled")
    assert isinstance(cfg.plan, dict) and cfg.plan["parts"]["hood"]["style"] == "b"  # the plan file, inlined
    assert (cfg.variants, cfg.seed, cfg.resources.actors, cfg.resources.gpus_per_actor) == (1, 0, 1, 0)
    assert cfg.format.type == "png"
    # a loaded config is self-contained: its dump loads again to the same job
    again = load_config(json.loads(json.dumps(cfg.model_dump(mode="json"))), base_dir="/elsewhere")
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


def test_inline_plan_style_images_resolve_against_the_config_folder(tmp_path: Path):
    plan = {"styles": {"g": {"kind": "arbitrary", "image": "styles/glass.png"}}, "parts": {"hood": {"style": "g"}}}
    cfg = load_config(dict(CONTRACT, plan=plan), base_dir=tmp_path)
    assert cfg.plan["styles"]["g"]["image"] == str(tmp_path / "styles" / "glass.png")


@pytest.mark.parametrize("change, expected", [
    ({"resources": {"actors": 0}}, "resources.actors: must be ≥ 1"),
    ({"resources": {"batch_size": 0}}, "resources.batch_size: must be ≥ 1"),
    ({"resources": {"gpus_per_actor": -1}}, "resources.gpus_per_actor: must be ≥ 0"),
    ({"resources": {"gpu": 1}}, "resources.gpu: unknown key; valid keys: actors, gpus_per_actor"),
    ({"variants": 0}, "variants: must be ≥ 1"),
    ({"format": {"type": "gif"}}, "format.type: must be one of 'png' or 'jpg' (got 'gif')"),
    ({"format": {"quality": 101}}, "format.quality: must be ≤ 100"),
    ({"limits": {"max_pixels": 0}}, "limits.max_pixels: must be ≥ 1"),
    ({"outptu": "x"}, "outptu: unknown key; valid keys: input, output, variants"),
    ({"input": {"images": ""}}, "input.images: must not be empty"),
    ({"output": ""}, "output: must not be empty"),
    ({"plan": 5}, "plan: must be an inline plan (a mapping) or a path to a plan YAML"),
])
def test_errors_name_the_field(change: dict, expected: str):
    data = dict(CONTRACT)
    for key, value in change.items():
        data[key] = dict(data[key], **value) if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    assert expected in _error(data)


def test_every_problem_is_listed_at_once_and_plan_errors_carry_the_plan_prefix(tmp_path: Path):
    msg = _error({"input": {"annotations": "a"}, "plan": {}, "resources": {"actors": 0}})
    assert "input.images: required" in msg and "output: required" in msg and "resources.actors: must be ≥ 1" in msg
    bad_plan = {"styles": {"a": {"kind": "multistyle", "index": 99}}, "parts": {"hood": {"style": "zz", "strength": 2}}}
    msg = _error(dict(CONTRACT, plan=bad_plan))
    assert "plan.parts.hood.strength" in msg
    msg = _error(dict(CONTRACT, plan={"styles": {}, "parts": {"hood": {"style": "zz"}}}))
    assert "plan.parts.hood.style: unknown style 'zz'" in msg
    assert "cannot read the style plan" in _error(dict(CONTRACT, plan="missing.yaml"), base_dir=tmp_path)
    (tmp_path / "bad.yaml").write_text("input: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_follows_what_decides_the_pixels():
    base = load_config(CONTRACT)
    assert load_config(dict(CONTRACT, resources={"actors": 1})).fingerprint() == base.fingerprint()
    assert load_config(dict(CONTRACT, variants=5)).fingerprint() == base.fingerprint()
    assert load_config(dict(CONTRACT, seed=8)).fingerprint() != base.fingerprint()
    assert load_config(dict(CONTRACT, format={"type": "jpg"})).fingerprint() != base.fingerprint()
    plan = json.loads(json.dumps(PLAN))
    plan["parts"]["hood"]["style"] = "a"
    assert load_config(dict(CONTRACT, plan=plan)).fingerprint() != base.fingerprint()


# ---------------------------------------------------------------- placement (pure)


def test_place_fits_the_pool_to_the_cluster():
    cpu = ResourcesConfig(actors=2, cpus_per_actor=1)
    p = place(cpu, cluster_cpus=16, cluster_gpus=0)
    assert (p.actors, p.min_actors, p.cpus_per_actor, p.threads, p.fused, p.notes) == (2, 2, 1.0, 1, True, ())
    # a 2-CPU box: one CPU stays free for reading, the two actors share the other
    p = place(cpu, cluster_cpus=2, cluster_gpus=0)
    assert (p.actors, p.cpus_per_actor, p.threads) == (2, 0.5, 1) and p.notes
    # too many actors for the CPUs: the pool shrinks
    p = place(ResourcesConfig(actors=16), cluster_cpus=2, cluster_gpus=0)
    assert p.actors == 4 and p.cpus_per_actor == 0.25
    gpu = ResourcesConfig(actors=4, gpus_per_actor=1, batch_size=8)
    p = place(gpu, cluster_cpus=64, cluster_gpus=8)
    assert (p.actors, p.min_actors, p.gpus_per_actor, p.fused) == (4, 4, 1, False)
    p = place(gpu, cluster_cpus=64, cluster_gpus=2)  # fewer GPUs than asked: start with 2, may grow to 4
    assert (p.actors, p.min_actors) == (4, 2) and "GPU" in p.notes[0]
    p = place(gpu, cluster_cpus=8, cluster_gpus=0)  # no GPU at all: CPU fallback, fused
    assert (p.gpus_per_actor, p.fused) == (0, True) and "no GPU" in p.notes[0]
    p = place(ResourcesConfig(actors=4, gpus_per_actor=1, cpu_fallback=False), cluster_cpus=8, cluster_gpus=0)
    assert p.gpus_per_actor == 1  # waits for GPU nodes (autoscaler) instead


def test_auto_actors_follow_the_cluster():
    gpu = ResourcesConfig(actors="auto", gpus_per_actor=1)
    assert (place(gpu, cluster_cpus=64, cluster_gpus=8).actors, place(gpu, 64, 8).min_actors) == (8, 8)
    assert place(ResourcesConfig(actors="auto", gpus_per_actor=0.5), 64, 3).actors == 6  # two per GPU
    assert place(ResourcesConfig(actors="auto", cpus_per_actor=2), 9, 0).actors == 4  # one CPU stays free
    fallback = place(gpu, cluster_cpus=4, cluster_gpus=0)  # no GPU: as many CPU actors as the CPUs hold
    assert (fallback.actors, fallback.gpus_per_actor) == (3, 0)


def test_stage_env_tunes_cpu_actors_and_forwards_storage_settings_but_no_secret(monkeypatch):
    from nstray.pipeline.job import stage_env

    monkeypatch.setenv("NSTRAY_S3_MAX_ATTEMPTS", "7")
    cpu = stage_env(place(ResourcesConfig(actors=2), 8, 0))
    assert cpu["NSTRAY_S3_MAX_ATTEMPTS"] == "7" and cpu["MALLOC_MMAP_MAX_"] == "0"
    assert cpu["GOMP_SPINCOUNT"] == "10000"
    gpu = stage_env(place(ResourcesConfig(actors=2, gpus_per_actor=1), 8, 2))
    assert gpu["NSTRAY_S3_MAX_ATTEMPTS"] == "7" and "MALLOC_MMAP_MAX_" not in gpu
    assert not [k for k in {**cpu, **gpu} if "SECRET" in k or "KEY_ID" in k or "TOKEN" in k]


# ---------------------------------------------------------------- resume + outputs (pure / local files)


def test_plan_work_skips_done_outputs_and_keeps_exceptions_small():
    done = {(1, 0), (1, 1), (2, 0)}
    work = plan_work([1, 2, 3, 4], done, variants=2)
    assert work.pending == {2: (1,), 3: (0, 1), 4: (0, 1)}
    assert work.skipped == 3 and work.outputs == 5
    assert work.default == (0, 1) and work.exceptions == {2: (1,)}
    assert plan_work([1], {(1, 0), (1, 1)}, 2).pending == {}


def test_error_rows_one_per_failed_record():
    rec = [RecordError(5, "b.jpg", "annotation 9 segmentation: a polygon needs 3 points", "fix the polygon"),
           RecordError(5, "b.jpg", "annotation 10 unknown category id 77", "fix the category"),
           RecordError(None, "", "annotations[3] has no integer image_id", "set image_id")]
    failed = [{"image_id": 2, "variant": v, "source_file": "a.jpg", "stage": "decode",
               "error": "the pixel data is truncated; fix: re-export"} for v in (0, 1)]
    rows = outputs.error_rows(rec, failed)
    assert [(r["image_id"], r["stage"]) for r in rows] == [(None, "coco"), (2, "decode"), (5, "coco")]
    assert rows[1]["reason"] == "the pixel data is truncated" and rows[1]["fix"] == "re-export"
    assert "3 points" in rows[2]["reason"] and "unknown category" in rows[2]["reason"]


def test_build_coco_one_image_per_output_with_provenance():
    source = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30, "license": 1}],
        "annotations": [{"id": 70, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
                         "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}],
        "categories": [{"id": 1, "name": "hood"}],
    }
    done = [{"image_id": 7, "variant": v, "output_key": f"images/7/{v}.png", "width": 40, "height": 30,
             "source_file": "a.jpg", "styles": json.dumps({"hood": "ab"[v]}), "seed": 3} for v in (1, 0)]
    coco = outputs.build_coco(source, done)
    assert [i["file_name"] for i in coco["images"]] == ["images/7/0.png", "images/7/1.png"]
    assert [i["id"] for i in coco["images"]] == [1, 2] and coco["images"][0]["license"] == 1
    assert coco["images"][1]["nstray"] == {"source_image_id": 7, "source_file": "a.jpg", "variant": 1,
                                           "styles": {"hood": "b"}, "seed": 3}
    assert [(a["id"], a["image_id"]) for a in coco["annotations"]] == [(1, 1), (2, 2)]
    assert coco["annotations"][0]["segmentation"] == source["annotations"][0]["segmentation"]
    assert coco["categories"] == source["categories"]


def _row(image_id: int, variant: int, status: str = "done", error: str = "") -> dict:
    return {"image_id": image_id, "variant": variant, "source_file": "f", "output_key": f"images/{image_id}/{variant}.png",
            "width": 4, "height": 4, "styles": "{}", "models": "[]", "seed": 0, "fingerprint": "x", "status": status,
            "stage": "decode" if error else "", "error": error, "seconds": 0.1, "prepare_s": 0.0, "stylize_s": 0.0,
            "write_s": 0.0, "finished_at": ""}


def test_manifest_parts_latest_row_wins_and_repeated_failures_are_not_rewritten(tmp_path: Path):
    out = str(tmp_path / "out")
    w = outputs.ManifestWriter(out, "20250101T000000-aaaaaa", flush_rows=2)
    w.add([_row(1, 0), _row(1, 1, "failed", "bad"), _row(2, 0)])
    w.flush()
    assert len(w.parts) == 1 and (w.done, w.failed) == (2, 1)  # flushed once the buffer passed 2 rows
    latest = outputs.read_manifest(out).to_pylist()
    assert {(r["image_id"], r["variant"], r["status"]) for r in latest} == {(1, 0, "done"), (1, 1, "failed"), (2, 0, "done")}
    previous = {(r["image_id"], r["variant"]): (r["status"], r["stage"], r["error"]) for r in latest}
    # a later run: the same failure again is not written; a success is
    w2 = outputs.ManifestWriter(out, "20250102T000000-bbbbbb", previous=previous)
    w2.add([_row(1, 1, "failed", "bad")])
    w2.flush()
    assert w2.parts == [] and w2.failed == 1
    w2.add([_row(1, 1)])
    w2.flush()
    latest = {(r["image_id"], r["variant"]): r for r in outputs.read_manifest(out).to_pylist()}
    assert latest[(1, 1)]["status"] == "done" and latest[(1, 1)]["run_id"] == "20250102T000000-bbbbbb"
    assert len(latest) == 3


def test_many_manifest_parts_compact_into_one_that_reads_the_same(tmp_path: Path):
    out = str(tmp_path / "out")
    for run in range(20):  # 20 runs, each redoing output (1, 0) and adding one of its own
        w = outputs.ManifestWriter(out, f"202501{run + 1:02d}T000000-{run:06x}")
        w.add([_row(1, 0, "failed" if run % 2 else "done", "bad" if run % 2 else ""), _row(100 + run, 0)])
        w.flush()
    before = outputs.read_manifest(out).to_pylist()
    assert outputs.compact_manifest(out, "20250201T000000-ffffff", max_parts=30) is None  # below the bound
    merged = outputs.compact_manifest(out, "20250201T000000-ffffff", max_parts=16)
    assert merged and [p.name for p in (tmp_path / "out" / "manifest").iterdir()] == [Path(merged).name]
    after = outputs.read_manifest(out).to_pylist()
    assert after == before and len(after) == 21
    assert {r["status"] for r in after if r["image_id"] == 1} == {"failed"}  # run 20's row (odd run) still wins
    # a later run's part sorts after the merged one, so its rows override
    w = outputs.ManifestWriter(out, "20250301T000000-000000")
    w.add([_row(1, 0)])
    w.flush()
    assert {r["status"] for r in outputs.read_manifest(out).to_pylist() if r["image_id"] == 1} == {"done"}


def test_a_periodic_manifest_flush_that_fails_keeps_its_rows_and_the_final_one_raises(tmp_path: Path):
    from nstray import storage

    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")  # every write under it fails
    w = outputs.ManifestWriter(str(blocker), "20250101T000000-aaaaaa", flush_rows=1)
    w.add([_row(1, 0)])  # the periodic flush fails: the job goes on, the row waits
    assert (w.parts, len(w._buffer), w.done) == ([], 1, 1)
    with pytest.raises(storage.StorageError):
        w.flush()
    blocker.unlink()
    w.add([_row(2, 0)])
    assert len(w.parts) == 1 and w._buffer == []  # both rows recorded once the storage is back
    assert sorted(r["image_id"] for r in outputs.read_manifest(str(blocker)).to_pylist()) == [1, 2]


def test_partials_of_killed_writers_are_removed_and_final_files_kept(tmp_path: Path):
    from nstray import storage

    (tmp_path / "images" / "3").mkdir(parents=True)
    (tmp_path / "images" / "3" / ".0.png.0123456789ab.partial").write_bytes(b"half")
    storage.write_bytes(str(tmp_path / "images" / "3" / "1.png"), b"whole")
    assert storage.remove_partials(str(tmp_path)) == 1
    assert [p.name for p in (tmp_path / "images" / "3").iterdir()] == ["1.png"]
    assert storage.remove_partials("s3://bucket/prefix") == 0  # S3 puts leave no partials


# ---------------------------------------------------------------- how `nstray submit` ships the config


def test_submit_ships_a_config_from_outside_the_project_as_a_package_the_entrypoint_finds(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from nstray.cli.jobs import PROJECT_ROOT, _ship_config

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(dict(CONTRACT, output="styled")))
    cfg = load_config(path)
    args, py_modules = _ship_config(str(path), cfg)
    assert args.startswith("--config-module nstray_job_") and len(py_modules) == 1
    package = Path(py_modules[0])
    assert load_config(package / "config.yaml") == cfg  # self-contained: absolute paths, plan inlined

    spec = importlib.util.spec_from_file_location("stylize_dataset", PROJECT_ROOT / "jobs" / "stylize_dataset.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    monkeypatch.syspath_prepend(str(package.parent))  # what Ray does with py_modules
    parsed = entry.argparse.Namespace(config=None, config_module=package.name)
    assert Path(entry._config_path(parsed)) == package / "config.yaml"
    sys.modules.pop(package.name, None)

    # a config inside the project travels with the working dir: the entrypoint gets its relative path
    inside = PROJECT_ROOT / "pyproject.toml"  # any file in the project: only its place matters here
    assert _ship_config(str(inside), cfg) == ("pyproject.toml", [])
