"""Named training configurations (specs/training.md §1).

A configuration is a tree of frozen dataclasses holding plain data: no registry, no
indirection. ``CONFIGS`` maps each name to a ``Config``; ``detector/paper_rows.py`` maps
every row of the papers' tables to the configs that reproduce it (docs/configs.md prints
both). ``Config.assign`` holds the options dataclass of one assigner of the table in
``detector/modeling/assigners.py`` (``AtssOptions``, ``PseudoIouOptions``, ...). ``apply_overrides`` changes fields from the command line with ``key.sub=value``
strings, type-checked against the dataclass; ``assign.name=X`` switches to the defaults of
assigner X, whose own keys can then be set (``assign.name=pseudo_iou assign.threshold=0.5``).

Every choice list checked here is defined once, next to the code that implements the
choices (losses, post-processing, backbones, the assigner table, the data loaders).

Sizes are in pixels of the resized image; learning-rate steps are in epochs, or in iterations
when ``solver.max_iters`` is set (the COCO paper configs, as their official codes).
"""
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, replace

from detector.conventions import (
    DEFAULT_ANCHOR_RATIOS,
    DEFAULT_ANCHOR_SCALES,
    DELTA_STDS,
    RETINANET_ANCHOR_RATIOS,
    RETINANET_ANCHOR_SCALES,
    RETINANET_DELTA_STDS,
    RETINANET_OCTAVE_BASE_SCALE,
)
from detector.data.loaders import DATASETS
from detector.data.voc import parse_voc_set
from detector.evaluation import METRICS
from detector.losses import BOX_LOSSES, CLS_LOSSES, DELTA_BOX_LOSSES, QUALITY_BRANCHES, SOFT_TARGETS
from detector.modeling.assigners import (
    ASSIGNERS,
    FAMILIES,
    AllInsideOptions,
    AssignOptions,
    AtssOptions,
    CenternessOptions,
    DynamicAtssOptions,
    FcosOptions,
    MaxIouOptions,
    PseudoIouOptions,
    ScaledBoxOptions,
    SimotaOptions,
    TalOptions,
    DslOptions,
    assigner_names,
    check_options,
)
from detector.modeling.backbone import BACKBONE_STYLES, BACKBONES, NORMS
from detector.postprocess import SCORE_MODES
from detector.runtime import AMP_MODES

#: ``assign.name`` choices per ``head.family``, from the assigner table.
ANCHOR_BASED_ASSIGNERS = assigner_names("anchor_based")
ANCHOR_FREE_ASSIGNERS = assigner_names("anchor_free")
WARMUPS = ("linear", "constant", "none")
CROWDS = ("drop", "ignore")
P6P7_INPUTS = ("p5", "c5")


@dataclass(frozen=True)
class BackboneConfig:
    """torchvision ResNet/ResNeXt (or the small ``tiny`` ResNet for CPU demos).

    ``weights``: path of a local weights file (a torchvision-layout state dict, or a
    detectron / Caffe2 ``.pkl``; specs/model.md §1.1) or None for random initialisation;
    nothing is ever downloaded. ``frozen_stages``: -1 trains everything,
    0 freezes the stem, k >= 1 the stem and stages 1..k (mmdet's convention; ATSS and
    Pseudo-IoU freeze the stem and stage 1). ``tiny_widths``/``tiny_blocks``: channels and
    BasicBlocks per stage of the ``tiny`` backbone. ``style``: "pytorch" (torchvision) or
    "caffe" (MSRA/detectron ResNet: stride in the 1x1 conv, BGR 0-255 input; specs/model.md §1.1).
    ``dcn_stages``: stages (1..4 = torchvision ``layer1``..``layer4`` = res2..res5) whose
    Bottleneck 3x3 convs are modulated deformable convs (DCNv2; specs/model.md §1.2); the
    papers' "-DCN" rows are ``backbone.dcn_stages=2,3,4`` (res3-res5), ``()`` is none.
    """

    name: str = "resnet50"
    weights: typing.Optional[str] = None
    norm: str = "frozen_bn"
    frozen_stages: int = 1
    gn_groups: int = 32
    tiny_widths: tuple = (16, 32, 64, 128)
    tiny_blocks: tuple = (1, 1, 1, 1)
    style: str = "pytorch"
    dcn_stages: tuple = ()


@dataclass(frozen=True)
class FPNConfig:
    """FPN over C3-C5. ``levels`` are pyramid levels (stride 2**level) in 3..7; P6/P7
    come from ``p6p7_input`` ("p5": RetinaNet/mmdet ``on_output``; "c5": FCOS's C5)."""

    out_channels: int = 256
    levels: tuple = (3, 4, 5, 6, 7)
    p6p7_input: str = "p5"


@dataclass(frozen=True)
class HeadConfig:
    """The shared head: two towers of ``depth`` x (3x3 conv + GN + ReLU) of ``width``.

    ``type``: one of ``modeling.head.HEAD_TYPES`` (specs/model.md §3.1): "atss" (the ATSS /
    Pseudo-IoU head: 4 box values, optional quality branch), "gfl" (GFL: the box is the
    integral of ``4 x (reg_max + 1)`` distribution logits; QFL + GIoU + DFL) or "gflv2"
    (GFL plus the DGQP, whose quality multiplies the class score). "gfl" and "gflv2" need
    ``family=anchor_based`` (one square anchor per location, for the assigner),
    ``quality=none`` (the class score is the quality) and ``loss.cls=qfl``.
    ``reg_max``: the largest bin of the GFL / GFLV2 distributions (16; ignored by "atss").
    "retinanet" (RetinaNet, specs/model.md §3.2): no quality branch, no per-level Scale.

    Anchors (anchor-based family; specs/anchors.md §3): ``anchor_scale`` is the octave base
    scale (the scale-1, ratio-1 anchor has side ``anchor_scale * stride``: ATSS 8, RetinaNet
    4); ``anchor_scales`` multiply that side and ``anchor_ratios`` are aspect ratios h / w,
    ``len(anchor_scales) * len(anchor_ratios)`` anchors per location, for each ratio each
    scale (the defaults: one square anchor; RetinaNet: 2^0, 2^(1/3), 2^(2/3) x 0.5, 1, 2).
    ``delta_stds``: the delta-xywh coder's standard deviations (specs/coders.md; RetinaNet
    as mmdetection: all 1). ``norm``: "gn" (GroupNorm in the towers) or "none" (RetinaNet).
    """

    family: str = "anchor_based"
    width: int = 256
    depth: int = 4
    gn_groups: int = 32
    prior_prob: float = 0.01
    quality: str = "centerness"
    anchor_scale: float = 8.0
    type: str = "atss"
    reg_max: int = 16
    anchor_scales: tuple = DEFAULT_ANCHOR_SCALES
    anchor_ratios: tuple = DEFAULT_ANCHOR_RATIOS
    delta_stds: tuple = DELTA_STDS
    norm: str = "gn"


@dataclass(frozen=True)
class LossConfig:
    """Loss choices (specs/losses.md §7); ``quality`` comes from ``HeadConfig``.

    ``soft_target``: the soft target of "qfl" / "vfl" at the positives, one of
    ``losses.SOFT_TARGETS``: "iou" (the IoU of the decoded prediction with its GT, GFL /
    VFNet / Dynamic ATSS) or "assigner" (the assignment's ``matched_metric``: TAL's
    normalised alignment, SimOTA's and DSL's IoUs).
    """

    cls: str = "focal"
    box: str = "giou"
    box_weight: float = 2.0
    soft_target: str = "iou"


@dataclass(frozen=True)
class InferenceConfig:
    """Post-processing (specs/postprocess.md, specs/model.md §5)."""

    score_threshold: float = 0.05
    pre_nms_top_k: int = 1000
    nms_threshold: float = 0.6
    max_detections: int = 100
    score_mode: str = "sqrt"


@dataclass(frozen=True)
class DataConfig:
    """Dataset and transforms. ``digits_*`` are the built-in generator's arguments.

    ``min_size``: training shorter sides, one drawn per image; ``min_size_range`` (lo, hi),
    when set, replaces it with every integer in [lo, hi] (the official ATSS / Dynamic ATSS
    ``MIN_SIZE_RANGE_TRAIN``). ``drop_empty_train``: leave images without annotations out of
    the training split (the official codes do; evaluation keeps them). ``cache_images``: read
    every training image once, at start, and keep its 8-bit pixels in memory (for datasets
    that fit: refused when they would take more than half of the available memory;
    specs/data.md §2); the batches are the same as without it.

    ``seed``: the seed the built-in dataset is generated from; None (the default) uses the
    run's ``seed``, so that a config names one dataset. A study that varies the training
    seed on fixed data sets it (specs/training.md §1).

    ``dataset="voc"`` reads Pascal VOC from ``root`` = the VOCdevkit folder: training on the
    concatenation of ``voc_train_sets``, evaluation on ``voc_test_sets``, each set
    ``"YEAR/SPLIT"`` (``ImageSets/Main/SPLIT.txt`` of ``VOCYEAR``), converted once to COCO
    files in the cache (specs/data.md §6); difficult objects are crowd annotations there, so
    ``crowd`` decides whether training drops them or makes them ignore regions.
    ``metric``: what the evaluation reports, one of ``evaluation.METRICS``: ``"coco"`` (COCO
    AP), ``"voc07"`` (VOC mAP at IoU 0.5, 11-point) or ``"voc_area"`` (VOC mAP, area under
    the curve); the VOC ones add ``mAP`` and the per-class APs to the COCO metrics.
    """

    dataset: str = "digits"
    root: typing.Optional[str] = None
    train_images: typing.Optional[str] = None
    train_annotations: typing.Optional[str] = None
    val_images: typing.Optional[str] = None
    val_annotations: typing.Optional[str] = None
    min_size: tuple = (800,)
    min_size_range: typing.Optional[tuple] = None
    max_size: int = 1333
    test_min_size: int = 800
    flip: float = 0.5
    num_workers: int = 2
    cache_images: bool = False
    drop_empty_train: bool = False
    crowd: str = "drop"
    seed: typing.Optional[int] = None
    metric: str = "coco"
    voc_train_sets: tuple = ("2007/trainval", "2012/trainval")
    voc_test_sets: tuple = ("2007/test",)
    digits_num_train: int = 1000
    digits_num_val: int = 200
    digits_image_size: int = 256
    digits_min_objects: int = 1
    digits_max_objects: int = 10
    digits_object_size: tuple = (12.0, 128.0)
    digits_aspect_ratio: tuple = (0.2, 5.0)
    digits_max_overlap: float = 0.3
    digits_single_class: bool = False


@dataclass(frozen=True)
class SolverConfig:
    """SGD, warmup and a multi-step schedule. ``batch_size`` is the total over processes;
    ``max_bad_steps`` consecutive non-finite losses abort the run.

    Two schedule units (specs/training.md §3): with ``max_iters`` None (the default) a run
    lasts ``epochs`` epochs and ``steps`` are epochs after which the lr is multiplied by
    ``gamma``; with ``max_iters`` set it lasts exactly that many iterations (its last epoch
    may be partial), ``steps`` are iterations and ``epochs`` is not used (the official ATSS /
    Dynamic ATSS ``SOLVER.MAX_ITER`` and ``SOLVER.STEPS``: 90k with 60k/80k for 1x).
    Iterations count batches of ``batch_size``: a run at another batch size changes what an
    iteration is (scale ``lr``, ``max_iters`` and ``steps`` yourself, e.g. the linear rule).

    Speed options (specs/training.md §3b), none of which changes what is computed in
    float32: ``amp`` one of ``runtime.AMP_MODES`` ("off"; "bf16" on CPU or CUDA; "fp16" with
    a gradient scaler on CUDA) for the forward pass, while decoding, assignment, targets and
    losses stay float32; ``channels_last`` (NHWC memory format); ``compile``
    (``torch.compile`` of the model).
    """

    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 1.0
    bias_weight_decay: typing.Optional[float] = None
    epochs: int = 12
    max_iters: typing.Optional[int] = None
    steps: tuple = (8, 11)
    gamma: float = 0.1
    warmup: str = "linear"
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    grad_clip_norm: typing.Optional[float] = None
    max_bad_steps: int = 20
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class Config:
    """A complete training configuration.

    ``diagnostics``: log what the assignment did at every step (GTs without a positive, the
    mean prior and predicted IoU of the positives, Dynamic ATSS's overlap with ATSS;
    specs/model.md §4); it never changes training.
    """

    name: str = "custom"
    description: str = ""
    reproduces: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    assign: AssignOptions = field(default_factory=AtssOptions)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    output_dir: str = "runs"
    log_every: int = 1
    diagnostics: bool = True
    eval_batch_size: int = 8

    @property
    def strides(self):
        """Strides of the pyramid levels, e.g. (8, 16, 32, 64, 128)."""
        return tuple(2 ** level for level in self.fpn.levels)


# ----------------------------------------------------------------------------------------
# Validation


def validate(config):
    """Check choices and ranges; raise ValueError naming the field. Returns ``config``."""
    def choice(value, options, key):
        if value not in options:
            raise ValueError(f"{key}: expected one of {', '.join(options)}; got {value!r}")

    choice(config.backbone.name, BACKBONES, "backbone.name")
    choice(config.backbone.norm, NORMS, "backbone.norm")
    choice(config.backbone.style, BACKBONE_STYLES, "backbone.style")
    dcn_stages = tuple(config.backbone.dcn_stages)
    if any(isinstance(s, bool) or s not in (1, 2, 3, 4) for s in dcn_stages) or len(set(dcn_stages)) != len(dcn_stages):
        raise ValueError(f"backbone.dcn_stages: expected distinct stages in 1..4 (e.g. 2,3,4), got {dcn_stages}")
    if dcn_stages and config.backbone.name in ("tiny", "resnet18", "resnet34"):
        raise ValueError(f"backbone.dcn_stages: backbone.name={config.backbone.name} has no Bottleneck 3x3 convs "
                         "to make deformable; use resnet50/101 or a resnext101")
    choice(config.head.family, FAMILIES, "head.family")
    from detector.modeling.head import HEAD_TYPES

    choice(config.head.type, HEAD_TYPES, "head.type")
    if config.head.type in ("gfl", "gflv2"):
        needs = (("head.family", config.head.family, "anchor_based"), ("head.quality", config.head.quality, "none"),
                 ("loss.cls", config.loss.cls, "qfl"))
        for key, value, expected in needs:
            if value != expected:
                raise ValueError(f"{key}: head.type={config.head.type} needs {key}={expected}, got {value!r}")
        reg_max = config.head.reg_max
        if isinstance(reg_max, bool) or not isinstance(reg_max, int) or reg_max < 1:
            raise ValueError(f"head.reg_max: expected an int >= 1, got {reg_max!r}")
    if config.head.type == "vfnet":  # specs/model.md §3.3
        needs = (("head.family", config.head.family, ("anchor_based",)), ("head.quality", config.head.quality, ("none",)),
                 ("loss.cls", config.loss.cls, ("vfl",)), ("loss.box", config.loss.box, ("giou", "iou")),
                 ("loss.soft_target", config.loss.soft_target, ("iou",)))
        for key, value, expected in needs:
            if value not in expected:
                raise ValueError(f"{key}: head.type=vfnet needs {key}={' or '.join(expected)}, got {value!r}")
        if len(config.head.anchor_scales) * len(config.head.anchor_ratios) != 1:
            raise ValueError("head.anchor_scales, head.anchor_ratios: head.type=vfnet has one anchor per location "
                             f"(for the assigner), got {config.head.anchor_scales} x {config.head.anchor_ratios}")
    _validate_anchors(config)
    choice(config.loss.cls, CLS_LOSSES, "loss.cls")
    choice(config.loss.box, BOX_LOSSES, "loss.box")
    choice(config.head.quality, QUALITY_BRANCHES, "head.quality")
    choice(config.loss.soft_target, SOFT_TARGETS, "loss.soft_target")
    if config.loss.soft_target == "assigner":
        if config.loss.cls == "focal":
            raise ValueError("loss.soft_target=assigner: soft targets need loss.cls=qfl or vfl (focal has hard targets)")
        if not ASSIGNERS[config.assign.name].soft_targets:
            with_targets = [name for name, row in ASSIGNERS.items() if row.soft_targets]
            raise ValueError(f"loss.soft_target=assigner: assign.name={config.assign.name} gives no soft targets; "
                             f"use one of {', '.join(with_targets) or '(none yet)'}, or loss.soft_target=iou")
    choice(config.inference.score_mode, SCORE_MODES, "inference.score_mode")
    choice(config.solver.warmup, WARMUPS, "solver.warmup")
    choice(config.solver.amp, AMP_MODES, "solver.amp")
    choice(config.data.dataset, DATASETS, "data.dataset")
    choice(config.data.crowd, CROWDS, "data.crowd")
    choice(config.fpn.p6p7_input, P6P7_INPUTS, "fpn.p6p7_input")
    levels = config.fpn.levels
    if not levels or list(levels) != list(range(levels[0], levels[0] + len(levels))) or levels[0] < 3 or levels[-1] > 7:
        raise ValueError(f"fpn.levels: expected consecutive levels within 3..7, got {levels}")
    if config.head.quality == "none" and config.inference.score_mode != "cls":
        raise ValueError("inference.score_mode: must be 'cls' when head.quality is 'none'")
    if config.head.quality != "none" and config.inference.score_mode == "cls":
        raise ValueError("inference.score_mode: 'cls' ignores the quality branch; use 'sqrt' or 'product'")
    for key, value in (("head.width", config.head.width), ("fpn.out_channels", config.fpn.out_channels)):
        if config.head.norm == "gn" and value % config.head.gn_groups:
            raise ValueError(f"{key}: {value} is not divisible by head.gn_groups={config.head.gn_groups}")
    if config.solver.batch_size < 1 or config.solver.epochs < 1:
        raise ValueError("solver.batch_size, solver.epochs: expected positive ints")
    unit = "epochs" if config.solver.max_iters is None else "iterations"
    if list(config.solver.steps) != sorted(config.solver.steps):
        raise ValueError(f"solver.steps: expected ascending {unit}, got {config.solver.steps}")
    if config.solver.max_iters is not None:
        if config.solver.max_iters < 1:
            raise ValueError(f"solver.max_iters: expected a positive int or none, got {config.solver.max_iters}")
        if not all(isinstance(step, int) and 0 < step < config.solver.max_iters for step in config.solver.steps):
            raise ValueError(f"solver.steps: with solver.max_iters={config.solver.max_iters} the steps are iterations; "
                             f"expected ints in 1..{config.solver.max_iters - 1}, got {config.solver.steps}")
    if config.solver.max_bad_steps < 1:
        raise ValueError("solver.max_bad_steps: expected a positive int")
    check_options(config.assign, config.head.family, levels)
    size_range = config.data.min_size_range
    if size_range is not None and (len(size_range) != 2 or not all(isinstance(v, int) for v in size_range)
                                   or not 0 < size_range[0] <= size_range[1]):
        raise ValueError(f"data.min_size_range: expected two ints 0 < lo <= hi, got {size_range}")
    if not 0.0 <= config.data.flip <= 1.0:
        raise ValueError(f"data.flip: expected a probability, got {config.data.flip}")
    choice(config.data.metric, METRICS, "data.metric")
    for key in ("voc_train_sets", "voc_test_sets"):
        sets = getattr(config.data, key)
        for name in sets:
            try:
                parse_voc_set(name)
            except ValueError as error:
                raise ValueError(f"data.{key}: {error}") from None
        if config.data.dataset == "voc" and not sets:
            raise ValueError(f"data.{key}: data.dataset=voc needs at least one 'YEAR/SPLIT' set, e.g. 2007/test")
    return config


def _validate_anchors(config):
    """The anchors, the head norm, the box coder and the delta box losses of ``config.head``."""
    from detector.modeling.head import HEAD_NORMS

    head = config.head
    if head.norm not in HEAD_NORMS:
        raise ValueError(f"head.norm: expected one of {', '.join(HEAD_NORMS)}; got {head.norm!r}")
    for key, values in (("head.anchor_scales", head.anchor_scales), ("head.anchor_ratios", head.anchor_ratios)):
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf)
                             for v in values):
            raise ValueError(f"{key}: expected positive finite numbers, got {values!r}")
    if not (isinstance(head.anchor_scale, (int, float)) and 0 < head.anchor_scale < math.inf):
        raise ValueError(f"head.anchor_scale: expected a positive number, got {head.anchor_scale!r}")
    if len(head.delta_stds) != 4 or any(not (isinstance(v, (int, float)) and 0 < v < math.inf) for v in head.delta_stds):
        raise ValueError(f"head.delta_stds: expected 4 positive numbers, got {head.delta_stds!r}")
    several = len(head.anchor_scales) * len(head.anchor_ratios) > 1
    if several and (head.family != "anchor_based" or head.type in ("gfl", "gflv2")):
        raise ValueError(f"head.anchor_scales, head.anchor_ratios: several anchors per location need "
                         f"head.family=anchor_based and a head.type other than gfl / gflv2, got family={head.family}, "
                         f"type={head.type}")
    if head.type == "retinanet":
        for key, value, expected in (("head.family", head.family, "anchor_based"), ("head.quality", head.quality, "none")):
            if value != expected:
                raise ValueError(f"{key}: head.type=retinanet needs {key}={expected}, got {value!r}")
    if config.loss.box in DELTA_BOX_LOSSES and (head.family != "anchor_based" or head.type in ("gfl", "gflv2")):
        raise ValueError(f"loss.box={config.loss.box}: a loss on delta-xywh codes needs head.family=anchor_based and a "
                         f"head.type other than gfl / gflv2 (got {head.family}, {head.type})")


# ----------------------------------------------------------------------------------------
# Command-line overrides


def apply_overrides(config, overrides):
    """Return ``config`` with ``key.sub=value`` overrides applied, then validated.

    Values are parsed by the field's type: int, float, str, bool (true/false/1/0/yes/no),
    ``Optional[...]`` (``none`` or ``null`` for None), tuples (comma-separated; ``()``
    for empty). An unknown key, a malformed item or a value of the wrong type raises
    ValueError naming the key and listing the valid ones.
    """
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value, e.g. solver.lr=0.02")
        key, text = item.split("=", 1)
        pairs.append((key.strip(), text.strip()))
    # ``assign.name`` first: it replaces ``assign`` by the defaults of the chosen assigner,
    # whose own keys (``assign.threshold=...``) then apply in any order on the command line
    pairs.sort(key=lambda pair: pair[0] != "assign.name")
    for key, text in pairs:
        config = _set(config, key.split("."), text, key)
    return validate(config)


def _set(node, path, text, full_key):
    names = {f.name: f for f in dataclasses.fields(node)}
    head = path[0]
    if isinstance(node, Config) and path == ["assign", "name"]:
        if text not in ASSIGNERS:
            raise ValueError(f"assign.name: expected one of {', '.join(ASSIGNERS)}; got {text!r}")
        return replace(node, assign=ASSIGNERS[text].options())
    if head not in names or (head == "name" and full_key.startswith("assign.")):
        valid = sorted(n for n in names if not (n == "name" and full_key.startswith("assign.")))
        where = f" (assign.name={node.name})" if full_key.startswith("assign.") else ""
        raise ValueError(f"unknown config key {full_key!r}{where}; valid keys here: {', '.join(valid)}")
    hints = typing.get_type_hints(type(node))
    current = getattr(node, head)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ValueError(f"config key {full_key!r} is a section; set one of its fields, e.g. {full_key}.{dataclasses.fields(current)[0].name}=...")
        return replace(node, **{head: _set(current, path[1:], text, full_key)})
    if len(path) > 1:
        raise ValueError(f"unknown config key {full_key!r}: {head!r} has no sub-keys")
    return replace(node, **{head: parse_value(text, hints[head], current, full_key)})


def parse_value(text, annotation, current, key):
    """Parse ``text`` as a value of type ``annotation`` (see ``apply_overrides``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return parse_value(text, args[0], current, key)
    if annotation is tuple or origin is tuple:
        stripped = text.strip("()[] ")
        if not stripped:
            return ()
        parts = [p.strip() for p in stripped.split(",") if p.strip()]
        return tuple(parse_value(p, type(current[0]) if current else _guess_type(p), None, key) for p in parts)
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a bool (true/false), got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}: expected an int, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {text!r}") from None
    if annotation is str:
        return text
    raise ValueError(f"{key}: cannot parse a value of type {annotation!r}")


def _guess_type(text):
    try:
        int(text)
        return int
    except ValueError:
        pass
    try:
        float(text)
        return float
    except ValueError:
        return str


def to_dict(config):
    """The config as nested plain dicts (tuples become lists), JSON- and checkpoint-safe."""
    def convert(value):
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value

    def walk(node):
        return {f.name: (walk(getattr(node, f.name)) if dataclasses.is_dataclass(getattr(node, f.name))
                         else convert(getattr(node, f.name))) for f in dataclasses.fields(node)}

    return walk(config)


def from_dict(data):
    """Inverse of ``to_dict``; unknown keys raise ValueError."""
    def build(cls, values):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in values.items():
            if name not in hints:
                raise ValueError(f"{cls.__name__}: unknown key {name!r}")
            sub = getattr(cls, "__dataclass_fields__")[name]
            if not sub.init:  # ``name`` of an assigner's options: fixed by the class
                continue
            if cls is Config and name == "assign":
                kwargs[name] = build(_assign_options_class(value), _upgrade_assign(value))
                continue
            default = sub.default_factory() if sub.default_factory is not dataclasses.MISSING else sub.default
            if dataclasses.is_dataclass(default):
                kwargs[name] = build(type(default), value)
            else:
                kwargs[name] = _restore(value)
        return cls(**kwargs)

    return build(Config, data)


def _assign_options_class(values):
    name = values.get("name", "atss")
    if name not in ASSIGNERS:
        raise ValueError(f"assign.name: expected one of {', '.join(ASSIGNERS)}; got {name!r}")
    return ASSIGNERS[name].options


#: The flat ``assign`` section of configs saved before each assigner had its own options
#: (one bag of every assigner's fields): old key -> new key, per assigner.
_FLAT_ASSIGN_KEYS = {
    "atss": {"topk": "topk"},
    "dynamic_atss": {k: k for k in ("topk", "pred_weight", "anchor_weight", "pred_weight_schedule", "anchor_weight_schedule")},
    "max_iou": {"pos_iou_thr": "pos_iou_thr", "neg_iou_thr": "neg_iou_thr"},
    "all_inside": {"regress_ranges": "regress_ranges"},
    "pseudo_iou": {"piou_threshold": "threshold", "regress_ranges": "regress_ranges"},
    "scaled_box": {"box_scale": "scale", "regress_ranges": "regress_ranges"},
    "centerness": {"centerness_threshold": "threshold", "regress_ranges": "regress_ranges"},
    "fcos": {"center_sampling": "center_sampling", "center_radius": "center_radius", "regress_ranges": "regress_ranges"},
}


def _upgrade_assign(values):
    """``assign`` values of either layout -> the fields of the chosen assigner's options."""
    if "piou_threshold" not in values:  # every flat section has it; options classes do not
        return values
    name = values.get("name", "atss")
    return {"name": name} | {new: values[old] for old, new in _FLAT_ASSIGN_KEYS[name].items() if old in values}


def _restore(value):
    if isinstance(value, list):
        return tuple(_restore(v) for v in value)
    if value in ("inf", "-inf"):
        return float(value)
    return value


# ----------------------------------------------------------------------------------------
# The named configurations


#: The solver of the official ATSS, Dynamic ATSS and Pseudo-IoU COCO configs (ATSS
#: ``atss_core/config/defaults.py`` with ``configs/atss/*.yaml``, DLA-Combined-IoUs
#: ``dynamic_atss_core/config/defaults.py`` with ``configs/dynamic_atss/dynamic_atss_R_50_FPN_1x.yaml``,
#: Pseudo-IoU ``configs/pseudo-iou/piou_r50_caffe_fpn_gn-head_1x_coco.py``): SGD lr 0.01 at
#: batch 16, momentum 0.9, weight decay 1e-4, **constant warmup at 1/3 for 500 iterations**,
#: **bias lr x2 and no bias decay**; 12 epochs with the lr divided by 10 after 8 and 11.
OFFICIAL_SOLVER = SolverConfig(batch_size=16, lr=0.01, momentum=0.9, weight_decay=1e-4, bias_lr_factor=2.0,
                               bias_weight_decay=0.0, epochs=12, steps=(8, 11), warmup="constant", warmup_iters=500,
                               warmup_ratio=1 / 3)
#: The schedules of the official ATSS and Dynamic ATSS code, in iterations (``SOLVER.MAX_ITER``,
#: ``SOLVER.STEPS`` of ``atss_R_50_FPN_1x.yaml``, ``dynamic_atss_R_50_FPN_1x.yaml`` and their
#: ``*_2x.yaml``; the Dynamic ATSS paper: "scheduler 1x (90 k iterations) ... at 60 k and 80 k").
#: The Pseudo-IoU code is mmdetection's epoch runner and keeps ``OFFICIAL_SOLVER``'s epochs.
ATSS_SOLVER_1X = replace(OFFICIAL_SOLVER, max_iters=90_000, steps=(60_000, 80_000))
ATSS_SOLVER_2X = replace(OFFICIAL_SOLVER, epochs=24, max_iters=180_000, steps=(120_000, 160_000))
#: COCO training data of the official codes: 800 / 1333, flip 0.5, images without
#: annotations left out of training (``remove_images_without_annotations``, ``filter_empty_gt``).
#: The backbone of the official codes: Caffe-style ResNet (stride in the 1x1 conv, BGR 0-255
#: input minus the Caffe means) as maskrcnn-benchmark (``STRIDE_IN_1X1``, ``TO_BGR255``) and the
#: Pseudo-IoU mmdetection configs (``style='caffe'``, ``open-mmlab://detectron/resnet50_caffe``)
#: use, for the MSRA / detectron ImageNet weights (``backbone.weights`` = a local copy);
#: ``backbone.style=pytorch`` is the torchvision-weights variant. specs/model.md §1.1.
OFFICIAL_BACKBONE = BackboneConfig(name="resnet50", style="caffe")
COCO_DATA = DataConfig(dataset="coco", min_size=(800,), max_size=1333, test_min_size=800, drop_empty_train=True)
#: Post-processing of the Pseudo-IoU head: the paper's 0.05 / NMS 0.5 (VOC, and "the same
#: post-processing" on COCO) and the released COCO config's ``nms=dict(iou_threshold=0.5)``.
PIOU_INFERENCE = InferenceConfig(nms_threshold=0.5)


def _coco_1x(name, description, reproduces, **sections):
    """COCO R-50 1x recipe shared by the official codes (``OFFICIAL_SOLVER``, ``COCO_DATA``);
    ``sections`` replace whole sections."""
    base = Config(name=name, description=description, reproduces=reproduces, backbone=OFFICIAL_BACKBONE, data=COCO_DATA,
                  solver=OFFICIAL_SOLVER)
    return replace(base, **sections)


def _atss(name, description, reproduces, *, assign=None, loss=None, quality="centerness", score_mode="sqrt"):
    """An ATSS-head row as the official ATSS / Dynamic ATSS code trains it: ``_coco_1x`` with
    the 90k-iteration 1x schedule (``ATSS_SOLVER_1X``)."""
    return _coco_1x(
        name, description, reproduces,
        solver=ATSS_SOLVER_1X,
        head=HeadConfig(family="anchor_based", quality=quality),
        assign=assign or AtssOptions(),
        loss=loss or LossConfig(cls="focal", box="giou", box_weight=2.0),
        inference=InferenceConfig(score_mode=score_mode),
    )


def _dyn(pred_weight=1.0, anchor_weight=1.0, pred_schedule="constant", anchor_schedule="constant"):
    return DynamicAtssOptions(pred_weight=pred_weight, anchor_weight=anchor_weight,
                              pred_weight_schedule=pred_schedule, anchor_weight_schedule=anchor_schedule)


def _af(name, description, reproduces, *, assign, box="iou", quality="none"):
    """The Pseudo-IoU paper's anchor-free head (Table 3), trained as the official R-50 config
    ``configs/pseudo-iou/piou_r50_caffe_fpn_gn-head_1x_coco.py``: focal + IoU/GIoU,
    optional centerness; ``OFFICIAL_SOLVER`` with gradient clipping at 35; shorter side 640
    or 800 (its ``img_scale=[(1333, 640), (1333, 800)]``), flip 0.5; NMS 0.5; score = cls *
    centerness (product) as the official head."""
    return _coco_1x(
        name, description, reproduces,
        head=HeadConfig(family="anchor_free", quality=quality),
        assign=assign,
        loss=LossConfig(cls="focal", box=box, box_weight=1.0),
        inference=replace(PIOU_INFERENCE, score_mode="product" if quality != "none" else "cls"),
        solver=replace(OFFICIAL_SOLVER, grad_clip_norm=35.0),
        data=replace(COCO_DATA, min_size=(640, 800)),
    )


#: Pascal VOC as the Pseudo-IoU paper trains its ablations (P:129-133): VOC 2007 + 2012
#: trainval for training, VOC 2007 test for evaluation, shorter side 600 / longer side at most
#: 1000, horizontal flip the only augmentation, VOC 2007 11-point mAP at IoU 0.5 (the metric of
#: mmdetection's VOC 2007 evaluation); difficult objects dropped from training (``crowd``).
VOC_DATA = DataConfig(dataset="voc", min_size=(600,), max_size=1000, test_min_size=600, flip=0.5, metric="voc07",
                      drop_empty_train=True, crowd="drop")


def _voc(name, description, reproduces, *, assign, epochs=12, batch_size=16):
    """A Pseudo-IoU paper ablation on VOC (Tables 1-2) in its text's regime (P:133): the
    anchor-free head of ``_af`` (focal + IoU loss with weight 1, no centerness, score = cls,
    NMS 0.5, clipping 35 as the official head) on ResNet-101 with ``VOC_DATA``, 12 epochs
    with steps after 8 and 10 at batch 16, lr 0.01 and 500 warmup iterations. Another
    ``epochs`` keeps the steps at the same fractions (2/3, 5/6), rounded; another
    ``batch_size`` scales the lr linearly (lr = 0.01 x batch / 16): the paper gives neither."""
    solver = replace(OFFICIAL_SOLVER, epochs=epochs, steps=(round(epochs * 2 / 3), round(epochs * 5 / 6)),
                     grad_clip_norm=35.0, batch_size=batch_size, lr=0.01 * batch_size / 16)
    return replace(_af(name, description, reproduces, assign=assign), backbone=replace(OFFICIAL_BACKBONE, name="resnet101"),
                   data=VOC_DATA, solver=solver)


def _voc_configs(piou):
    """Pseudo-IoU Tables 1a-1c and 2 on VOC 2007 test (``_voc``)."""
    configs = [
        _voc("voc_af_baseline_r101", "VOC: anchor-free baseline (all points inside), R-101, 12 epochs",
             f"{piou} Table 1a baseline (T = 0.0); Table 1b (12 epochs); Table 1c (batch 16)", assign=AllInsideOptions()),
    ]
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        tables = [f"Table 1a T = {t}"] if t <= 0.7 else []
        tables += [f"Table 2 'P-IoU' T = {t}"] if t >= 0.3 else []
        tables += ["Table 1b (12 epochs); Table 1c (batch 16)"] if t == 0.4 else []
        configs.append(_voc(f"voc_piou_t0{round(t * 10):d}_r101", f"VOC: Pseudo-IoU T = {t}, R-101, 12 epochs",
                            f"{piou} " + "; ".join(tables), assign=PseudoIouOptions(threshold=t)))
    for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        configs.append(_voc(f"voc_sbox_s0{round(s * 10):d}_r101", f"VOC: scaled-box assignment, s = {s}, R-101",
                            f"{piou} Table 2 'S-box' s = {s}", assign=ScaledBoxOptions(scale=s)))
    for c in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45):
        configs.append(_voc(f"voc_ctr_c{round(c * 100):03d}_r101", f"VOC: centerness assignment, c = {c}, R-101",
                            f"{piou} Table 2 'Centerness' c = {c}", assign=CenternessOptions(threshold=c)))
    for epochs in (8, 16, 24):
        configs += [
            _voc(f"voc_af_baseline_r101_e{epochs}", f"VOC: anchor-free baseline, {epochs} epochs",
                 f"{piou} Table 1b baseline, {epochs} epochs", assign=AllInsideOptions(), epochs=epochs),
            _voc(f"voc_piou_r101_e{epochs}", f"VOC: Pseudo-IoU T = 0.4, {epochs} epochs",
                 f"{piou} Table 1b Pseudo-IoU, {epochs} epochs", assign=PseudoIouOptions(threshold=0.4), epochs=epochs),
        ]
    for batch in (4, 6, 8):
        configs += [
            _voc(f"voc_af_baseline_r101_b{batch}", f"VOC: anchor-free baseline, batch {batch} (lr scaled)",
                 f"{piou} Table 1c baseline, batch {batch}", assign=AllInsideOptions(), batch_size=batch),
            _voc(f"voc_piou_r101_b{batch}", f"VOC: Pseudo-IoU T = 0.4, batch {batch} (lr scaled)",
                 f"{piou} Table 1c Pseudo-IoU, batch {batch}", assign=PseudoIouOptions(threshold=0.4), batch_size=batch),
        ]
    return configs


def _build_configs():
    dyn = "Dynamic ATSS paper"
    piou = "Pseudo-IoU paper"
    configs = [
        # Dynamic ATSS paper, Tables 1-3 (ATSS R-50 1x).
        _atss("atss_r50_1x", "ATSS: anchor IoUs, focal, GIoU, centerness", f"{dyn} Table 1 row 'ATSS'; Table 2 row 1 (AIoUs + centerness); Table 5 'ATSS* R-50 1x' (test-dev)"),
        _atss("atss_ciou_r50_1x", "ATSS + combined IoUs (Dynamic ATSS), hard targets, centerness",
              f"{dyn} Table 1 'ATSS+CIoUs'; Table 2 row 3; Table 3 row 1 (1:1)", assign=_dyn()),
        _atss("atss_qfl_r50_1x", "ATSS with QFL soft targets (IoU of the prediction)", f"{dyn} Table 1 'ATSS+QFL'",
              loss=LossConfig(cls="qfl")),
        _atss("atss_vfl_r50_1x", "ATSS with VFL soft targets", f"{dyn} Table 1 'ATSS+VFL'", loss=LossConfig(cls="vfl")),
        _atss("piou_only_r50_1x", "predicted IoUs only (w_p = 1, w_a = 0)", f"{dyn} Table 2 row 2 (PIoUs only)",
              assign=_dyn(1.0, 0.0)),
        _atss("dyn_atss_qfl_r50_1x", "combined IoUs + QFL, centerness branch", f"{dyn} Table 2 row 4 (AIoUs+PIoUs+QFL+centerness)",
              assign=_dyn(), loss=LossConfig(cls="qfl")),
        _atss("dyn_atss_vfl_r50_1x", "combined IoUs + VFL, centerness branch", f"{dyn} Table 2 row 5 (AIoUs+PIoUs+VFL+centerness)",
              assign=_dyn(), loss=LossConfig(cls="vfl")),
        _atss("dyn_atss_qfl_iou_r50_1x", "Dynamic ATSS: combined IoUs + QFL + IoU branch (the paper's final model)",
              f"{dyn} Table 2 row 6 (AIoUs+PIoUs+QFL+IoU branch); Table 5 'Dynamic ATSS R-50 1x' (test-dev)", assign=_dyn(), loss=LossConfig(cls="qfl"), quality="iou"),
        _atss("dyn_atss_vfl_iou_r50_1x", "combined IoUs + VFL + IoU branch", f"{dyn} Table 2 row 7 (AIoUs+PIoUs+VFL+IoU branch)",
              assign=_dyn(), loss=LossConfig(cls="vfl"), quality="iou"),
        _atss("atss_iou_branch_r50_1x", "combined IoUs, hard targets, IoU branch instead of centerness",
              f"{dyn} §4.1.2 (IoU branch replaces centerness), hard-target variant", assign=_dyn(), quality="iou"),
        _atss("max_iou_r50_1x", "RetinaNet-style max-IoU assignment (0.5/0.4) with the ATSS head", "baseline (no paper row)",
              assign=MaxIouOptions()),
    ]
    for wp, wa, label in ((0.5, 1.0, "row 2 (0.5 : 1)"), (1.5, 1.0, "row 3 (1.5 : 1)"),
                          (1.0, 0.5, "row 4 (1 : 0.5)"), (1.0, 1.5, "row 5 (1 : 1.5)")):
        name = f"dyn_atss_w{str(wp).replace('.', 'p')}_{str(wa).replace('.', 'p')}_r50_1x"
        configs.append(_atss(name, f"combined IoUs with w_p = {wp}, w_a = {wa}", f"{dyn} Table 3 {label}",
                             assign=_dyn(wp, wa)))
    configs += [
        _atss("dyn_atss_dup_r50_1x", "PIoU weight D_up = it / max_it, AIoU weight 1", f"{dyn} Table 3 row 6 (D_up : 1)",
              assign=_dyn(pred_schedule="up")),
        _atss("dyn_atss_ddown_r50_1x", "PIoU weight 1, AIoU weight D_down = 1 - it / max_it", f"{dyn} Table 3 row 7 (1 : D_down)",
              assign=_dyn(anchor_schedule="down")),
        _atss("dyn_atss_dup_ddown_r50_1x", "PIoU weight D_up, AIoU weight D_down", f"{dyn} Table 3 row 8 (D_up : D_down)",
              assign=_dyn(pred_schedule="up", anchor_schedule="down")),
    ]
    # Pseudo-IoU paper: Table 3 (COCO R-50), Tables 1-2 rule/threshold sweeps on the same head.
    configs += [
        _af("af_baseline_r50_1x", "anchor-free baseline: every point inside a GT is positive; focal + IoU loss",
            f"{piou} Table 3 'AF-Baseline'; Table 1a threshold 0.0", assign=AllInsideOptions()),
        _af("piou_r50_1x", "Pseudo-IoU assignment (T = 0.4); focal + IoU loss", f"{piou} Table 3 row 'Pseudo-IoU' (IoU loss)",
            assign=PseudoIouOptions(threshold=0.4)),
        _af("piou_giou_r50_1x", "Pseudo-IoU + GIoU loss", f"{piou} Table 3 row 'Pseudo-IoU + GIoU'",
            assign=PseudoIouOptions(threshold=0.4), box="giou"),
        _af("piou_giou_ctr_r50_1x", "Pseudo-IoU + GIoU + centerness branch (the official configs)",
            f"{piou} Table 3 row 'Pseudo-IoU + GIoU + centerness'",
            assign=PseudoIouOptions(threshold=0.4), box="giou", quality="centerness"),
        _af("fcos_r50_1x", "FCOS assignment (centre sampling 1.5) with the same anchor-free head", "baseline (no paper row)",
            assign=FcosOptions(), box="giou", quality="centerness"),
    ]
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        tag = f"{round(t * 10):d}"
        configs.append(_af(f"piou_t0{tag}_r50_1x", f"Pseudo-IoU threshold T = {t}",
                           f"{piou} Table 1a / Table 2 'P-IoU' column, T = {t}",
                           assign=PseudoIouOptions(threshold=t)))
    for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        tag = f"{round(s * 10):d}"
        configs.append(_af(f"sbox_s0{tag}_r50_1x", f"scaled-box assignment, s = {s}", f"{piou} Table 2 'S-box' column, s = {s}",
                           assign=ScaledBoxOptions(scale=s)))
    for c in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45):
        tag = f"{round(c * 100):03d}"
        configs.append(_af(f"ctr_c{tag}_r50_1x", f"centerness assignment, c = {c}", f"{piou} Table 2 'Centerness' column, c = {c}",
                           assign=CenternessOptions(threshold=c)))
    # Longer recipes: R-101 2x (Dynamic ATSS Table 5, Pseudo-IoU Table 4).
    # Longer recipes. Dynamic ATSS / ATSS R-101 2x as the official configs
    # (dynamic_atss_R_101_FPN_2x.yaml, atss_R_101_FPN_2x.yaml): 24 epochs, every integer
    # shorter side in [640, 800] (MIN_SIZE_RANGE_TRAIN), flip 0.5.
    r101_2x = dict(backbone=replace(OFFICIAL_BACKBONE, name="resnet101"), solver=ATSS_SOLVER_2X,
                   data=replace(COCO_DATA, min_size_range=(640, 800)))
    # ResNeXt-101 64x4d 2x as the official atss_X_101_64x4d_FPN_2x.yaml (and the Dynamic ATSS
    # paper's Table 5 row): the R-101 2x recipe on ResNeXt-101 64x4d; its Caffe style is the
    # detectron X-101 weights' BGR 0-255 input with the stride on the 3x3 conv (STRIDE_IN_1X1 False).
    x101_2x = dict(r101_2x, backbone=replace(OFFICIAL_BACKBONE, name="resnext101_64x4d"))
    # Pseudo-IoU Table 4 as the paper's text (P:135, P:229; the official R-101 config has no
    # 2x schedule): 24 epochs, steps after 16 and 22, 1500 warmup iterations, shorter side
    # drawn from 640..800 without flipping; clipping and NMS as the official head.
    piou_r101_2x = dict(backbone=replace(OFFICIAL_BACKBONE, name="resnet101"),
                        solver=replace(OFFICIAL_SOLVER, epochs=24, steps=(16, 22), warmup_iters=1500, grad_clip_norm=35.0),
                        data=replace(COCO_DATA, min_size_range=(640, 800), flip=0.0))
    configs += [
        replace(_atss("dyn_atss_qfl_iou_r101_2x", "Dynamic ATSS final model, R-101, 2x, multi-scale 640-800 (official config)",
                      f"{dyn} Table 5 (R-101 2x, MStrain)", assign=_dyn(), loss=LossConfig(cls="qfl"), quality="iou"), **r101_2x),
        replace(_af("piou_giou_ctr_r101_2x", "Pseudo-IoU + GIoU + centerness, R-101, 2x, 640-800 without flip (paper text)",
                    f"{piou} Table 4 'Pseudo-IoU R-101-FPN'", assign=PseudoIouOptions(), box="giou",
                    quality="centerness"), **piou_r101_2x),
        replace(_atss("atss_r101_2x", "ATSS R-101, 2x, multi-scale 640-800 (official config)",
                      f"{dyn} Table 5 'ATSS R-101 2x'"), **r101_2x),
        replace(_atss("atss_x101_64x4d_2x", "ATSS ResNeXt-101 64x4d, 2x, multi-scale 640-800 (official config)",
                      f"{dyn} Table 5 'ATSS X-64x4d-101 2x'"), **x101_2x),
        replace(_atss("dyn_atss_qfl_iou_x101_64x4d_2x", "Dynamic ATSS final model, ResNeXt-101 64x4d, 2x, multi-scale 640-800",
                      f"{dyn} Table 5 'Dynamic ATSS X-64x4d-101 2x'", assign=_dyn(), loss=LossConfig(cls="qfl"),
                      quality="iou"), **x101_2x),
        # the AF-Baseline of Pseudo-IoU Table 4: the R-101 row's recipe and head with the
        # all-inside assignment (the paper changes only the assignment between the two rows)
        replace(_af("af_baseline_r101_2x", "anchor-free baseline (all points inside), GIoU + centerness, R-101, 2x, 640-800 without flip",
                    f"{piou} Table 4 'AF-Baseline R-101-FPN'", assign=AllInsideOptions(), box="giou",
                    quality="centerness"), **piou_r101_2x),
        # the paper's text for Table 3 instead of the official config: single scale 800, flip
        replace(_af("piou_giou_ctr_r50_1x_paper", "Pseudo-IoU + GIoU + centerness, R-50 1x, single scale 800 (paper text)",
                    f"{piou} Table 3 row 'Pseudo-IoU + GIoU + centerness' as its text describes it (P:185)",
                    assign=PseudoIouOptions(), box="giou", quality="centerness"), data=COCO_DATA),
    ]
    configs += _dcn_configs(dyn, piou, r101_2x, piou_r101_2x)
    configs += _retinanet_configs(piou)
    configs += _voc_configs(piou)
    configs += _prediction_aware_configs()
    configs += _demo_configs()
    configs += _gfl_configs()
    configs += _vfnet_configs()
    return {c.name: validate(c) for c in configs}


#: The papers' deformable-convolution rows: DCNv2 in the 3x3 convs of ResNet stages 2-4
#: (res3-res5; maskrcnn-benchmark ``STAGE_WITH_DCN: (False, True, True, True)``,
#: ``WITH_MODULATED_DCN: True``; specs/model.md §1.2).
DCN_STAGES = (2, 3, 4)


def _dcn_configs(dyn, piou, r101_2x, piou_r101_2x):
    """Dynamic ATSS Table 5 and Pseudo-IoU Table 4 rows with DCN: the recipe of the same row
    without DCN (R-50 1x, or R-101 / ResNeXt-101 2x) with ``backbone.dcn_stages``."""
    def dcn(recipe, name):
        return dict(recipe, backbone=replace(OFFICIAL_BACKBONE, name=name, dcn_stages=DCN_STAGES))

    final = dict(assign=_dyn(), loss=LossConfig(cls="qfl"), quality="iou")
    backbones = {"r101": ("resnet101", "R-101-DCN"), "x101_32x8d": ("resnext101_32x8d", "X-32x8d-101-DCN"),
                 "x101_64x4d": ("resnext101_64x4d", "X-64x4d-101-DCN")}
    configs = [
        replace(_atss("atss_r50_dcn_1x", "ATSS R-50-DCN 1x", f"{dyn} Table 5 'ATSS* R-50-DCN 1x'"),
                backbone=replace(OFFICIAL_BACKBONE, dcn_stages=DCN_STAGES)),
        replace(_atss("dyn_atss_qfl_iou_r50_dcn_1x", "Dynamic ATSS final model, R-50-DCN 1x",
                      f"{dyn} Table 5 'Dynamic ATSS R-50-DCN 1x'", **final),
                backbone=replace(OFFICIAL_BACKBONE, dcn_stages=DCN_STAGES)),
    ]
    for tag, (network, label) in backbones.items():
        configs += [
            replace(_atss(f"atss_{tag}_dcn_2x", f"ATSS {label}, 2x, multi-scale 640-800",
                          f"{dyn} Table 5 'ATSS {label} 2x'"), **dcn(r101_2x, network)),
            replace(_atss(f"dyn_atss_qfl_iou_{tag}_dcn_2x", f"Dynamic ATSS final model, {label}, 2x, multi-scale 640-800",
                          f"{dyn} Table 5 'Dynamic ATSS {label} 2x'", **final), **dcn(r101_2x, network)),
            replace(_af(f"piou_giou_ctr_{tag}_dcn_2x", f"Pseudo-IoU + GIoU + centerness, {label}, 2x, 640-800 without flip",
                        f"{piou} Table 4 'Pseudo-IoU {label}'", assign=PseudoIouOptions(), box="giou",
                        quality="centerness"), **dcn(piou_r101_2x, network)),
        ]
    return configs


#: The other prediction-aware assigners on the ATSS head (specs/tal.md, specs/simota.md,
#: specs/dsl.md): QFL trained on the assigner's soft target (``loss.soft_target=assigner``),
#: no separate quality branch (the class score is the quality, as TOOD, YOLOX and RTMDet
#: train it), GIoU loss; everything else as ``atss_r50_1x``. TAL starts with ATSS for the
#: first third of the schedule, TOOD's warm-up (4 of 12 epochs).
PREDICTION_AWARE = {"tal": TalOptions(atss_warmup=1 / 3), "simota": SimotaOptions(), "dsl": DslOptions()}
SOFT_TARGET_LOSS = LossConfig(cls="qfl", box="giou", box_weight=2.0, soft_target="assigner")


def _prediction_aware_configs():
    sources = {"tal": "TOOD (Feng et al., ICCV 2021)", "simota": "YOLOX (Ge et al., 2021)",
               "dsl": "RTMDet (Lyu et al., 2022)"}
    return [_atss(f"{name}_r50_1x", f"{name.upper() if name != 'simota' else 'SimOTA'} assignment on the ATSS head, "
                  "QFL on its soft targets, no quality branch", f"{sources[name]} assigner on the ATSS head (no paper row)",
                  assign=options, loss=SOFT_TARGET_LOSS, quality="none", score_mode="cls")
            for name, options in PREDICTION_AWARE.items()]


def _demo_base():
    """The digits demo's model, data and solver on one thread: what every CPU demo other than
    ``demo`` itself and the studies derive from (docs/configs.md, "CPU demos")."""
    return Config(
        name="demo",
        description="tiny Dynamic ATSS detector (combined IoUs + QFL + IoU branch) on the built-in digits, CPU",
        reproduces="demo (no paper row)",
        backbone=BackboneConfig(name="tiny", norm="bn", frozen_stages=-1, tiny_widths=(16, 32, 64, 128),
                                tiny_blocks=(1, 1, 1, 1)),
        fpn=FPNConfig(out_channels=64, levels=(3, 4, 5)),
        head=HeadConfig(family="anchor_based", width=64, depth=2, gn_groups=16, quality="iou", anchor_scale=4.0),
        assign=_dyn(),
        loss=LossConfig(cls="qfl", box="giou", box_weight=2.0),
        inference=InferenceConfig(score_mode="sqrt"),
        data=DataConfig(dataset="digits", min_size=(128,), max_size=128, test_min_size=128, flip=0.0, num_workers=0,
                        digits_num_train=1500, digits_num_val=200, digits_image_size=128, digits_max_objects=4,
                        digits_object_size=(24.0, 64.0), digits_aspect_ratio=(0.67, 1.5), cache_images=True),
        solver=SolverConfig(batch_size=16, lr=0.04, epochs=24, steps=(18, 22), warmup_iters=100, warmup_ratio=0.01,
                            weight_decay=1e-4, grad_clip_norm=10.0),
        eval_batch_size=32,
        threads=1,  # 2 threads collapse when other work shares a 2-core CPU (docs/benchmarks.md)
    )


def _demo_configs():
    """Small models for the built-in digits dataset on a CPU (specs/training.md §6)."""
    demo = _demo_base()
    demo_atss = replace(demo, name="demo_atss", description="tiny ATSS detector (anchor IoUs, focal, centerness) on digits, CPU",
                        assign=AtssOptions(), loss=LossConfig(cls="focal"),
                        head=replace(demo.head, quality="centerness"))
    demo_piou = replace(demo, name="demo_piou", description="tiny Pseudo-IoU anchor-free detector on digits, CPU",
                        head=replace(demo.head, family="anchor_free", quality="centerness"),
                        assign=PseudoIouOptions(threshold=0.4),
                        loss=LossConfig(cls="focal", box="giou", box_weight=1.0),
                        inference=InferenceConfig(score_mode="product"))
    # The study scale (specs/study.md §2): the demo's model on the crowded digits preset,
    # fixed data (data.seed = 0), about 3 minutes per run on one CPU core.
    crowded = replace(CROWDED_DIGITS, digits_num_train=1000)
    study_solver = replace(demo.solver, epochs=12, steps=(9, 11))
    study_atss = replace(demo_atss, name="study_atss", data=crowded, solver=study_solver,
                         description="study scale: tiny ATSS detector (focal, centerness) on crowded digits, CPU",
                         reproduces="study scale of the Dynamic ATSS paper's ablations (no paper row)")
    study_piou = replace(demo_piou, name="study_piou", data=crowded, solver=study_solver,
                         description="study scale: tiny Pseudo-IoU anchor-free detector (T = 0.4) on crowded digits, CPU",
                         reproduces="study scale of the Pseudo-IoU paper's ablations (no paper row)")
    prediction_aware = [
        replace(demo, name=f"demo_{name}", assign=options, loss=SOFT_TARGET_LOSS,
                head=replace(demo.head, quality="none"), inference=InferenceConfig(score_mode="cls"),
                description=f"tiny detector with the {name} assigner (QFL on its soft targets) on digits, CPU")
        for name, options in PREDICTION_AWARE.items()
    ]
    # `tox -e demo`: two threads, 1.6x faster per step than one on an idle 2-core CPU
    # (docs/benchmarks.md, "The CPU demo's wall time"); not NHWC, which crashes at 2 threads
    # in this torch build (specs/training.md §3)
    demo_fast = replace(demo, threads=2)
    return [demo_fast, demo_atss, demo_piou, study_atss, study_piou, *prediction_aware]


def _gfl_configs():
    """The GFL / GFLV2 heads (specs/model.md §3.1): the Dynamic ATSS paper's Table 4 GFLV2 rows.

    COCO: the ATSS R-50 1x recipe of ``_atss`` (``COCO_DATA``, ``ATSS_SOLVER_1X``,
    ``OFFICIAL_BACKBONE``) with the head of mmdetection's ``gfl_r50_fpn_1x_coco.py`` /
    GFocalV2's ``gfocal_r50_fpn_1x.py`` (4 x 256 towers with GN 32, one 8 x stride anchor per
    location, reg_max 16, QFL beta 2 with weight 1, GIoU weight 2, DFL weight 0.25, ATSS top-9;
    GFLV2's DGQP with top-4 + mean and 64 hidden units; test: score 0.05, 1000 per level, NMS
    0.6, 100 detections). Demos: the digits demo's tiny model and data (``_demo_configs``).
    """
    dyn = "Dynamic ATSS paper"
    qfl = LossConfig(cls="qfl", box="giou", box_weight=2.0)

    def gfl(name, description, reproduces, head_type, assign=None):
        config = _atss(name, description, reproduces, assign=assign, loss=qfl, quality="none", score_mode="cls")
        return replace(config, head=replace(config.head, type=head_type))

    demo = _demo_base()
    demo_gflv2 = replace(
        demo, name="demo_gflv2", description="tiny GFLV2 detector (ATSS, joint QFL score, GIoU + DFL, DGQP) on digits, CPU",
        reproduces="demo of the GFLV2 head (no paper row)", head=replace(demo.head, type="gflv2", quality="none"),
        assign=AtssOptions(), loss=qfl, inference=replace(demo.inference, score_mode="cls"))
    return [
        gfl("gflv2_r50_1x", "GFLV2 head (distribution + DGQP, QFL/GIoU/DFL) trained with ATSS",
            f"{dyn} Table 4 'GFLV2'", "gflv2"),
        gfl("gflv2_ciou_r50_1x", "GFLV2 head with combined IoUs (Dynamic ATSS assignment on the distribution's boxes)",
            f"{dyn} Table 4 'GFLV2+CIoUs'", "gflv2", assign=_dyn()),
        gfl("gfl_r50_1x", "GFL head (distribution regression, QFL/GIoU/DFL, no DGQP) trained with ATSS",
            "baseline (no paper row)", "gfl"),
        demo_gflv2,
        replace(demo_gflv2, name="demo_gflv2_ciou",
                description="tiny GFLV2 detector with combined IoUs (Dynamic ATSS) on digits, CPU", assign=_dyn()),
    ]


#: RetinaNet as mmdetection 2.x trains it (``configs/retinanet/retinanet_r50_fpn_1x_coco.py`` with
#: ``_base_/models/retinanet_r50_fpn.py``): 9 anchors per location (octave base scale 4, 3
#: scales per octave, ratios 0.5 / 1 / 2), head of 4 x 256 conv + ReLU towers without
#: normalisation, ``MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0)`` with its
#: default low-quality matches, focal loss (alpha 0.25, gamma 2), ``L1Loss`` (weight 1) on
#: ``DeltaXYWHBBoxCoder`` codes with means 0 and stds 1, normalised by the positives; test
#: ``nms_pre=1000``, ``score_thr=0.05``, NMS 0.5, 100 detections, score = sigmoid(cls).
RETINANET_HEAD = HeadConfig(family="anchor_based", quality="none", type="retinanet", norm="none",
                            anchor_scale=float(RETINANET_OCTAVE_BASE_SCALE), anchor_scales=RETINANET_ANCHOR_SCALES,
                            anchor_ratios=RETINANET_ANCHOR_RATIOS, delta_stds=RETINANET_DELTA_STDS)
RETINANET_ASSIGN = MaxIouOptions(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, match_low_quality=True)
RETINANET_LOSS = LossConfig(cls="focal", box="l1", box_weight=1.0)
RETINANET_INFERENCE = InferenceConfig(score_threshold=0.05, pre_nms_top_k=1000, nms_threshold=0.5, max_detections=100,
                                      score_mode="cls")


def _retinanet_configs(piou):
    """RetinaNet R-50 1x (the Pseudo-IoU paper's Table 3 baseline, trained with mmdetection) on
    mmdetection's own 12-epoch recipe, and its CPU demo.

    The recipe is mmdetection 2.x's ``retinanet_r50_fpn_1x_coco.py``: pytorch-style ResNet-50
    (torchvision weights, stem and stage 1 frozen, frozen BN statistics; here ``frozen_bn``
    also freezes the BN affine parameters, as the project's other COCO recipes), FPN P3-P7
    with P6 from C5 (``add_extra_convs='on_input'``), ``COCO_DATA`` (800 / 1333, flip 0.5,
    images without objects dropped), SGD lr 0.01 at batch 16, momentum 0.9, weight decay
    1e-4 (bias too), linear warmup over 500 iterations from 0.001, 12 epochs with the lr
    divided by 10 after 8 and 11, no gradient clipping: the ``SolverConfig`` defaults.
    Anchor centres follow this project's ``(i + 0.5) * stride`` (mmdetection: ``i * stride``).
    """
    coco = Config(
        name="retinanet_r50_1x",
        description="RetinaNet: 9 anchors/location, max-IoU 0.5/0.4 + low-quality matches, focal + L1 on deltas "
                    "(stds 1), no GN; mmdetection retinanet_r50_fpn_1x_coco recipe",
        reproduces=f"{piou} Table 3 'RetinaNet'",
        backbone=BackboneConfig(name="resnet50", style="pytorch"),
        fpn=FPNConfig(out_channels=256, levels=(3, 4, 5, 6, 7), p6p7_input="c5"),
        head=RETINANET_HEAD, assign=RETINANET_ASSIGN, loss=RETINANET_LOSS, inference=RETINANET_INFERENCE,
        data=COCO_DATA, solver=SolverConfig(),
    )
    demo = _demo_base()
    demo_retinanet = replace(
        demo, name="demo_retinanet", reproduces="demo of the RetinaNet head (no paper row)",
        description="tiny RetinaNet (9 anchors/location, max-IoU, focal + L1 on deltas, no GN) on digits, CPU",
        head=replace(RETINANET_HEAD, width=demo.head.width, depth=demo.head.depth, gn_groups=demo.head.gn_groups),
        assign=RETINANET_ASSIGN, loss=RETINANET_LOSS, inference=RETINANET_INFERENCE,
    )  # the demo's solver (lr 0.04): at lr 0.01 it reached AP 0.063 instead of 0.177 (docs/results.md)
    return [coco, demo_retinanet]


def _vfnet_configs():
    """The VFNet head (specs/model.md §3.3): the Dynamic ATSS paper's Table 4 VFNet rows.

    COCO: the ATSS R-50 1x recipe of ``_atss`` (``COCO_DATA``, ``ATSS_SOLVER_1X``,
    ``OFFICIAL_BACKBONE``) with the head of mmdetection's ``vfnet_r50_fpn_1x_coco.py``
    (3 x 256 towers with GN 32, one 8 x stride anchor per location for ATSS top-9, VFL alpha
    0.75 gamma 2 IoU-weighted, GIoU 1.5 on the initial and 2.0 on the refined box; test:
    score 0.05 on the IoU-aware score, 1000 per level, NMS 0.6, 100 detections). Demos: the
    digits demo's tiny model and data (``_demo_configs``) with the VFNet head.
    """
    dyn = "Dynamic ATSS paper"
    vfl = LossConfig(cls="vfl", box="giou", box_weight=1.5)

    def vfnet(name, description, reproduces, assign=None):
        config = _atss(name, description, reproduces, assign=assign, loss=vfl, quality="none", score_mode="cls")
        return replace(config, head=replace(config.head, type="vfnet", depth=3))

    demo = _demo_base()
    demo_vfnet = replace(
        demo, name="demo_vfnet", description="tiny VFNet detector (ATSS, star deformable refinement, VFL) on digits, CPU",
        reproduces="demo of the VFNet head (no paper row)", head=replace(demo.head, type="vfnet", quality="none"),
        assign=AtssOptions(), loss=vfl, inference=replace(demo.inference, score_mode="cls"))
    return [
        vfnet("vfnet_r50_1x", "VFNet head (initial box, star deformable refinement, VFL) trained with ATSS",
              f"{dyn} Table 4 'VFL'"),
        vfnet("vfnet_ciou_r50_1x", "VFNet head with combined IoUs (Dynamic ATSS on the refined boxes)",
              f"{dyn} Table 4 'VFL+CIoUs'", assign=_dyn()),
        demo_vfnet,
        replace(demo_vfnet, name="demo_vfnet_ciou",
                description="tiny VFNet detector with combined IoUs (Dynamic ATSS on the refined boxes) on digits, CPU",
                assign=_dyn()),
    ]


#: The built-in dataset with many small, slender and overlapping objects (specs/study.md §2):
#: 128 px images with 4-20 digits of 8-32 px (sqrt of the area), aspect 1:5 to 5:1, IoU
#: between objects up to 0.5, one category ("digit": AP measures where the boxes are, which
#: is what an assigner changes); generated from data seed 0.
CROWDED_DIGITS = DataConfig(
    dataset="digits", seed=0, min_size=(128,), max_size=128, test_min_size=128, flip=0.0, num_workers=0,
    digits_num_train=1000, digits_num_val=200, digits_image_size=128, digits_min_objects=4, digits_max_objects=20,
    digits_object_size=(8.0, 32.0), digits_aspect_ratio=(0.2, 5.0), digits_max_overlap=0.5, digits_single_class=True,
)


CONFIGS = _build_configs()


def get_config(name, overrides=()):
    """The named config with ``overrides`` applied; unknown names raise ValueError."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; run `python -m detector.train --list` to see them")
    return apply_overrides(CONFIGS[name], overrides)
