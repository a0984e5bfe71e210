"""Benchmark: a bare single-process loop vs. the nstray dataset job on local Ray (same images, model, plan).

The same images, model and plan go through (a) a bare loop (read → decode → masks → PartStylizer → encode →
write) and (b) the nstray dataset job on local Ray. Reports images/s of each, the ratio (b)/(a), and peak
memory (driver + workers).

    .venv/bin/python benchmarks/pipeline.py                       # 64 synthetic 512x384 images, CPU
    .venv/bin/python benchmarks/pipeline.py --repeat 2 --bare-threads 1 --json bench.json
    .venv/bin/python benchmarks/pipeline.py --images 96 --actors 2 --batch-size 4 --fuse false
    .venv/bin/python benchmarks/pipeline.py --gpu                  # + GPU section: images/s per GPU, utilization
    python benchmarks/pipeline.py --gpu --no-cpu --no-bare --dataset /tmp/ds/annotations.json --batch-size 64 \
        --precision fp16 --price-per-hour 3.5                         # a big generated set (benchmarks/make_dataset.py)

The GPU section prints images/s per GPU (overall and steady), the mean GPU utilisation (nvidia-smi,
sampled every 0.25 s), each stage's share of the workers' busy time (the job report), and what a
million images cost at ``--price-per-hour`` per GPU (default 3.5 USD/h, about an H200 on demand).

Each measurement runs in its own process (clean memory peak, no warm caches shared), and runs alternate
(bare, ray, bare, ray …) so a busy machine penalizes both alike; the median of the repeats is reported.
Both include loading the model (the bare loop) / starting the actors (the job); imports and the job's Ray
cluster are ready before the clock starts (a cluster is up before jobs are submitted to it). The job also
reports its steady rate (outputs after the first batch / time since it arrived), i.e. without actor start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PLAN = ROOT / "examples" / "plans" / "demo.yaml"


# ---------------------------------------------------------------- memory / GPU sampling


class Sampler:
    """Samples, every ``interval`` s, the RSS of this process + all its descendants (Ray's raylet, workers,
    actors) and, with ``gpu``, GPU utilization and memory from nvidia-smi; keeps the peaks / means."""

    def __init__(self, interval: float = 0.25, gpu: bool = False) -> None:
        self.interval, self.gpu = interval, gpu
        self.peak_rss = 0
        self.peak_driver_rss = 0
        self.gpu_util: list[float] = []
        self.gpu_mem_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            try:
                driver = _rss(me)
                total = driver + sum(_rss(p) for p in _descendants(me))
                self.peak_driver_rss = max(self.peak_driver_rss, driver)
                self.peak_rss = max(self.peak_rss, total)
            except OSError:  # processes come and go
                pass
            if self.gpu:
                self._sample_gpu()
            self._stop.wait(self.interval)

    def _sample_gpu(self) -> None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            for line in out.strip().splitlines():
                util, mem = (float(x) for x in line.split(","))
                self.gpu_util.append(util)
                self.gpu_mem_peak = max(self.gpu_mem_peak, mem)
        except Exception:  # noqa: BLE001 - no nvidia-smi: no GPU numbers
            pass


def _rss(pid: int) -> int:
    """Resident memory of a process in bytes (Linux /proc; 0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (Ray's raylet, GCS, workers, actors), from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


# ---------------------------------------------------------------- (a) the bare loop


def bare_loop(annotations: str, images: str, plan_path: str, out: str, variants: int, device: str, fmt: str,
              threads: int | None = None) -> dict:
    """read → decode → masks → PartStylizer → encode → write, one image at a time, one process
    (torch's default thread count — all cores — unless ``threads`` is given)."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from nstray import storage
    from nstray.data.coco import load_coco, read_records
    from nstray.data.masksource import CocoParts
    from nstray.data.images import decode_image
    from nstray.pipeline.stages import encode_image, output_key
    from nstray.plan import load_plan
    from nstray.assets import load_plan_assets
    from nstray.stylize.parts import PartStylizer

    coco = load_coco(annotations)
    records, _ = read_records(coco, images, check_files=False)
    plan = load_plan(plan_path)
    t0 = time.perf_counter()
    stylizer = PartStylizer(plan, device=device, assets=load_plan_assets(plan))
    load_s = time.perf_counter() - t0
    for rec in records:
        image = decode_image(storage.read_bytes(rec.uri), name=rec.file_name)
        parts = CocoParts(plan.overlaps).labels(rec, image)
        for v in range(variants):
            res = stylizer(image, parts.label_map, parts.categories, variant=v, seed=0, key=rec.image_id)
            storage.write_bytes(storage.join(out, output_key(rec.image_id, v, fmt)), encode_image(res.image, fmt))
    if stylizer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n = len(records) * variants
    return {"outputs": n, "seconds": seconds, "images_per_s": n / seconds, "model_load_s": load_s,
            "torch_threads": torch.get_num_threads(), "device": str(stylizer.device)}


# ---------------------------------------------------------------- (b) the Ray job


def ray_job(annotations: str, images: str, plan_path: str, out: str, variants: int, actors: int, batch_size: int,
            gpus_per_actor: float, fuse: str, fmt: str, cpus: int | None, cpus_per_actor: float = 1.0,
            codec: str = "auto", precision: str = "fp32") -> dict:
    import ray

    import torch  # noqa: F401 - the driver's heavy import, outside the clock like the bare loop's

    from nstray.pipeline.job import run_job

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0)
    def _warm() -> int:
        return os.getpid()

    # a cluster that is up has its worker processes started: wait for them before the clock starts
    ray.get([_warm.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)) + 2)])
    cfg = {
        "input": {"annotations": annotations, "images": images}, "output": out, "variants": variants, "seed": 0,
        "plan": plan_path, "format": {"type": fmt},
        "resources": {"actors": actors, "batch_size": batch_size, "gpus_per_actor": gpus_per_actor,
                      "cpus_per_actor": cpus_per_actor, "jpeg_codec": codec, "precision": precision,
                      "fuse_stages": fuse if fuse == "auto" else fuse == "true"},
        "contact_sheet": 0,
    }
    first: list[float] = []
    t0 = time.perf_counter()
    summary = run_job(cfg, on_progress=lambda d, f, t: first.append(time.perf_counter()) if not first else None)
    seconds = time.perf_counter() - t0
    n = summary.done
    steady = None
    if first and n > 0 and seconds - (first[0] - t0) > 0:
        # outputs after the first batch arrived / time since: the rate once actors are up
        steady = (n - batch_size * variants) / max(seconds - (first[0] - t0), 1e-9)
    report = summary.report or {}
    return {"outputs": n, "failed": summary.failed, "seconds": seconds, "images_per_s": n / seconds,
            "steady_images_per_s": steady, "pipeline_seconds": summary.pipeline_seconds, "placement": summary.placement,
            "codec": codec, "stages": report.get("stages"), "devices": (report.get("actors") or {}).get("devices"),
            "report_gpu_utilization": (report.get("actors") or {}).get("gpu_utilization_mean")}


# ---------------------------------------------------------------- orchestration


def _child(args: argparse.Namespace) -> None:
    """Run one measurement in this process and print its JSON (last line)."""
    out = args.work / f"out-{args.only}-{os.getpid()}"
    gpu = "gpu" in args.only
    with Sampler(gpu=gpu) as s:
        if args.only.startswith("bare"):
            res = bare_loop(args.annotations, args.images_dir, args.plan, str(out), args.variants,
                            "cuda" if gpu else "cpu", args.format, args.bare_threads)
        else:
            gpus = args.gpus_per_actor if gpu else 0
            codec = "cpu" if args.only.endswith("cpucodec") else args.codec
            res = ray_job(args.annotations, args.images_dir, args.plan, str(out), args.variants,
                          args.gpu_actors if gpu else args.actors, args.batch_size, gpus, args.fuse, args.format,
                          args.cpus, args.cpus_per_actor, codec, args.precision if gpu else "fp32")
    res.update(peak_rss_mb=s.peak_rss / 2**20, peak_driver_rss_mb=s.peak_driver_rss / 2**20)
    if gpu and s.gpu_util:
        res.update(gpu_util_mean=statistics.mean(s.gpu_util), gpu_util_max=max(s.gpu_util), gpu_mem_peak_mb=s.gpu_mem_peak)
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(res))


def _measure(args: argparse.Namespace, which: str) -> dict:
    cmd = [sys.executable, __file__, "--only", which, "--work", str(args.work), "--annotations", args.annotations,
           "--images-dir", args.images_dir, "--plan", args.plan, "--variants", str(args.variants),
           "--actors", str(args.actors), "--gpu-actors", str(args.gpu_actors), "--batch-size", str(args.batch_size),
           "--fuse", args.fuse, "--format", args.format, "--cpus-per-actor", str(args.cpus_per_actor),
           "--codec", args.codec, "--gpus-per-actor", str(args.gpus_per_actor), "--precision", args.precision]
    cmd += (["--cpus", str(args.cpus)] if args.cpus else []) + (
        ["--bare-threads", str(args.bare_threads)] if args.bare_threads else [])
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64, help="synthetic images (default 64)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--variants", type=int, default=1)
    p.add_argument("--plan", default=str(DEFAULT_PLAN), help="style plan YAML (default: examples/plans/demo.yaml)")
    p.add_argument("--actors", type=int, default=2, help="CPU stylizer actors")
    p.add_argument("--gpu-actors", type=int, default=1, help="GPU stylizer actors")
    p.add_argument("--gpus-per-actor", type=float, default=1.0,
                   help="GPU share per actor (0.25: four actors share a GPU, each with its own CPU thread)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="logical CPUs (= torch threads) per actor")
    p.add_argument("--bare-threads", type=int, default=None, help="torch threads of the bare loop (default: torch's)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--fuse", choices=["auto", "true", "false"], default="auto")
    p.add_argument("--format", choices=["png", "jpg"], default="png")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="also measure on the GPU (bare loop on cuda; 1 GPU per actor)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    p.add_argument("--codec", choices=["auto", "device", "cpu"], default="auto",
                   help="resources.jpeg_codec of the job (auto: nvjpeg on GPU actors)")
    p.add_argument("--codec-compare", action="store_true",
                   help="GPU section: also run the job with JPEG decode/encode on CPU tasks (jpeg_codec: cpu)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--dataset", type=Path, default=None,
                   help="an existing COCO annotations file with its images/ beside it (benchmarks/make_dataset.py) "
                        "instead of generating --images")
    p.add_argument("--no-bare", action="store_true", help="skip the bare loop (one image at a time: slow on big sets)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="GPU actors' precision")
    p.add_argument("--price-per-hour", type=float, default=3.5,
                   help="price of one GPU-hour for the cost per million images (default 3.5 USD: an H200 on demand)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    # internal: one measurement in a child process
    p.add_argument("--only", choices=["bare", "ray", "bare-gpu", "ray-gpu", "ray-gpu-cpucodec"],
                   help=argparse.SUPPRESS)
    p.add_argument("--annotations", help=argparse.SUPPRESS)
    p.add_argument("--images-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.only:
        _child(args)
        return 0

    import tempfile

    from nstray.data.synth import generate

    args.work = args.work or Path(tempfile.mkdtemp(prefix="nstray-bench-"))
    if args.dataset:
        args.annotations, args.images_dir = str(args.dataset), str(args.dataset.parent / "images")
        args.images = len(json.loads(args.dataset.read_text())["images"])
    else:
        data = generate(args.work / "data", args.images, seed=0, width=args.width, height=args.height)
        args.annotations, args.images_dir = str(data.annotations), str(data.images_dir)
    sections = ([] if args.no_cpu else [("cpu", "bare", "ray")]) + ([("gpu", "bare-gpu", "ray-gpu")] if args.gpu else [])
    report: dict[str, Any] = {"images": args.images, "size": f"{args.width}x{args.height}", "variants": args.variants,
                              "plan": args.plan, "cpus": os.cpu_count(), "sections": {}}
    for name, bare_kind, ray_kind in sections:
        kinds = ([] if args.no_bare else [("bare", bare_kind)]) + [("ray", ray_kind)]
        if name == "gpu" and args.codec_compare:
            kinds.append(("ray_cpucodec", "ray-gpu-cpucodec"))
        runs: dict[str, list[dict]] = {label: [] for label, _ in kinds}
        for i in range(args.repeat):
            for label, kind in kinds:
                res = _measure(args, kind)
                runs[label].append(res)
                print(f"[{name} {i + 1}/{args.repeat}] {label}: {res['outputs']} outputs in {res['seconds']:.1f} s = "
                      f"{res['images_per_s']:.3f} images/s, peak RSS {res['peak_rss_mb']:.0f} MB", file=sys.stderr)
        bare = statistics.median(r["images_per_s"] for r in runs["bare"]) if runs.get("bare") else float("nan")
        job = statistics.median(r["images_per_s"] for r in runs["ray"])
        section = {"bare_images_per_s": bare, "ray_images_per_s": job, "ratio": job / bare,
                   "bare_peak_rss_mb": max((r["peak_rss_mb"] for r in runs.get("bare", [])), default=float("nan")),
                   "ray_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["ray"]),
                   "ray_driver_peak_rss_mb": max(r["peak_driver_rss_mb"] for r in runs["ray"]),
                   "placement": runs["ray"][-1].get("placement"), "runs": runs}
        steady = [r["steady_images_per_s"] for r in runs["ray"] if r.get("steady_images_per_s")]
        if steady:
            section["ray_steady_images_per_s"] = statistics.median(steady)
        if name == "gpu":
            n_gpus = max(1.0, args.gpu_actors * args.gpus_per_actor)
            section["ray_images_per_s_per_gpu"] = job / n_gpus
            if section.get("ray_steady_images_per_s"):
                section["ray_steady_images_per_s_per_gpu"] = section["ray_steady_images_per_s"] / n_gpus
            section["precision"], section["price_per_gpu_hour"] = args.precision, args.price_per_hour
            per_gpu = section.get("ray_steady_images_per_s_per_gpu") or section["ray_images_per_s_per_gpu"]
            section["cost_per_million_images"] = args.price_per_hour * 1e6 / (max(per_gpu, 1e-9) * 3600)
            section["gpu_actors"], section["gpus_per_actor"] = args.gpu_actors, args.gpus_per_actor
            if runs.get("ray_cpucodec"):
                cpu_codec = statistics.median(r["images_per_s"] for r in runs["ray_cpucodec"])
                section["ray_cpucodec_images_per_s"] = cpu_codec
                section["nvjpeg_speedup"] = job / cpu_codec
                print(f"gpu: job with nvjpeg (jpeg_codec {args.codec}) {job:.2f} images/s vs JPEG on CPU tasks "
                      f"{cpu_codec:.2f} images/s: {job / cpu_codec:.2f}x")
            for label in runs:
                utils = [r["gpu_util_mean"] for r in runs[label] if "gpu_util_mean" in r]
                if utils:
                    section[f"{label}_gpu_util_mean"] = statistics.mean(utils)
        report["sections"][name] = section
        if runs.get("bare"):
            print(f"{name}: bare loop {bare:.3f} images/s | nstray job {job:.3f} images/s | ratio {job / bare:.2f}x | "
                  f"peak RSS bare {section['bare_peak_rss_mb']:.0f} MB, job {section['ray_peak_rss_mb']:.0f} MB "
                  f"(driver {section['ray_driver_peak_rss_mb']:.0f} MB)")
        else:  # --no-bare: nothing to compare with
            print(f"{name}: nstray job {job:.3f} images/s | peak RSS {section['ray_peak_rss_mb']:.0f} MB "
                  f"(driver {section['ray_driver_peak_rss_mb']:.0f} MB)")
        if name == "gpu" and not (section["placement"] or {}).get("gpus_per_actor"):
            print("gpu: no GPU in this machine's Ray cluster: the GPU section ran on the CPU (numbers are not GPU numbers)")
        elif name == "gpu":
            print(f"gpu: {section['ray_images_per_s_per_gpu']:.2f} images/s per GPU end to end, "
                  f"{section.get('ray_steady_images_per_s_per_gpu', float('nan')):.2f} steady "
                  f"({args.precision}, batch {args.batch_size}, {args.gpu_actors} actor(s)); GPU utilisation "
                  f"bare {section.get('bare_gpu_util_mean', float('nan')):.0f}%, "
                  f"job {section.get('ray_gpu_util_mean', float('nan')):.0f}% (job_report.json's per-actor mean: "
                  f"{runs['ray'][-1].get('report_gpu_utilization') or float('nan'):.0f}%); "
                  f"{section['cost_per_million_images']:.2f} USD per million images at "
                  f"{args.price_per_hour} USD per GPU-hour (steady rate)")
        stages = (runs["ray"][-1].get("stages") or {}) if runs.get("ray") else {}
        if stages:
            section["stage_share"] = {st: v.get("share") for st, v in stages.items()}
            print(f"{name}: busy share by stage (all workers): " + ", ".join(
                f"{st} {100 * (v.get('share') or 0):.0f}% ({v.get('ms_per_item') or 0:.1f} ms/item)"
                for st, v in stages.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
