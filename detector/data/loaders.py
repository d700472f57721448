"""Datasets and loaders of a run (specs/data.md, specs/training.md §3).

- ``build_datasets``: the built-in digits (generated on first use), COCO files or Pascal VOC
  (converted to COCO files on first use), with the
  training view ``AugmentedDataset`` whose random resize and flip are a pure function of
  (seed, epoch, image index);
- ``ResumableSampler``: a ``DistributedSampler`` that can start in the middle of an epoch;
- ``train_loader`` / ``val_loader``: the DataLoaders, batches padded to the coarsest stride.

Together they make a resumed run see exactly the images and augmentations the
uninterrupted run sees.
"""
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from detector.data.coco import CocoDetection, check_coco_dataset
from detector.data.collate import collate
from detector.data.synthetic import build_digits_dataset, default_cache_root
from detector.data.voc import build_voc_annotations
from detector.data.transforms import Compose, Normalize, RandomHorizontalFlip, Resize
from detector.runtime import rank, world_size

#: ``data.dataset`` choices: the built-in digits, COCO-format files, or a Pascal VOCdevkit.
DATASETS = ("digits", "coco", "voc")


@dataclass(frozen=True)
class DataSplits:
    """Datasets of a run: train (augmented), val (test transform), the val COCO file, and the
    K categories (COCO ids and names, in label order)."""

    train: Dataset
    val: Dataset
    val_annotations: str
    category_ids: list
    num_classes: int
    category_names: list


def dataset_paths(config):
    """(train_images, train_annotations, val_images, val_annotations) of ``config.data``;
    generates the digits dataset when ``data.dataset == "digits"``; with ``"voc"`` both image
    folders are ``data.root`` (the VOCdevkit) and the annotation files are the COCO JSONs of
    ``data.voc_train_sets`` and ``data.voc_test_sets`` (``voc.build_voc_annotations``, cached)."""
    data = config.data
    if data.dataset == "digits":
        size = data.digits_image_size
        paths = build_digits_dataset(
            data.root if data.root else default_cache_root(), seed=config.seed if data.seed is None else data.seed,
            num_train=data.digits_num_train, num_val=data.digits_num_val, image_size=(size, size),
            min_objects=data.digits_min_objects, max_objects=data.digits_max_objects,
            object_size=tuple(data.digits_object_size), aspect_ratio=tuple(data.digits_aspect_ratio),
            max_overlap=data.digits_max_overlap, single_class=data.digits_single_class,
        )
        return paths.train_images, paths.train_annotations, paths.val_images, paths.val_annotations
    if data.dataset == "voc":
        if not data.root:
            raise ValueError("data.dataset=voc needs data.root=PATH (the VOCdevkit folder holding VOC2007, VOC2012)")
        train = build_voc_annotations(data.root, data.voc_train_sets)
        val = build_voc_annotations(data.root, data.voc_test_sets)
        return data.root, train, data.root, val
    missing = [k for k in ("train_images", "train_annotations", "val_images", "val_annotations") if getattr(data, k) is None]
    if missing:
        raise ValueError("data.dataset=coco needs " + " ".join(f"data.{k}=PATH" for k in missing))
    return data.train_images, data.train_annotations, data.val_images, data.val_annotations


def check_data(config, *, workers=None, progress=True):
    """Check the train and val splits of a config completely before training (every
    annotation, every image decoded); see ``coco.check_coco_dataset``.

    Returns:
        (problems, summaries): all problems of both splits as one-line messages, and
        {"train": summary, "val": summary}.
    """
    train_images, train_annotations, val_images, val_annotations = dataset_paths(config)
    problems, summaries = [], {}
    for split, images, annotations in (("train", train_images, train_annotations), ("val", val_images, val_annotations)):
        found, summaries[split] = check_coco_dataset(images, annotations, workers=workers, progress=progress)
        problems += found
    return problems, summaries


def training_min_sizes(data):
    """The shorter sides a training image is resized to, one drawn uniformly per image:
    every integer of ``data.min_size_range`` when set, else ``data.min_size``."""
    if data.min_size_range is not None:
        low, high = data.min_size_range
        return tuple(range(low, high + 1))
    return tuple(data.min_size)


def test_transform(config):
    return Compose([Resize(config.data.test_min_size, config.data.max_size), Normalize.for_style(config.backbone.style)])


def build_datasets(config, *, val_images=None, val_annotations=None):
    """``DataSplits`` of a config; ``val_images``/``val_annotations`` replace the val split."""
    train_images, train_annotations, default_val_images, default_val_annotations = dataset_paths(config)
    val_images = val_images or default_val_images
    val_annotations = val_annotations or default_val_annotations
    train = CocoDetection(train_images, train_annotations, crowd=config.data.crowd,
                          cache_images=config.data.cache_images)
    if config.data.drop_empty_train:
        keep = [i for i in range(len(train)) if len(train.get_target(i)["boxes"]) > 0]
        train_set = torch.utils.data.Subset(train, keep)
    else:
        train_set = train
    val = CocoDetection(val_images, val_annotations, transforms=test_transform(config))
    if list(val.category_ids) != list(train.category_ids):
        raise ValueError(f"{val_annotations}: its categories differ from those of {train_annotations}")
    augmented = AugmentedDataset(train_set, training_min_sizes(config.data), config.data.max_size, config.data.flip,
                                 config.seed, normalize=Normalize.for_style(config.backbone.style))
    return DataSplits(augmented, val, str(val_annotations), list(train.category_ids), len(train.category_ids),
                      list(train.category_names))


class AugmentedDataset(Dataset):
    """Training view of a dataset: Resize (a random choice of ``min_sizes``), horizontal
    flip with probability ``flip``, then ``normalize`` (default ``Normalize()``; the
    backbone style's normalisation, ``Normalize.for_style``).

    The random draws of item ``i`` in epoch ``e`` come from a generator seeded with
    ``(seed, e, i)``: they do not depend on the worker, the process or on which items were
    loaded before, so an interrupted and resumed run sees the same augmentations.
    """

    def __init__(self, base, min_sizes, max_size, flip, seed, normalize=None):
        self.base = base
        self.normalize = Normalize() if normalize is None else normalize
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
            self.normalize,
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
