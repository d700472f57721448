"""Training and evaluation loops (specs/training.md).

- Data: ``build_datasets`` (built-in digits or COCO files), ``AugmentedDataset`` whose
  random flip and scale are a pure function of (seed, epoch, image index), and
  ``ResumableSampler`` (a ``DistributedSampler`` that can start mid-epoch). Together they
  make a resumed run see exactly the images and augmentations the uninterrupted run sees.
- ``train_step``: forward, assignment, loss step, non-finite guard, backward, clipping, SGD.
- ``run_inference`` / ``evaluate``: detections in original-image coordinates and COCO AP.
"""
import math
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from detector.data.coco import CocoDetection
from detector.data.collate import collate, pad_targets
from detector.data.synthetic import build_digits_dataset, default_cache_root
from detector.data.transforms import Compose, Normalize, RandomHorizontalFlip, Resize, to_original_coordinates
from detector.evaluation import coco_evaluate
from detector.modeling.detector import apply_ignore_regions, assign_batch, loss_sums, predict, reduce_loss_sums


# ----------------------------------------------------------------------------------------
# distributed helpers


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_mean(tensor):
    """Mean of ``tensor`` over processes (identity in a single process)."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / world_size()


def all_reduce_min(tensor):
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


# ----------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class DataSplits:
    """Datasets of a run: train (augmented), val (test transform), and the val COCO file."""

    train: Dataset
    val: Dataset
    val_annotations: str
    category_ids: list
    num_classes: int


def dataset_paths(config):
    """(train_images, train_annotations, val_images, val_annotations) of ``config.data``;
    generates the digits dataset when ``data.dataset == "digits"``."""
    data = config.data
    if data.dataset == "digits":
        size = data.digits_image_size
        paths = build_digits_dataset(
            data.root if data.root else default_cache_root(), seed=config.seed, num_train=data.digits_num_train,
            num_val=data.digits_num_val, image_size=(size, size), max_objects=data.digits_max_objects,
            object_size=tuple(data.digits_object_size), aspect_ratio=tuple(data.digits_aspect_ratio),
        )
        return paths.train_images, paths.train_annotations, paths.val_images, paths.val_annotations
    missing = [k for k in ("train_images", "train_annotations", "val_images", "val_annotations") if getattr(data, k) is None]
    if missing:
        raise ValueError("data.dataset=coco needs " + " ".join(f"data.{k}=PATH" for k in missing))
    return data.train_images, data.train_annotations, data.val_images, data.val_annotations


def test_transform(config):
    return Compose([Resize(config.data.test_min_size, config.data.max_size), Normalize()])


def build_datasets(config, *, val_images=None, val_annotations=None):
    """``DataSplits`` of a config; ``val_images``/``val_annotations`` replace the val split."""
    train_images, train_annotations, default_val_images, default_val_annotations = dataset_paths(config)
    val_images = val_images or default_val_images
    val_annotations = val_annotations or default_val_annotations
    train = CocoDetection(train_images, train_annotations, crowd=config.data.crowd)
    if config.data.drop_empty_train:
        keep = [i for i in range(len(train)) if len(train.get_target(i)["boxes"]) > 0]
        train_set = torch.utils.data.Subset(train, keep)
    else:
        train_set = train
    val = CocoDetection(val_images, val_annotations, transforms=test_transform(config))
    if list(val.category_ids) != list(train.category_ids):
        raise ValueError(f"{val_annotations}: its categories differ from those of {train_annotations}")
    augmented = AugmentedDataset(train_set, config.data.min_size, config.data.max_size, config.data.flip, config.seed)
    return DataSplits(augmented, val, str(val_annotations), list(train.category_ids), len(train.category_ids))


class AugmentedDataset(Dataset):
    """Training view of a dataset: Resize (a random choice of ``min_sizes``), horizontal
    flip with probability ``flip``, Normalize.

    The random draws of item ``i`` in epoch ``e`` come from a generator seeded with
    ``(seed, e, i)``: they do not depend on the worker, the process or on which items were
    loaded before, so an interrupted and resumed run sees the same augmentations.
    """

    def __init__(self, base, min_sizes, max_size, flip, seed):
        self.base = base
        self.min_sizes = tuple(min_sizes)
        self.max_size = max_size
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        image, target = self.base[index]
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch, index))
        transforms = Compose([
            Resize(self.min_sizes, self.max_size, generator=generator),
            RandomHorizontalFlip(self.flip, generator=generator),
            Normalize(),
        ])
        return transforms(image, target)


def _mix(*values):
    """A 63-bit seed from a few ints (deterministic across processes, unlike ``hash``)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) + 0x9E3779B97F4A7C15 + (state << 6) + (state >> 2))) & 0xFFFFFFFFFFFFFFFF
    return state & 0x7FFFFFFFFFFFFFFF


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle per epoch, a shard per process) that can skip
    the first ``start`` indices of its epoch, to resume in the middle of an epoch."""

    def __init__(self, dataset, *, num_replicas, rank, shuffle, seed):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self):
        return self.num_samples - self.start


def size_divisor(config):
    """Pad batches to a multiple of the coarsest stride so every level tiles the image."""
    return max(config.strides)


def train_loader(config, dataset, *, epoch, start_batch=0, workers=None):
    """The DataLoader of one training epoch, starting at batch ``start_batch``."""
    per_process = per_process_batch_size(config)
    sampler = ResumableSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=config.seed)
    sampler.set_epoch(epoch, start_batch * per_process)
    dataset.set_epoch(epoch)
    workers = config.data.num_workers if workers is None else workers
    return DataLoader(dataset, batch_size=per_process, sampler=sampler, drop_last=True, num_workers=workers,
                      collate_fn=partial(collate, size_divisor=size_divisor(config)),
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def val_loader(config, dataset, *, workers=None):
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=False) if world_size() > 1 else None
    workers = config.data.num_workers if workers is None else workers
    return DataLoader(dataset, batch_size=config.eval_batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      collate_fn=partial(collate, size_divisor=size_divisor(config)))


def per_process_batch_size(config):
    batch, processes = config.solver.batch_size, world_size()
    if batch % processes:
        raise ValueError(f"solver.batch_size={batch} is not divisible by the {processes} processes")
    return batch // processes


def iterations_per_epoch(config, dataset_length):
    """Full batches per epoch and process (the last partial batch is dropped)."""
    per_process = per_process_batch_size(config)
    per_rank_items = math.ceil(dataset_length / world_size())
    count = per_rank_items // per_process
    if count == 0:
        raise ValueError(f"the training set has {dataset_length} images, fewer than one batch of {config.solver.batch_size}")
    return count


# ----------------------------------------------------------------------------------------
# optimisation


def build_optimizer(config, model):
    """SGD with momentum; biases get ``bias_lr_factor`` x lr and ``bias_weight_decay``."""
    s = config.solver
    decay, bias = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (bias if name.endswith(".bias") else decay).append(parameter)
    bias_wd = s.weight_decay if s.bias_weight_decay is None else s.bias_weight_decay
    groups = [{"params": decay, "lr": s.lr, "weight_decay": s.weight_decay}]
    if bias:
        groups.append({"params": bias, "lr": s.lr * s.bias_lr_factor, "weight_decay": bias_wd})
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def lr_factor(config, iteration, iters_per_epoch):
    """Learning-rate multiplier at ``iteration`` (0-based): warmup x step decay.

    Linear warmup: ``ratio + (1 - ratio) * it / warmup_iters`` for it < warmup_iters (mmdet);
    constant warmup: ``ratio`` (ATSS uses 1/3). Decay: ``gamma ** (number of steps s with
    it >= s * iters_per_epoch)``.
    """
    s = config.solver
    factor = 1.0
    if s.warmup != "none" and iteration < s.warmup_iters:
        factor = s.warmup_ratio if s.warmup == "constant" else s.warmup_ratio + (1 - s.warmup_ratio) * iteration / s.warmup_iters
    decays = sum(iteration >= step * iters_per_epoch for step in s.steps)
    return factor * s.gamma ** decays


def build_scheduler(config, optimizer, iters_per_epoch):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config, iters_per_epoch=iters_per_epoch))


# ----------------------------------------------------------------------------------------
# one training step


@dataclass
class StepResult:
    """What one step did: loss terms (floats), diagnostics, and whether it was skipped."""

    terms: dict
    num_pos: float
    box_loss_pos: float
    grad_norm: float
    skipped: bool


def train_step(model, batch, config, optimizer, device, *, iteration, max_iterations):
    """Forward, assignment, loss, non-finite guard, backward, clipping and the SGD step.

    A step whose head outputs, loss or gradient norm are NaN/Inf on any process is skipped
    on every process (no optimizer update, gradients dropped, BatchNorm statistics restored)
    and reported with ``skipped=True``.
    ``box_loss_pos`` is the unweighted mean box loss of the positives (Dynamic ATSS Fig. 3).
    """
    module = model.module if hasattr(model, "module") else model
    images = batch.images.to(device, non_blocking=True)
    targets = pad_targets(batch.targets, device=device)
    buffers = [b.detach().clone() for b in module.buffers()]  # BN statistics, restored if the step is skipped
    outputs = model(images)
    priors = module.priors(tuple(images.shape[-2:]), outputs.feature_sizes, device=device)
    tensors = [t for t in (outputs.cls_logits, outputs.box_regression, outputs.quality_logits) if t is not None]
    outputs_finite = all(bool(torch.isfinite(t.detach()).all()) for t in tensors)
    if outputs_finite:  # the loss functions reject non-finite logits with a ValueError
        assignment = assign_batch(config, priors, outputs, targets, iteration, max_iterations)
        assignment = apply_ignore_regions(priors, assignment, batch.targets)  # crowd regions, if any
        sums, _ = loss_sums(config, priors, outputs, targets, assignment)
        terms = reduce_loss_sums(config, sums, all_reduce_mean if world_size() > 1 else None)
        loss = sum(terms.values())
        finite = torch.isfinite(loss.detach()).float().reshape(1)
    else:
        nan = torch.full((), math.nan, device=images.device)
        sums = {"num_pos": torch.zeros((), device=images.device), "box_plain": torch.zeros((), device=images.device)}
        terms = {"loss_cls": nan, "loss_box": nan} | ({"loss_quality": nan} if outputs.quality_logits is not None else {})
        loss = nan
        finite = torch.zeros(1, device=images.device)
    finite = all_reduce_min(finite)
    optimizer.zero_grad(set_to_none=True)
    grad_norm = math.nan
    skipped = not bool(finite.item())
    if skipped and world_size() > 1:
        # every process skips together; a zero backward keeps DDP's reducer in step
        sum(torch.nan_to_num(t, 0.0, 0.0, 0.0).sum() * 0.0 for t in tensors).backward()
        optimizer.zero_grad(set_to_none=True)
    if not skipped:
        loss.backward()
        parameters = [p for p in model.parameters() if p.grad is not None]
        max_norm = config.solver.grad_clip_norm if config.solver.grad_clip_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm) if parameters else torch.zeros(())
        grad_norm = float(norm)
        if math.isfinite(grad_norm):
            optimizer.step()
        else:
            skipped = True
            optimizer.zero_grad(set_to_none=True)
    if skipped:
        with torch.no_grad():
            for buffer, saved in zip(module.buffers(), buffers):
                buffer.copy_(saved)
    num_pos = float(sums["num_pos"])
    box_plain = float(sums["box_plain"].detach())
    return StepResult(
        terms={k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())},
        num_pos=num_pos,
        box_loss_pos=box_plain / num_pos if num_pos > 0 else 0.0,
        grad_norm=grad_norm,
        skipped=skipped,
    )


# ----------------------------------------------------------------------------------------
# inference and evaluation


@torch.no_grad()
def run_inference(model, loader, config, device, *, progress=None):
    """Detections of every image of ``loader`` in original-image coordinates.

    Returns:
        list of dicts ``{image_id, boxes (D, 4), scores (D,), labels (D,)}`` (CPU tensors),
        gathered from every process on rank 0 (other ranks get []).
    """
    module = model.module if hasattr(model, "module") else model
    was_training = module.training
    module.eval()
    results = []
    for batch in loader:
        images = batch.images.to(device)
        outputs = module(images)
        priors = module.priors(tuple(images.shape[-2:]), outputs.feature_sizes, device=device)
        for detections, target in zip(predict(config, priors, outputs, batch.image_sizes), batch.targets):
            boxes = to_original_coordinates(detections.boxes.float().cpu(), target)
            results.append({"image_id": int(target["image_id"]), "boxes": boxes,
                            "scores": detections.scores.float().cpu(), "labels": detections.labels.cpu()})
        if progress is not None:
            progress.update(len(batch.image_sizes))
    module.train(was_training)
    if world_size() > 1:
        gathered = [None] * world_size()
        dist.all_gather_object(gathered, results)
        if rank() != 0:
            return []
        unique = {}
        for part in gathered:
            for entry in part:
                unique.setdefault(entry["image_id"], entry)  # DistributedSampler pads with repeats
        results = list(unique.values())
    return results


def evaluate(model, loader, config, device, annotations, category_ids, *, verbose=True, progress=None):
    """COCO AP of ``model`` on ``loader`` (rank 0; other ranks return None)."""
    detections = run_inference(model, loader, config, device, progress=progress)
    if rank() != 0:
        return None
    return coco_evaluate(annotations, detections, category_ids, verbose=verbose)


class Throughput:
    """Images per second over a sliding window of steps."""

    def __init__(self, window=20):
        self.window = window
        self.samples = []

    def update(self, images, seconds):
        self.samples = (self.samples + [(images, seconds)])[-self.window:]

    @property
    def rate(self):
        images = sum(i for i, _ in self.samples)
        seconds = sum(s for _, s in self.samples)
        return images / seconds if seconds > 0 else 0.0


def now():
    return time.perf_counter()
