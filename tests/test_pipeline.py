"""The dataset job on real local Ray over a synthetic dataset with five kinds of bad records: every good
record is styled (every output, the manifest, a COCO file that pycocotools loads, the contact sheet),
errors.parquet lists exactly the bad records; after the bad files are repaired a rerun (through the CLI,
with the CPU stages as separate Ray tasks) retries only the failed records and rewrites no good output;
a final rerun writes nothing at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from nstray.cli import main as cli_main
from nstray.data import synth
from nstray.data.coco import load_coco, read_records
from nstray.data.images import decode_image
from nstray.masks import label_map
from nstray.pipeline import run_job

N_IMAGES = 8
VARIANTS = 2
SIZE = (128, 96)
PLAN = {
    "styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 12}},
    "parts": {"wheel": {"style": ["a", "b"]}, "body": {"style": "a"}, "window": {"style": ["a", "b"]},
              "hood": {"style": "b"}, "background": {"style": "none"}},
}
STYLED = {"wheel", "body", "window", "hood"}


def job_config(annotations: str, images: str, output: str, **over) -> dict:
    """A small job: 2 variants, 2 CPU actors, batches of 2."""
    cfg = {"input": {"annotations": str(annotations), "images": str(images)}, "output": str(output),
           "variants": VARIANTS, "seed": 7, "plan": PLAN, "resources": {"actors": 2, "batch_size": 2}}
    cfg.update(over)
    return cfg


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime (ns): equal snapshots = nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> synth.SynthDataset:
    return synth.generate(tmp_path_factory.mktemp("data"), N_IMAGES, seed=11, width=SIZE[0], height=SIZE[1])


BAD = {2: "decode", 3: "read", 4: "decode", 5: "coco", 6: "decode"}  # image id → the stage it fails in
GOOD = [1, 7, 8]


def corrupt(src: synth.SynthDataset, dst: Path) -> dict[int, tuple[Path, bytes]]:
    """Copy ``src`` to ``dst`` and break records 2–6; returns the broken files' originals (to repair them)."""
    shutil.copytree(src.root, dst)
    images = dst / "images"
    coco = json.loads((dst / "annotations.json").read_text())
    name = {img["id"]: img["file_name"] for img in coco["images"]}
    originals = {i: (images / name[i], (images / name[i]).read_bytes()) for i in (2, 3, 4, 6)}
    data = originals[2][1]
    (images / name[2]).write_bytes(data[: len(data) // 3])  # truncated
    (images / name[3]).unlink()  # missing
    (images / name[4]).write_bytes(b"this is not an image\n" * 20)  # not an image
    wrong = Image.new("RGB", (SIZE[0] + 8, SIZE[1]), (90, 90, 90))  # a file of another size than declared
    wrong.save(images / name[6], format="PNG" if name[6].endswith(".png") else "JPEG")
    for a in coco["annotations"]:  # an impossible polygon: a structural COCO error, found before the job runs
        if a["image_id"] == 5 and not a["iscrowd"]:
            a["segmentation"] = [[1.0, 2.0, 3.0]]
            break
    (dst / "annotations.json").write_text(json.dumps(coco))
    return originals


@pytest.fixture(scope="module")
def first_run(ray_cluster, dataset, tmp_path_factory):
    """Run 1: the corrupted copy, stages fused into 2 CPU actors (the CPU default)."""
    root = tmp_path_factory.mktemp("job")
    originals = corrupt(dataset, root / "data")
    cfg = job_config(root / "data" / "annotations.json", root / "data" / "images", root / "styled")
    summary = run_job(cfg)
    return summary, root / "styled", cfg, originals


def test_every_good_record_is_styled_by_parts(first_run, dataset):
    summary, out, cfg, _ = first_run
    assert (summary.done, summary.failed, summary.skipped) == (len(GOOD) * VARIANTS, 4 * VARIANTS, 0)
    assert summary.records == N_IMAGES - 1 and summary.bad_records == 1 and summary.images_per_s > 0
    assert summary.placement["actors"] == 2 and summary.placement["fused"]
    records, _ = read_records(load_coco(str(dataset.annotations)), str(dataset.images_dir))
    for rec in (r for r in records if r.image_id in GOOD):
        source = decode_image(Path(rec.uri).read_bytes(), name=rec.file_name)
        labels = label_map(rec.parts, rec.height, rec.width)
        cats = np.array([p.category for p in rec.parts] + ["background"])  # label -1 → last
        styled_mask = np.isin(cats[labels], sorted(STYLED))
        for v in range(VARIANTS):
            arr = np.asarray(Image.open(out / "images" / str(rec.image_id) / f"{v}.png").convert("RGB"))
            assert arr.shape == source.shape
            # parts without a style and the background keep the source's exact pixels; styled parts change
            assert np.array_equal(arr[~styled_mask], source[~styled_mask])
            assert styled_mask.any() and np.abs(arr[styled_mask].astype(int) - source[styled_mask]).mean() > 5
    assert sorted(int(p.name) for p in (out / "images").iterdir()) == GOOD
    assert sorted(p.name for p in out.iterdir()) == ["_index", "_state.json", "annotations.json", "contact_sheet.png",
                                                     "errors.parquet", "images", "job_report.json", "manifest"]


def test_job_report_says_where_time_went(first_run):
    summary, out, _, _ = first_run
    report = json.loads((out / "job_report.json").read_text())
    assert report == json.loads(json.dumps(summary.report, default=str))
    assert report["outputs"] == {"this_run": 7 * VARIANTS, "done": len(GOOD) * VARIANTS, "failed": 4 * VARIANTS,
                                 "skipped": 0}
    assert report["images_per_s"] > 0 and report["pipeline_seconds"] > 0
    stages = report["stages"]
    assert stages["prepare"]["items"] == 7  # once per image, not per variant
    assert stages["stylize"]["items"] == len(GOOD) * VARIANTS and stages["stylize"]["busy_seconds"] > 0
    assert abs(sum(v["share"] for v in stages.values()) - 1) < 1e-3
    errors = report["errors"]
    assert errors["by_stage"] == {"decode": 3 * VARIANTS, "read": VARIANTS} and errors["bad_records"] == 1
    assert sum(errors["by_reason"].values()) == 4 * VARIANTS + 1  # the COCO problem of record 5 counts too
    assert any(r.startswith("coco: ") for r in errors["by_reason"])
    actors = report["actors"]
    # which of the 2 actors got batches is Ray's scheduling (on a busy machine one may take all): the report
    # must name exactly the actors that made this run's outputs
    made = {json.loads(r["worker"])["actor"] for r in pq.read_table(out / "manifest").to_pylist()}
    assert actors["restarts"] == 0 and actors["devices"] == {"cpu": len(made)} and 1 <= len(made) <= 2
    assert {w["actor"] for w in actors["workers"]} == made
    assert sum(w["outputs"] for w in actors["workers"]) == 7 * VARIANTS
    assert all(w["node"] and w["actor"] and w["restarted"] is False for w in actors["workers"])
    assert all(w["precision"] == "fp32" for w in actors["workers"])  # what the network ran, beside the device
    assert actors["gpu_utilization_mean"] is None and not any("gpu_utilization" in w for w in actors["workers"])
    assert report["ray_data_stats"]


def test_errors_parquet_lists_exactly_the_bad_records(first_run):
    _, out, _, _ = first_run
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert sorted((e["image_id"], e["stage"]) for e in errors) == sorted(BAD.items())  # one row per bad record
    reasons = {e["image_id"]: e["reason"] for e in errors}
    assert "truncated" in reasons[2] and "not found" in reasons[3] and "differs" in reasons[6]
    assert "polygon" in reasons[5] or "segmentation" in reasons[5]
    assert all(e["reason"] and e["file_name"] and e["fix"] for e in errors)


def test_manifest_has_one_row_per_output_with_styles_models_and_timing(first_run):
    _, out, _, _ = first_run
    rows = pq.read_table(out / "manifest").to_pylist()  # a folder of Parquet parts
    assert sorted((r["image_id"], r["variant"]) for r in rows) == [
        (i, v) for i in sorted(GOOD + [2, 3, 4, 6]) for v in range(VARIANTS)]
    drawn = set()
    for r in rows:
        assert r["output_key"] == f"images/{r['image_id']}/{r['variant']}.png" and r["seed"] == 7
        if r["image_id"] not in GOOD:
            assert r["status"] == "failed" and r["stage"] == BAD[r["image_id"]] and r["error"]
            continue
        assert r["status"] == "done" and r["error"] == "" and r["seconds"] > 0 and r["stylize_s"] > 0
        assert (out / r["output_key"]).is_file() and r["source_file"].startswith(f"{r['image_id']:06d}.")
        styles = json.loads(r["styles"])
        assert styles["background"] == "none" and styles.get("hood", "b") == "b" and styles["body"] == "a"
        drawn.update(styles.get(c) for c in ("wheel", "window"))
        (model,) = json.loads(r["models"])
        assert model["name"] == "multistyle26" and len(model["sha256"]) == 64
    assert {"a", "b"} <= drawn  # list styles are sampled per (image, variant) and recorded per output


def test_coco_of_the_styled_set_loads_with_one_image_per_output(first_run, dataset):
    from pycocotools.coco import COCO

    _, out, _, _ = first_run
    coco = COCO(str(out / "annotations.json"))
    source = json.loads(Path(dataset.annotations).read_text())
    assert len(coco.imgs) == len(GOOD) * VARIANTS
    assert len(coco.anns) == sum(a["image_id"] in GOOD for a in source["annotations"]) * VARIANTS
    assert coco.loadCats(coco.getCatIds()) == source["categories"]
    for img in coco.imgs.values():
        prov = img["nstray"]
        assert prov["source_image_id"] in GOOD and prov["variant"] in range(VARIANTS)
        assert img["file_name"] == f"images/{prov['source_image_id']}/{prov['variant']}.png"
        assert (out / img["file_name"]).is_file() and "background" in prov["styles"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        src_anns = [a for a in source["annotations"] if a["image_id"] == prov["source_image_id"]]
        assert len(anns) == len(src_anns) > 0
        assert [a["bbox"] for a in anns] == [a["bbox"] for a in src_anns]
        assert coco.annToMask(anns[0]).shape == (img["height"], img["width"])


def test_contact_sheet_shows_originals_and_variants(first_run):
    _, out, _, _ = first_run
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height >= len(GOOD) * 160 and sheet.width > 3 * 160  # a row per image: original | v0 | v1


def test_rerun_retries_only_failed_records_and_then_writes_nothing(first_run, tmp_path):
    summary, out, cfg, originals = first_run
    for path, data in originals.values():  # repair the broken files (record 5's bad polygon stays)
        path.write_bytes(data)
    good_before = {k: v for k, v in snapshot(out).items() if k.startswith("images/")}
    cfg = dict(cfg, resources={"actors": 1, "batch_size": 2, "fuse_stages": False})  # CPU tasks + actor
    (tmp_path / "job.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    result = CliRunner().invoke(cli_main, ["run", str(tmp_path / "job.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"done {4 * VARIANTS}, skipped (already done) {len(GOOD) * VARIANTS}, failed 0" in result.output
    assert "errors.parquet (1 row(s))" in result.output
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in good_before} == good_before  # no good output rewritten
    assert sorted(int(p.name) for p in (out / "images").iterdir()) == [1, 2, 3, 4, 6, 7, 8]
    assert [(e["image_id"], e["stage"]) for e in pq.read_table(out / "errors.parquet").to_pylist()] == [(5, "coco")]
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 7 * VARIANTS
    manifest = pq.read_table(out / "manifest").to_pylist()
    latest = {}
    for r in sorted(manifest, key=lambda r: r["run_id"]):
        latest[(r["image_id"], r["variant"])] = r["status"]
    assert set(latest.values()) == {"done"} and len(latest) == 7 * VARIANTS

    # nothing left to do: no Ray work, no file written, not even the derived ones
    again = run_job(cfg)
    assert (again.done, again.failed, again.skipped, again.written) == (0, 0, 7 * VARIANTS, [])
    assert snapshot(out) == after
