"""The training loop: flat, readable, one function per step.

    reid-train --config training/configs/soccernet.yaml data.root=/data/soccernet-reid run.out_dir=runs/pb
    torchrun --nproc_per_node 4 -m training.cli train --config training/configs/soccernet.yaml   # several GPUs

A run folder holds: config.yaml (resolved), metrics.jsonl (a "run" record first: data, pose prior, selection),
state.pt (resume: model, optimiser, schedule, epoch), last.safetensors and best.safetensors (checkpoints with
calibrated threshold and metrics; "best" is the one ``run.select`` picks on ``data.valid_split``),
test_metrics.json (``data.test_split`` scored once with the selected checkpoint), plots/*.png.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from model import ReIDModel, build_model, load_checkpoint, save_checkpoint
from model.backbones import load_state_dict_file
from model.device import autocast_for, resolve_device
from training.config import OptimConfig, TrainConfig, save_config
from training.data.readers import (
    ReidImageDataset,
    ReidSplit,
    read_cuhk03,
    read_market1501,
    read_soccernet,
    read_soccernet_eval,
    subsample_train,
)
from training.data.sampler import PKSampler
from training.data.transforms import AugmentConfig, train_transform
from training.evaluation.evaluate import EvalResult, evaluate_model
from training.train.losses import ReIDCriterion

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ set-up


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes through the environment; single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def read_data(config: TrainConfig) -> ReidSplit:
    """The training list (``data.train_fraction`` of it, whole actions) and the selection split's query/gallery.

    SoccerNet: query/gallery from ``data.valid_split``. Market-1501 and CUHK03 have no validation split: their
    query/gallery is the benchmark's test set, so selecting on it is flagged in the run record.
    """
    data = config.data
    if data.format == "soccernet":
        split = read_soccernet(data.root, eval_split=data.valid_split)
    elif data.format == "market1501":
        split = read_market1501(data.root)
    elif data.format == "cuhk03":
        train_pids, eval_pids = data.cuhk03_train_pids, data.cuhk03_eval_pids
        split = read_cuhk03(data.root, train_pids=(train_pids[0], train_pids[1]),
                            eval_pids=(eval_pids[0], eval_pids[1]))
    else:  # pragma: no cover - the config only admits the three formats above
        raise ValueError(f"unknown data.format {data.format!r}; valid: soccernet, market1501, cuhk03")
    if data.test_split is not None and data.format != "soccernet":
        raise ValueError(f"data.test_split applies to SoccerNet only; {data.format}'s query/gallery is its test set")
    if data.test_split is not None and not (Path(data.root) / data.test_split).is_dir():
        # Found out now, not after the last epoch.
        raise FileNotFoundError(f"data.test_split: {Path(data.root) / data.test_split} is not a folder")
    if data.train_fraction < 1.0 and split.train:
        train, num_pids = subsample_train(split.train, data.train_fraction, data.train_fraction_seed)
        split = ReidSplit(split.name, train, split.query, split.gallery, num_pids)
    return split


POSE_WEIGHTS_HELP = (
    "pose_bilinear needs model.options.pose_weights: a converted CMU OpenPose body file (reid-import-openpose, "
    "see docs/training.md) for the pose prior the method relies on, or explicitly `none` (random pose stream) or "
    "`imagenet` (VGG-19 ImageNet front only, OpenPose stages random) to train without one"
)


def pose_prior(config: TrainConfig) -> dict[str, Any] | None:
    """Where the pose stream of a pose_bilinear run starts from, for the logs, metrics and model card.

    Returns None for other architectures and for runs initialised from a checkpoint; raises ValueError when a
    pose_bilinear run does not say (``model.options.pose_weights`` absent or null).
    """
    if config.model.name != "pose_bilinear" or config.model.init_checkpoint is not None:
        return None
    weights = config.model.options.get("pose_weights")
    if weights is None:
        raise ValueError(POSE_WEIGHTS_HELP)
    text = str(weights)
    if text == "none":
        return {"pose_weights": "none", "pose_prior": False, "source": "random initialisation"}
    if text == "imagenet":
        return {"pose_weights": "imagenet", "pose_prior": False,
                "source": "VGG-19 ImageNet conv1_1..conv4_2; CPM convs and OpenPose stages random"}
    keys = load_state_dict_file(text).keys()
    if "features.0.weight" in keys:
        return {"pose_weights": text, "pose_prior": False,
                "source": "torchvision VGG-19 file; CPM convs and OpenPose stages random"}
    return {"pose_weights": text, "pose_prior": True, "source": "OpenPose body weights"}


def build_training_model(config: TrainConfig, num_classes: int) -> ReIDModel:
    """A fresh model from the config, or one initialised from ``model.init_checkpoint`` with a new classifier."""
    input_size = (config.data.height, config.data.width)
    init = config.model.init_checkpoint
    options = dict(config.model.options)
    if options.get("pose_weights") == "none":
        options["pose_weights"] = None  # the explicit "no pose prior" of the config: random initialisation
    if init is None:
        return build_model(config.model.name, num_classes=num_classes, input_size=input_size, **options)
    source, spec = load_checkpoint(init)
    model_config = {**spec.model_config, **options, "num_classes": num_classes,
                    "input_size": list(input_size)}
    model = build_model(spec.architecture, **model_config)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"{init} does not fit {spec.architecture}: missing {missing}, unexpected {unexpected}")
    logger.info("initialised %s from %s (new classifier: %d classes)", spec.architecture, init, num_classes)
    return model


def parameter_groups(model: nn.Module, lr: float, lr_mult: dict[str, float]) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning-rate multiplier: ``lr_mult`` maps a parameter-name prefix
    ("pose", "backbone.layer1") to a factor of ``lr``; the longest matching prefix wins; the rest use ``lr``.

    Returns optimizer groups, the default group first; a prefix that matches no parameter is an error.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups: dict[str, list[nn.Parameter]] = {"": []}
    groups.update({prefix: [] for prefix in lr_mult})
    for name, param in named:
        matches = [prefix for prefix in lr_mult if name == prefix or name.startswith(prefix + ".")]
        groups[max(matches, key=len) if matches else ""].append(param)
    unmatched = [prefix for prefix in lr_mult if not groups[prefix]]
    if unmatched:
        tops = sorted({name.split(".")[0] for name, _ in named})
        raise ValueError(f"optim.lr_mult prefixes {unmatched} match no trainable parameter; top-level modules: {tops}")
    return [
        {"params": params, "lr": lr * lr_mult.get(prefix, 1.0), "name": prefix or "default"}
        for prefix, params in groups.items()
        if params
    ]


def make_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    params = parameter_groups(model, config.lr, config.lr_mult)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: adam, adamw, sgd")


def lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
    """Linear warm-up to the base rate, then cosine decay to 1% or step decay at fractions of training."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    if config.schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if config.schedule == "step":
        fraction = step / max(1, total_steps)
        return config.step_gamma ** sum(fraction >= m for m in config.step_milestones)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: cosine, step, constant")


# ------------------------------------------------------------------------------------------------- steps


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    pids: torch.Tensor,
    criterion: ReIDCriterion,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: bool = True,
    grad_clip: float | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """One optimiser step on a batch (B, 3, H, W) in [0, 1] with pids (B,); returns the loss terms as floats."""
    model.train()
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    pids = pids.to(device, non_blocking=True)
    with autocast_for(device, amp):
        output = model(images)
    terms = criterion(output, pids)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {name: float(value.detach()) for name, value in terms.items()}


def passes_per_epoch(steps: int | None, batches_per_pass: int) -> int:
    """How many sampler plans one epoch of ``steps`` batches draws from (1 when ``steps`` is None)."""
    if steps is None:
        return 1
    if batches_per_pass < 1:
        raise ValueError(f"the sampler yields no batch (len {batches_per_pass})")
    return -(-steps // batches_per_pass)


def cycle_batches(loader: DataLoader, sampler: PKSampler, epoch: int, steps: int | None) -> Iterator[Any]:
    """The loader's batches of one epoch, truncated or repeated to ``steps`` when set.

    Each pass over the loader uses a fresh sampler plan; plans are numbered epoch * passes + repeat so that
    no two passes of the whole run ever share one (numbering them epoch * 1000 + repeat, or epoch + repeat,
    made epoch 0's second pass replay epoch 1's plan).
    """
    passes = passes_per_epoch(steps, len(sampler))
    sampler.set_epoch(epoch * passes)
    if steps is None:
        yield from loader
        return
    produced = 0
    for repeat in range(passes):
        sampler.set_epoch(epoch * passes + repeat)
        for batch in loader:
            yield batch
            produced += 1
            if produced == steps:
                return
    raise RuntimeError(f"the loader produced {produced} of {steps} batches")  # only if len(sampler) lied


# ------------------------------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path | None  # the selected checkpoint (run.select on data.valid_split)
    last_checkpoint: Path | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    test_metrics: dict[str, Any] | None = None  # data.test_split, scored once with the selected checkpoint


def _unwrap(model: nn.Module) -> ReIDModel:
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    assert isinstance(inner, ReIDModel)
    return inner


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _save_eval_checkpoint(model: ReIDModel, path: Path, result: EvalResult, meta: dict[str, Any]) -> None:
    metrics = {k: v for k, v in result.metrics.items() if k != "cmc"}
    metrics["calibration"] = result.calibration.as_dict()
    save_checkpoint(model, path, threshold=result.calibration.threshold, metrics=metrics, train_meta=meta)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (every call of a resumed run), oldest first; [] when absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ranked_candidates(result: EvalResult, top: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per query the best ``top`` gallery indices among its valid candidates, and whether each is a match.

    Candidates follow the split's protocol: SoccerNet ranks only the query's own action; the Market protocol
    drops gallery items of the same identity seen by the same camera. ``top`` shrinks to the smallest
    candidate list, so every row has the same length. Returns (ranked (num_q, top), correct (num_q, top)).
    """
    q, g = result.query, result.gallery
    if result.protocol == "soccernet":
        # Integer codes: comparing object arrays of group labels elementwise breaks when a label is a tuple.
        codes: dict[Any, int] = {}
        q_codes = np.array([codes.setdefault(_hashable(x), len(codes)) for x in q.groups])
        g_codes = np.array([codes.setdefault(_hashable(x), len(codes)) for x in g.groups])
        valid = g_codes[None, :] == q_codes[:, None]
    else:
        valid = ~((g.pids[None, :] == q.pids[:, None]) & (g.camids[None, :] == q.camids[:, None]))
    top = int(min(top, valid.sum(axis=1).min())) if len(q.pids) else 0
    if top < 1:
        raise ValueError("some query has no gallery candidate: nothing to rank")
    order = np.argsort(np.where(valid, result.distmat, np.inf), axis=1, kind="stable")[:, :top]
    return order, g.pids[order] == q.pids[:, None]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | np.ndarray) else value


def write_plots(out_dir: Path, history: list[dict[str, Any]], result: EvalResult | None) -> list[Path]:
    """Loss curves (from ``history``), a CMC curve and a ranked-retrieval grid as PNG files under out_dir/plots.

    Returns the written paths.
    """
    from training.train.plots import plot_cmc, plot_loss_curves, plot_ranked_grid

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    steps = [r for r in history if "loss" in r]
    if steps:
        written.append(plot_loss_curves(steps, plots / "loss.png"))
    if result is None:
        return written
    written.append(plot_cmc(result.metrics["cmc"], plots / "cmc.png"))
    ranked, correct = ranked_candidates(result)
    written.append(plot_ranked_grid(result.query.paths, result.gallery.paths, ranked, correct, plots / "ranked.png",
                                    top=ranked.shape[1]))
    return written


def evaluate_test_split(config: TrainConfig, checkpoint: Path, device: torch.device) -> dict[str, Any]:
    """Score ``data.test_split`` once with the selected checkpoint; returns the metrics (without the CMC)."""
    assert config.data.test_split is not None
    model, spec = load_checkpoint(checkpoint, device)
    query, gallery = read_soccernet_eval(Path(config.data.root) / config.data.test_split)
    split = ReidSplit(f"soccernet/{config.data.test_split}", [], query, gallery, 0)
    result = evaluate_model(model, split, device, config.run.eval_batch_size, amp=config.run.amp)
    return {
        "split": config.data.test_split,
        "checkpoint": checkpoint.name,
        "selected_epoch": spec.train_meta.get("epoch"),
        "metrics": {k: v for k, v in result.metrics.items() if k != "cmc"},
        # The threshold is the one calibrated on the selection split, applied here as it would be in service.
        "threshold": spec.threshold,
    }


def run_record(config: TrainConfig, split: ReidSplit, info: DistInfo) -> dict[str, Any]:
    """What this run is, written first into metrics.jsonl and into every checkpoint's train_meta."""
    selection = config.data.valid_split if config.data.format == "soccernet" else "test (no validation split)"
    if config.data.format != "soccernet" and config.run.select == "best" and split.query:
        logger.warning("%s has no validation split: run.select=best picks the checkpoint on the test set, so its "
                       "figures are optimistic; use run.select=last for a fair test figure", split.name)
    return {
        "data": split.name,
        "data_summary": split.summary(),
        "train_fraction": config.data.train_fraction,
        "pose": pose_prior(config),
        "selection": {"split": selection, "select": config.run.select, "test_split": config.data.test_split},
        "world_size": info.world_size,
    }


def train(config: TrainConfig) -> TrainResult:
    """Train, evaluate on the selection split every few epochs, keep the selected checkpoint (best mAP, or the
    last) with its calibrated threshold, then score the test split once with it."""
    info = init_distributed()
    torch.manual_seed(config.run.seed + info.rank)
    np.random.seed(config.run.seed + info.rank)
    device = resolve_device(config.run.device, info.local_rank)
    out_dir = Path(config.run.out_dir)
    metrics_path = out_dir / "metrics.jsonl"
    state_path = out_dir / "state.pt"
    test_path = out_dir / "test_metrics.json"
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    split = read_data(config)
    if not split.train:
        raise ValueError(f"{split.name}: no training samples under {config.data.root}")
    record = run_record(config, split, info)
    pose = record["pose"]
    if pose is not None:
        (logger.info if pose["pose_prior"] else logger.warning)(
            "pose stream: %s (%s)%s", pose["pose_weights"], pose["source"],
            "" if pose["pose_prior"] else ": NO pose prior; convert CMU OpenPose body weights for one",
        )
    size = (config.data.height, config.data.width)
    augment = AugmentConfig(flip_p=config.data.flip_p, pad=config.data.pad, erase_p=config.data.erase_p)
    dataset = ReidImageDataset(split.train, train_transform(size, augment))
    sampler = PKSampler(
        dataset.pids,
        dataset.groups,
        P=config.sampler.identities_per_batch,
        K=config.sampler.instances_per_identity,
        seed=config.run.seed,
        within_group=config.sampler.within_group and split.name.startswith("soccernet"),
        drop_last=False,  # pad the last round across ranks rather than drop identities
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.data.workers,
                        pin_memory=device.type == "cuda", persistent_workers=config.data.workers > 0)

    model: nn.Module = build_training_model(config, split.num_train_pids).to(device)
    if config.run.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    criterion = ReIDCriterion(config.loss)
    optimizer = make_optimizer(model, config.optim)
    steps_per_epoch = config.optim.steps_per_epoch or len(sampler)
    total_steps = steps_per_epoch * config.optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config.optim))

    start_epoch, step, best_map = 0, 0, -1.0
    best_metrics: dict[str, Any] = {}
    if config.run.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, best_map = int(state["epoch"]), int(state["step"]), float(state["best_map"])
        best_metrics = json.loads(state["best_metrics"])
        logger.info("resumed from %s at epoch %d (step %d, best mAP %.4f)", state_path, start_epoch, step, best_map)
    elif info.is_main:
        # A fresh run must not append to (or later plot) the records of an earlier run in the same folder.
        for stale in (metrics_path, state_path, test_path, out_dir / "best.safetensors", out_dir / "last.safetensors"):
            stale.unlink(missing_ok=True)
    if info.is_main:
        _append_jsonl(metrics_path, {"run": record, "start_epoch": start_epoch})

    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None
        )
    meta = {**record, "config": config.as_dict()}
    history: list[dict[str, Any]] = []
    last_result: EvalResult | None = None
    best_path, last_path = out_dir / "best.safetensors", out_dir / "last.safetensors"

    progress = None
    if config.run.progress and info.is_main:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="training", unit="step")
    if start_epoch >= config.optim.epochs:
        logger.info("nothing to do: the state in %s is at epoch %d of %d", state_path, start_epoch,
                    config.optim.epochs)
    for epoch in range(start_epoch, config.optim.epochs):
        started = tick = time.perf_counter()
        images_seen = 0
        for images, pids, _, _ in cycle_batches(loader, sampler, epoch, config.optim.steps_per_epoch):
            # The rate for this step is read before it runs, so it covers the loader's wait as well.
            lr = scheduler.get_last_lr()[0]
            terms = train_step(model, images, pids, criterion, optimizer, device, config.run.amp,
                               config.optim.grad_clip, config.run.channels_last)
            scheduler.step()
            step += 1
            images_seen += len(pids)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{terms['loss']:.3f}", epoch=epoch + 1)
            if info.is_main and (step % config.run.log_every == 0 or step == total_steps):
                now = time.perf_counter()
                entry = {"step": step, "epoch": epoch + 1, "lr": lr, **terms,
                         "images_per_s": round(images_seen * info.world_size / max(now - tick, 1e-9), 2)}
                tick, images_seen = now, 0
                history.append(entry)
                _append_jsonl(metrics_path, entry)
        is_last = epoch + 1 == config.optim.epochs
        if info.is_main and ((epoch + 1) % config.run.eval_every_epochs == 0 or is_last):
            if split.query:
                last_result = evaluate_model(_unwrap(model), split, device, config.run.eval_batch_size,
                                             amp=config.run.amp)
                summary = {k: v for k, v in last_result.metrics.items() if k != "cmc"}
                entry = {"step": step, "epoch": epoch + 1, "eval": summary, "split": split.name,
                         "calibration": last_result.calibration.as_dict(),
                         "epoch_seconds": time.perf_counter() - started}
                history.append(entry)
                _append_jsonl(metrics_path, entry)
                epoch_meta = {**meta, "epoch": epoch + 1, "step": step}
                _save_eval_checkpoint(_unwrap(model), last_path, last_result, epoch_meta)
                if config.run.select == "last" or last_result.metrics["mAP"] > best_map:
                    best_map = last_result.metrics["mAP"]
                    best_metrics = summary
                    _save_eval_checkpoint(_unwrap(model), best_path, last_result, epoch_meta)
            else:
                save_checkpoint(_unwrap(model), last_path, train_meta={**meta, "epoch": epoch + 1})
        if info.is_main:
            torch.save(
                {
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "best_map": best_map,
                    "best_metrics": json.dumps(best_metrics),
                },
                state_path,
            )
    if progress is not None:
        progress.close()
    test_metrics: dict[str, Any] | None = None
    if info.is_main:
        # The whole file, so the loss plot of a resumed run covers its earlier calls too.
        write_plots(out_dir, read_metrics(metrics_path), last_result)
        finished = start_epoch < config.optim.epochs or not test_path.is_file()
        if config.data.test_split is not None and best_path.is_file() and finished:
            test_metrics = evaluate_test_split(config, best_path, device)
            test_path.write_text(json.dumps(test_metrics, indent=2))
            _append_jsonl(metrics_path, {"test": test_metrics})
            logger.info("%s (once, with %s of epoch %s): mAP %.4f rank-1 %.4f", test_metrics["split"],
                        best_path.name, test_metrics["selected_epoch"], test_metrics["metrics"]["mAP"],
                        test_metrics["metrics"]["rank1"])
        elif test_path.is_file():
            test_metrics = json.loads(test_path.read_text())
    if info.world_size > 1:
        dist.barrier()
    return TrainResult(
        out_dir=out_dir,
        best_checkpoint=best_path if best_path.is_file() else None,
        last_checkpoint=last_path if last_path.is_file() else None,
        best_metrics=best_metrics,
        history=history,
        test_metrics=test_metrics,
    )
