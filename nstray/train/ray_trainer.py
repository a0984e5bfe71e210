"""Training feed-forward styles on Ray Train: ``TorchTrainer``, DDP across workers, checkpoints to local or S3, resume.

Output layout (``OUT`` = ``--out``, local or ``s3://``; ``NAME`` = the run name)::

    OUT/NAME/                         the Ray Train run (RunConfig(storage_path=OUT, name=NAME))
      checkpoint_0000500/state.pt     full training state: trainable weights, optimizer, step, loss history
      checkpoint_0000500/model.pt     the deployable checkpoint at that step
      checkpoint_manager_snapshot.json ...   Ray Train's own bookkeeping
      model.pt                        the latest deployable checkpoint: what a plan points to
      losses.csv  losses.json  losses.png

Every ``checkpoint_every`` steps (and at the last step) rank 0 saves a checkpoint through
``ray.train.report(..., checkpoint=...)`` (Ray uploads it), then rewrites ``model.pt`` and the loss
curves beside it. Rerunning the same command resumes: Ray Train finds the run's snapshot in
``OUT/NAME`` and ``ray.train.get_checkpoint()`` hands every worker the latest checkpoint (failing
that, the newest ``checkpoint_*/state.pt`` found in storage is used); the step counter, the loss
history, the optimizer state and the data order all continue. A run already at ``steps`` does
nothing; ``steps`` larger than before trains on.

Data parallelism: ``batch_size`` is per worker; every worker computes the loss on its own batch,
DDP (``ray.train.torch.prepare_model``) averages the gradients, and the logged losses are averaged
over workers. Workers seed identically before building the VGG encoder, so a random-init encoder
(``vgg_weights=None``, tests only) is the same network everywhere and across resumes.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nstray import storage
from nstray.data.images import DEFAULT_MAX_PIXELS
from nstray.train import ray_run
from nstray.train.ray_run import TrainConfigError, TrainingError
from nstray.train.style_training import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, LOSS_TERMS

__all__ = [
    "MODES",
    "TrainConfig",
    "TrainConfigError",
    "TrainingError",
    "TrainSummary",
    "latest_checkpoint",
    "plan_snippet",
    "train_style",
    "train_loop_per_worker",
]

log = logging.getLogger(__name__)

MODES = ("johnson", "cin")
STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
STATE_FORMAT = "nstray.train-state"
_DEFAULT_LR = {"johnson": 1e-3, "cin": 1e-2}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "style"


@dataclass
class TrainConfig:
    """Everything a training run needs; plain values only (it travels to the workers as a dict)."""

    style_image: str
    data: str
    out: str
    mode: str = "johnson"
    images: str | None = None  # images root of a COCO ``data`` file (default: next to the JSON)
    name: str | None = None  # run name (default: ``<style image stem>-<mode>``)
    steps: int = 2000
    batch_size: int = 4  # per worker
    size: int = 256  # training crop side
    style_size: int | None = None  # shorter side of the style image for the Gram targets (default: size)
    lr: float | None = None  # Adam; default 1e-3 (johnson), 1e-2 (cin)
    warmup_steps: int = 100  # linear learning-rate warmup (Adam's first steps move every weight alike)
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = True
    vgg_arch: str = "vgg16"
    vgg_weights: str | None = "vgg16"  # registry name, file, s3:// URI; None = random init (tests only)
    content_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTENT_LAYERS))
    style_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))
    content_weight: float = 1.0
    style_weight: float = 1e5
    tv_weight: float = 1.0
    johnson_channels: int = 32
    johnson_res_blocks: int = 5
    cin_base: str = "multistyle26"
    cin_init_style: int | None = None  # None: start from the mean of the base's styles
    seed: int = 0
    loader_workers: int = 2  # DataLoader processes per training worker (0: read in the training process)
    max_failures: int = 0  # worker failures Ray Train recovers from (restarting from the last checkpoint)
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def run_name(self) -> str:
        stem = Path(storage.parse(self.style_image).path).stem
        return _slug(self.name) if self.name else f"{_slug(stem)}-{self.mode}"

    @property
    def run_uri(self) -> str:
        return storage.join(self.out, self.run_name)

    @property
    def model_uri(self) -> str:
        return storage.join(self.run_uri, MODEL_FILE)

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else _DEFAULT_LR.get(self.mode, 1e-3)

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``: linear warmup over ``warmup_steps``, then constant."""
        return self.learning_rate * min(1.0, (step + 1) / max(1, self.warmup_steps))

    def validate(self) -> TrainConfig:
        """Check every setting; raises :class:`TrainConfigError` naming each bad one."""
        from nstray.models.vgg import ARCHS, layer_names

        problems = ray_run.setting_problems(self, {
            "steps": 1, "batch_size": 1, "workers": 1, "checkpoint_every": 1, "keep_checkpoints": 1,
            "johnson_channels": 1, "johnson_res_blocks": 0, "loader_workers": 0, "max_failures": 0, "warmup_steps": 0,
        }, ("style_image", "data", "out"))
        if self.mode not in MODES:
            problems.append(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.size < 16:
            problems.append(f"size: training crops need at least 16 px, got {self.size}")
        if self.style_size is not None and self.style_size < 16:
            problems.append(f"style_size: needs at least 16 px, got {self.style_size}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            problems.append("gpus_per_worker must be >= 0 and cpus_per_worker > 0")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr: must be > 0, got {self.lr}")
        for key in ("content_weight", "style_weight", "tv_weight"):
            if float(getattr(self, key)) < 0:
                problems.append(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.vgg_arch not in ARCHS:
            problems.append(f"vgg_arch: {self.vgg_arch!r} is not one of {', '.join(sorted(ARCHS))}")
        else:
            names = layer_names(self.vgg_arch)
            for key in ("content_layers", "style_layers"):
                layers = getattr(self, key)
                bad = [n for n in layers if n not in names]
                if bad:
                    problems.append(f"{key}: {self.vgg_arch} has no layer(s) {bad}; e.g. relu1_2, relu2_2, relu3_3")
            if not self.style_layers:
                problems.append("style_layers: give at least one layer")
            if not self.content_layers and self.content_weight > 0:
                problems.append("content_layers: give at least one layer (or content_weight 0)")
        if self.mode == "cin" and self.cin_init_style is not None and self.cin_init_style < 0:
            problems.append(f"cin_init_style: must be >= 0, got {self.cin_init_style}")
        if problems:
            raise TrainConfigError("invalid training settings:\n  " + "\n  ".join(problems))
        return self


@dataclass
class TrainSummary:
    """What a training run did and where its outputs are."""

    run_uri: str
    model_uri: str
    losses_csv: str
    losses_json: str
    losses_png: str
    step: int
    resumed_from: int
    images: int
    checkpoint: str | None = None  # the Ray checkpoint folder of the last step
    metrics: dict[str, float] = field(default_factory=dict)
    trained: bool = True  # False when the run was already at ``steps``

    def plan_snippet(self, style_name: str | None = None) -> str:
        return plan_snippet(self.model_uri, style_name or _snippet_name(self.run_uri))


def _snippet_name(run_uri: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", run_uri.rstrip("/").rsplit("/", 1)[-1]).strip("_") or "my_style"


def plan_snippet(model_uri: str, style_name: str = "my_style") -> str:
    """A style-plan fragment that uses a trained checkpoint (``kind: feedforward``)."""
    return (
        "styles:\n"
        f"  {style_name}: {{kind: feedforward, weights: {model_uri}}}\n"
        "parts:\n"
        f"  wheel: {{style: {style_name}}}   # any category of your dataset\n"
    )


def latest_checkpoint(run_uri: str) -> tuple[int, str] | None:
    """``(step, URI of its state.pt)`` of the newest checkpoint stored under ``run_uri``, or None."""
    return ray_run.latest_checkpoint(run_uri, STATE_FILE)


# ---------------------------------------------------------------- on the workers


def _read_style_image(cfg: TrainConfig) -> torch.Tensor:
    """The style image as ``[3, h, w]`` in [0, 1], its shorter side resized to ``style_size`` (default ``size``)."""
    import torch.nn.functional as F

    from nstray.data.images import decode_image

    try:
        arr = decode_image(storage.read_bytes(cfg.style_image), name=cfg.style_image, max_pixels=cfg.max_pixels)
    except storage.StorageError as exc:
        raise TrainingError(f"cannot read the style image: {exc}") from None
    x = torch.tensor(arr).permute(2, 0, 1)[None].float().div_(255.0)
    side = cfg.style_size or cfg.size
    h, w = x.shape[-2:]
    scale = side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x[0]


def _build_model(cfg: TrainConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trainable network of the mode and what the deployable checkpoint needs to know about its base."""
    if cfg.mode == "johnson":
        from nstray.models.johnson import johnson

        return johnson(None, channels=cfg.johnson_channels, res_blocks=cfg.johnson_res_blocks), {}
    from nstray import weights
    from nstray.models.multistyle import multistyle26
    from nstray.train.style_training import NewStyleCIN

    path = weights.resolve(cfg.cin_base)
    base = multistyle26(path)
    info = {"base": cfg.cin_base, "base_sha256": weights.sha256_file(path), "num_styles": base.num_styles}
    return NewStyleCIN(base, init=cfg.cin_init_style), info


def _check_models(cfg: TrainConfig) -> None:
    """Build on the driver what every worker builds first (the VGG loss network with its weights; for ``cin``
    the base network and the initial style), so a file or setting that does not fit fails here, with one
    message, instead of inside each Ray Train worker."""
    from nstray import weights
    from nstray.models.vgg import vgg_encoder

    layers = list(dict.fromkeys([*cfg.content_layers, *cfg.style_layers]))
    try:
        vgg_encoder(cfg.vgg_arch, layers, cfg.vgg_weights)
    except (weights.WeightsNotFound, weights.WeightsChecksumError, ValueError) as exc:
        raise TrainConfigError(f"the loss network (vgg_arch {cfg.vgg_arch}, vgg_weights {cfg.vgg_weights}): {exc}"
                               + ("; fix: pass the --vgg-arch the weights are for (vgg16 or vgg19)"
                                  if "fit" in str(exc) or "lack" in str(exc) else "")) from None
    if cfg.mode == "cin":
        from nstray.models.multistyle import multistyle26

        try:
            n = multistyle26(weights.resolve(cfg.cin_base)).num_styles
        except (weights.WeightsNotFound, weights.WeightsChecksumError) as exc:
            raise TrainConfigError(f"cin_base: {exc}") from None
        if cfg.cin_init_style is not None and not 0 <= cfg.cin_init_style < n:
            raise TrainConfigError(f"cin_init_style (--init-style): {cfg.cin_init_style} is out of range; "
                                   f"the base network {cfg.cin_base} has styles 0 to {n - 1}")


def _deployable(cfg: TrainConfig, model: torch.nn.Module, base: dict[str, Any], step: int, last: dict) -> dict:
    """The checkpoint a plan loads (``kind: feedforward``)."""
    from nstray.stylize.feedforward import cin_checkpoint, johnson_checkpoint

    meta = {
        "step": int(step), "style_image": cfg.style_image, "size": int(cfg.size), "data": cfg.data,
        "vgg_arch": cfg.vgg_arch, "vgg_weights": str(cfg.vgg_weights), "content_weight": float(cfg.content_weight),
        "style_weight": float(cfg.style_weight), "tv_weight": float(cfg.tv_weight),
        "loss": {k: float(last[k]) for k in LOSS_TERMS if k in last},
    }
    if cfg.mode == "johnson":
        return johnson_checkpoint(model, meta)
    gamma, beta = model.tables()
    return cin_checkpoint(gamma, beta, base=base["base"], base_sha256=base["base_sha256"],
                          num_styles=base["num_styles"], meta=meta)


def _publish(cfg: TrainConfig, model_bytes: bytes, history: list[dict]) -> None:
    """Write the latest deployable checkpoint and the loss curves beside the run's checkpoints (atomic writes)."""
    from nstray.plots import render_loss_plot

    storage.write_bytes(storage.join(cfg.run_uri, MODEL_FILE), model_bytes)
    ray_run.publish_curves(cfg.run_uri, history, {"losses.png": render_loss_plot(history, f"{cfg.run_name} ({cfg.mode})")},
                           mode=cfg.mode, style_image=cfg.style_image)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: build loss + network, restore, then train ``steps`` with checkpoints every ``checkpoint_every``."""
    import torch.distributed as dist
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader

    from nstray.models.vgg import vgg_encoder
    from nstray.train.data import ContentImages, StepBatches
    from nstray.train.style_training import PerceptualLoss, load_trainable_state, train_step, trainable_state

    cfg = TrainConfig(**loop_config["config"])
    uris: list[str] = loop_config["images"]
    rank, world, device = ray_run.worker_setup(cfg.cpus_per_worker)

    torch.manual_seed(cfg.seed)  # same random-init encoder/network on every worker and every resume
    layers = list(dict.fromkeys([*cfg.content_layers, *cfg.style_layers]))
    encoder = vgg_encoder(cfg.vgg_arch, layers, cfg.vgg_weights)
    loss_fn = PerceptualLoss(encoder, _read_style_image(cfg), content_layers=cfg.content_layers,
                             style_layers=cfg.style_layers, content_weight=cfg.content_weight,
                             style_weight=cfg.style_weight, tv_weight=cfg.tv_weight).to(device)
    model, base = _build_model(cfg)

    state = ray_run.restore(loop_config, STATE_FILE, STATE_FORMAT)
    start, history = 0, []
    if state is not None:
        if state.get("mode") != cfg.mode:
            raise TrainingError(f"{cfg.run_uri} holds a {state.get('mode')} run; this one is {cfg.mode}: "
                                "use another --name or --out")
        load_trainable_state(model, state["model"])
        start, history = int(state["step"]), list(state["history"])

    model = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
    net = getattr(model, "module", model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    dataset = ContentImages(uris, cfg.size, seed=cfg.seed, max_pixels=cfg.max_pixels)
    sampler = StepBatches(len(uris), start, cfg.steps, cfg.batch_size, rank, world, cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.loader_workers,
                        pin_memory=device.type == "cuda")
    model.train()
    t_last = time.perf_counter()
    for step, batch in zip(range(start, cfg.steps), loader):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        terms = train_step(model, loss_fn, optimizer, batch.to(device, non_blocking=True))
        values = torch.stack([terms[k].float() for k in LOSS_TERMS])
        if world > 1:
            dist.all_reduce(values)
            values /= world
        now = time.perf_counter()
        row = {"step": step + 1, **dict(zip(LOSS_TERMS, values.tolist())), "seconds": now - t_last}
        t_last = now
        history.append(row)
        done = step + 1
        if done % cfg.checkpoint_every and done != cfg.steps:
            continue
        metrics = {**row, "images_per_s": cfg.batch_size * world / max(row["seconds"], 1e-9)}
        if rank == 0:
            deployable = _deployable(cfg, net, base, done, row)
            model_buf = io.BytesIO()
            torch.save(deployable, model_buf)
            train_state = {"format": STATE_FORMAT, "version": 1, "mode": cfg.mode, "step": done,
                           "model": trainable_state(net), "optimizer": optimizer.state_dict(), "history": history}
            ray_run.report_checkpoint(metrics, {STATE_FILE: train_state, MODEL_FILE: model_buf.getvalue()}, done)
            _publish(cfg, model_buf.getvalue(), history)
            print(f"step {done}/{cfg.steps}: loss {row['total']:.4g} (content {row['content']:.4g}, style "
                  f"{row['style']:.4g}, tv {row['tv']:.4g}), {metrics['images_per_s']:.1f} images/s; "
                  f"checkpoint_{done:07d} -> {cfg.run_uri}", flush=True)
        else:
            ray.train.report(metrics, checkpoint=None)
        t_last = time.perf_counter()


# ---------------------------------------------------------------- on the driver


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with local paths made absolute: Ray workers run in other working directories."""
    import dataclasses

    changes = {k: ray_run.absolute_uri(getattr(cfg, k)) for k in ("style_image", "data", "images", "out")}
    weights = cfg.vgg_weights
    if weights is not None and not storage.is_s3(weights) and "://" not in weights and Path(weights).expanduser().is_file():
        changes["vgg_weights"] = ray_run.absolute_uri(weights)
    return dataclasses.replace(cfg, **changes)


def train_style(
    config: TrainConfig,
    *,
    address: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> TrainSummary:
    """Train (or resume) a feed-forward style on Ray Train; returns where the model and curves are.

    Connects to Ray (``address``, else ``RAY_ADDRESS``, else a new local cluster) only when there is
    training to do. Raises :class:`TrainConfigError` / :class:`TrainingError` with the reason.
    """
    from nstray.train.data import list_content_images

    say = notify or log.info
    cfg = _absolute_paths(config.validate())
    uris = list_content_images(cfg.data, cfg.images)
    _read_style_image(cfg)  # a bad style image fails here, before any worker starts
    _check_models(cfg)  # so do loss-network weights that do not fit --vgg-arch, and an --init-style out of range
    run = cfg.run_uri
    previous = latest_checkpoint(run)
    summary = TrainSummary(
        run_uri=run, model_uri=cfg.model_uri, losses_csv=storage.join(run, "losses.csv"),
        losses_json=storage.join(run, "losses.json"), losses_png=storage.join(run, "losses.png"),
        step=previous[0] if previous else 0, resumed_from=previous[0] if previous else 0, images=len(uris),
        checkpoint=previous[1].rsplit("/", 1)[0] if previous else None,
    )
    if previous is not None:
        if not cfg.resume:
            raise TrainingError(f"{run} already holds a training run (last checkpoint at step {previous[0]}); "
                                "resume it (--resume), or pick another --name / --out, or delete it first")
        if previous[0] >= cfg.steps:
            say(f"{run} is already trained to step {previous[0]} (>= {cfg.steps}); nothing to do "
                "(raise --steps to train on)")
            summary.trained = False
            return summary
        say(f"resuming {run} from step {previous[0]}")

    say(f"training {cfg.mode} style from {cfg.style_image} on {len(uris)} image(s) with {cfg.workers} worker(s) "
        f"-> {run}")
    summary.metrics = ray_run.fit(
        train_loop_per_worker,
        {"config": asdict(cfg), "images": uris, "resume_uri": previous[1] if previous else None},
        out=cfg.out, name=cfg.run_name, workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker,
        gpus_per_worker=cfg.gpus_per_worker, keep_checkpoints=cfg.keep_checkpoints, max_failures=cfg.max_failures,
        address=address, notify=say,
    )
    latest = latest_checkpoint(run)
    summary.step = latest[0] if latest else summary.step
    summary.checkpoint = latest[1].rsplit("/", 1)[0] if latest else None
    return summary
