"""The assigner table: every assigner the detectors train with, in one place (specs/model.md §4).

``ASSIGNERS`` maps a config's ``assign.name`` to an ``Assigner``: the pyramid family it
needs (anchors or points), the options dataclass that ``Config.assign`` holds for it, and
the function that runs it on a batch. Each ``run_*`` function is a direct call of one
batched assigner of ``detector/assign/``: a reader (and an IDE) can follow every name from
the config to the algorithm. The config's choice lists (``configs.ASSIGNER_NAMES`` ...)
are derived from this table; adding an assigner is one options class, one ``run_*``
function and one row (specs/README.md, "How to add an assigner").

Every ``run_*`` function has the same signature::

    run(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations) -> Assignment

with ``priors`` the batch's ``Priors``, ``targets`` its ``PaddedTargets`` (gt_boxes
(B, G_max, 4), gt_valid (B, G_max), gt_labels (B, G_max)), ``pred_boxes`` the (B, A, 4)
decoded, detached predicted boxes (read only by prediction-aware assigners),
``pred_scores`` the (B, A, K) detached class probabilities (sigmoid of the classification
logits) or None (computed only for the rows with ``uses_scores``), and the 0-based
iteration of ``max_iterations`` (read only by scheduled options). It returns the batched
``Assignment`` (matched_gt (B, A), and matched_metric (B, A): for the assigners whose
soft targets train the classifier, that target; specs/losses.md §7).
"""
import math
import typing
from dataclasses import dataclass, field
from typing import Callable, Optional

from detector.assign.anchor_free import (
    assign_all_inside_batched,
    assign_centerness_batched,
    assign_fcos_batched,
    assign_pseudo_iou_batched,
    assign_scaled_box_batched,
)
from detector.assign.atss import assign_atss_batched
from detector.assign.dsl import DSL_IOU_WEIGHT, DSL_SOFT_CENTER_RADIUS, DSL_TOPK, assign_dsl_batched
from detector.assign.dynamic_atss import DYNAMIC_WEIGHT_SCHEDULES, assign_dynamic_atss_batched, dynamic_weight
from detector.assign.max_iou import assign_max_iou_batched
from detector.assign.simota import (
    SIMOTA_CANDIDATE_TOPK,
    SIMOTA_CENTER_RADIUS,
    SIMOTA_CLS_WEIGHT,
    SIMOTA_IOU_WEIGHT,
    assign_simota_batched,
)
from detector.assign.tal import TAL_ALPHA, TAL_BETA, TAL_TOPK, assign_tal_batched
from detector.conventions import ATSS_TOPK, FCOS_CENTER_RADIUS, FCOS_REGRESS_RANGES

#: Pyramid families: anchor boxes (delta-xywh box codes) or points (ltrb distances).
FAMILIES = ("anchor_based", "anchor_free")
#: Weight schedules of Dynamic ATSS: a constant weight, or Table 3's D_up / D_down.
WEIGHT_SCHEDULES = ("constant",) + tuple(DYNAMIC_WEIGHT_SCHEDULES)


# ---------------------------------------------------------------------------------------
# options: one frozen dataclass per assigner; ``name`` is fixed by the class


@dataclass(frozen=True)
class AtssOptions:
    """ATSS (specs/atss.md): ``topk`` candidates per level and GT."""

    name: str = field(default="atss", init=False)
    topk: int = ATSS_TOPK


@dataclass(frozen=True)
class DynamicAtssOptions:
    """Dynamic ATSS (specs/dynamic_atss.md): ATSS on combined IoUs w_p * PIoU + w_a * AIoU.

    ``pred_weight``/``anchor_weight`` are w_p, w_a (Eq. 1); with a schedule "up" / "down"
    the weight is multiplied by ``dynamic_weight(schedule, it, max_it)`` (Table 3's D_up,
    D_down).
    """

    name: str = field(default="dynamic_atss", init=False)
    topk: int = ATSS_TOPK
    pred_weight: float = 1.0
    anchor_weight: float = 1.0
    pred_weight_schedule: str = "constant"
    anchor_weight_schedule: str = "constant"


@dataclass(frozen=True)
class MaxIouOptions:
    """Max-IoU (RetinaNet-style, specs/max_iou.md): positive at IoU >= ``pos_iou_thr``,
    negative below ``neg_iou_thr``, ignored between; optional low-quality matches."""

    name: str = field(default="max_iou", init=False)
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    min_pos_iou: float = 0.0
    match_low_quality: bool = False


@dataclass(frozen=True)
class AllInsideOptions:
    """Anchor-free baseline (specs/anchor_free.md §3): every FCOS candidate is positive.

    ``regress_ranges`` (every anchor-free option class has it): None = FCOS's ranges of
    the configured levels with the last upper bound raised to infinity; else 2 numbers
    (lo, hi) per level, flattened.
    """

    name: str = field(default="all_inside", init=False)
    regress_ranges: Optional[tuple] = None


@dataclass(frozen=True)
class PseudoIouOptions:
    """Pseudo-IoU (specs/anchor_free.md §4): candidates whose Pseudo-IoU is > ``threshold``
    (>= with ``inclusive``) stay positive."""

    name: str = field(default="pseudo_iou", init=False)
    threshold: float = 0.4
    inclusive: bool = False
    regress_ranges: Optional[tuple] = None


@dataclass(frozen=True)
class ScaledBoxOptions:
    """Scaled box (specs/anchor_free.md §4): candidates inside the GT scaled by ``scale``."""

    name: str = field(default="scaled_box", init=False)
    scale: float = 0.6
    regress_ranges: Optional[tuple] = None


@dataclass(frozen=True)
class CenternessOptions:
    """Centerness (specs/anchor_free.md §4): candidates whose FCOS centerness is >
    ``threshold`` (>= with ``inclusive``)."""

    name: str = field(default="centerness", init=False)
    threshold: float = 0.35
    inclusive: bool = False
    regress_ranges: Optional[tuple] = None


@dataclass(frozen=True)
class FcosOptions:
    """FCOS (specs/anchor_free.md §3.3), with centre sampling of ``center_radius`` strides."""

    name: str = field(default="fcos", init=False)
    center_sampling: bool = True
    center_radius: float = FCOS_CENTER_RADIUS
    regress_ranges: Optional[tuple] = None


@dataclass(frozen=True)
class TalOptions:
    """TOOD's task-aligned assignment (specs/tal.md): alignment t = score^``alpha`` x
    IoU^``beta`` of the predicted box; each GT's ``topk`` anchors by t among those whose
    centre is inside it; soft target: t normalised per GT to its best positive's IoU.

    ``atss_warmup``: the fraction of the schedule (0 <= f < 1) trained with ATSS (``topk``
    9) before TAL starts, TOOD's warm-up (its code: the first 4 of 12 epochs, 1/3); during
    it the soft target is ATSS's anchor IoU, as TOOD's initial assigner gives.
    """

    name: str = field(default="tal", init=False)
    topk: int = TAL_TOPK
    alpha: float = TAL_ALPHA
    beta: float = TAL_BETA
    atss_warmup: float = 0.0


@dataclass(frozen=True)
class SimotaOptions:
    """SimOTA (YOLOX; specs/simota.md): candidates in a GT or within ``center_radius``
    strides of its centre; cost = ``cls_weight`` x BCE(score, one-hot) + ``iou_weight`` x
    (-log IoU) (+ a large cost outside box-and-centre); each GT takes its dynamic-k
    (sum of its ``candidate_topk`` best IoUs) cheapest anchors; soft target: the IoU."""

    name: str = field(default="simota", init=False)
    center_radius: float = SIMOTA_CENTER_RADIUS
    candidate_topk: int = SIMOTA_CANDIDATE_TOPK
    iou_weight: float = SIMOTA_IOU_WEIGHT
    cls_weight: float = SIMOTA_CLS_WEIGHT


@dataclass(frozen=True)
class DslOptions:
    """RTMDet's dynamic soft-label assignment (specs/dsl.md): priors inside a GT; cost =
    soft classification cost + ``iou_weight`` x (-log IoU) + the soft centre prior
    10^(distance / stride - ``soft_center_radius``); each GT takes its dynamic-k (sum of its
    ``topk`` best IoUs) cheapest priors; soft target: the IoU."""

    name: str = field(default="dsl", init=False)
    topk: int = DSL_TOPK
    soft_center_radius: float = DSL_SOFT_CENTER_RADIUS
    iou_weight: float = DSL_IOU_WEIGHT


# ---------------------------------------------------------------------------------------
# runners: one direct call each


def run_atss(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_atss_batched(priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid, topk=options.topk)


def run_dynamic_atss(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    pred_weight, anchor_weight = dynamic_weights(options, iteration, max_iterations)
    return assign_dynamic_atss_batched(
        priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid, pred_boxes,
        topk=options.topk, pred_weight=pred_weight, anchor_weight=anchor_weight,
    )


def run_max_iou(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_max_iou_batched(
        priors.anchors, targets.gt_boxes, targets.gt_valid, pos_iou_thr=options.pos_iou_thr,
        neg_iou_thr=options.neg_iou_thr, min_pos_iou=options.min_pos_iou, match_low_quality=options.match_low_quality,
    )


def run_tal(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    if iteration < options.atss_warmup * max_iterations:  # TOOD's warm-up: ATSS first
        return assign_atss_batched(priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid, topk=ATSS_TOPK)
    return assign_tal_batched(priors.anchors, targets.gt_boxes, targets.gt_valid, targets.gt_labels, pred_scores,
                              pred_boxes, topk=options.topk, alpha=options.alpha, beta=options.beta)


def run_simota(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_simota_batched(
        priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid, targets.gt_labels, pred_boxes,
        pred_scores, center_radius=options.center_radius, candidate_topk=options.candidate_topk,
        iou_weight=options.iou_weight, cls_weight=options.cls_weight,
    )


def run_dsl(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_dsl_batched(
        priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid, targets.gt_labels, pred_boxes,
        pred_scores, topk=options.topk, soft_center_radius=options.soft_center_radius, iou_weight=options.iou_weight,
    )


def run_all_inside(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_all_inside_batched(*_points_and_gts(priors, targets), **_levels(options, priors))


def run_pseudo_iou(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_pseudo_iou_batched(*_points_and_gts(priors, targets), **_levels(options, priors),
                                     threshold=options.threshold, inclusive=options.inclusive)


def run_scaled_box(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_scaled_box_batched(*_points_and_gts(priors, targets), **_levels(options, priors), scale=options.scale)


def run_centerness(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_centerness_batched(*_points_and_gts(priors, targets), **_levels(options, priors),
                                     threshold=options.threshold, inclusive=options.inclusive)


def run_fcos(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
    return assign_fcos_batched(*_points_and_gts(priors, targets), **_levels(options, priors),
                               center_sampling=options.center_sampling, center_radius=options.center_radius)


# ---------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Assigner:
    """One row of ``ASSIGNERS``.

    Attributes:
        name: the config's ``assign.name``.
        family: "anchor_based" (reads ``priors.anchors``) or "anchor_free" (``priors.points``).
        options: the options dataclass ``Config.assign`` holds for this assigner.
        run: ``run(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations)
            -> Assignment``.
        uses_predictions: whether ``run`` reads ``pred_boxes``.
        uses_scores: whether ``run`` reads ``pred_scores`` (the objective computes them only
            for these rows).
        soft_targets: whether its ``matched_metric`` is a soft classification target in
            [0, 1] (what ``loss.soft_target = "assigner"`` trains with).
    """

    name: str
    family: str
    options: type
    run: Callable
    uses_predictions: bool = False
    uses_scores: bool = False
    soft_targets: bool = False


ASSIGNERS = {
    row.name: row
    for row in (
        Assigner("atss", "anchor_based", AtssOptions, run_atss),
        Assigner("dynamic_atss", "anchor_based", DynamicAtssOptions, run_dynamic_atss, uses_predictions=True),
        Assigner("max_iou", "anchor_based", MaxIouOptions, run_max_iou),
        Assigner("dsl", "anchor_based", DslOptions, run_dsl, uses_predictions=True, uses_scores=True,
                 soft_targets=True),
        Assigner("tal", "anchor_based", TalOptions, run_tal, uses_predictions=True, uses_scores=True,
                 soft_targets=True),
        Assigner("simota", "anchor_based", SimotaOptions, run_simota, uses_predictions=True, uses_scores=True,
                 soft_targets=True),
        Assigner("all_inside", "anchor_free", AllInsideOptions, run_all_inside),
        Assigner("pseudo_iou", "anchor_free", PseudoIouOptions, run_pseudo_iou),
        Assigner("scaled_box", "anchor_free", ScaledBoxOptions, run_scaled_box),
        Assigner("centerness", "anchor_free", CenternessOptions, run_centerness),
        Assigner("fcos", "anchor_free", FcosOptions, run_fcos),
    )
}

#: Any assigner's options (the type of ``Config.assign``).
AssignOptions = typing.Union[tuple(row.options for row in ASSIGNERS.values())]


def assigner_names(family=None):
    """Names of the assigners of ``family`` (all when None), in table order."""
    return tuple(name for name, row in ASSIGNERS.items() if family is None or row.family == family)


def assign(options, priors, targets, pred_boxes, iteration=0, max_iterations=1, *, pred_scores=None):
    """Run the assigner of ``options`` on a batch; see the module docstring for the arguments.

    Raises:
        ValueError: the assigner reads class scores and ``pred_scores`` is None.

    Returns:
        the batched ``Assignment`` (matched_gt (B, A), matched_metric (B, A), gt_threshold
        (B, G_max), candidate_index (B, G_max, C)).
    """
    row = ASSIGNERS[options.name]
    if row.uses_scores and pred_scores is None:
        raise ValueError(f"assign: {row.name} reads the predicted class scores; pass pred_scores (B, A, K)")
    return row.run(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations)


def check_options(options, family, levels):
    """Check ``options`` against the table and the model (the family of its head, the
    pyramid ``levels``); raise ValueError naming the config key. Value ranges (``topk >= 1``,
    finite thresholds, ...) are checked by the assigner itself on its first call."""
    row = ASSIGNERS.get(getattr(options, "name", None))
    if row is None or type(options) is not row.options:
        raise ValueError(f"assign: expected the options of one of {', '.join(ASSIGNERS)}, got {options!r}")
    if row.family != family:
        raise ValueError(f"assign.name: {row.name} needs head.family={row.family}; expected one of "
                         f"{', '.join(assigner_names(family))} for head.family={family}")
    if isinstance(options, TalOptions) and not 0.0 <= options.atss_warmup < 1.0:
        raise ValueError(f"assign.atss_warmup: expected a fraction of the schedule in [0, 1), got {options.atss_warmup}")
    if isinstance(options, DynamicAtssOptions):
        for key in ("pred_weight_schedule", "anchor_weight_schedule"):
            if getattr(options, key) not in WEIGHT_SCHEDULES:
                raise ValueError(f"assign.{key}: expected one of {', '.join(WEIGHT_SCHEDULES)}; got {getattr(options, key)!r}")
    ranges = getattr(options, "regress_ranges", None)
    if ranges is not None and len(ranges) != 2 * len(levels):
        raise ValueError("assign.regress_ranges: expected 2 numbers (lo, hi) per level, flattened")
    return options


def dynamic_weights(options, iteration, max_iterations):
    """(w_p, w_a) of Dynamic ATSS at ``iteration`` (specs/dynamic_atss.md §5)."""
    weights = []
    for base, schedule in ((options.pred_weight, options.pred_weight_schedule),
                           (options.anchor_weight, options.anchor_weight_schedule)):
        factor = 1.0 if schedule == "constant" else dynamic_weight(schedule, min(iteration, max_iterations), max_iterations)
        weights.append(base * factor)
    return tuple(weights)


def regress_ranges(options, levels):
    """(lo, hi) per level: ``options.regress_ranges`` or FCOS's ranges of the pyramid
    ``levels`` with the last upper bound raised to infinity (every object gets a level)."""
    if options.regress_ranges is not None:
        flat = list(options.regress_ranges)
        return tuple((float(flat[2 * i]), float(flat[2 * i + 1])) for i in range(len(flat) // 2))
    ranges = [FCOS_REGRESS_RANGES[level - 3] for level in levels]
    ranges[-1] = (ranges[-1][0], math.inf)
    return tuple(ranges)


def _points_and_gts(priors, targets):
    return priors.points, priors.num_per_level, targets.gt_boxes, targets.gt_valid


def _levels(options, priors):
    return {"strides": priors.level_strides, "regress_ranges": regress_ranges(options, priors.levels)}
