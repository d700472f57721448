"""See what an assigner did on one image (specs/training.md, "Seeing an assignment").

Usage::

    python -m detector.explain demo_atss --image-index 3
    python -m detector.explain demo --image-index 3 --checkpoint runs/demo-.../last.pth --compare atss dynamic_atss
    python -m detector.explain demo_piou --image-index 0 --point 40 52 --out piou.png
    python -m detector.explain demo_atss --image photo.png --annotations val.json --image-id 7

The assignment is the training one: the priors of the padded image, ``assign(...)`` of
``detector/modeling/assigners.py`` with the config's options, then the ignore regions of
``DetectionObjective`` (``apply_ignore_regions``). Nothing here re-implements an assigner:
the displayed intermediate values are those the assigners compute, through their public
step helpers (ATSS candidates and thresholds come from the returned ``Assignment``; the
candidate IoUs from ``candidate_ious`` / ``predicted_ious`` / ``combine_ious``; the
anchor-free candidates from the ``all_inside`` rule, which is steps 1-3 of every
anchor-free rule, and its Pseudo-IoU metric).

The drawing holds the image, the GT boxes, every candidate of each GT (one colour per
pyramid level, a ring at the anchor/point centre), the positives (filled, in their GT's
colour), the ignored locations (grey crosses), each GT's threshold in the legend; for
Pseudo-IoU the pseudo box of a chosen point; for the ATSS family one small plot per GT of
its candidates' IoUs with the threshold line (anchor, predicted and combined IoU for
Dynamic ATSS, with plain ATSS's threshold and positives for comparison).
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from detector import configs, runtime
from detector.assign.atss import candidate_ious
from detector.assign.dynamic_atss import combine_ious, predicted_ious
from detector.boxes import aligned_box_iou_unchecked, box_iou
from detector.checkpoint import load_checkpoint
from detector.conventions import IGNORE
from detector.data.coco import CocoDetection, decode_image
from detector.data.collate import collate, pad_targets
from detector.data.loaders import dataset_paths, size_divisor, test_transform
from detector.data.transforms import Normalize
from detector.modeling.assigners import (
    ASSIGNERS,
    AllInsideOptions,
    AtssOptions,
    DynamicAtssOptions,
    FcosOptions,
    MaxIouOptions,
    assign,
    dynamic_weights,
)
from detector.modeling.detector import Detector, build_priors
from detector.modeling.objective import apply_ignore_regions
from detector.pseudo_iou import pseudo_iou

#: Default colours of the pyramid levels (candidates), level 0 (stride 8) first.
LEVEL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
#: Colours of the GTs (their boxes and their positives), cycled.
GT_COLORS = ("red", "magenta", "cyan", "yellow", "lime", "deepskyblue", "orange", "white")
#: At most this many per-GT plots beside the image (the first GTs).
MAX_GT_PLOTS = 6
#: Set to 1 for tracebacks of user errors (as ``--debug``).
DEBUG_ENV = "LABELASSIGN_DEBUG"
#: Errors the command line reports as one ``error: ...`` line (exit status 2).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


@dataclass
class PointDetail:
    """The location nearest to a chosen point and its relation to one GT.

    Attributes:
        query: the (x, y) asked for, image pixels.
        location: index into the A locations (the nearest centre; lower index on ties).
        xy: (x, y) of that location's centre.
        level: its pyramid level index (0 = finest).
        gt: the GT it is shown against: its candidate GT, else the smallest GT containing
            it, else the GT of highest Pseudo-IoU; None without GTs.
        pseudo_box: (4,) xyxy, the GT-sized box centred on the location (anchor-free), or
            the location's anchor box (anchor-based); None without a GT.
        value: Pseudo-IoU of the location with ``gt`` (closed form, ``pseudo_iou.pseudo_iou``),
            or the anchor's IoU with ``gt`` (anchor-based); NaN without a GT.
        matched_gt: the location's entry of the assignment (GT index, -1 or IGNORE).
    """

    query: tuple
    location: int
    xy: tuple
    level: int
    gt: Optional[int]
    pseudo_box: Optional[np.ndarray]
    value: float
    matched_gt: int


@dataclass
class Explanation:
    """What an assigner did on one image (all arrays NumPy, on the CPU).

    Attributes:
        config_name: the config's name.
        assigner: ``assign.name``.
        family: "anchor_based" or "anchor_free".
        options: the assigner options (``Config.assign``).
        image: (H, W, 3) float RGB in [0, 1] for display (the resized image, unpadded).
        padded_size: (H_pad, W_pad), the size the priors are built for (as in training).
        gt_boxes: (G, 4) xyxy; gt_labels: (G,) int64; category_names: K names or None.
        ignore_boxes: (R, 4) xyxy ignore regions (crowd boxes).
        points: (A, 2) location centres, level-major (specs/conventions.md §3).
        anchors: (A, 4) xyxy anchors (anchor-based) or None.
        location_level: (A,) int64 level index of each location; level_strides: L strides.
        matched_gt: (A,) int64, the training assignment after the ignore regions
            (GT index, BACKGROUND -1, IGNORE -2): exactly what the loss sees.
        matched_metric: (A,) the assigner's metric with the assigned GT.
        thresholds: (G,) each GT's threshold (``Assignment.gt_threshold``; NaN where none).
        candidates: G arrays (C_g,) of location indices, each GT's candidates in the
            assigner's order (ATSS family: ``candidate_index``; anchor-free: the points of
            steps 1-3, the ``all_inside`` rule, whose GT is this one; max-IoU: the anchors
            whose IoU with the GT is at least ``neg_iou_thr``, and its low-quality matches,
            in location order; TAL, SimOTA, DSL: the selected anchors).
        candidate_values: G dicts {name: (C_g,) values} aligned with ``candidates``:
            ``anchor_iou`` (ATSS family, max-IoU), ``pred_iou`` and ``combined_iou``
            (Dynamic ATSS), ``pseudo_iou`` (anchor-free).
        weights: (w_p, w_a) of Dynamic ATSS at ``iteration``, else None.
        atss_thresholds: (G,) plain ATSS's thresholds (Dynamic ATSS only, same ``topk``).
        atss_matched_gt: (A,) plain ATSS's assignment (Dynamic ATSS only, ignore regions
            applied), for the change of positives.
        pred_boxes: (A, 4) decoded, detached predictions, or None (no model used).
        prediction_source: words for the predictions ("checkpoint ...", "random init ..."), or None.
        iteration, max_iterations: the step the scheduled options were evaluated at.
        point: ``PointDetail`` of the chosen point, or None.
        image_id: the dataset's image id, or None.
    """

    config_name: str
    assigner: str
    family: str
    options: object
    image: np.ndarray
    padded_size: tuple
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    ignore_boxes: np.ndarray
    points: np.ndarray
    anchors: Optional[np.ndarray]
    location_level: np.ndarray
    level_strides: tuple
    matched_gt: np.ndarray
    matched_metric: np.ndarray
    thresholds: np.ndarray
    candidates: list
    candidate_values: list
    weights: Optional[tuple] = None
    atss_thresholds: Optional[np.ndarray] = None
    atss_matched_gt: Optional[np.ndarray] = None
    pred_boxes: Optional[np.ndarray] = None
    prediction_source: Optional[str] = None
    iteration: int = 0
    max_iterations: int = 1
    point: Optional[PointDetail] = None
    image_id: Optional[int] = None
    category_names: Optional[list] = None

    @property
    def num_gts(self):
        return len(self.gt_boxes)

    def positives(self, gt):
        """(P_g,) int64 location indices assigned to GT ``gt``, ascending."""
        return np.flatnonzero(self.matched_gt == gt)

    @property
    def ignored(self):
        """(N,) int64 location indices marked IGNORE (inside an ignore region)."""
        return np.flatnonzero(self.matched_gt == IGNORE)

    def candidates_by_level(self, gt):
        """L arrays of the candidate location indices of GT ``gt`` on each level."""
        cand = self.candidates[gt]
        levels = self.location_level[cand]
        return [cand[levels == level] for level in range(len(self.level_strides))]

    def positive_pairs(self):
        """Set of (gt, location) pairs of the positives."""
        return {(int(self.matched_gt[a]), int(a)) for a in np.flatnonzero(self.matched_gt >= 0)}

    def describe_location(self, location):
        """``"P3 (52, 44)"``: the level (as ``P<level>``) and centre of a location."""
        x, y = self.points[location]
        level = int(round(math.log2(self.level_strides[self.location_level[location]])))
        return f"P{level} ({x:.0f}, {y:.0f})"

    def gt_name(self, gt):
        label = int(self.gt_labels[gt]) if len(self.gt_labels) > gt else -1
        if self.category_names is not None and 0 <= label < len(self.category_names):
            return f"GT {gt} ({self.category_names[label]})"
        return f"GT {gt}"


@dataclass
class Comparison:
    """Two assignments of one image side by side.

    Attributes:
        a, b: the two ``Explanation`` s.
        added: sorted (gt, location) pairs positive in ``b`` and not in ``a``.
        removed: sorted (gt, location) pairs positive in ``a`` and not in ``b``.
        figure: the side-by-side matplotlib Figure.
    """

    a: Explanation
    b: Explanation
    added: list
    removed: list
    figure: object = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------
# the assignment and its intermediate values


def config_priors(config, image_size, feature_sizes=None):
    """The ``Priors`` ``Detector(config, K).priors`` builds for a padded ``image_size``
    (H, W), without building the network (float32, CPU)."""
    priors = build_priors(config, image_size, feature_sizes, dtype=torch.get_default_dtype())
    return replace(priors, reg_max=None)  # as before: boxes decode from the anchors or the points


def uses_predictions(config):
    """Whether the config's assigner reads the model's predicted boxes."""
    return ASSIGNERS[config.assign.name].uses_predictions


def explain_assignment(config, image, target, *, model=None, iteration=0, max_iterations=1, point=None,
                       normalized=True, prediction_source=None, category_names=None):
    """The training assignment of one image and its intermediate values.

    Args:
        config: a ``Config``; ``config.assign`` names the assigner and its options.
        image: (3, H, W) float tensor as the model sees it (``test_transform(config)``:
            resized and normalised), or with ``normalized=False`` RGB in [0, 1] (then
            normalised here with ``Normalize.for_style(config.backbone.style)``).
        target: dict with ``boxes`` (G, 4) xyxy in the image's pixels, ``labels`` (G,),
            optionally ``ignore_boxes`` (R, 4) and ``image_id``.
        model: a ``Detector`` whose predictions a prediction-aware assigner (Dynamic ATSS)
            reads: run on the padded image in eval mode, decoded as ``DetectionObjective``
            does (``priors.decode`` of the float32 box regression), detached. Required for
            such an assigner; unused by the others.
        iteration, max_iterations: the training step, for scheduled options (D_up / D_down).
        point: (x, y) in image pixels: describe the nearest location (``PointDetail``).
        prediction_source: words for the title ("checkpoint ...", "random init ...").
        category_names: K class names for the labels, or None.

    Returns:
        ``Explanation``.

    Raises:
        ValueError: a prediction-aware assigner without ``model``; a model whose pyramid or
            family differ from the config's.
    """
    row = ASSIGNERS[config.assign.name]
    image = torch.as_tensor(image, dtype=torch.float32)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
    normalize = Normalize.for_style(config.backbone.style)
    display = _display_image(image, normalize) if normalized else image.clamp(0, 1).permute(1, 2, 0).numpy()
    model_input = image if normalized else normalize(image, {})[0]
    target = {"boxes": torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
              "labels": torch.as_tensor(target.get("labels", torch.zeros(len(target["boxes"]))), dtype=torch.int64),
              "ignore_boxes": torch.as_tensor(target.get("ignore_boxes", torch.zeros((0, 4))), dtype=torch.float32).reshape(-1, 4),
              "image_id": target.get("image_id")}
    batch = collate([(model_input, target)], size_divisor=size_divisor(config))
    padded_size = tuple(batch.images.shape[-2:])
    targets = pad_targets(batch.targets)

    pred_boxes = pred_scores = None
    feature_sizes = None
    if row.uses_predictions or row.uses_scores:
        if model is None:
            raise ValueError(f"assign.name={row.name} uses the model's predictions: give a model (a checkpoint's, "
                             "or a randomly initialised one)")
        pred_boxes, pred_scores, feature_sizes = _predict(model, config, batch.images, padded_size)
        prediction_source = prediction_source or "model"
    else:
        prediction_source = None  # this assigner reads no prediction
    priors = config_priors(config, padded_size, feature_sizes)

    # the training path: assign, then the ignore regions (DetectionObjective steps 2-3)
    assignment = assign(config.assign, priors, targets, pred_boxes, iteration, max_iterations,
                        pred_scores=pred_scores if row.uses_scores else None)
    final = apply_ignore_regions(priors, assignment, targets)

    level_of = np.repeat(np.arange(len(priors.num_per_level)), priors.num_per_level)
    num_gts = int(targets.gt_valid.sum())
    candidates, values = _candidate_values(config.assign, priors, targets, assignment, pred_boxes, iteration,
                                           max_iterations, num_gts)
    explanation = Explanation(
        config_name=config.name, assigner=row.name, family=row.family, options=config.assign, image=display,
        padded_size=padded_size, gt_boxes=target["boxes"].numpy(), gt_labels=target["labels"].numpy(),
        ignore_boxes=target["ignore_boxes"].numpy(), points=priors.points.numpy(),
        anchors=None if priors.anchors is None else priors.anchors.numpy(), location_level=level_of,
        level_strides=priors.level_strides, matched_gt=final.matched_gt[0].numpy(),
        matched_metric=final.matched_metric[0].numpy(), thresholds=assignment.gt_threshold[0, :num_gts].numpy(),
        candidates=candidates, candidate_values=values,
        pred_boxes=None if pred_boxes is None else pred_boxes[0].numpy(), prediction_source=prediction_source,
        iteration=iteration, max_iterations=max_iterations, image_id=target.get("image_id"),
        category_names=category_names,
    )
    if isinstance(config.assign, DynamicAtssOptions):
        explanation.weights = dynamic_weights(config.assign, iteration, max_iterations)
        atss = assign(AtssOptions(topk=config.assign.topk), priors, targets, pred_boxes, iteration, max_iterations)
        explanation.atss_thresholds = atss.gt_threshold[0, :num_gts].numpy()
        explanation.atss_matched_gt = apply_ignore_regions(priors, atss, targets).matched_gt[0].numpy()
    if point is not None:
        explanation.point = _point_detail(explanation, point)
    return explanation


def _display_image(image, normalize):
    """(3, H, W) normalised -> (H, W, 3) RGB in [0, 1] (the inverse of ``normalize``)."""
    raw = image * normalize.std + normalize.mean
    if normalize.to_bgr255:
        raw = raw.flip(-3) / 255.0
    return raw.clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def _predict(model, config, images, padded_size):
    """(1, A, 4) decoded, detached predicted boxes and (1, A, K) class probabilities of
    ``model`` on ``images`` (1, 3, H_pad, W_pad) in eval mode, and the feature sizes; the
    model's priors must equal the config's."""
    if tuple(model.levels) != tuple(config.fpn.levels) or model.config.head.family != config.head.family or (
            config.head.family == "anchor_based" and model.config.head.anchor_scale != config.head.anchor_scale):
        raise ValueError(f"the model (head.family={model.config.head.family}, fpn.levels={list(model.levels)}, "
                         f"head.anchor_scale={model.config.head.anchor_scale}) does not match the config's pyramid "
                         f"(head.family={config.head.family}, fpn.levels={list(config.fpn.levels)}, "
                         f"head.anchor_scale={config.head.anchor_scale})")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outputs = model(images.to(device))
    finally:
        model.train(was_training)
    priors = model.priors(padded_size, outputs.feature_sizes, device=outputs.box_regression.device)
    pred_boxes = priors.decode(outputs.box_regression.float()).detach()  # as DetectionObjective step 1
    pred_scores = outputs.cls_logits.detach().float().sigmoid()  # as DetectionObjective step 2
    return pred_boxes.cpu(), pred_scores.cpu(), outputs.feature_sizes


def _candidate_values(options, priors, targets, assignment, pred_boxes, iteration, max_iterations, num_gts):
    """Each GT's candidates (location indices) and their values, from the assigners' own
    step helpers; see ``Explanation.candidates`` / ``candidate_values``."""
    if isinstance(options, (AtssOptions, DynamicAtssOptions)) and assignment.candidate_index.shape[-1] > 0:
        index = assignment.candidate_index  # (1, G_max, C): the ATSS family's candidates, no -1 padding
        values = {"anchor_iou": candidate_ious(targets.gt_boxes, priors.anchors, index)}
        if isinstance(options, DynamicAtssOptions):
            pred_weight, anchor_weight = dynamic_weights(options, iteration, max_iterations)
            values["pred_iou"] = predicted_ious(targets.gt_boxes, pred_boxes.to(priors.anchors.dtype), index)
            values["combined_iou"] = combine_ious(values["pred_iou"], values["anchor_iou"], pred_weight, anchor_weight)
        candidates = [index[0, g].numpy() for g in range(num_gts)]
        return candidates, [{k: v[0, g].numpy() for k, v in values.items()} for g in range(num_gts)]
    if priors.anchors is None:  # anchor-free: steps 1-3 of the rule (FCOS's centre sampling for fcos)
        if isinstance(options, FcosOptions):
            steps = assignment
        else:
            steps = assign(AllInsideOptions(regress_ranges=options.regress_ranges), priors, targets, None)
        matched, metric = steps.matched_gt[0], steps.matched_metric[0]
        candidates = [torch.nonzero(matched == g).flatten().numpy() for g in range(num_gts)]
        return candidates, [{"pseudo_iou": metric[c].numpy()} for c in candidates]
    if isinstance(options, MaxIouOptions):  # each GT's anchors it does not leave to background
        gt_boxes = targets.gt_boxes[0, :num_gts].to(priors.anchors.dtype)
        ious = aligned_box_iou_unchecked(gt_boxes[:, None, :], priors.anchors[None, :, :])  # (G, A), as the assigner
        matched = assignment.matched_gt[0]
        # IoU >= neg_iou_thr (positive or ignored by this GT), or matched to it as a low-quality match
        candidates = [torch.nonzero((ious[g] >= options.neg_iou_thr) | (matched == g)).flatten().numpy()
                      for g in range(num_gts)]
        return candidates, [{"anchor_iou": ious[g, c].numpy()} for g, c in enumerate(candidates)]
    if assignment.candidate_index.shape[-1] > 0:  # TAL, SimOTA, DSL: each GT's selected anchors, -1 padded
        index = assignment.candidate_index[0]
        candidates = [index[g][index[g] >= 0].numpy() for g in range(num_gts)]
        return candidates, [{} for _ in range(num_gts)]
    empty = np.zeros(0, dtype=np.int64)
    return [empty for _ in range(num_gts)], [{} for _ in range(num_gts)]


def _point_detail(explanation, point):
    x, y = float(point[0]), float(point[1])
    distance = (explanation.points[:, 0] - x) ** 2 + (explanation.points[:, 1] - y) ** 2
    location = int(np.argmin(distance))  # first minimum: lower index on ties
    xy = tuple(float(v) for v in explanation.points[location])
    gt, box, value = None, None, math.nan
    if explanation.num_gts:
        gt = _gt_of_location(explanation, location)
        gt_box = explanation.gt_boxes[gt]
        if explanation.anchors is None:
            half_w, half_h = (gt_box[2] - gt_box[0]) / 2, (gt_box[3] - gt_box[1]) / 2
            box = np.array([xy[0] - half_w, xy[1] - half_h, xy[0] + half_w, xy[1] + half_h], dtype=np.float32)
            value = float(pseudo_iou(torch.tensor([xy]), torch.as_tensor(gt_box)[None])[0, 0])
        else:
            box = explanation.anchors[location]
            value = float(box_iou(torch.as_tensor(gt_box)[None], torch.as_tensor(box)[None])[0, 0])
    return PointDetail((x, y), location, xy, int(explanation.location_level[location]), gt, box, value,
                       int(explanation.matched_gt[location]))


def _gt_of_location(explanation, location):
    """The GT a location is shown against (``PointDetail.gt``)."""
    if explanation.matched_gt[location] >= 0:
        return int(explanation.matched_gt[location])
    for g, cand in enumerate(explanation.candidates):
        if location in cand:
            return g
    boxes = explanation.gt_boxes
    x, y = explanation.points[location]
    inside = np.flatnonzero((boxes[:, 0] < x) & (x < boxes[:, 2]) & (boxes[:, 1] < y) & (y < boxes[:, 3]))
    if len(inside):
        areas = (boxes[inside, 2] - boxes[inside, 0]) * (boxes[inside, 3] - boxes[inside, 1])
        return int(inside[np.argmin(areas)])
    values = pseudo_iou(torch.as_tensor(explanation.points[location])[None], torch.as_tensor(boxes))[:, 0]
    return int(torch.argmax(values))


# ---------------------------------------------------------------------------------------
# drawing


def draw_explanation(explanation, *, level_colors=LEVEL_COLORS, show_background=False, title=None, figure=None):
    """The picture of an ``Explanation``: the image panel, and for the ATSS family, max-IoU
    and Pseudo-IoU one small plot per GT of its candidates' values with the threshold line.

    Artists carry ``gid`` s naming what they show (``positives-gt{g}``,
    ``candidates-gt{g}-level{l}``, ``ignored``, ``gt-box{g}``, ``pseudo-box``,
    ``threshold-gt{g}``), so a test or a notebook can find the drawn data.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    _check_level_colors(level_colors, explanation)
    plotted = [g for g in range(explanation.num_gts) if explanation.candidate_values[g]][:MAX_GT_PLOTS]
    if figure is None:
        figure = Figure(figsize=(7.5 + (4.2 if plotted else 0), max(7.0, 2.3 * len(plotted))), layout="constrained")
    if plotted:
        grid = figure.add_gridspec(len(plotted), 2, width_ratios=(7.5, 4.2))
        image_axis = figure.add_subplot(grid[:, 0])
        for row, g in enumerate(plotted):
            _draw_candidate_plot(figure.add_subplot(grid[row, 1]), explanation, g, level_colors)
    else:
        image_axis = figure.add_subplot(1, 1, 1)
    draw_image_panel(image_axis, explanation, level_colors=level_colors, show_background=show_background)
    figure.suptitle(title or _title(explanation), fontsize=11)
    return figure


def draw_image_panel(axis, explanation, *, level_colors=LEVEL_COLORS, show_background=False, changes=None):
    """Draw the image, GTs, candidates, positives and ignored locations of ``explanation``
    on ``axis``; ``changes`` = (added, removed) (gt, location) pairs marks a comparison."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    e = explanation
    height, width = e.image.shape[:2]
    pad_h, pad_w = e.padded_size
    axis.set_facecolor("0.35")
    axis.imshow(e.image, extent=(0, width, height, 0), interpolation="nearest")
    axis.set_xlim(0, pad_w)
    axis.set_ylim(pad_h, 0)
    axis.set_aspect("equal")
    size = {level: 14 + 10 * level for level in range(len(e.level_strides))}
    handles = []
    if show_background:
        background = np.flatnonzero(e.matched_gt == -1)
        axis.scatter(e.points[background, 0], e.points[background, 1], s=3, c="0.8", alpha=0.3, linewidths=0,
                     gid="background")
    for level, stride in enumerate(e.level_strides):
        handles.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none", markeredgecolor=level_colors[level],
                              markersize=7, label=f"candidate, stride {stride}"))
    for g in range(e.num_gts):
        color = GT_COLORS[g % len(GT_COLORS)]
        x1, y1, x2, y2 = e.gt_boxes[g]
        axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2, gid=f"gt-box{g}"))
        axis.text(x1, y1 - 1, str(g), color=color, fontsize=9, fontweight="bold", va="bottom")
        for level, cand in enumerate(e.candidates_by_level(g)):
            if len(cand):
                axis.scatter(e.points[cand, 0], e.points[cand, 1], s=size[level] * 3, facecolors="none",
                             edgecolors=level_colors[level], linewidths=1.2, gid=f"candidates-gt{g}-level{level}")
        positives = e.positives(g)
        if len(positives):
            axis.scatter(e.points[positives, 0], e.points[positives, 1],
                         s=[2 * size[level] for level in e.location_level[positives]], c=color, edgecolors="k",
                         linewidths=1.3, zorder=3, gid=f"positives-gt{g}")
        handles.append(Line2D([], [], linestyle="", marker="s", markerfacecolor="none", markeredgecolor=color,
                              markersize=9, label=_gt_label(e, g, len(positives))))
    ignored = e.ignored
    for region in e.ignore_boxes:
        x1, y1, x2, y2 = region
        axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="0.6", linestyle="--", linewidth=1.2))
    if len(ignored):
        axis.scatter(e.points[ignored, 0], e.points[ignored, 1], s=16, marker="x", c="0.6", linewidths=1, gid="ignored")
        handles.append(Line2D([], [], linestyle="", marker="x", color="0.6", label=f"ignored ({len(ignored)})"))
    handles.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="0.9", markeredgecolor="k",
                          label="positive (its GT's colour)"))
    if changes is not None:
        added, removed = changes
        if added:  # a white-and-black ring around the new positive (its GT colour stays visible)
            where = e.points[[a for _, a in added]]
            axis.scatter(where[:, 0], where[:, 1], s=150, facecolors="none", edgecolors="white", linewidths=3.0, zorder=4)
            axis.scatter(where[:, 0], where[:, 1], s=150, facecolors="none", edgecolors="k", linewidths=1.0, zorder=4,
                         gid="added")
            handles.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none", markeredgecolor="k",
                                  markersize=10, label=f"positive added here ({len(added)})"))
        if removed:
            where = e.points[[a for _, a in removed]]
            axis.scatter(where[:, 0], where[:, 1], s=60, marker="X", c="red", edgecolors="k", linewidths=0.6, zorder=4,
                         gid="removed")
            handles.append(Line2D([], [], linestyle="", marker="X", markerfacecolor="red", markeredgecolor="k",
                                  label=f"positive removed here ({len(removed)})"))
    if e.point is not None:
        handles += _draw_point(axis, e)
    handles.append(Patch(facecolor="0.35", label="padding (pixels of the resized image)"))
    axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.03), ncol=2, fontsize=7, frameon=False)


def _draw_point(axis, e):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    p = e.point
    axis.scatter([p.xy[0]], [p.xy[1]], s=120, marker="*", c="white", edgecolors="k", zorder=5, gid="point")
    if p.pseudo_box is None:
        return [Line2D([], [], linestyle="", marker="*", markerfacecolor="white", markeredgecolor="k",
                       label=f"point {e.describe_location(p.location)}: no GT")]
    x1, y1, x2, y2 = p.pseudo_box
    axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linestyle=":", linewidth=1.8,
                             gid="pseudo-box"))
    kind = "pseudo-IoU" if e.anchors is None else "anchor IoU"
    return [Line2D([], [], linestyle=":", marker="*", color="white", markeredgecolor="k",
                   label=f"point {e.describe_location(p.location)}: {kind} {p.value:.3f} with GT {p.gt}")]


def _draw_candidate_plot(axis, e, g, level_colors):
    """One GT's candidates: their values against their order (level by level), the
    threshold line, positives filled."""
    values = e.candidate_values[g]
    cand = e.candidates[g]
    order = np.arange(len(cand))
    positive = e.matched_gt[cand] == g
    levels = e.location_level[cand]
    color = GT_COLORS[g % len(GT_COLORS)]
    series = [("anchor_iou", "o", "anchor IoU"), ("pred_iou", "^", "predicted IoU"),
              ("combined_iou", "s", "combined IoU"), ("pseudo_iou", "o", "pseudo-IoU")]
    primary = "combined_iou" if "combined_iou" in values else next(iter(values))  # what the threshold applies to
    edges = [level_colors[level] for level in levels]
    for key, marker, words in series:
        if key in values:
            faces = np.where(positive, color, "none") if key == primary else "none"
            axis.scatter(order, values[key], marker=marker, s=24, facecolors=faces, edgecolors=edges, linewidths=1.0,
                         label=words + (" (filled: positive)" if key == primary else ""), gid=f"{key}-gt{g}")
    threshold = float(e.thresholds[g])
    if (e.anchors is not None or e.assigner == "pseudo_iou") and math.isfinite(threshold):
        axis.axhline(threshold, color=color, linewidth=1.4, gid=f"threshold-gt{g}", label=f"threshold {threshold:.3f}")
    if isinstance(e.options, MaxIouOptions):
        axis.axhline(e.options.neg_iou_thr, color="0.4", linestyle="--", linewidth=1.0,
                     label=f"negative below {e.options.neg_iou_thr:.3f}")
    if e.atss_thresholds is not None and math.isfinite(float(e.atss_thresholds[g])):
        axis.axhline(float(e.atss_thresholds[g]), color="0.4", linestyle="--", linewidth=1.0,
                     label=f"ATSS threshold {float(e.atss_thresholds[g]):.3f} (anchor IoU)")
    for boundary in np.flatnonzero(np.diff(levels)) + 0.5:
        axis.axvline(boundary, color="0.7", linestyle=":", linewidth=0.8)
    heading = f"{e.gt_name(g)}: {int(positive.sum())} of {len(cand)} candidates positive"
    if e.atss_matched_gt is not None:
        atss = e.atss_matched_gt[cand] == g
        heading += f"\nATSS: {int(atss.sum())} (here +{int((positive & ~atss).sum())} -{int((atss & ~positive).sum())})"
        if "combined_iou" in values and e.weights is not None:
            heading += f", w_p={e.weights[0]:g}, w_a={e.weights[1]:g}"
    axis.set_title(heading, fontsize=8, color="k")
    order_words = "in location order" if isinstance(e.options, MaxIouOptions) else "nearest first"
    axis.set_xlabel(f"candidate (level by level, {order_words})", fontsize=7)
    axis.set_ylabel("IoU", fontsize=7)
    axis.tick_params(labelsize=7)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=6, loc="best")


def _gt_label(e, g, num_positives):
    text = f"{e.gt_name(g)}: {num_positives} pos"
    threshold = float(e.thresholds[g]) if g < len(e.thresholds) else math.nan
    if math.isfinite(threshold):
        text += f", threshold {threshold:.3f}"
    if e.atss_thresholds is not None and math.isfinite(float(e.atss_thresholds[g])):
        text += f" (ATSS {float(e.atss_thresholds[g]):.3f})"
    return text


def _title(e):
    parts = [f"{e.config_name}: {e.assigner}"]
    if e.image_id is not None:
        parts.append(f"image {e.image_id}")
    if e.prediction_source:
        parts.append(f"predictions: {e.prediction_source}")
    if e.max_iterations > 1 or e.iteration:
        parts.append(f"iteration {e.iteration} of {e.max_iterations}")
    return ", ".join(parts)


def _check_level_colors(level_colors, e):
    if len(level_colors) < len(e.level_strides):
        raise ValueError(f"--level-colors: expected {len(e.level_strides)} colours (one per level), got {len(level_colors)}")
    from matplotlib.colors import is_color_like

    bad = [c for c in level_colors if not is_color_like(c)]
    if bad:
        raise ValueError(f"--level-colors: not a colour: {bad[0]!r}")


# ---------------------------------------------------------------------------------------
# comparison


def compare(config_a, config_b, image, target, *, model=None, iteration=0, max_iterations=1, point=None,
            normalized=True, prediction_source=None, category_names=None, level_colors=LEVEL_COLORS):
    """Two configs' assignments of one image, side by side.

    Arguments as ``explain_assignment`` (``model`` is used by whichever side needs predictions).

    Returns:
        ``Comparison`` with the two explanations, the (gt, location) pairs ``b`` adds and
        removes, and the figure (``b``'s panel marks them).

    Raises:
        ValueError: the two configs' pyramids give different locations.
    """
    from matplotlib.figure import Figure

    options = dict(model=model, iteration=iteration, max_iterations=max_iterations, point=point, normalized=normalized,
                   prediction_source=prediction_source, category_names=category_names)
    a = explain_assignment(config_a, image, target, **options)
    b = explain_assignment(config_b, image, target, **options)
    if a.points.shape != b.points.shape or not np.array_equal(a.points, b.points):
        raise ValueError("compare: the two configs have different pyramids (fpn.levels), so their locations differ")
    added, removed = assignment_changes(a, b)
    figure = Figure(figsize=(14, 7.5), layout="constrained")
    axes = figure.subplots(1, 2)
    draw_image_panel(axes[0], a, level_colors=level_colors)
    draw_image_panel(axes[1], b, level_colors=level_colors, changes=(added, removed))
    axes[0].set_title(_title(a), fontsize=9)
    axes[1].set_title(_title(b) + f": +{len(added)} -{len(removed)} positives", fontsize=9)
    return Comparison(a, b, added, removed, figure)


def assignment_changes(a, b):
    """(added, removed): sorted (gt, location) positives of ``b`` not in ``a``, and of ``a`` not in ``b``."""
    pairs_a, pairs_b = a.positive_pairs(), b.positive_pairs()
    return sorted(pairs_b - pairs_a), sorted(pairs_a - pairs_b)


def describe_changes(comparison):
    """Lines per GT: positives of each side and the locations ``b`` adds and removes."""
    a, b = comparison.a, comparison.b
    lines = []
    for g in range(a.num_gts):
        added = [loc for gt, loc in comparison.added if gt == g]
        removed = [loc for gt, loc in comparison.removed if gt == g]
        line = (f"{a.gt_name(g)}: {a.assigner} {len(a.positives(g))} positives, {b.assigner} {len(b.positives(g))}: "
                f"+{len(added)} -{len(removed)}")
        if added:
            line += "; added " + ", ".join(a.describe_location(loc) for loc in added)
        if removed:
            line += "; removed " + ", ".join(a.describe_location(loc) for loc in removed)
        lines.append(line)
    return lines


def describe(explanation):
    """Lines per GT: box, candidates, positives and threshold."""
    e = explanation
    lines = []
    for g in range(e.num_gts):
        box = ", ".join(f"{v:.1f}" for v in e.gt_boxes[g])
        line = f"{e.gt_name(g)} [{box}]: {len(e.candidates[g])} candidates, {len(e.positives(g))} positives"
        if math.isfinite(float(e.thresholds[g])):
            line += f", threshold {float(e.thresholds[g]):.4f}"
        lines.append(line)
    if len(e.ignored):
        lines.append(f"ignored locations: {len(e.ignored)}")
    if e.point is not None and e.point.gt is not None:
        kind = "pseudo-IoU" if e.anchors is None else "anchor IoU"
        lines.append(f"point {e.describe_location(e.point.location)}: {kind} {e.point.value:.4f} with GT {e.point.gt}, "
                     f"assigned {e.point.matched_gt}")
    return lines


# ---------------------------------------------------------------------------------------
# command line


def _resolve(config, spec, overrides):
    """A compared side: an assigner name (``assign.name=spec`` on the config, switching
    ``head.family`` when that assigner needs the other one) or a config name."""
    if spec in ASSIGNERS:
        family = ASSIGNERS[spec].family
        extra = [f"head.family={family}"] if family != config.head.family else []
        return configs.apply_overrides(config, extra + [f"assign.name={spec}"])
    if spec in configs.CONFIGS:
        return configs.get_config(spec, overrides)
    raise ValueError(f"--compare: {spec!r} is neither an assigner ({', '.join(ASSIGNERS)}) nor a config name")


def load_item(config, *, image_index=None, split="val", image=None, annotations=None, image_id=None):
    """(image (3, H, W) as the model sees it, target, category names) of one image:
    item ``image_index`` of the config's ``split`` (test transform, no augmentation), or
    the file ``image`` with its annotations (image ``image_id``) in the COCO file
    ``annotations``. Crowd boxes follow ``data.crowd``."""
    if image_index is not None:
        if split not in ("train", "val"):
            raise ValueError(f"--split: expected train or val, got {split!r}")
        train_images, train_annotations, val_images, val_annotations = dataset_paths(config)
        images, annotations = (train_images, train_annotations) if split == "train" else (val_images, val_annotations)
        dataset = CocoDetection(images, annotations, transforms=test_transform(config), crowd=config.data.crowd)
        if not 0 <= image_index < len(dataset):
            raise ValueError(f"--image-index {image_index}: the {split} split has {len(dataset)} images (0..{len(dataset) - 1})")
        item, target = dataset[image_index]
        return item, target, list(dataset.category_names)
    dataset = CocoDetection(Path(image).parent, annotations, crowd=config.data.crowd)
    if image_id not in dataset.image_ids:
        raise ValueError(f"--image-id {image_id}: not an image of {annotations}")
    index = dataset.image_ids.index(image_id)
    target = dataset.get_target(index)
    pixels = decode_image(Path(image), image_id)
    if tuple(pixels.shape[1:]) != tuple(target["orig_size"]):
        raise ValueError(f"{image}: image is {pixels.shape[1]}x{pixels.shape[2]} (HxW) but {annotations} says "
                         f"{target['orig_size'][0]}x{target['orig_size'][1]} for image id {image_id}")
    item, target = test_transform(config)(pixels, target)
    return item, target, list(dataset.category_names)


def _model(config, configs_used, checkpoint, random_init, num_classes):
    """(model or None, words for the predictions) for the configs that need predictions."""
    needing = [c.assign.name for c in configs_used if uses_predictions(c)]
    if checkpoint is not None:
        from detector.predict import model_from_state

        model, _, _, _ = model_from_state(load_checkpoint(checkpoint), device="cpu")
        return model, f"checkpoint {checkpoint}"
    if not needing:
        return None, None
    if not random_init:
        raise ValueError(f"assign.name={needing[0]} uses the model's predictions: give --checkpoint CKPT, or "
                         "--random-init to predict with a randomly initialised model")
    torch.manual_seed(config.seed)
    return Detector(config, num_classes), f"random init (seed {config.seed})"


def run(args):
    """The command: explain (or compare) and write the PNG; return the written path."""
    if (args.image_index is None) == (args.image is None):
        raise ValueError("give either --image-index N or --image PATH --annotations FILE --image-id ID")
    if args.image is not None and (args.annotations is None or args.image_id is None):
        raise ValueError("--image PATH needs --annotations FILE and --image-id ID")
    if args.max_iterations < 1 or not 0 <= args.iteration <= args.max_iterations:
        raise ValueError(f"--iteration {args.iteration} --max-iterations {args.max_iterations}: expected "
                         "0 <= iteration <= max-iterations and max-iterations >= 1")
    if args.compare is not None and not 1 <= len(args.compare) <= 2:
        raise ValueError(f"--compare: expected 1 or 2 names (assigners or configs), got {len(args.compare)}")
    config = configs.get_config(args.config, args.overrides)
    runtime.set_threads(config.threads)
    sides = None
    if args.compare:
        specs = [None] + list(args.compare) if len(args.compare) == 1 else list(args.compare)
        sides = [config if spec is None else _resolve(config, spec, args.overrides) for spec in specs]
    image, target, names = load_item(config, image_index=args.image_index, split=args.split, image=args.image,
                                     annotations=args.annotations, image_id=args.image_id)
    model, source = _model(config, sides or [config], args.checkpoint, args.random_init, len(names))
    colors = tuple(args.level_colors) if args.level_colors else LEVEL_COLORS
    options = dict(model=model, point=args.point, prediction_source=source, category_names=names,
                   iteration=args.iteration, max_iterations=args.max_iterations)
    image_id = target.get("image_id")
    if sides:
        result = compare(sides[0], sides[1], image, target, level_colors=colors, **options)
        figure = result.figure
        figure.suptitle(f"{config.name}, image {image_id}: {result.a.assigner} vs {result.b.assigner}", fontsize=11)
        lines = describe_changes(result)
        default = f"compare-{image_id}-{result.a.assigner}-vs-{result.b.assigner}.png"
    else:
        explanation = explain_assignment(config, image, target, **options)
        figure = draw_explanation(explanation, level_colors=colors)
        lines = describe(explanation)
        default = f"explain-{image_id}-{explanation.assigner}.png"
    out = Path(args.out) if args.out is not None else Path(default)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110, format="png")
    for line in lines:
        print(line)
    print(f"wrote {out}")
    return out


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m detector.explain",
        description="Draw what an assigner did on one image: GTs, candidates per level, positives, ignored "
                    "locations, thresholds (the training assignment path).")
    parser.add_argument("config", help="configuration name (see python -m detector.train --list)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. assign.name=dynamic_atss")
    parser.add_argument("--image-index", type=int, default=None, metavar="N", help="item N of the config's dataset")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="split of --image-index (default val)")
    parser.add_argument("--image", type=Path, default=None, help="an image file (with --annotations and --image-id)")
    parser.add_argument("--annotations", type=Path, default=None, help="COCO annotation file holding --image-id")
    parser.add_argument("--image-id", type=int, default=None, help="the COCO image id of --image")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a .pth of detector.train (or a run directory): its model predicts for Dynamic ATSS")
    parser.add_argument("--random-init", action="store_true",
                        help="without --checkpoint, predict with a randomly initialised model (seed = the config's)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="NAME",
                        help="one or two assigner names (assign.name values) or config names: draw both side by side "
                             "and print the positives the second adds and removes per GT")
    parser.add_argument("--point", type=float, nargs=2, default=None, metavar=("X", "Y"),
                        help="describe the location nearest to (X, Y), resized-image pixels (pseudo box and value)")
    parser.add_argument("--iteration", type=int, default=0, metavar="N",
                        help="the training step scheduled weights (D_up / D_down) are evaluated at (default 0)")
    parser.add_argument("--max-iterations", type=int, default=1, metavar="M", help="the run's length (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="output PNG (default: explain-ID-ASSIGNER.png)")
    parser.add_argument("--level-colors", nargs="+", default=None, metavar="COLOR",
                        help=f"one matplotlib colour per pyramid level (default: {' '.join(LEVEL_COLORS)})")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of data and configuration errors (or set {DEBUG_ENV}=1)")
    return parser


def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return run(args)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
