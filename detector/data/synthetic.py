"""The built-in "digits" detection dataset (specs/data.md §1).

Real handwritten digits (the 8x8 digits that ship with scikit-learn) are stretched to
varied scales and aspect ratios, coloured, and pasted onto cluttered colour backgrounds.
The result is written once, deterministically from the seed, as COCO JSON + PNG images
into a cache folder named by a hash of all parameters.

Command line::

    python -m detector.data.synthetic --out DIR [--seed 0] [--num-train 1000] ...
"""
import argparse
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: Bumped whenever the recipe changes, so that old cache folders are not reused.
GENERATOR_VERSION = 1
#: A pixel belongs to a digit's ink where its opacity is >= this (0..1).
INK_THRESHOLD = 0.25
#: COCO category id of digit d is d + CATEGORY_ID_OFFSET (COCO ids conventionally start at 1).
CATEGORY_ID_OFFSET = 1
#: Fraction of each class's digit samples reserved for the val split.
VAL_DIGIT_FRACTION = 0.2
#: Placement tries per object before the object is skipped.
PLACEMENT_TRIES = 30
_SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class DatasetPaths:
    """Where a generated dataset lives. Image dirs hold ``file_name`` of the COCO JSON."""

    root: Path
    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path


def default_cache_root():
    """``$LABELASSIGN_DATA`` if set and non-empty, else ``~/.cache/labelassign``."""
    env = os.environ.get("LABELASSIGN_DATA")
    return Path(env) if env else Path.home() / ".cache" / "labelassign"


def build_digits_dataset(
    root=None,
    *,
    seed=0,
    num_train=1000,
    num_val=200,
    image_size=(256, 256),
    min_objects=1,
    max_objects=10,
    object_size=(12.0, 128.0),
    aspect_ratio=(0.2, 5.0),
    max_overlap=0.3,
    single_class=False,
):
    """Generate (or reuse from the cache) the digits dataset; specs/data.md §1.

    Args:
        root: cache folder; default ``default_cache_root()``. The dataset goes into
            ``root / "digits-<hash of all other arguments>"``.
        seed: everything is a deterministic function of the arguments.
        num_train, num_val: number of images per split.
        image_size: (H, W) of every image in pixels.
        min_objects, max_objects: objects per image are drawn uniformly from this range.
        object_size: (min, max) of sqrt(w * h) of a pasted digit in pixels, log-uniform.
        aspect_ratio: (min, max) of w / h of a pasted digit, log-uniform.
        max_overlap: a placement whose IoU with an earlier object exceeds this is rejected.
        single_class: every object is of one category "digit" (id 1) instead of its digit's
            category; the images are the same. A detection task where AP measures where the
            boxes are, not which digit they hold (the study preset, specs/study.md §2).

    Returns:
        ``DatasetPaths``. A second call with the same arguments returns at once.
    """
    params = _check_params(
        seed=seed, num_train=num_train, num_val=num_val, image_size=image_size,
        min_objects=min_objects, max_objects=max_objects, object_size=object_size,
        aspect_ratio=aspect_ratio, max_overlap=max_overlap, single_class=single_class,
    )
    root = Path(root) if root is not None else default_cache_root()
    final = root / f"digits-{_params_hash(params)}"
    if not final.is_dir():
        _generate_atomically(final, params)
    return _paths(final)


def _check_params(**raw):
    """Validate the generator arguments; return them as plain JSON-serialisable values."""
    params = {key: int(raw[key]) for key in ("seed", "num_train", "num_val", "min_objects", "max_objects")}
    params["image_size"] = [int(v) for v in raw["image_size"]]
    params["object_size"] = [float(v) for v in raw["object_size"]]
    params["aspect_ratio"] = [float(v) for v in raw["aspect_ratio"]]
    params["max_overlap"] = float(raw["max_overlap"])
    if raw.get("single_class"):  # absent when False: the ten-class datasets keep their cache folders
        params["single_class"] = True
    if len(params["image_size"]) != 2 or min(params["image_size"]) < 16:
        raise ValueError(f"image_size: expected (H, W) with both sides >= 16, got {raw['image_size']}")
    if not 1 <= params["min_objects"] <= params["max_objects"]:
        raise ValueError("min_objects, max_objects: expected 1 <= min_objects <= max_objects, "
                         f"got {raw['min_objects']}, {raw['max_objects']}")
    if min(params["seed"], params["num_train"], params["num_val"]) < 0:
        raise ValueError("seed, num_train, num_val: expected non-negative ints")
    if not 0.0 <= params["max_overlap"] <= 1.0:
        raise ValueError(f"max_overlap: expected an IoU in [0, 1], got {raw['max_overlap']!r}")
    if len(params["object_size"]) != 2 or not 4 <= params["object_size"][0] <= params["object_size"][1]:
        raise ValueError(f"object_size: expected (min, max) with 4 <= min <= max, got {raw['object_size']}")
    if len(params["aspect_ratio"]) != 2 or not 0 < params["aspect_ratio"][0] <= params["aspect_ratio"][1]:
        raise ValueError(f"aspect_ratio: expected (min, max) with 0 < min <= max, got {raw['aspect_ratio']}")
    return params


def _params_hash(params):
    blob = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _paths(folder):
    return DatasetPaths(
        root=folder,
        train_images=folder / "train",
        train_annotations=folder / "annotations" / "instances_train.json",
        val_images=folder / "val",
        val_annotations=folder / "annotations" / "instances_val.json",
    )


def _generate_atomically(final, params):
    """Write into a private temporary folder next to ``final``, then rename it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, params)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a concurrent writer that finished first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _generate(folder, params):
    paths = _paths(folder)
    paths.train_annotations.parent.mkdir(parents=True)
    ink, classes = _load_digits()
    pools = {split: (ink[idx], classes[idx]) for split, idx in digit_split(params["seed"]).items()}
    for split, count, image_dir, ann_file in (
        ("train", params["num_train"], paths.train_images, paths.train_annotations),
        ("val", params["num_val"], paths.val_images, paths.val_annotations),
    ):
        image_dir.mkdir()
        coco = _generate_split(split, count, image_dir, pools[split], params)
        ann_file.write_text(json.dumps(coco))
    (folder / "params.json").write_text(json.dumps({"version": GENERATOR_VERSION, **params}, indent=2))


@functools.lru_cache(maxsize=1)
def _load_digits():
    """(N, 8, 8) float64 ink opacity in [0, 1] and (N,) int64 class in 0..9 (shared: do not modify)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target.astype(np.int64)


def digit_split(seed):
    """Disjoint train/val indices into ``sklearn.datasets.load_digits()``, stratified by class.

    Returns:
        {"train": (N_train,) int64, "val": (N_val,) int64}, ascending; every class gets
        ``round(VAL_DIGIT_FRACTION * n_class)`` val samples, chosen by ``seed``.
    """
    rng = np.random.default_rng(seed)
    _, classes = _load_digits()
    train, val = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(classes == digit))
        num_val = int(round(VAL_DIGIT_FRACTION * len(members)))
        val.extend(members[:num_val])
        train.extend(members[num_val:])
    return {"train": np.sort(np.asarray(train, dtype=np.int64)), "val": np.sort(np.asarray(val, dtype=np.int64))}


def _generate_split(split, count, image_dir, pool, params):
    """Render ``count`` images of one split; return its COCO dict."""
    height, width = params["image_size"]
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([params["seed"], _SPLIT_CODES[split], index])
        canvas, boxes, labels = _render_image(rng, pool, params)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(canvas).save(image_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            w, h = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CATEGORY_ID_OFFSET if params.get("single_class") else int(label) + CATEGORY_ID_OFFSET,
                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0,
            })
    if params.get("single_class"):
        categories = [{"id": CATEGORY_ID_OFFSET, "name": "digit", "supercategory": "digit"}]
    else:
        categories = [{"id": d + CATEGORY_ID_OFFSET, "name": str(d), "supercategory": "digit"} for d in range(10)]
    info = {"description": f"labelassign digits ({split})", "version": str(GENERATOR_VERSION)}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def _render_image(rng, pool, params):
    """One image: (H, W, 3) uint8 canvas, list of integer xyxy boxes, list of classes."""
    height, width = params["image_size"]
    canvas = _background(rng, height, width)
    boxes, labels = [], []
    for _ in range(int(rng.integers(params["min_objects"], params["max_objects"] + 1))):
        digit = int(rng.integers(len(pool[1])))
        placed = _place_digit(rng, canvas, pool[0][digit], boxes, params)
        if placed is not None:
            boxes.append(placed)
            labels.append(int(pool[1][digit]))
    return canvas, boxes, labels


def _background(rng, height, width):
    """(H, W, 3) uint8: two octaves of smooth colour noise plus coloured clutter."""
    image = np.zeros((height, width, 3))
    for cells, amplitude in ((3, 0.7), (12, 0.3)):
        grid = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        smooth = Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR)
        image += amplitude * np.asarray(smooth, dtype=np.float64)
    base = Image.fromarray(image.clip(0, 255).astype(np.uint8)).convert("RGBA")
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    _draw_clutter(rng, ImageDraw.Draw(overlay), height, width)
    return np.asarray(Image.alpha_composite(base, overlay).convert("RGB")).copy()


def _draw_clutter(rng, draw, height, width):
    """Random lines, rectangles and blobs in random colours and opacities."""
    for _ in range(int(rng.integers(4, 13))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(80, 220)),)
        x = np.sort(rng.uniform(0, width, 2))
        y = np.sort(rng.uniform(0, height, 2))
        xy = [float(x[0]), float(y[0]), float(x[1]), float(y[1])]
        kind = int(rng.integers(3))
        if kind == 0:
            if rng.random() < 0.5:
                xy = [xy[0], xy[3], xy[2], xy[1]]
            draw.line(xy, fill=colour, width=int(rng.integers(1, 5)))
        elif kind == 1:
            draw.rectangle(xy, outline=colour, fill=colour if rng.random() < 0.5 else None,
                           width=int(rng.integers(1, 4)))
        else:
            draw.ellipse(xy, fill=colour)


def _place_digit(rng, canvas, ink, boxes, params):
    """Paste one digit into ``canvas`` in place; return its integer xyxy ink box or None."""
    height, width = canvas.shape[:2]
    for _ in range(PLACEMENT_TRIES):
        patch_w, patch_h = _sample_size(rng, params, height, width)
        alpha, (bx1, by1, bx2, by2) = _digit_alpha(ink, patch_h, patch_w)
        if alpha is None:
            continue
        x0 = int(rng.integers(0, width - patch_w + 1))
        y0 = int(rng.integers(0, height - patch_h + 1))
        box = [x0 + bx1, y0 + by1, x0 + bx2, y0 + by2]
        if boxes and _max_iou(box, boxes) > params["max_overlap"]:
            continue
        _blend(rng, canvas, alpha, x0, y0)
        return box
    return None


def _sample_size(rng, params, height, width):
    """Patch (w, h) in pixels with log-uniform scale and aspect ratio, shrunk to fit the image."""
    scale = np.exp(rng.uniform(*np.log(params["object_size"])))
    ratio = np.exp(rng.uniform(*np.log(params["aspect_ratio"])))
    w, h = scale * np.sqrt(ratio), scale / np.sqrt(ratio)
    shrink = min(1.0, width / w, height / h)
    return max(3, min(width, int(round(w * shrink)))), max(3, min(height, int(round(h * shrink))))


def _digit_alpha(ink, patch_h, patch_w):
    """Stretch a digit's ink crop to (patch_h, patch_w); return opacity and tight ink box.

    Returns:
        ((patch_h, patch_w) float64 opacity in [0, 1], zero below INK_THRESHOLD;
        (x1, y1, x2, y2) integer tight box of the nonzero opacity in patch pixels),
        or (None, None) if no pixel reaches the threshold.
    """
    rows = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    stretched = Image.fromarray(crop, mode="F").resize((patch_w, patch_h), Image.Resampling.BILINEAR)
    alpha = np.clip(np.asarray(stretched, dtype=np.float64), 0.0, 1.0)
    alpha[alpha < INK_THRESHOLD] = 0.0
    ys, xs = np.nonzero(alpha)
    if len(ys) == 0:
        return None, None
    return alpha, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _blend(rng, canvas, alpha, x0, y0):
    """Paint ``alpha`` into ``canvas`` at (x0, y0) in the candidate colour farthest from the background."""
    region = canvas[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]].astype(np.float64)
    candidates = rng.integers(0, 256, (8, 3)).astype(np.float64)
    colour = candidates[np.argmax(np.linalg.norm(candidates - region.mean(axis=(0, 1)), axis=1))]
    a = alpha[..., None]
    canvas[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]] = np.round(region * (1 - a) + colour * a).astype(np.uint8)


def _max_iou(box, boxes):
    """Largest IoU between one xyxy box and a non-empty list of xyxy boxes of positive area."""
    others = np.asarray(boxes, dtype=np.float64)
    inter_w = np.clip(np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0]), 0, None)
    inter_h = np.clip(np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1]), 0, None)
    inter = inter_w * inter_h
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return float(np.max(inter / union))


def main(argv=None):
    """Command line: generate (or find) the dataset and print its paths."""
    parser = argparse.ArgumentParser(description="Generate the built-in digits detection dataset (COCO format).")
    parser.add_argument("--out", type=Path, default=None, help="cache folder (default: $LABELASSIGN_DATA or ~/.cache/labelassign)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--min-objects", type=int, default=1)
    parser.add_argument("--max-objects", type=int, default=10)
    parser.add_argument("--single-class", action="store_true", help="one category 'digit' for every object")
    args = parser.parse_args(argv)
    paths = build_digits_dataset(
        args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
        image_size=tuple(args.image_size), min_objects=args.min_objects, max_objects=args.max_objects,
        single_class=args.single_class,
    )
    for field in dataclasses.fields(paths):
        print(f"{field.name}: {getattr(paths, field.name)}")
    return paths


if __name__ == "__main__":
    main()
