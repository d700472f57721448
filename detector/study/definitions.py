"""What a study is, the built-in studies, and study files (specs/study.md §1-§2).

A ``Study`` is a set of named ``Arm``s (a named config plus overrides), the seeds every arm
runs with, the baseline arm the others are compared with, and the metrics to compare. The
built-in studies are named after the papers' tables and run at the built-in dataset's
scale (the ``study_*`` configs: a small model on the crowded digits preset, about 3
minutes per run on one CPU core). Users write their own as a TOML or YAML file::

    name = "my_study"
    description = "ATSS top-k"
    baseline = "k9"
    seeds = [0, 1, 2, 3, 4]
    overrides = ["solver.epochs=6"]          # applied to every arm (optional)

    [[arms]]
    name = "k9"
    config = "study_atss"

    [[arms]]
    name = "k15"
    config = "study_atss"
    overrides = ["assign.topk=15"]
    value = 15                                 # the swept parameter (optional)
"""
import json
from dataclasses import dataclass, replace
from pathlib import Path

from detector.evaluation import METRIC_NAMES, SCALAR_METRICS

#: Training seeds of a built-in study.
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
#: The data seed of every built-in study: the data stay fixed while the training seed varies.
DEFAULT_DATA_SEEDS = (0,)


@dataclass(frozen=True)
class Arm:
    """One arm: the named ``config`` with ``overrides`` (``key.sub=value`` strings).

    ``value`` is the arm's value of the study's swept parameter (for the AP-vs-parameter
    plot), or None.
    """

    name: str
    config: str
    overrides: tuple = ()
    value: object = None


@dataclass(frozen=True)
class Study:
    """A comparison of ``arms`` over ``seeds`` (training seeds) and ``data_seeds``.

    ``overrides`` apply to every arm before the arm's own; ``claim`` is the paper's claim
    the study tests (quoted in the report); ``swept`` names the parameter of ``Arm.value``.
    """

    name: str
    description: str
    arms: tuple
    baseline: str
    seeds: tuple = DEFAULT_SEEDS
    data_seeds: tuple = DEFAULT_DATA_SEEDS
    metrics: tuple = METRIC_NAMES
    overrides: tuple = ()
    claim: str = ""
    swept: str = ""
    curves: tuple = ("box_loss_pos", "num_pos_per_image")

    def arm(self, name):
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ValueError(f"study {self.name}: no arm named {name!r}; arms: {', '.join(a.name for a in self.arms)}")


def validate_study(study, where=None):
    """Check a study's structure; raise ValueError naming ``where`` (a file) and the field."""
    prefix = f"{where}: " if where else f"study {study.name}: "
    if not study.name or not isinstance(study.name, str):
        raise ValueError(f"{prefix}name: expected a non-empty string")
    if not study.arms:
        raise ValueError(f"{prefix}arms: expected at least one arm")
    names = [arm.name for arm in study.arms]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{prefix}arms: duplicated names {duplicated}")
    if study.baseline not in names:
        raise ValueError(f"{prefix}baseline: {study.baseline!r} is not an arm ({', '.join(names)})")
    for key in ("seeds", "data_seeds"):
        values = getattr(study, key)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"{prefix}{key}: expected a non-empty list of ints >= 0, got {list(values)}")
        if len(set(values)) != len(values):
            raise ValueError(f"{prefix}{key}: duplicated values {list(values)}")
    unknown = [m for m in study.metrics if m not in SCALAR_METRICS]
    if unknown or not study.metrics:
        raise ValueError(f"{prefix}metrics: expected some of {', '.join(SCALAR_METRICS)}, got {list(study.metrics)}")
    from detector.configs import CONFIGS, get_config

    for arm in study.arms:
        if arm.config not in CONFIGS:
            raise ValueError(f"{prefix}arm {arm.name}: unknown config {arm.config!r} "
                             "(see `python -m detector.train --list`)")
        try:
            get_config(arm.config, list(study.overrides) + list(arm.overrides))
        except ValueError as error:
            raise ValueError(f"{prefix}arm {arm.name}: {error}") from None
    return study


def load_study_file(path):
    """A ``Study`` from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such study file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        parse = tomllib.loads
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        parse = yaml.safe_load
    else:
        raise ValueError(f"{path}: expected a .toml, .yaml or .yml study file")
    try:
        data = parse(text)
    except Exception as error:  # the parsers' own error types
        raise ValueError(f"{path}: cannot parse: {error}") from None
    return study_from_dict(data, where=str(path))


STUDY_KEYS = ("name", "description", "arms", "baseline", "seeds", "data_seeds", "metrics", "overrides", "claim", "swept",
              "curves")
ARM_KEYS = ("name", "config", "overrides", "value")


def study_from_dict(data, where="study"):
    """A validated ``Study`` from plain data (a parsed study file)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table of study fields")
    unknown = sorted(set(data) - set(STUDY_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {', '.join(STUDY_KEYS)}")
    for key in ("name", "arms", "baseline"):
        if key not in data:
            raise ValueError(f"{where}: missing key {key!r}")
    arms = []
    for index, item in enumerate(data["arms"] if isinstance(data["arms"], list) else []):
        if not isinstance(item, dict) or "name" not in item or "config" not in item:
            raise ValueError(f"{where}: arms[{index}]: expected a table with at least name and config")
        bad = sorted(set(item) - set(ARM_KEYS))
        if bad:
            raise ValueError(f"{where}: arms[{index}]: unknown keys {bad}; valid keys: {', '.join(ARM_KEYS)}")
        arms.append(Arm(str(item["name"]), str(item["config"]), _strings(item.get("overrides", ()), where, f"arms[{index}].overrides"),
                        item.get("value")))
    study = Study(
        name=str(data["name"]), description=str(data.get("description", "")), arms=tuple(arms),
        baseline=str(data["baseline"]), seeds=tuple(data.get("seeds", DEFAULT_SEEDS)),
        data_seeds=tuple(data.get("data_seeds", DEFAULT_DATA_SEEDS)), metrics=tuple(data.get("metrics", METRIC_NAMES)),
        overrides=_strings(data.get("overrides", ()), where, "overrides"), claim=str(data.get("claim", "")),
        swept=str(data.get("swept", "")), curves=tuple(data.get("curves", Study.curves)),
    )
    return validate_study(study, where)


def study_to_dict(study):
    """Plain data of a study (JSON-safe); ``study_from_dict`` reads it back."""
    return {"name": study.name, "description": study.description, "baseline": study.baseline,
            "seeds": list(study.seeds), "data_seeds": list(study.data_seeds), "metrics": list(study.metrics),
            "overrides": list(study.overrides), "claim": study.claim, "swept": study.swept, "curves": list(study.curves),
            "arms": [{"name": a.name, "config": a.config, "overrides": list(a.overrides), "value": a.value}
                     for a in study.arms]}


def with_options(study, *, seeds=None, data_seeds=None, overrides=(), arms=None):
    """``study`` with other seeds, extra overrides for every arm (after the study's own) or a
    subset of arms (the baseline is always kept)."""
    if seeds is not None:
        study = replace(study, seeds=tuple(seeds))
    if data_seeds is not None:
        study = replace(study, data_seeds=tuple(data_seeds))
    if overrides:
        study = replace(study, overrides=tuple(study.overrides) + tuple(overrides))
    if arms:
        keep = set(arms) | {study.baseline}
        unknown = sorted(set(arms) - {a.name for a in study.arms})
        if unknown:
            raise ValueError(f"study {study.name}: no arms named {unknown}")
        study = replace(study, arms=tuple(a for a in study.arms if a.name in keep))
    return validate_study(study)


def _strings(values, where, key):
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: {key}: expected a list of key=value strings, got {json.dumps(values, default=str)}")
    return tuple(values)


# ---------------------------------------------------------------------------------------
# built-in studies (the papers' tables at the built-in dataset's scale)


def _dyn(name, pred, anchor, pred_schedule="constant", anchor_schedule="constant"):
    return Arm(name, "study_atss", ("assign.name=dynamic_atss", f"assign.pred_weight={pred}", f"assign.anchor_weight={anchor}",
                                    f"assign.pred_weight_schedule={pred_schedule}",
                                    f"assign.anchor_weight_schedule={anchor_schedule}"))


#: Curves of the anchor-free studies: the paper explains the collapse at high T by GTs left
#: without positives.
_AF_CURVES = ("box_loss_pos", "num_pos_per_image", "gts_without_pos_per_image", "mean_prior_iou_pos", "mean_pred_iou_pos")
_AF_PLAIN = ("head.quality=none", "inference.score_mode=cls", "loss.box=iou")  # Pseudo-IoU Tables 1-2: no centerness

#: TAL, SimOTA and DSL train QFL on their own soft targets, with no quality branch.
_SOFT = ("loss.cls=qfl", "loss.soft_target=assigner", "head.quality=none", "inference.score_mode=cls")

BUILTIN_STUDIES = {
    study.name: study
    for study in (
        Study(
            "dyn_atss_table1", "ATSS with combined IoUs, QFL or VFL against plain ATSS (Dynamic ATSS paper Table 1)",
            arms=(Arm("ATSS", "study_atss"),
                  Arm("ATSS+CIoUs", "study_atss", ("assign.name=dynamic_atss",)),
                  Arm("ATSS+QFL", "study_atss", ("loss.cls=qfl",)),
                  Arm("ATSS+VFL", "study_atss", ("loss.cls=vfl",))),
            baseline="ATSS",
            claim="Table 1 (COCO minival, R-50 1x): ATSS 39.06 AP; + combined IoUs 39.75 (+0.69); + QFL 39.61 (+0.55); "
                  "+ VFL 39.65 (+0.59).",
        ),
        Study(
            "dyn_atss_table2", "which parts of Dynamic ATSS help (Dynamic ATSS paper Table 2)",
            arms=(Arm("AIoUs+ctr", "study_atss"),
                  Arm("PIoUs+ctr", "study_atss", ("assign.name=dynamic_atss", "assign.anchor_weight=0.0")),
                  Arm("CIoUs+ctr", "study_atss", ("assign.name=dynamic_atss",)),
                  Arm("CIoUs+QFL+ctr", "study_atss", ("assign.name=dynamic_atss", "loss.cls=qfl")),
                  Arm("CIoUs+VFL+ctr", "study_atss", ("assign.name=dynamic_atss", "loss.cls=vfl")),
                  Arm("CIoUs+QFL+IoU", "study_atss", ("assign.name=dynamic_atss", "loss.cls=qfl", "head.quality=iou")),
                  Arm("CIoUs+VFL+IoU", "study_atss", ("assign.name=dynamic_atss", "loss.cls=vfl", "head.quality=iou"))),
            baseline="AIoUs+ctr",
            claim="Table 2 (COCO minival, R-50 1x): AIoUs 39.06 AP; PIoUs only 29.39; CIoUs 39.75; CIoUs + QFL 40.07; "
                  "+ VFL 39.83; CIoUs + QFL + IoU branch 40.30; + VFL + IoU branch 40.15.",
        ),
        Study(
            "dyn_atss_table3", "weights of the combination w_p : w_a (Dynamic ATSS paper Table 3)",
            arms=(_dyn("1:1", 1.0, 1.0), _dyn("0.5:1", 0.5, 1.0), _dyn("1.5:1", 1.5, 1.0), _dyn("1:0.5", 1.0, 0.5),
                  _dyn("1:1.5", 1.0, 1.5), _dyn("Dup:1", 1.0, 1.0, pred_schedule="up"),
                  _dyn("1:Ddown", 1.0, 1.0, anchor_schedule="down"),
                  _dyn("Dup:Ddown", 1.0, 1.0, pred_schedule="up", anchor_schedule="down")),
            baseline="1:1",
            claim="Table 3 (COCO minival, R-50 1x): 1:1 is best (39.75 AP); 0.5:1 39.43, 1.5:1 39.55, 1:0.5 39.42, "
                  "1:1.5 39.51, D_up:1 39.22, 1:D_down 35.05, D_up:D_down 35.64.",
        ),
        Study(
            "piou_table1a", "Pseudo-IoU threshold T (Pseudo-IoU paper Table 1a)",
            arms=(Arm("T=0 (baseline)", "study_piou", ("assign.name=all_inside",) + _AF_PLAIN, 0.0),)
            + tuple(Arm(f"T={t}", "study_piou", (f"assign.threshold={t}",) + _AF_PLAIN, t)
                    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
            baseline="T=0 (baseline)", swept="Pseudo-IoU threshold T", curves=_AF_CURVES,
            claim="Table 1a (VOC07 test, mAP): T = 0 (baseline) 76.9, 0.1 76.8, 0.2 77.5, 0.3 78.2, 0.4 79.0 (+2.1), "
                  "0.5 78.9, then a collapse: 0.6 45.6, 0.7 22.1 (0.8: 13.5 in Table 2).",
        ),
        Study(
            "piou_table2", "Pseudo-IoU against scaled-box and centerness assignment (Pseudo-IoU paper Table 2)",
            arms=(Arm("all inside", "study_piou", ("assign.name=all_inside",) + _AF_PLAIN),
                  Arm("P-IoU T=0.4", "study_piou", ("assign.threshold=0.4",) + _AF_PLAIN),
                  Arm("S-box s=0.6", "study_piou", ("assign.name=scaled_box", "assign.scale=0.6") + _AF_PLAIN),
                  Arm("Centerness c=0.35", "study_piou", ("assign.name=centerness", "assign.threshold=0.35") + _AF_PLAIN)),
            baseline="all inside", curves=_AF_CURVES,
            claim="Table 2 (VOC07 test), each rule at its best parameter: Pseudo-IoU 79.0 mAP, centerness 78.7, "
                  "scaled box 78.3 (all-inside baseline 76.9, Table 1a).",
        ),
        Study(
            "prediction_aware", "Dynamic ATSS against the other prediction-aware assigners: TAL, SimOTA, DSL",
            arms=(Arm("ATSS", "study_atss"),
                  Arm("Dynamic ATSS", "study_atss", ("assign.name=dynamic_atss",)),
                  Arm("Dynamic ATSS+QFL", "study_atss", ("assign.name=dynamic_atss", "loss.cls=qfl")),
                  Arm("TAL", "study_atss", ("assign.name=tal", "assign.atss_warmup=0.333") + _SOFT),
                  Arm("SimOTA", "study_atss", ("assign.name=simota",) + _SOFT),
                  Arm("DSL", "study_atss", ("assign.name=dsl",) + _SOFT)),
            baseline="ATSS", curves=("box_loss_pos", "num_pos_per_image", "gts_without_pos_per_image",
                                     "mean_pred_iou_pos"),
            claim="No paper claim: the question a researcher asks first of combined IoUs is how they compare with "
                  "the assigners people train with today (TOOD's TAL, YOLOX's SimOTA, RTMDet's DSL); each arm here "
                  "uses its method's soft targets (QFL) and no quality branch, except ATSS and Dynamic ATSS "
                  "(centerness branch, as in the Dynamic ATSS paper).",
        ),
        Study(
            "fig3", "box loss of the positives, ATSS vs ATSS + combined IoUs (Dynamic ATSS paper Figure 3)",
            arms=(Arm("ATSS", "study_atss"), Arm("ATSS+CIoUs", "study_atss", ("assign.name=dynamic_atss",))),
            baseline="ATSS",
            claim="Figure 3 and its text: the regression loss of the positives is about the same early in training "
                  "and lower with combined IoUs later (positives with higher-quality predicted boxes); APl +2.",
            curves=("box_loss_pos", "loss_box", "num_pos_per_image", "mean_pred_iou_pos", "gts_without_pos_per_image"),
        ),
        Study(
            "fig4", "box loss of the positives, GFLV2 vs GFLV2 + combined IoUs (Dynamic ATSS paper Figure 4, Table 4)",
            arms=(Arm("GFLV2", "demo_gflv2"), Arm("GFLV2+CIoUs", "demo_gflv2_ciou")),
            baseline="GFLV2",
            claim="Figure 4 and Table 4: with combined IoUs GFLV2's box loss of the positives falls lower as training "
                  "proceeds, and COCO AP rises by 0.5 (40.6 -> 41.1).",
            curves=("box_loss_pos", "loss_box", "num_pos_per_image", "mean_pred_iou_pos"),
        ),
        Study(
            "fig5", "box loss of the positives, VFNet vs VFNet + combined IoUs (Dynamic ATSS paper Figure 5, Table 4)",
            arms=(Arm("VFNet", "demo_vfnet"), Arm("VFNet+CIoUs", "demo_vfnet_ciou")),
            baseline="VFNet",
            claim="Figure 5 and Table 4: with combined IoUs VFNet's box loss of the positives falls lower as training "
                  "proceeds, and COCO AP rises by 0.3 (41.3 -> 41.6).",
            curves=("box_loss_pos", "loss_box", "num_pos_per_image", "mean_pred_iou_pos"),
        ),
    )
}


def resolve_study(name_or_path):
    """A built-in study by name, or a study file by path."""
    if name_or_path in BUILTIN_STUDIES:
        return BUILTIN_STUDIES[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".toml", ".yaml", ".yml") or path.exists():
        return load_study_file(path)
    raise ValueError(f"unknown study {name_or_path!r}: expected one of {', '.join(BUILTIN_STUDIES)} or a .toml/.yaml file "
                     "(see `python -m detector.study --list`)")
