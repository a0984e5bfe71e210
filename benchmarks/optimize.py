"""Seconds per optimization iteration: nstray's engine vs the plain reference loop, side by side.

The reference is a plain reimplementation of the loop the study used, the classic PyTorch NST
tutorial (VGG-19 ``features`` walked into an ``nn.Sequential`` with loss modules inserted after
the chosen layers, Gram = F Fᵀ / (C·H·W), L-BFGS with a clamping closure): no nstray code. Both
sides get the same VGG-19 weights (random init by default, or ``--weights`` for real ones), the
same layers (content relu4_2; style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, weight 1 each),
the same loss weights (content 1, style 1e6) and the same start image. Their first losses are
printed side by side as a check that both compute the same objective.

Per-iteration time is steady state: the time between the first and the last of ``--iters``
timed iterations (after ``--warmup``), so target building is not counted on either side. Rounds
alternate plain / nstray and the median is reported, which damps noise from other processes; the
process CPU time is reported beside the wall time (with ``--threads 1`` it is the work done, and
barely moves when other processes compete for the cores).

    python benchmarks/optimize.py                      # CPU: 256² and 512², L-BFGS and Adam
    python benchmarks/optimize.py --device cuda        # GPU: it/s and peak memory at 512², 1024²
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# ---------------------------------------------------------------- the plain reference loop (no nstray code)

# tutorial names: conv_i / relu_i count convolutions over the whole trunk
REF_CONTENT = ["relu_10"]  # = relu4_2
REF_STYLE = ["relu_1", "relu_3", "relu_5", "relu_9", "relu_13"]  # = relu1_1, relu2_1, relu3_1, relu4_1, relu5_1


class RefContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(x, self.target)
        return x


def ref_gram(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = x.size()
    features = x.view(a * b, c * d)
    return torch.mm(features, features.t()).div(a * b * c * d)


class RefStyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor) -> None:
        super().__init__()
        self.target = ref_gram(target_feature).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(ref_gram(x), self.target)
        return x


class RefNormalization(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone().detach().view(-1, 1, 1))  # buffers follow .to(device)
        self.register_buffer("std", std.clone().detach().view(-1, 1, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean) / self.std


def ref_model_and_losses(cnn, style_img, content_img, device):
    normalization = RefNormalization(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])).to(device)
    content_losses, style_losses = [], []
    model = nn.Sequential(normalization)
    i = 0
    for layer in cnn.children():
        if isinstance(layer, nn.Conv2d):
            i += 1
            name = f"conv_{i}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu_{i}"
            layer = nn.ReLU(inplace=False)
        elif isinstance(layer, nn.MaxPool2d):
            name = f"pool_{i}"
        else:
            raise RuntimeError(f"unrecognized layer {layer.__class__.__name__}")
        model.add_module(name, layer)
        if name in REF_CONTENT:
            target = model(content_img).detach()
            cl = RefContentLoss(target)
            model.add_module(f"content_loss_{i}", cl)
            content_losses.append(cl)
        if name in REF_STYLE:
            target_feature = model(style_img).detach()
            sl = RefStyleLoss(target_feature)
            model.add_module(f"style_loss_{i}", sl)
            style_losses.append(sl)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (RefContentLoss, RefStyleLoss)):
            break
    return model[: i + 1], style_losses, content_losses


def ref_run(cnn, content_img, style_img, input_img, optimizer: str, num_steps: int, stamps: list[float] | None, losses: list[float] | None,
            style_weight: float = 1e6, content_weight: float = 1.0) -> torch.Tensor:
    model, style_losses, content_losses = ref_model_and_losses(cnn, style_img, content_img, input_img.device)
    input_img.requires_grad_(True)
    model.eval()
    model.requires_grad_(False)
    opt = torch.optim.LBFGS([input_img]) if optimizer == "lbfgs" else torch.optim.Adam([input_img], lr=0.02)
    run = [0]
    while run[0] < num_steps:

        def closure():
            with torch.no_grad():
                input_img.clamp_(0, 1)
            opt.zero_grad()
            model(input_img)
            style_score = 0
            content_score = 0
            for sl in style_losses:
                style_score += sl.loss
            for cl in content_losses:
                content_score += cl.loss
            style_score *= style_weight
            content_score *= content_weight
            loss = style_score + content_score
            loss.backward()
            run[0] += 1
            if stamps is not None:  # the timing runs on CPU record every iteration (a sync, free on CPU)
                losses.append(float(loss.detach()))
                stamps.append((time.perf_counter(), time.process_time()))
            return style_score + content_score

        if optimizer == "lbfgs":  # the tutorial's max_iter=20 evaluations per step(), capped to stop at num_steps
            opt.param_groups[0]["max_iter"] = min(20, num_steps - run[0])
        opt.step(closure)
    with torch.no_grad():
        input_img.clamp_(0, 1)
    return input_img


# ---------------------------------------------------------------- nstray


def nstray_run(weights_file: str, content, style, variant: str, steps: int, stamps: list[float], losses: list[float],
               device: str):
    """``variant``: ``lbfgs`` (nstray's default, strong-Wolfe line search), ``lbfgs-fixed`` (the tutorial's fixed step), ``adam``."""
    from nstray.stylize.optimize import optimize

    def cb(p):
        stamps.append((time.perf_counter(), time.process_time()))
        losses.append(p.losses["total"])

    return optimize(content, style, weights=weights_file, optimizer=variant.split("-")[0], steps=steps,
                    line_search=variant != "lbfgs-fixed", init="content", device=device, callback=cb)


def per_iter(stamps: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds per iteration after ``warmup`` iterations."""
    t = stamps[warmup:]
    n = len(t) - 1
    return (t[-1][0] - t[0][0]) / n, (t[-1][1] - t[0][1]) / n


def images(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    content = torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(6 * xx * yy)]).clamp(0, 1)
    style = torch.rand(3, size // 8, size // 8, generator=g)
    style = F.interpolate(style[None], size=(size, size), mode="nearest")[0]
    return content, style


def bench_cpu(cnn, weights_file: str, sizes: list[int], iters: int, warmup: int, rounds: int,
              variants: list[str]) -> None:
    print("s/it = seconds per iteration = one forward+backward through VGG-19 (for nstray's line-search L-BFGS:")
    print("per function evaluation; the plain loop's L-BFGS makes exactly one evaluation per iteration)")
    print("wall = elapsed seconds; cpu = process CPU seconds (steadier when other processes share the cores)")
    print(f"{'size':>6} {'nstray variant':>14} {'plain wall':>11} {'nstray wall':>12} {'ratio':>6} "
          f"{'plain cpu':>10} {'nstray cpu':>11} {'ratio':>6}   first loss plain / nstray")
    for size in sizes:
        content, style = images(size)
        for variant in variants:
            ref_opt = variant.split("-")[0]
            plain_t, ours_t = [], []
            first = None
            for _ in range(rounds):
                stamps, losses = [], []
                ref_run(cnn, content[None], style[None], content[None].clone(), ref_opt, warmup + iters, stamps, losses)
                plain_t.append(per_iter(stamps, warmup))
                ref_first = losses[0]
                stamps, losses2 = [], []
                nstray_run(weights_file, content, style, variant, warmup + iters, stamps, losses2, "cpu")
                ours_t.append(per_iter(stamps, warmup))
                first = (ref_first, losses2[0])
            pw, ow = statistics.median(t[0] for t in plain_t), statistics.median(t[0] for t in ours_t)
            pc, oc = statistics.median(t[1] for t in plain_t), statistics.median(t[1] for t in ours_t)
            print(f"{size:>5}² {variant:>14} {pw:>11.3f} {ow:>12.3f} {ow / pw:>5.2f}× {pc:>10.3f} {oc:>11.3f} {oc / pc:>5.2f}×"
                  f"   {first[0]:.6g} / {first[1]:.6g}", flush=True)


def bench_cuda(cnn, weights_file: str, sizes: list[int], iters: int, warmup: int) -> None:
    from nstray.stylize.optimize import optimize

    dev = "cuda"
    cnn = cnn.to(dev)
    print(torch.cuda.get_device_name(), "| AMP: nstray's default (bf16 for Adam only), channels-last on")
    print(f"{'size':>6} {'optimizer':>9} {'plain it/s':>11} {'nstray it/s':>12} {'plain peak GiB':>15} {'nstray peak GiB':>16}")
    for size in sizes:
        content, style = images(size)
        # one untimed pass of each side first: CUDA context, cuDNN autotuning and kernel caches are paid
        # here, not by whichever row happens to run first
        ref_run(cnn, content[None].to(dev), style[None].to(dev), content[None].clone().to(dev), "lbfgs", 2, None, None)
        optimize(content, style, weights=weights_file, optimizer="adam", steps=2, device=dev)
        torch.cuda.synchronize()
        for optimizer in ("lbfgs", "adam"):
            row = []
            for side in ("plain", "nstray"):
                seconds, evals = [], []
                for n in (warmup, warmup + iters):  # the difference of two runs cancels the set-up
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    t = time.perf_counter()
                    if side == "plain":
                        ref_run(cnn, content[None].to(dev), style[None].to(dev), content[None].clone().to(dev), optimizer, n, None, None)
                        evals.append(n)
                    else:
                        result = optimize(content, style, weights=weights_file, optimizer=optimizer, steps=n, device=dev)
                        evals.append(len(result.history))
                    torch.cuda.synchronize()
                    seconds.append(time.perf_counter() - t)
                peak = torch.cuda.max_memory_allocated() / 2**30
                row.append(((evals[1] - evals[0]) / (seconds[1] - seconds[0]), peak))
            print(f"{size:>5}² {optimizer:>9} {row[0][0]:>11.1f} {row[1][0]:>12.1f} {row[0][1]:>15.2f} {row[1][1]:>16.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides (default: 256 512 on CPU, 512 1024 on CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per run (default: 4 on CPU, 50 on CUDA)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating plain/nstray rounds per row (CPU)")
    ap.add_argument("--weights", default=None, help="VGG-19 state dict (registry name, file, s3://); default: random init")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--variants", nargs="+", default=["lbfgs", "lbfgs-fixed", "adam"],
                    choices=["lbfgs", "lbfgs-fixed", "adam"], help="nstray optimizers to time (CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cnn = torchvision.models.vgg19(weights=None).features.eval()
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights:
            from nstray import weights as registry

            state = torch.load(registry.resolve(args.weights), map_location="cpu", weights_only=True)
            cnn.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        weights_file = str(Path(tmp) / "vgg19_features.pth")
        torch.save({f"features.{k}": v for k, v in cnn.state_dict().items()}, weights_file)  # torchvision format
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, VGG-19 "
              f"{'weights ' + args.weights if args.weights else 'random init'}")
        if args.device == "cpu":
            bench_cpu(cnn, weights_file, args.sizes or [256, 512], args.iters or 4, args.warmup, args.rounds, args.variants)
        else:
            if not torch.cuda.is_available():
                raise SystemExit("--device cuda: no CUDA device here")
            bench_cuda(cnn, weights_file, args.sizes or [512, 1024], args.iters or 50, args.warmup)


if __name__ == "__main__":
    main()
