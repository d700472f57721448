"""The optimisation loop's pieces (specs/training.md §3).

- ``build_optimizer`` / ``lr_factor`` / ``build_scheduler``: SGD, warmup and the step schedule;
- ``train_step``: forward, the detector's losses (``Detector.losses``), non-finite guard,
  backward, clipping, SGD;
- ``run_inference`` / ``evaluate``: detections in original-image coordinates and COCO AP.

Data loading is ``detector/data/loaders.py``; device, seeds and processes are
``detector/runtime.py``; what a step computes is ``detector/modeling/objective.py``.
"""
import math
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from detector.data.collate import pad_targets
from detector.data.transforms import to_original_coordinates
from detector.evaluation import coco_evaluate, evaluate_metrics
from detector.runtime import all_reduce_mean, all_reduce_min, autocast, rank, unwrap_model, world_size


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
    it >= s * unit)``, ``unit`` = ``iters_per_epoch`` when steps are epochs, 1 when
    ``solver.max_iters`` makes them iterations.
    """
    s = config.solver
    factor = 1.0
    if s.warmup != "none" and iteration < s.warmup_iters:
        factor = s.warmup_ratio if s.warmup == "constant" else s.warmup_ratio + (1 - s.warmup_ratio) * iteration / s.warmup_iters
    unit = iters_per_epoch if s.max_iters is None else 1
    decays = sum(iteration >= step * unit for step in s.steps)
    return factor * s.gamma ** decays


def schedule_length(config, iters_per_epoch):
    """Iterations of the whole run: ``solver.max_iters`` when set, else ``epochs`` full epochs."""
    s = config.solver
    return s.max_iters if s.max_iters is not None else iters_per_epoch * s.epochs


def build_scheduler(config, optimizer, iters_per_epoch):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config, iters_per_epoch=iters_per_epoch))


# ----------------------------------------------------------------------------------------
# one training step


@dataclass
class StepResult:
    """What one step did: loss terms (floats), the box loss of the positives, the gradient
    norm, the assignment diagnostics (``objective.assignment_diagnostics``, floats) and
    whether it was skipped."""

    terms: dict
    num_pos: float
    box_loss_pos: float
    grad_norm: float
    skipped: bool
    diagnostics: dict


def train_step(model, batch, config, optimizer, device, *, iteration, max_iterations, scaler=None):
    """Forward, losses, non-finite guard, backward, clipping and the SGD step.

    The forward pass runs under ``solver.amp`` (``runtime.autocast``) and, with
    ``solver.channels_last``, on NHWC images; the losses (decoding, assignment, targets) see
    float32 head outputs. ``scaler``: the ``torch.amp.GradScaler`` of ``solver.amp=fp16``
    (``runtime.gradient_scaler``), or None; its overflow steps are skipped steps.

    A step whose head outputs, loss or gradient norm are NaN/Inf on any process is skipped
    on every process (no optimizer update, gradients dropped, BatchNorm statistics restored)
    and reported with ``skipped=True``. An exception raised inside the step also drops the
    gradients and restores the BatchNorm statistics before it propagates, so the model is
    exactly as after the last completed step (the optimizer only changes in its last call).
    ``box_loss_pos`` is the unweighted mean box loss of the positives (Dynamic ATSS Fig. 3).
    """
    module = unwrap_model(model)
    images = batch.images.to(device, non_blocking=True)
    if config.solver.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = pad_targets(batch.targets, device=device)
    buffers = [b.detach().clone() for b in module.buffers()]  # BN statistics, restored if the step is skipped
    try:
        return _step(model, module, images, targets, buffers, config, optimizer, iteration, max_iterations, scaler)
    except BaseException:  # an error inside the step (or Ctrl-C) leaves the model as it was before it
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(module.buffers(), buffers):
                buffer.copy_(saved)
        raise


def _step(model, module, images, targets, buffers, config, optimizer, iteration, max_iterations, scaler):
    """The body of ``train_step``; an exception escaping it is undone by ``train_step``."""
    with autocast(images.device, config.solver.amp):
        outputs = model(images)
    tensors = [t for t in (outputs.cls_logits, outputs.box_regression, outputs.quality_logits) if t is not None]
    outputs_finite = all(bool(torch.isfinite(t.detach()).all()) for t in tensors)
    if outputs_finite:  # the loss functions reject non-finite logits with a ValueError
        losses = module.losses(outputs, targets, tuple(images.shape[-2:]), iteration=iteration,
                               max_iterations=max_iterations, all_reduce_mean=all_reduce_mean if world_size() > 1 else None)
        terms = losses.terms
        loss = sum(terms.values())
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        num_pos, box_loss_pos = float(losses.num_pos), float(losses.box_loss_pos)
        diagnostics = {key: float(value) for key, value in losses.diagnostics.items()}
    else:
        nan = torch.full((), math.nan, device=images.device)
        terms = {"loss_cls": nan, "loss_box": nan} | ({"loss_quality": nan} if outputs.quality_logits is not None else {})
        loss = nan
        finite = torch.zeros(1, device=images.device)
        num_pos, box_loss_pos, diagnostics = 0.0, 0.0, {}
    finite = all_reduce_min(finite)
    optimizer.zero_grad(set_to_none=True)
    grad_norm = math.nan
    skipped = not bool(finite.item())
    if skipped and world_size() > 1:
        # every process skips together; a zero backward keeps DDP's reducer in step
        sum(torch.nan_to_num(t, 0.0, 0.0, 0.0).sum() * 0.0 for t in tensors).backward()
        optimizer.zero_grad(set_to_none=True)
    if not skipped:
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)  # clipping and the guard see the true gradients
        parameters = [p for p in model.parameters() if p.grad is not None]
        max_norm = config.solver.grad_clip_norm if config.solver.grad_clip_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm) if parameters else torch.zeros(())
        grad_norm = float(norm)
        if math.isfinite(grad_norm) and scaler is not None:
            scaler.step(optimizer)
        elif math.isfinite(grad_norm):
            optimizer.step()
        else:
            skipped = True
            optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # after an overflow: a smaller scale for the next step
    if skipped:
        with torch.no_grad():
            for buffer, saved in zip(module.buffers(), buffers):
                buffer.copy_(saved)
    return StepResult(
        terms={k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())},
        num_pos=num_pos,
        box_loss_pos=box_loss_pos,
        grad_norm=grad_norm,
        skipped=skipped,
        diagnostics=diagnostics,
    )


# ----------------------------------------------------------------------------------------
# inference and evaluation


@torch.no_grad()
def run_inference(model, loader, device, *, progress=None):
    """Detections of every image of ``loader`` in original-image coordinates.

    Returns:
        list of dicts ``{image_id, boxes (D, 4), scores (D,), labels (D,)}`` (CPU tensors),
        gathered from every process on rank 0 (other ranks get []).
    """
    module = unwrap_model(model)
    was_training = module.training
    module.eval()
    results = []
    for batch in loader:
        images = batch.images.to(device)
        outputs = module(images)
        for detections, target in zip(module.predict(outputs, tuple(images.shape[-2:]), batch.image_sizes), batch.targets):
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


def evaluate(model, loader, device, annotations, category_ids, *, verbose=True, progress=None, metric="coco"):
    """Metrics of ``model`` on ``loader`` (rank 0; other ranks return None).

    ``metric`` (``data.metric``, one of ``evaluation.METRICS``): ``"coco"`` gives COCO AP,
    AP50, AP75, APs, APm, APl; ``"voc07"`` / ``"voc_area"`` put the VOC ``mAP`` at IoU 0.5
    first, then the COCO metrics, then ``per_class_AP`` (``evaluation.evaluate_metrics``).
    """
    detections = run_inference(model, loader, device, progress=progress)
    if rank() != 0:
        return None
    if metric == "coco":
        return coco_evaluate(annotations, detections, category_ids, verbose=verbose)
    return evaluate_metrics(annotations, detections, category_ids, metric=metric, verbose=verbose)


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
