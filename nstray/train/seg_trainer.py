"""Training a vehicle-parts segmenter on Ray Train (``nstray train-seg``), with torchvision's reference recipe.

Output layout (``OUT`` = ``--out``, local or ``s3://``; ``NAME`` = the run name, default the architecture)::

    OUT/NAME/checkpoint_0000003/state.pt   full state after epoch 3: weights, optimizer, epoch, history, best mIoU
    OUT/NAME/checkpoint_0000003/model.pt   the deployable segmenter after epoch 3
    OUT/NAME/model.pt                      the latest deployable segmenter
    OUT/NAME/best.pt                       the one with the best validation mIoU: what ``segment: {model: URI}`` takes
    OUT/NAME/curves.csv  curves.json  losses.png  miou.png

Recipe (defaults): cross-entropy with ignore index 255 plus 0.5 × the auxiliary head's, SGD (momentum 0.9,
weight decay 1e-4, the auxiliary head at 10× the learning rate), poly schedule (power 0.9) over all steps,
random resize 0.5–2×, flip, crop (:mod:`nstray.train.seg_data`). ``batch_size`` is per worker; DDP averages
gradients. An epoch is ``ceil(train images / (batch × workers))`` steps; the images of step ``s`` depend
only on ``(seed, s)`` (:func:`nstray.train.data.sample_positions`), the crops on their position, dropout on
``(seed, step, rank)``: a resumed run continues exactly where the checkpoint left it.

After every epoch the validation images (sharded over workers, each at full size through
:class:`~nstray.models.segmentation.Segmenter` at ``size``) fill one confusion matrix, summed over workers;
per-class IoU, mIoU and pixel accuracy go into the history, the curves and the checkpoint's metadata.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nstray import storage
from nstray.data.images import DEFAULT_MAX_PIXELS
from nstray.models.segmentation import ARCHS
from nstray.train import ray_run
from nstray.train.ray_run import TrainConfigError, TrainingError

__all__ = ["SegTrainConfig", "SegTrainSummary", "train_segmenter", "seg_train_loop"]

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
BEST_FILE = "best.pt"
STATE_FORMAT = "nstray.seg-train-state"


@dataclass
class SegTrainConfig:
    """Everything a segmentation training run needs; plain values only (it travels to the workers as a dict)."""

    data: str
    images: str
    out: str
    val: str | None = None
    val_images: str | None = None
    val_fraction: float | None = None  # default 0.1 when no --val
    arch: str = "deeplabv3_resnet50"
    name: str | None = None
    size: int = 480  # training crop side; validation and inference resize the shorter side to it
    epochs: int = 30
    batch_size: int = 4  # per worker
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    aux_weight: float = 0.5
    poly_power: float = 0.9
    precise_bn: int = 8  # batches to recompute batch-norm statistics on before each validation (0: off)
    backbone_weights: str | None = "imagenet"  # "imagenet": the arch's torchvision backbone; a file/URI; None: random
    class_map: dict[str, str] = field(default_factory=dict)
    class_map_source: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    keep_checkpoints: int = 3
    resume: bool = True
    seed: int = 0
    loader_workers: int = 2
    max_failures: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    augment: str | None = None  # a dataset job's output: its styled variants of training images join the training
    augment_ratio: float = 0.5  # share of training samples taken from those variants (never validation)
    style_augment: str | None = None  # "random" (style randomization) or a plan: online augmentation (PartStyle)
    style_p: float = 0.5  # probability a training image is styled online

    @property
    def run_name(self) -> str:
        import re

        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name or "").strip("-.")
        return slug or self.arch

    @property
    def run_uri(self) -> str:
        return storage.join(self.out, self.run_name)

    @property
    def backbone_ref(self) -> str | None:
        """The registry name / file / URI of the backbone start, or None for a random one."""
        if self.backbone_weights == "imagenet":
            return ARCHS[self.arch][1] if self.arch in ARCHS else None
        return self.backbone_weights

    def validate(self) -> SegTrainConfig:
        problems = ray_run.setting_problems(self, {  # batch_size 2: batch norm needs two samples
            "epochs": 1, "batch_size": 2, "workers": 1, "keep_checkpoints": 1, "loader_workers": 0, "max_failures": 0,
            "precise_bn": 0,
        }, ("data", "images", "out"))
        if self.arch not in ARCHS:
            problems.append(f"arch: {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.size < 32:
            problems.append(f"size: needs at least 32 px, got {self.size}")
        for key in ("lr", "cpus_per_worker"):
            if not float(getattr(self, key)) > 0:
                problems.append(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("momentum", "weight_decay", "aux_weight", "gpus_per_worker"):
            if float(getattr(self, key)) < 0:
                problems.append(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.val is not None and self.val_fraction is not None:
            problems.append("give either --val (a second annotations file) or --val-fraction, not both")
        if self.val is None and self.val_images is not None:
            problems.append("--val-images needs --val")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction: must be between 0 and 1, got {self.val_fraction}")
        for key in ("augment_ratio", "style_p"):
            if not 0 <= float(getattr(self, key)) <= 1:
                problems.append(f"{key}: must lie in [0, 1], got {getattr(self, key)}")
        if problems:
            raise TrainConfigError("invalid segmentation training settings:\n  " + "\n  ".join(problems))
        return self


@dataclass
class SegTrainSummary:
    """What a run did and where its outputs are."""

    run_uri: str
    model_uri: str
    best_uri: str
    curves_csv: str
    epoch: int
    resumed_from: int
    train_images: int
    val_images: int
    classes: list[str]
    trained: bool = True
    metrics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- on the workers


def _history_row(epoch: int, step: int, loss: float, scores: dict[str, Any], classes: list[str], seconds: float,
                 images: int) -> dict[str, float | None]:
    """One epoch's row of the curves: loss, validation mIoU / pixel accuracy / IoU per class, speed."""
    row: dict[str, float | None] = {"epoch": epoch, "step": step, "total": loss, "miou": scores["miou"],
                             "pixel_accuracy": scores["pixel_accuracy"], "seconds": seconds,
                             "images_per_s": images / max(seconds, 1e-9)}
    row.update({f"iou_{c}": None if math.isnan(v) else v for c, v in zip(classes, scores["iou"])})  # None: class absent
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _recalibrate_bn(net: torch.nn.Module, dataset: Any, cfg: SegTrainConfig, epoch: int, rank: int, world: int,
                    device: torch.device) -> None:
    """Recompute batch-norm running statistics as plain averages over ``cfg.precise_bn`` training batches.

    Why: MobileNetV3 updates them with momentum 0.01, so after a short run from scratch they lag far behind
    the weights and evaluation-mode predictions collapse to background. The batches are a function of
    ``(seed, epoch)``; the statistics are averaged over workers, so every worker holds the same network.
    """
    import torch.distributed as dist

    from nstray.models.segmentation import normalize
    from nstray.train.data import sample_positions

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = net.training
    net.train()
    with torch.no_grad():
        for b in range(cfg.precise_bn):
            keys = sample_positions(len(dataset), epoch * cfg.precise_bn + b, cfg.batch_size, rank, world, cfg.seed + 7919)
            net(normalize(torch.stack([dataset[k][0] for k in keys]).to(device)))  # as train_step sees them
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        if world > 1:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= world
    net.train(was_training)


def _evaluate(net: torch.nn.Module, cfg: SegTrainConfig, classes: list[str], rows: list[dict], index: dict[str, int],
              rank: int, world: int, device: torch.device) -> torch.Tensor:
    """This worker's share of the validation confusion matrix (images ``rank::world``)."""
    from nstray.data.coco import ImageRecord
    from nstray.models.segmentation import Segmenter, confusion_matrix
    from nstray.train.seg_data import read_example

    seg = Segmenter(net, cfg.arch, classes, cfg.size)
    cm = torch.zeros(len(classes), len(classes), dtype=torch.int64, device=device)
    was_training = net.training
    net.eval()
    for row in rows[rank::world]:
        image, target = read_example(ImageRecord.from_row(row), index, cfg.max_pixels)
        pred = seg.predict(image[None].to(device))[0]
        cm += confusion_matrix(pred, target.to(device), len(classes))
    net.train(was_training)
    return cm


def seg_train_loop(loop_config: dict) -> None:
    """Ray Train worker: build, restore, train epoch by epoch; validate, checkpoint and publish after each."""
    import torch.distributed as dist
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader

    from nstray.models.segmentation import (
        build, iou_scores, load_backbone_state, poly_lr_factor, segmenter_checkpoint, train_step,
    )
    from nstray.plots import render_loss_plot, render_metric_plot
    from nstray.train.data import StepBatches
    from nstray.train.seg_data import SegCrops

    cfg = SegTrainConfig(**loop_config["config"])
    classes: list[str] = loop_config["classes"]
    index: dict[str, int] = loop_config["index"]
    train_rows, val_rows = loop_config["train"], loop_config["val"]
    rank, world, device = ray_run.worker_setup(cfg.cpus_per_worker)

    torch.manual_seed(cfg.seed)  # same initial heads on every worker
    model = build(cfg.arch, len(classes))
    state = ray_run.restore(loop_config, STATE_FILE, STATE_FORMAT)
    start_epoch, history, best = 0, [], -math.inf
    if state is not None:
        if state.get("arch") != cfg.arch or state.get("classes") != classes:
            raise TrainingError(f"{cfg.run_uri} holds a {state.get('arch')} run with classes {state.get('classes')}; "
                                f"this one is {cfg.arch} with {classes}: use another --out or name")
        model.load_state_dict(state["model"])
        start_epoch, history, best = int(state["epoch"]), list(state["history"]), float(state["best_miou"])
    elif cfg.backbone_ref is not None:
        from nstray import weights

        path = weights.resolve(cfg.backbone_ref)  # on this node: an s3:// file is cached per node
        n = load_backbone_state(model, cfg.arch, weights.load_checkpoint(path, f"backbone weights {cfg.backbone_ref}"))
        print(f"backbone: {n} tensors from {path}", flush=True)

    if world > 1 and device.type == "cuda":  # torchvision's reference: synchronized batch norm when distributed
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = ray.train.torch.prepare_model(model)
    net = getattr(model, "module", model)
    aux = [p for n, p in net.named_parameters() if n.startswith("aux_classifier.")]
    main = [p for n, p in net.named_parameters() if not n.startswith("aux_classifier.")]
    groups = [{"params": main, "lr": cfg.lr, "base_lr": cfg.lr}]
    if aux:
        groups.append({"params": aux, "lr": cfg.lr * 10, "base_lr": cfg.lr * 10})
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    n_train = len(train_rows)
    per_epoch = math.ceil(n_train / (cfg.batch_size * world))
    total = cfg.epochs * per_epoch
    style = None
    if cfg.style_augment:
        style = {"plan": None if cfg.style_augment == "random" else cfg.style_augment, "p": cfg.style_p,
                 "classes": classes}
    dataset = SegCrops(train_rows, index, cfg.size, seed=cfg.seed, max_pixels=cfg.max_pixels,
                       styled=loop_config.get("styled") or None, styled_ratio=cfg.augment_ratio, style=style)
    sampler = StepBatches(n_train, start_epoch * per_epoch, total, cfg.batch_size, rank, world, cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.loader_workers,
                        pin_memory=device.type == "cuda")
    model.train()
    t_epoch, loss_sum, count = time.perf_counter(), torch.zeros(2, dtype=torch.float64, device=device), 0
    for step, (x, y) in zip(range(start_epoch * per_epoch, total), loader):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * poly_lr_factor(step, total, cfg.poly_power)
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)  # dropout: a function of the step
        loss = train_step(model, x.to(device, non_blocking=True), y.to(device, non_blocking=True), optimizer,
                          cfg.aux_weight)
        loss_sum += torch.tensor([float(loss), 1.0], dtype=torch.float64, device=device)
        count += 1
        if (step + 1) % per_epoch:
            continue
        epoch = (step + 1) // per_epoch
        seconds = time.perf_counter() - t_epoch  # training only: images/s leaves validation out
        if cfg.precise_bn:
            _recalibrate_bn(net, dataset, cfg, epoch, rank, world, device)
        cm = _evaluate(net, cfg, classes, val_rows, index, rank, world, device)
        if world > 1:
            dist.all_reduce(cm)
            dist.all_reduce(loss_sum)
        scores = iou_scores(cm.cpu())
        row = _history_row(epoch, step + 1, float(loss_sum[0] / loss_sum[1]), scores, classes, seconds,
                           count * cfg.batch_size * world)
        history.append(row)
        metrics = {k: v for k, v in row.items() if v is not None}
        if rank == 0:
            miou = scores["miou"] if not math.isnan(scores["miou"]) else -math.inf
            is_best = miou > best
            best = max(best, miou)
            meta = {"epoch": epoch, "step": step + 1, "data": cfg.data, "class_map": cfg.class_map,
                    "val": {"miou": row["miou"], "pixel_accuracy": row["pixel_accuracy"],
                            "per_class": {c: row[f"iou_{c}"] for c in classes}}}
            buf = io.BytesIO()
            torch.save(segmenter_checkpoint(net, cfg.arch, classes, size=cfg.size, meta=meta), buf)
            train_state = {"format": STATE_FORMAT, "version": 1, "arch": cfg.arch, "classes": classes,
                           "epoch": epoch, "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                           "optimizer": optimizer.state_dict(), "history": history, "best_miou": best}
            ray_run.report_checkpoint(metrics, {STATE_FILE: train_state, MODEL_FILE: buf.getvalue()}, epoch)
            storage.write_bytes(storage.join(cfg.run_uri, MODEL_FILE), buf.getvalue())
            if is_best:
                storage.write_bytes(storage.join(cfg.run_uri, BEST_FILE), buf.getvalue())
            ray_run.publish_curves(
                cfg.run_uri, history, {
                    "losses.png": render_loss_plot(history, f"{cfg.run_name} ({cfg.arch}): training loss"),
                    "miou.png": render_metric_plot(history, ["miou", "pixel_accuracy"], f"{cfg.run_name}: validation",
                                                   x="epoch", ylabel="score"),
                }, stem="curves", arch=cfg.arch, classes=classes)
            print(f"epoch {epoch}/{cfg.epochs}: loss {row['total']:.4g}, val mIoU {scores['miou']:.4f}, pixel acc "
                  f"{scores['pixel_accuracy']:.4f}, {row['images_per_s']:.1f} images/s"
                  f"{' (best)' if is_best else ''}; checkpoint_{epoch:07d} -> {cfg.run_uri}", flush=True)
        else:
            ray.train.report(metrics, checkpoint=None)
        t_epoch, loss_sum, count = time.perf_counter(), torch.zeros_like(loss_sum), 0


# ---------------------------------------------------------------- on the driver


def _records(cfg: SegTrainConfig, say: Callable[[str], None]) -> tuple[list, list, list[str]]:
    from nstray.train.seg_data import load_split, split_records

    train, categories, problems = load_split(cfg.data, cfg.images)
    if problems:
        say(f"note: {len(problems)} problem(s) in {cfg.data}, those images are left out; first: {problems[0]}")
    if cfg.val is not None:
        val, val_cats, val_problems = load_split(cfg.val, cfg.val_images or cfg.images)
        if val_problems:
            say(f"note: {len(val_problems)} problem(s) in {cfg.val}; first: {val_problems[0]}")
        extra = [c for c in val_cats if c not in categories]
        categories = categories + extra
    else:
        train, val = split_records(train, cfg.val_fraction if cfg.val_fraction is not None else 0.1, cfg.seed)
    return train, val, categories


def _styled_variants(cfg: SegTrainConfig, train: list, say: Callable[[str], None]) -> dict[int, list[dict]]:
    """``{training image id: [index rows of its styled variants]}`` from a dataset job's output (``--augment``):
    its ``annotations.json`` (whose labels still hold) with ``nstray.source_image_id`` per image. Variants of
    images outside the training split (validation) are never used."""
    from nstray.data.coco import load_coco, read_records
    from nstray.train.seg_data import SegDataError

    assert cfg.augment is not None
    ann = storage.join(cfg.augment, "annotations.json")
    try:
        coco = load_coco(ann)
    except Exception as exc:  # noqa: BLE001 - DatasetError / StorageError: one clear message
        raise SegDataError(f"--augment {cfg.augment}: cannot read its styled set ({exc}); give the output folder "
                           "of a `nstray run` over the training annotations") from None
    source = {int(img["id"]): int(img["nstray"]["source_image_id"]) for img in coco.get("images", [])
              if isinstance(img, dict) and isinstance(img.get("nstray"), dict) and "source_image_id" in img["nstray"]}
    records, _ = read_records(coco, cfg.augment, check_files=False, max_pixels=cfg.max_pixels, source=ann)
    train_ids = {r.image_id for r in train}
    out: dict[int, list[dict]] = {}
    for rec in records:
        src = source.get(rec.image_id)
        if src in train_ids:
            out.setdefault(src, []).append(rec.to_row())
    if not out:
        raise SegDataError(f"--augment {cfg.augment}: none of its {len(records)} styled image(s) is a variant of a "
                           "training image; style the training annotations with `nstray run` and pass its output")
    say(f"offline augmentation: {sum(map(len, out.values()))} styled variant(s) of {len(out)} training image(s), "
        f"{cfg.augment_ratio:.0%} of training samples")
    return out


def train_segmenter(config: SegTrainConfig, *, address: str | None = None,
                    notify: Callable[[str], None] | None = None) -> SegTrainSummary:
    """Train (or resume) a segmenter on Ray Train; returns where the checkpoints and curves are.

    Raises :class:`TrainConfigError` / :class:`TrainingError` / :class:`~nstray.train.seg_data.SegDataError`.
    """
    import dataclasses

    from nstray import weights
    from nstray.train.seg_data import class_index

    say = notify or log.info
    cfg = config.validate()
    cfg = dataclasses.replace(cfg, **{k: ray_run.absolute_uri(getattr(cfg, k))
                                      for k in ("data", "images", "out", "val", "val_images")})
    train, val, categories = _records(cfg, say)
    classes, index = class_index(categories, cfg.class_map, source=cfg.class_map_source or "class map")
    run = cfg.run_uri
    previous = ray_run.latest_checkpoint(run, STATE_FILE)
    summary = SegTrainSummary(
        run_uri=run, model_uri=storage.join(run, MODEL_FILE), best_uri=storage.join(run, BEST_FILE),
        curves_csv=storage.join(run, "curves.csv"), epoch=previous[0] if previous else 0,
        resumed_from=previous[0] if previous else 0, train_images=len(train), val_images=len(val), classes=classes,
    )
    if previous is not None:
        if not cfg.resume:
            raise TrainingError(f"{run} already holds a training run (last checkpoint after epoch {previous[0]}); "
                                "resume it (--resume), or pick another --out, or delete it first")
        if previous[0] >= cfg.epochs:
            say(f"{run} is already trained to epoch {previous[0]} (>= {cfg.epochs}); nothing to do "
                "(raise --epochs to train on)")
            summary.trained = False
            return summary
        say(f"resuming {run} from epoch {previous[0]}")
    elif cfg.backbone_ref is not None:  # a fresh run starts from the backbone: fail here when it is not available
        weights.resolve(cfg.backbone_ref)
    say(f"training {cfg.arch} on {len(train)} image(s) (validation {len(val)}), {len(classes)} classes, "
        f"{cfg.workers} worker(s) -> {run}")
    rows = {"train": [r.to_row() for r in train], "val": [r.to_row() for r in val],
            "styled": _styled_variants(cfg, train, say) if cfg.augment else {}}
    if cfg.style_augment and cfg.style_augment != "random":
        from nstray.assets import load_plan_assets
        from nstray.plan import load_plan

        load_plan_assets(load_plan(cfg.style_augment))  # a bad plan fails here, not in every loader process
    summary.metrics = ray_run.fit(
        seg_train_loop,
        {"config": asdict(cfg), "classes": classes, "index": index, **rows,
         "resume_uri": previous[1] if previous else None},
        out=cfg.out, name=cfg.run_name, workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker,
        gpus_per_worker=cfg.gpus_per_worker, keep_checkpoints=cfg.keep_checkpoints, max_failures=cfg.max_failures,
        address=address, notify=say,
    )
    latest = ray_run.latest_checkpoint(run, STATE_FILE)
    summary.epoch = latest[0] if latest else summary.epoch
    return summary

