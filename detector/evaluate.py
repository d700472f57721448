"""Evaluate a checkpoint with COCO AP or the VOC mAP (specs/training.md §5, specs/data.md §6).

Usage::

    python -m detector.evaluate runs/demo-.../last.pth
    python -m detector.evaluate CHECKPOINT --images DIR --annotations FILE [--out metrics.json]
    python -m detector.evaluate CHECKPOINT data.test_min_size=640 inference.score_threshold=0.01
    python -m detector.evaluate CHECKPOINT data.metric=voc07
    python -m detector.evaluate CHECKPOINT --images test2017 --annotations image_info_test-dev2017.json \
        --format coco-results --out detections_test-dev2017_labelassign_results.json

The model is rebuilt from the config stored in the checkpoint; ``key.sub=value`` overrides
may change the data and inference settings. The standard 12-line COCO table is printed
and AP, AP50, AP75, APs, APm, APl are written as JSON (default: ``metrics-<checkpoint
name>.json`` next to the checkpoint). With ``data.metric=voc07`` or ``voc_area`` the VOC
``mAP`` (IoU 0.5) comes first, and the JSON also holds ``per_class_AP``.
"""
import argparse
import sys
from pathlib import Path

from detector import configs, engine, runtime
from detector.checkpoint import load_checkpoint
from detector.data.coco import CocoDetection
from detector.data.loaders import dataset_paths, test_transform, val_loader
from detector.evaluation import detections_to_coco_results, write_json_atomically, write_metrics_json
from detector.modeling import Detector

#: Sections an evaluation override may touch (the model itself comes from the checkpoint).
EVAL_SECTIONS = ("data", "inference")


#: ``--format`` choices: COCO metrics of an annotated split, or the detections as a COCO
#: results JSON (for an unannotated split, e.g. test-dev, to submit to the evaluation server).
FORMATS = ("metrics", "coco-results")


def evaluate_checkpoint(checkpoint, *, images=None, annotations=None, overrides=(), out=None, device="auto",
                        verbose=True, progress=True, format="metrics"):
    """Metrics of ``checkpoint`` on its config's val split or on ``images``/``annotations``,
    or (``format="coco-results"``) its detections there as a COCO results JSON.

    Returns:
        (metrics, path): with ``format="metrics"`` the dict AP, AP50, AP75, APs, APm, APl
        (NaN where an area range has no GT), preceded by the VOC ``mAP`` and followed by
        ``per_class_AP`` when ``data.metric`` is ``voc07`` or ``voc_area`` (the config's,
        after the overrides), also written to ``out`` as JSON; with
        ``format="coco-results"`` None and the results file (one ``{image_id, category_id,
        bbox [x, y, w, h], score}`` per detection, original image coordinates). An
        ``annotations`` file without an ``"annotations"`` list (an image-info file such as
        COCO's ``image_info_test-dev2017.json``) is accepted for ``coco-results``.
    """
    if format not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    config = configs.from_dict(state["config"])
    bad = [o for o in overrides if o.split("=", 1)[0].split(".")[0] not in EVAL_SECTIONS]
    if bad:
        raise ValueError(f"overrides {bad}: only {', '.join(s + '.*' for s in EVAL_SECTIONS)} can change at evaluation")
    config = configs.apply_overrides(config, list(overrides) + ([f"device={device}"] if device != "auto" else []))
    if (images is None) != (annotations is None):
        raise ValueError("--images and --annotations go together")
    runtime.set_threads(config.threads)
    dev = runtime.select_device(config.device)
    if images is None:
        _, _, images, annotations = dataset_paths(config)
    val = CocoDetection(images, annotations, transforms=test_transform(config),
                        annotations_required=format == "metrics")
    val_annotations, category_ids = str(annotations), list(val.category_ids)
    num_classes = state.get("num_classes", len(category_ids))
    if num_classes != len(category_ids):
        raise ValueError(f"{val_annotations}: {len(category_ids)} categories, but the model has {num_classes} classes")
    model = Detector(config, num_classes)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(val), desc="evaluate" if format == "metrics" else "detect", unit="img", dynamic_ncols=True)
    loader = val_loader(config, val)
    if format == "coco-results":
        detections = engine.run_inference(model, loader, dev, progress=bar)
        if bar is not None:
            bar.close()
        out = Path(out) if out is not None else checkpoint.parent / f"results-{checkpoint.stem}.json"
        write_json_atomically(detections_to_coco_results(detections, category_ids), out)
        return None, out
    metrics = engine.evaluate(model, loader, dev, val_annotations, category_ids, verbose=verbose, progress=bar,
                              metric=config.data.metric)
    if bar is not None:
        bar.close()
    out = Path(out) if out is not None else checkpoint.parent / f"metrics-{checkpoint.stem}.json"
    write_metrics_json(metrics, out)
    return metrics, out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m detector.evaluate",
                                     description="COCO AP (with data.metric=voc07 or voc_area also the VOC mAP) "
                                                 "of a training checkpoint.")
    parser.add_argument("checkpoint", type=Path, help="a .pth file written by detector.train (or a run directory)")
    parser.add_argument("overrides", nargs="*", help="data.* / inference.* overrides, key.sub=value")
    parser.add_argument("--images", type=Path, default=None, help="image folder of a COCO split (default: the config's val split)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="COCO annotation file matching --images (an image-info file with --format coco-results)")
    parser.add_argument("--format", default="metrics", choices=FORMATS,
                        help="metrics: COCO AP of an annotated split; coco-results: the detections as a COCO results "
                             "JSON (e.g. test-dev, for the evaluation server)")
    parser.add_argument("--out", type=Path, default=None, help="output JSON path (default: next to the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_intermixed_args(argv)
    checkpoint = args.checkpoint / "last.pth" if args.checkpoint.is_dir() else args.checkpoint
    try:
        metrics, out = evaluate_checkpoint(checkpoint, images=args.images, annotations=args.annotations,
                                           overrides=args.overrides, out=args.out, device=args.device,
                                           progress=not args.no_progress, format=args.format)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if metrics is None:
        print(f"detections written to {out}")
        return out
    from detector.train import format_metrics

    print(format_metrics(metrics))
    print(f"metrics written to {out}")
    return metrics


if __name__ == "__main__":
    main()
