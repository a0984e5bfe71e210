"""Every subcommand against a table of bad inputs: a clean error (exit 1, or 2 for usage), never a traceback,
and a message that names the bad file or field.

The table also documents the answers: ``NSTRAY_BAD_INPUTS_TABLE=path.md pytest tests/test_cli_bad_inputs.py``
writes every case with its exit code and message as a markdown table. Cases that need a fresh process
(a separate S3 endpoint, the torch hub folder, a local Ray cluster) run ``python -m nstray.cli``; the
others run in-process through click's runner. Everything fails before Ray starts except the GPU case,
which starts the local cluster nstray itself starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nstray.cli import main

REPO = Path(__file__).resolve().parents[1]
NO_TRACEBACK = "Traceback"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@dataclass
class Case:
    """One bad input: the command line (``{w}`` is the workspace folder), what the message must name."""

    id: str
    args: str
    names: list[str]
    code: int = 1
    env: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False
    absent: list[str] = field(default_factory=list)  # text the message must not hold
    finding: str = ""  # the issue-10 finding the case reproduces
    after: Callable[[Path], bool] | None = None  # what must hold of the workspace afterwards


def _png(path: Path, h: int, w: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace: small images, plans, COCO files, a dataset and job configs, each broken in one way."""
    from nstray.data.synth import generate

    w = tmp_path_factory.mktemp("bad")
    _png(w / "car.png", 40, 48)
    _png(w / "small.png", 32, 32, 1)
    _png(w / "one.png", 1, 1)
    _png(w / "wide.png", 10, 400)
    (w / "notimg.png").write_text("this is not an image\n")
    (w / "notjson.json").write_text("{not json")
    (w / "afile").write_text("x")
    (w / "garbage.pt").write_bytes(b"\x80\x04garbage, not a checkpoint" * 4)
    torch.save(_RunsCode(), w / "runs_code.pt")  # a pickle that would call os.system when unpickled
    masks = np.zeros((40, 48), np.uint8)
    masks[5:30, 5:40] = 1
    Image.fromarray(masks, mode="L").save(w / "masks.png")
    Image.fromarray(masks[:32, :32], mode="L").save(w / "masks32.png")
    Image.fromarray(np.ones((1, 1), np.uint8), mode="L").save(w / "masks1.png")

    def plan(name: str, style: dict) -> None:
        (w / name).write_text(json.dumps({"styles": {"s": style}, "parts": {"hood": {"style": "s"}}}))

    plan("plan.yaml", {"kind": "multistyle", "index": 3})
    plan("plan_missing_style.yaml", {"kind": "arbitrary", "image": "no_such_style.jpg"})
    plan("plan_notimg_style.yaml", {"kind": "arbitrary", "image": "notimg.png"})
    plan("plan_big_style.yaml", {"kind": "arbitrary", "image": "car.png"})
    plan("plan_garbage_ff.yaml", {"kind": "feedforward", "weights": "garbage.pt"})

    cats = [{"id": 1, "name": "hood"}, {"id": 2, "name": "wheel"}, {"id": 3, "name": "hood"}]
    (w / "dupcats.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "car.png", "width": 48, "height": 40}], "categories": cats,
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10]}]}))

    data = generate(w / "data", n_images=2, seed=0, width=64, height=48)
    categories = sorted({c["name"] for c in json.loads(Path(data.annotations).read_text())["categories"]})
    part = categories[0]

    def config(name: str, style: dict, annotations: str | Path = data.annotations) -> None:
        cfg = {"input": {"annotations": str(annotations), "images": str(data.images_dir)}, "output": str(w / "styled"),
               "plan": {"styles": {"s": style}, "parts": {part: {"style": "s"}}},
               "resources": {"actors": 1, "gpus_per_actor": 0}}
        (w / name).write_text(json.dumps(cfg))

    config("job_missing_style.yaml", {"kind": "arbitrary", "image": str(w / "no_such_style.jpg")})
    config("job_notimg_style.yaml", {"kind": "arbitrary", "image": str(w / "notimg.png")})
    config("job_garbage_ff.yaml", {"kind": "feedforward", "weights": str(w / "garbage.pt")})
    dup = json.loads(Path(data.annotations).read_text())
    dup["categories"].append({"id": 999, "name": part})
    (w / "data_dup.json").write_text(json.dumps(dup))
    config("job_dupcats.yaml", {"kind": "multistyle", "index": 3}, w / "data_dup.json")
    (w / "ann").symlink_to(data.annotations)
    (w / "images").symlink_to(data.images_dir)

    # VGG-19 weights (random, features up to conv4_1) for a loss network that defaults to VGG-16
    from torchvision.models.vgg import cfgs, make_layers

    vgg19 = make_layers(cfgs["E"])
    torch.save({f"features.{k}": v for k, v in vgg19[:20].state_dict().items()}, w / "vgg19_features.pth")
    (w / "content").mkdir()
    _png(w / "content" / "a.png", 32, 32, 2)
    _WS[:] = [w]
    return w


S3_DOWN = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "NSTRAY_S3_RETRY_SECONDS": "0"}
STYLIZE = "stylize {w}/car.png --plan {w}/plan.yaml --masks {w}/masks.png --categories hood"
OPTIMIZE = "optimize {w}/car.png --style {w}/small.png --weights none --steps 1 --content-layers relu2_2 --style-layers relu1_1"
TRAIN = "train-style {w}/small.png --data {w}/content --out {w}/runs --steps 1 --vgg-weights none"

CASES = [
    # datasets synth / validate / stats / index
    Case("synth-into-a-file", "datasets synth {w}/afile --images 1", ["afile"], code=2),
    Case("synth-zero-images", "datasets synth {w}/x --images 0", ["--images"], code=2),
    Case("validate-missing-file", "datasets validate {w}/nope.json --images {w}", ["nope.json"]),
    Case("validate-not-json", "datasets validate {w}/notjson.json --images {w}", ["notjson.json", "not valid JSON"]),
    Case("validate-duplicate-category-names", "datasets validate {w}/dupcats.json --images {w}",
         ["dupcats.json", "'hood' (ids 1, 3)", "rename or merge the categories"], finding="6"),
    Case("validate-images-folder-missing", "datasets validate {w}/ann --images {w}/no_folder", ["no_folder"]),
    Case("stats-missing-file", "datasets stats {w}/nope.json", ["nope.json"]),
    Case("stats-duplicate-category-names", "datasets stats {w}/dupcats.json", ["dupcats.json", "rename or merge"],
         finding="6"),
    Case("index-out-is-a-file", "datasets index {w}/ann --images {w}/images --out {w}/afile", ["--out", "afile"],
         code=2, finding="4"),
    Case("index-s3-unreachable", "datasets index {w}/ann --images {w}/images --out s3://bucket/index",
         ["s3://bucket/index", "127.0.0.1:9"], env=S3_DOWN, finding="4"),
    # stylize
    Case("stylize-unknown-device", STYLIZE + " --out {w}/o.png --device tpu9", ["--device", "tpu9"], code=2,
         finding="4"),
    Case("stylize-image-not-an-image", "stylize {w}/notimg.png --plan {w}/plan.yaml --masks {w}/masks.png "
         "--categories hood --out {w}/o.png", ["notimg.png", "not an image"]),
    Case("stylize-1x1-image", "stylize {w}/one.png --plan {w}/plan.yaml --masks {w}/masks1.png --categories hood "
         "--out {w}/o.png", ["one.png", "1x1", "at least 8 px"]),
    Case("stylize-style-image-missing", "stylize {w}/car.png --plan {w}/plan_missing_style.yaml --masks {w}/masks.png "
         "--categories hood --out {w}/o.png", ["styles.s.image", "no_such_style.jpg"], finding="4"),
    Case("stylize-style-image-not-an-image", "stylize {w}/car.png --plan {w}/plan_notimg_style.yaml "
         "--masks {w}/masks.png --categories hood --out {w}/o.png", ["styles.s.image", "notimg.png"], finding="4"),
    Case("stylize-style-image-over-pixel-limit", "stylize {w}/small.png --plan {w}/plan_big_style.yaml "
         "--masks {w}/masks32.png --categories hood --out {w}/o.png --max-pixels 1500",
         ["styles.s.image", "car.png", "1,920 pixels", "--max-pixels"], finding="4"),
    Case("stylize-image-over-pixel-limit-names-a-real-flag", STYLIZE + " --out {w}/o.png --max-pixels 1000",
         ["car.png", "above the limit", "--max-pixels"], finding="7"),
    Case("stylize-garbage-feedforward-weights", "stylize {w}/car.png --plan {w}/plan_garbage_ff.yaml "
         "--masks {w}/masks.png --categories hood --out {w}/o.png", ["styles.s.weights", "garbage.pt",
                                                                     "not a valid checkpoint"],
         absent=["weights_only", "file an issue"], finding="7"),
    Case("stylize-out-unknown-extension", STYLIZE + " --out {w}/o.xyz", ["--out", "o.xyz", ".xyz"], code=2,
         finding="6"),
    Case("stylize-preview-unknown-extension", STYLIZE + " --out {w}/o.png --preview {w}/p.txt", ["--preview", "p.txt"],
         code=2, finding="6"),
    Case("stylize-max-side-negative", STYLIZE + " --out {w}/o.png --max-side -10", ["--max-side", "-10"], code=2,
         finding="6"),
    Case("stylize-max-side-zero", STYLIZE + " --out {w}/o.png --max-side 0", ["--max-side"], code=2, finding="6"),
    Case("stylize-out-is-the-input", STYLIZE + " --out {w}/car.png", ["--out", "car.png", "IMAGE"], code=2,
         finding="6", after=lambda w: Image.open(w / "car.png").size == (48, 40)),
    Case("stylize-out-is-the-masks", STYLIZE + " --out {w}/masks.png", ["--out", "--masks"], code=2, finding="6"),
    # styles list / sheet
    Case("styles-list-extra-argument", "styles list extra", ["extra"], code=2),
    Case("styles-sheet-1x1-image", "styles sheet {w}/one.png --out {w}/sheet.png", ["one.png", "1x1"], finding="4"),
    Case("styles-sheet-too-thin-for-its-tiles", "styles sheet {w}/wide.png --out {w}/sheet.png --size 32",
         ["wide.png", "--size"]),
    Case("styles-sheet-unknown-device", "styles sheet {w}/car.png --out {w}/sheet.png --device tpu9",
         ["--device", "tpu9"], code=2, finding="4"),
    Case("styles-sheet-out-unknown-extension", "styles sheet {w}/car.png --out {w}/sheet.xyz", ["--out", ".xyz"],
         code=2, finding="6"),
    Case("styles-sheet-out-is-the-input", "styles sheet {w}/car.png --out {w}/car.png", ["--out", "car.png"], code=2,
         finding="6"),
    # optimize
    Case("optimize-max-size-0", OPTIMIZE + " --out {w}/o.png --max-size 0", ["--max-size"], code=2, finding="4"),
    Case("optimize-max-size-1", OPTIMIZE + " --out {w}/o.png --max-size 1", ["car.png", "--max-size", "at least 2 px"],
         finding="4"),
    Case("optimize-max-size-12-deep-layers", "optimize {w}/car.png --style {w}/small.png --weights none "
         "--out {w}/o.png --max-size 12", ["car.png", "--max-size", "relu5_1", "at least 16 px"], finding="4"),
    Case("optimize-1x1-content", "optimize {w}/one.png --style {w}/small.png --weights none --out {w}/o.png",
         ["one.png", "1x1", "at least 16 px"], finding="4"),
    Case("optimize-unknown-device", OPTIMIZE + " --out {w}/o.png --device tpu9", ["--device", "tpu9"], code=2,
         finding="4"),
    Case("optimize-out-unknown-extension", OPTIMIZE + " --out {w}/x.xyz", ["--out", "x.xyz"], code=2, finding="6"),
    Case("optimize-loss-plot-not-png", OPTIMIZE + " --out {w}/o.png --loss-plot {w}/loss.txt",
         ["--loss-plot", "loss.txt"], code=2, finding="6"),
    Case("optimize-out-is-the-content", OPTIMIZE + " --out {w}/car.png", ["--out", "CONTENT", "car.png"], code=2,
         finding="6"),
    Case("optimize-garbage-weights", "optimize {w}/car.png --style {w}/small.png --out {w}/o.png "
         "--weights {w}/garbage.pt", ["garbage.pt", "not a valid checkpoint"],
         absent=["weights_only", "file an issue"], finding="7"),
    Case("optimize-weights-pickle-that-runs-code", "optimize {w}/car.png --style {w}/small.png --out {w}/o.png "
         "--weights {w}/runs_code.pt", ["runs_code.pt", "refuses to load", "posix.system"],
         absent=["weights_only", "file an issue", "pwned"], finding="7"),
    Case("optimize-style-not-an-image", "optimize {w}/car.png --style {w}/notimg.png --weights none --out {w}/o.png",
         ["notimg.png", "style image"]),
    # train-style
    Case("train-init-style-out-of-range", TRAIN + " --mode cin --init-style 26", ["--init-style", "26"], code=2,
         finding="4"),
    Case("train-vgg19-weights-for-vgg16", "train-style {w}/small.png --data {w}/content --out {w}/runs --steps 1 "
         "--vgg-weights {w}/vgg19_features.pth", ["vgg19_features.pth", "vgg16", "--vgg-arch"], finding="4"),
    Case("train-style-image-missing", "train-style {w}/nope.png --data {w}/content --out {w}/runs --vgg-weights none",
         ["nope.png"]),
    Case("train-unknown-vgg-weights", "train-style {w}/small.png --data {w}/content --out {w}/runs "
         "--vgg-weights {w}/nope.pth", ["nope.pth"]),
    # weights list / pull / push
    Case("weights-list-extra-argument", "weights list extra", ["extra"], code=2),
    Case("weights-pull-unknown-name", "weights pull no_such_weights", ["no_such_weights"]),
    Case("weights-pull-torchvision-offline", "weights pull vgg19", ["vgg19", "cannot download"],
         env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "TORCH_HOME": "{w}/torch"},
         absent=["No such file or directory"], subprocess=True, finding="7",
         after=lambda w: (w / "torch" / "hub" / "checkpoints").is_dir()),
    Case("weights-push-not-s3", "weights push {w}/garbage.pt {w}/dest", ["DEST", "s3://"]),
    Case("weights-push-unknown-file", "weights push {w}/nope.pt s3://bucket/w/", ["nope.pt"]),
    # run / submit (each fails before Ray starts)
    Case("run-missing-config", "run {w}/nope.yaml", ["nope.yaml"]),
    Case("run-style-image-missing", "run {w}/job_missing_style.yaml", ["styles.s.image", "no_such_style.jpg"],
         finding="4"),
    Case("run-style-image-not-an-image", "run {w}/job_notimg_style.yaml", ["styles.s.image", "notimg.png"],
         finding="4"),
    Case("run-garbage-feedforward-weights", "run {w}/job_garbage_ff.yaml", ["styles.s.weights", "garbage.pt"],
         absent=["weights_only"], finding="4"),
    Case("run-duplicate-category-names", "run {w}/job_dupcats.yaml", ["data_dup.json", "rename or merge"],
         finding="6"),
    Case("submit-style-image-missing", "submit {w}/job_missing_style.yaml --address http://127.0.0.1:9",
         ["styles.s.image", "no_such_style.jpg"], finding="4"),
    Case("submit-missing-config", "submit {w}/nope.yaml --address http://127.0.0.1:9", ["nope.yaml"]),
]

RESULTS: list[tuple[Case, int, str]] = []
_WS: list[Path] = []  # the workspace folder, left out of the table's messages


def _invoke(case: Case, w: Path) -> tuple[int, str]:
    args = case.args.format(w=w).split()
    env = {k: v.format(w=w) for k, v in case.env.items()}
    if case.subprocess:
        full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        full.pop("RAY_ADDRESS", None)
        p = subprocess.run([sys.executable, "-m", "nstray.cli", *args], capture_output=True, text=True, env=full,
                           timeout=120, cwd=w)
        return p.returncode, p.stdout + p.stderr
    result = CliRunner().invoke(main, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        return 99, "Traceback (uncaught in the runner):\n" + "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clean_error(case: Case, ws: Path):
    code, output = _invoke(case, ws)
    RESULTS.append((case, code, output))
    assert NO_TRACEBACK not in output, output
    assert code == case.code, output
    assert output.count("Error:") >= 1, output
    for text in case.names:
        assert text in output, f"{text!r} not in: {output}"
    for text in case.absent:
        assert text not in output, output
    assert case.after is None or case.after(ws)


def test_the_table_covers_every_subcommand():
    commands = {" ".join(c.args.split()[:2]) if c.args.split()[0] in ("datasets", "styles", "weights")
                else c.args.split()[0] for c in CASES}
    assert commands >= {"datasets synth", "datasets validate", "datasets stats", "datasets index", "stylize",
                        "styles list", "styles sheet", "optimize", "train-style", "weights list", "weights pull",
                        "weights push", "run", "submit"}
    assert len(CASES) >= 30


def test_verbose_shows_the_traceback(ws: Path):
    """A user error is one `Error:` line; `nstray --verbose` lets the exception (and its traceback) through."""
    quiet = CliRunner().invoke(main, ["datasets", "stats", str(ws / "notjson.json")])
    assert quiet.exit_code == 1 and quiet.output.startswith("Error: "), quiet.output
    assert isinstance(quiet.exception, SystemExit)
    loud = CliRunner().invoke(main, ["--verbose", "datasets", "stats", str(ws / "notjson.json")])
    assert loud.exit_code == 1 and type(loud.exception).__name__ == "DatasetError"


def test_outputs_are_encoded_as_their_names_say(ws: Path):
    """Finding 6: a .jpg / .webp output holds JPEG / WebP bytes, not PNG bytes under that name."""
    runner = CliRunner()
    base = STYLIZE.format(w=ws).split()
    r = runner.invoke(main, [*base, "--out", str(ws / "o.jpg"), "--preview", str(ws / "p.webp")])
    assert r.exit_code == 0, r.output
    assert Image.open(ws / "o.jpg").format == "JPEG" and Image.open(ws / "p.webp").format == "WEBP"
    r = runner.invoke(main, OPTIMIZE.format(w=ws).split() + ["--out", str(ws / "opt.jpeg"), "--loss-plot",
                                                            str(ws / "loss.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(ws / "opt.jpeg").format == "JPEG" and Image.open(ws / "loss.png").format == "PNG"


def test_a_local_cluster_without_gpu_refuses_a_gpu_job_without_fallback(ws: Path):
    """Finding 7: `cpu_fallback: false` + a GPU on the local cluster nstray starts (no GPU): an error, not a wait."""
    cfg = json.loads((ws / "job_dupcats.yaml").read_text())
    cfg["input"]["annotations"] = str(ws / "ann")
    cfg["resources"] = {"actors": 1, "gpus_per_actor": 1, "cpu_fallback": False, "cpus_per_actor": 1}
    cfg["output"] = str(ws / "gpu_out")
    (ws / "job_gpu.yaml").write_text(json.dumps(cfg))
    # a temp dir of its own: `ray.init()` would otherwise join a cluster another process started with `ray start`
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-m", "nstray.cli", "run", str(ws / "job_gpu.yaml"), "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=180, cwd=ws)
    out = p.stdout + p.stderr
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "Connecting to existing Ray cluster" not in out, out
    assert p.returncode == 1 and NO_TRACEBACK not in out, out
    assert "cpu_fallback" in out and "no GPU" in out, out


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    """With NSTRAY_BAD_INPUTS_TABLE set, write every case and its answer as a markdown table."""
    yield
    target = os.environ.get("NSTRAY_BAD_INPUTS_TABLE")
    if not target or not RESULTS:
        return

    def cell(text: str) -> str:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        start = max((i for i, ln in enumerate(lines) if ln.startswith("Error:")), default=len(lines) - 1)
        shown = " ".join(lines[start:])
        return shown.replace("|", "\\|").replace(f"{_WS[0]}/" if _WS else "\0", "")

    rows = ["| case | command | exit code | message |", "|---|---|---|---|"]
    for case, code, output in RESULTS:
        command = "nstray " + case.args.replace("{w}/", "").replace("{w}", ".")
        env = " ".join(f"{k}={v}".replace("{w}/", "") for k, v in case.env.items() if not k.startswith("AWS_SECRET"))
        rows.append(f"| {case.id}{f' (finding {case.finding})' if case.finding else ''} | "
                    f"`{(env + ' ') if env else ''}{command}` | {code} | {cell(output)} |")
    Path(target).write_text("\n".join(rows) + "\n")


def test_place_refuses_a_gpu_pool_only_on_a_local_cluster_without_gpu():
    """The placement rule behind the GPU case: only a cluster nstray started itself cannot gain a GPU later."""
    from nstray.config import ConfigError, ResourcesConfig
    from nstray.pipeline.job import place

    strict = ResourcesConfig(actors=2, gpus_per_actor=1, cpu_fallback=False)
    with pytest.raises(ConfigError, match="cpu_fallback"):
        place(strict, cluster_cpus=8, cluster_gpus=0, local=True)
    assert place(strict, cluster_cpus=8, cluster_gpus=0).gpus_per_actor == 1  # a remote cluster may autoscale GPUs
    assert place(strict, cluster_cpus=8, cluster_gpus=2, local=True).gpus_per_actor == 1
