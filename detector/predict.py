"""Run a trained detector on image files (specs/training.md §7b).

Usage::

    python -m detector.predict runs/demo-.../last.pth photos/ --out predictions/
    python -m detector.predict runs/demo-... 'shots/*.jpg' extra.png --score-threshold 0.3
    python -m detector.predict CHECKPOINT photos/ --recursive --format per-image --no-draw

INPUT is an image file, a folder (its images, sorted by name; sub-folders with
``--recursive``) or a glob pattern. The model, its config and the test transform come from
the checkpoint, exactly as ``detector.evaluate`` builds them, and detections go through the
same path as evaluation (``engine.run_inference``: ``Detector.predict``, then the boxes
mapped back to original-image coordinates). Outputs, in ``--out`` (default
``predictions/``):

- ``<stem>.png``: the image with its boxes, one colour per class, labelled
  ``class name score`` (unless ``--no-draw``); duplicate stems get ``-2``, ``-3``, ...;
- ``--format coco-results`` (default): ``predictions.json``, one ``{image_id, file_name,
  category_id, bbox [x, y, w, h], score}`` per detection, image ids 1..N numbering the
  matched inputs in order, and ``images.json`` mapping each predicted image id to its path;
- ``--format per-image``: ``<stem>.json`` next to each drawing.

An image that cannot be read is reported (``warning: skipped PATH: reason``) and skipped.
"""
import argparse
import glob
import json
import math
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from detector import configs, engine, runtime
from detector.checkpoint import load_checkpoint
from detector.data.coco import decode_image
from detector.data.collate import collate
from detector.data.loaders import size_divisor, test_transform
from detector.files import write_json_atomically
from detector.modeling import Detector
from detector.train import DEBUG_ENV, USER_ERRORS

#: File name extensions (lower case) of the images a folder or a glob pattern contributes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: ``--format`` choices.
FORMATS = ("coco-results", "per-image")
#: Names of the ``coco-results`` files in the output folder.
PREDICTIONS_FILE = "predictions.json"
IMAGES_FILE = "images.json"
#: ``run_inference`` is called on chunks of this many batches, so outputs are written as
#: the run goes (an interrupted run keeps the drawings of the images it finished).
CHUNK_BATCHES = 16

#: Box colours, one per class (label modulo the palette's length): well-separated RGB.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    (255, 225, 25), (128, 128, 128),
)
#: Drawings of images whose longer side is shorter than this are enlarged by an integer
#: factor (nearest neighbour) until it is not, so labels stay readable on small images.
DRAW_MIN_SIDE = 512


# ----------------------------------------------------------------------------------------
# inputs


def collect_images(inputs, *, recursive=False):
    """Image files of the command line's INPUT arguments, in order, each once.

    Args:
        inputs: paths or glob patterns (str or Path). A file is taken as given (a file whose
            extension is not in ``IMAGE_EXTENSIONS`` is reported); a folder contributes its
            image files sorted by path (sub-folders too with ``recursive``; names starting
            with "." are left out); a pattern (``*``, ``?``, ``[``) that is not an existing
            path contributes the image files it matches, sorted (``**`` with ``recursive``).

    Returns:
        (paths, problems): the list of ``Path`` in command-line order without repeats (the
        first occurrence of a file counts), and a list of (input, reason) for inputs that
        contribute nothing because they do not exist, are not images or match nothing.
        An empty folder contributes nothing silently.
    """
    paths, problems, seen = [], [], set()

    def add(path):
        key = os.path.normcase(os.path.realpath(path))
        if key not in seen:
            seen.add(key)
            paths.append(Path(path))

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            walk = path.rglob("*") if recursive else path.iterdir()
            found = [p for p in walk if p.is_file() and _is_image_name(p)
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            for p in sorted(found):
                add(p)
        elif path.is_file():
            if _is_image_name(path):
                add(path)
            else:
                problems.append((text, f"not an image file (extension {path.suffix or 'none'!r}; expected one of "
                                       f"{', '.join(IMAGE_EXTENSIONS)})"))
        elif any(c in text for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=recursive))
            matches = [m for m in matches if m.is_file() and _is_image_name(m)]
            if not matches:
                problems.append((text, "the pattern matches no image file"))
            for m in matches:
                add(m)
        else:
            problems.append((text, "no such file or folder"))
    return paths, problems


def _is_image_name(path):
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Skipped:
    """An image that could not be read: its path and the reason (one line)."""

    path: str
    reason: str


class ImageFiles(Dataset):
    """Image files as ``(image, target)`` pairs for ``engine.run_inference``.

    ``image`` is the (3, H', W') float32 tensor after ``transforms`` (the config's test
    transform); ``target`` is a ``CocoDetection``-style dict without GTs: ``image_id``
    (``image_ids[index]``), ``orig_size`` (H, W) of the file, ``scale_factor`` and
    ``flipped`` (updated by the transforms), empty ``boxes`` (0, 4) and ``labels`` (0,).
    An unreadable file gives a ``Skipped`` instead of raising, so one bad file does not
    stop a run.
    """

    def __init__(self, paths, image_ids, transforms):
        if len(paths) != len(image_ids):
            raise ValueError(f"{len(paths)} paths but {len(image_ids)} image ids")
        self.paths = [Path(p) for p in paths]
        self.image_ids = [int(i) for i in image_ids]
        self.transforms = transforms

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        try:
            image = decode_image(path)
        except ValueError as error:  # decode_image names the file; keep only the reason
            return Skipped(str(path), str(error).removeprefix(f"{path}: "))
        except OSError as error:  # vanished, unreadable, a folder
            return Skipped(str(path), error.strerror or str(error))
        height, width = image.shape[-2:]
        target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                  "image_id": self.image_ids[index], "orig_size": (int(height), int(width)),
                  "scale_factor": (1.0, 1.0), "flipped": False}
        return self.transforms(image, target)


def _collate_skipping(items, size_divisor):
    """(``collate`` of the readable items or None, list of ``Skipped``)."""
    good = [item for item in items if not isinstance(item, Skipped)]
    skipped = [item for item in items if isinstance(item, Skipped)]
    return (collate(good, size_divisor=size_divisor) if good else None), skipped


def _readable_batches(loader, sizes, on_skip, progress):
    """The non-empty batches of ``loader``; reports its ``Skipped`` items and records the
    ``orig_size`` of every readable image in ``sizes`` (image id -> (H, W))."""
    for batch, skipped in loader:
        for item in skipped:
            on_skip(item.path, item.reason)
        if progress is not None and skipped:
            progress.update(len(skipped))
        if batch is None:
            continue
        for target in batch.targets:
            sizes[int(target["image_id"])] = tuple(target["orig_size"])
        yield batch


# ----------------------------------------------------------------------------------------
# detections


def iter_predictions(model, config, paths, device, *, image_ids=None, on_skip=None, progress=None, workers=None):
    """Detections of image files, one dict per readable image, in the order of ``paths``.

    The evaluation path: the config's test transform (``loaders.test_transform``), batches
    of ``config.eval_batch_size`` padded to the coarsest stride, and
    ``engine.run_inference`` (``Detector.predict`` with ``config.inference``, boxes mapped
    back by ``to_original_coordinates``), run on chunks of ``CHUNK_BATCHES`` batches.

    Args:
        model: a ``Detector`` built for ``config``, on ``device``.
        paths: image files.
        image_ids: one int per path (default 1..N).
        on_skip: ``on_skip(path, reason)`` for each unreadable file (default: ignored).
        progress: a tqdm bar advanced by one per image, skipped ones included.
        workers: DataLoader processes (default ``config.data.num_workers``).

    Yields:
        ``{image_id, path, orig_size (H, W), boxes (D, 4) float32 xyxy in original-image
        pixels (continuous, no +1), scores (D,) float32, labels (D,) int64 in 0..K-1}``,
        CPU tensors, D <= ``inference.max_detections``.
    """
    paths = [Path(p) for p in paths]
    image_ids = list(range(1, len(paths) + 1)) if image_ids is None else [int(i) for i in image_ids]
    if len(image_ids) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(image_ids)} image ids")
    on_skip = on_skip or (lambda path, reason: None)
    workers = config.data.num_workers if workers is None else workers
    transform = test_transform(config)
    chunk = CHUNK_BATCHES * config.eval_batch_size
    for start in range(0, len(paths), chunk):
        dataset = ImageFiles(paths[start:start + chunk], image_ids[start:start + chunk], transform)
        loader = DataLoader(dataset, batch_size=config.eval_batch_size, shuffle=False, num_workers=workers,
                            collate_fn=partial(_collate_skipping, size_divisor=size_divisor(config)))
        sizes = {}
        batches = _readable_batches(loader, sizes, on_skip, progress)
        path_of = dict(zip(dataset.image_ids, dataset.paths))
        for entry in engine.run_inference(model, batches, device, progress=progress):
            image_id = entry["image_id"]
            yield {"image_id": image_id, "path": path_of[image_id], "orig_size": sizes[image_id],
                   "boxes": entry["boxes"], "scores": entry["scores"], "labels": entry["labels"]}


def predict_images(model, config, paths, device, **options):
    """``list(iter_predictions(...))``: the detections of every readable image of ``paths``
    in original-image coordinates (see ``iter_predictions``)."""
    return list(iter_predictions(model, config, paths, device, **options))


# ----------------------------------------------------------------------------------------
# model and categories


@dataclass(frozen=True)
class Categories:
    """The classes of a model: ``ids[label]`` (COCO category id) and ``names[label]``
    for label in 0..K-1, and where they were found (``source``, for messages)."""

    ids: list
    names: list
    source: str


def load_model(checkpoint, *, overrides=(), device="auto"):
    """The model of a checkpoint (a ``.pth`` file of ``detector.train`` or a run directory:
    its ``last.pth``); see ``model_from_state``."""
    return model_from_state(load_checkpoint(checkpoint), overrides=overrides, device=device)


def model_from_state(state, *, overrides=(), device="auto"):
    """The model of a loaded checkpoint, rebuilt as ``detector.evaluate`` does.

    Args:
        state: what ``checkpoint.load_checkpoint`` returned.
        overrides: ``key.sub=value`` items applied to the stored config (data.*, inference.*,
            eval_batch_size, device).
        device: "auto", "cpu", "cuda", "cuda:1", ...

    Returns:
        (model in eval mode on the device, config, device, ``Categories``).
    """
    config = configs.from_dict(state["config"])
    config = configs.apply_overrides(config, list(overrides) + ([f"device={device}"] if device != "auto" else []))
    if str(config.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {config.device}: CUDA is not available on this machine")
    runtime.set_threads(config.threads)
    dev = runtime.select_device(config.device)
    num_classes = state.get("num_classes")
    if num_classes is None:
        num_classes = int(state["model"]["head.cls_logits.weight"].shape[0])
    categories = find_categories(state, config, num_classes)
    model = Detector(config, num_classes)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    return model, config, dev, categories


def find_categories(state, config, num_classes):
    """``Categories`` of a checkpoint's model, from the first source that has K of them:

    1. ``category_ids`` (and ``category_names``) stored in the checkpoint;
    2. the built-in digits (``data.dataset=digits``): the generator's fixed categories, ids
       ``1 + d`` named ``"d"`` (one id 1 ``"digit"`` with ``data.digits_single_class``);
    3. the config's val annotation file (``data.val_annotations``, or the cached COCO file
       of another format; COCO categories, ascending ids), when it can be read here;
    4. otherwise ids 0..K-1 named ``"class <label>"``.
    """
    from detector.data.synthetic import CATEGORY_ID_OFFSET

    ids, names = state.get("category_ids"), state.get("category_names")
    if ids is not None and len(ids) == num_classes:
        names = names if names is not None and len(names) == num_classes else [str(i) for i in ids]
        return Categories([int(i) for i in ids], [str(n) for n in names], "the checkpoint")
    data = config.data
    if data.dataset == "digits":
        if data.digits_single_class:
            found = {CATEGORY_ID_OFFSET: "digit"}
        else:
            found = {d + CATEGORY_ID_OFFSET: str(d) for d in range(10)}
        source = "the built-in digits"
    else:
        annotations = _val_annotations(config)
        found, source = _annotation_categories(annotations), f"{annotations}"
    if found is not None and len(found) == num_classes:
        ids = sorted(found)
        return Categories(ids, [found[i] for i in ids], source)
    return Categories(list(range(num_classes)), [f"class {k}" for k in range(num_classes)], "")


def _val_annotations(config):
    """The val annotation file of a config's COCO-format data (``loaders.dataset_paths``:
    ``data.val_annotations``, or the cached conversion of another format), or None when it
    cannot be found here."""
    from detector.data.loaders import dataset_paths

    try:
        return dataset_paths(config)[3]
    except (ValueError, OSError):
        return config.data.val_annotations


def _annotation_categories(path):
    """{category id: name} of a COCO annotation file, or None when it cannot be read."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f).get("categories")
        return {int(e["id"]): str(e.get("name", e["id"])) for e in entries}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------
# drawing


def drawing_style(height, width):
    """(enlargement factor, line width, font size) in pixels of the drawing of an image of
    (height, width): small images are enlarged to ``DRAW_MIN_SIDE``; lines and text then
    scale with the drawing's longer side (2 px / 13 px at 512 px, 7 px / 50 px at 2000 px)."""
    longer = max(height, width)
    factor = max(1, math.ceil(DRAW_MIN_SIDE / longer))
    side = longer * factor
    return factor, max(2, round(side / 300)), max(12, round(side / 40))


def draw_detections(image, boxes, scores, labels, names):
    """The drawing of one image's detections (a new PIL RGB image).

    Args:
        image: (3, H, W) float tensor in [0, 1] (``decode_image``).
        boxes: (D, 4) xyxy in the image's pixels; scores (D,), labels (D,) in 0..K-1.
        names: K class names.

    Returns:
        an RGB ``PIL.Image`` of (H * f, W * f), f from ``drawing_style``: each box outlined
        in its class's ``PALETTE`` colour and labelled ``"name score"`` on a filled tag
        above it (inside it at the top edge); the best scores are drawn last, on top.
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = image.shape[-2:]
    factor, line, font_size = drawing_style(height, width)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    canvas = Image.fromarray(array, "RGB")
    if factor > 1:
        canvas = canvas.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(canvas)
    order = torch.argsort(torch.as_tensor(scores), stable=True).tolist()
    pad = max(1, font_size // 6)
    for i in order:
        x1, y1, x2, y2 = (float(v) * factor for v in boxes[i])
        label = int(labels[i])
        colour = PALETTE[label % len(PALETTE)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = f"{names[label] if label < len(names) else label} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
        tag_x = min(max(0.0, x1 - line / 2), max(0.0, canvas.width - tag_w))
        tag_y = y1 - line / 2 - tag_h if y1 - line / 2 - tag_h >= 0 else max(0.0, y1 - line / 2)
        draw.rectangle([tag_x, tag_y, tag_x + tag_w, tag_y + tag_h], fill=colour)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (255, 255, 255)
        draw.text((tag_x + pad - left, tag_y + pad - top), text, fill=ink, font=font)
    return canvas


def output_stems(paths):
    """One output name per path: its stem, with ``-2``, ``-3``, ... appended to a stem
    already taken (compared case-insensitively, as some file systems do)."""
    taken, stems = set(), []
    for path in paths:
        stem = Path(path).stem
        name, n = stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        stems.append(name)
    return stems


# ----------------------------------------------------------------------------------------
# the command


def detection_records(entry, categories, score_threshold):
    """The detections of one ``iter_predictions`` entry with score >= ``score_threshold``,
    best first, as JSON-ready dicts: ``label``, ``category_id``, ``category_name``,
    ``score``, ``box_xyxy`` [x1, y1, x2, y2] and ``bbox`` [x, y, w, h] (original pixels)."""
    records = []
    order = torch.argsort(entry["scores"], descending=True, stable=True).tolist()
    for i in order:
        score = float(entry["scores"][i])
        if score < score_threshold:
            continue
        label = int(entry["labels"][i])
        x1, y1, x2, y2 = (float(v) for v in entry["boxes"][i])
        records.append({"label": label, "category_id": categories.ids[label], "category_name": categories.names[label],
                        "score": score, "box_xyxy": [x1, y1, x2, y2], "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return records


def run_prediction(checkpoint, inputs, *, out="predictions", score_threshold=None, max_detections=None, test_size=None,
                   batch_size=None, device="auto", format="coco-results", draw=True, recursive=False, progress=True,
                   warn=None):
    """What ``python -m detector.predict`` does; returns a summary dict.

    ``score_threshold`` (default: the config's ``inference.score_threshold``) keeps the
    detections whose reported score is >= it, in drawings and JSON; the candidate threshold
    of post-processing (on the class probability) is lowered to it when it is lower.
    ``max_detections``, ``test_size`` and ``batch_size`` override ``inference.max_detections``,
    ``data.test_min_size`` and ``eval_batch_size``. ``warn(message)`` receives the
    ``warning: skipped PATH: reason`` lines (default: printed to stderr).

    Raises:
        ValueError / FileNotFoundError: no input matched an image, a bad option value, or a
            missing or damaged checkpoint.
    """
    if format not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    for option, value, low in (("--max-detections", max_detections, 1), ("--test-size", test_size, 1),
                               ("--batch-size", batch_size, 1)):
        if value is not None and value < low:
            raise ValueError(f"{option}: expected a positive int, got {value}")
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"--score-threshold: expected a score in [0, 1], got {score_threshold}")
    bar = None

    def emit(message):
        if warn is not None:
            warn(message)
        elif bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    paths, problems = collect_images(inputs, recursive=recursive)
    for item, reason in problems:
        emit(f"warning: skipped {item}: {reason}")
    if not paths:
        raise ValueError(f"no image found in {' '.join(str(i) for i in inputs)} (image files: "
                         f"{', '.join(IMAGE_EXTENSIONS)})")

    state = load_checkpoint(checkpoint)
    stored = configs.from_dict(state["config"])
    threshold = stored.inference.score_threshold if score_threshold is None else float(score_threshold)
    overrides = [f"inference.score_threshold={min(threshold, stored.inference.score_threshold)!r}"]
    overrides += [f"inference.max_detections={max_detections}"] if max_detections is not None else []
    overrides += [f"data.test_min_size={test_size}"] if test_size is not None else []
    overrides += [f"eval_batch_size={batch_size}"] if batch_size is not None else []
    model, config, dev, categories = model_from_state(state, overrides=overrides, device=device)
    del state
    if not categories.source:
        emit(f"note: the checkpoint names no classes and none were found for its data; classes are shown as "
             f"'class 0'..'class {len(categories.names) - 1}' and category ids are the labels")

    out.mkdir(parents=True, exist_ok=True)
    stems = output_stems(paths)
    stem_of = {image_id: stem for image_id, stem in enumerate(stems, start=1)}
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True)
    skipped = []

    def on_skip(path, reason):
        skipped.append(path)
        emit(f"warning: skipped {path}: {reason}")

    results, images, done, num_detections = [], {}, 0, 0
    try:
        for entry in iter_predictions(model, config, paths, dev, on_skip=on_skip, progress=bar):
            records = detection_records(entry, categories, threshold)
            stem = stem_of[entry["image_id"]]
            drawing = None
            if draw:
                try:
                    image = decode_image(entry["path"])
                except (ValueError, OSError) as error:  # changed or removed since it was read
                    on_skip(str(entry["path"]), f"cannot be read again to draw it: {error}")
                    continue
                canvas = draw_detections(image, [r["box_xyxy"] for r in records], [r["score"] for r in records],
                                         [r["label"] for r in records], categories.names)
                drawing = out / f"{stem}.png"
                canvas.save(drawing, format="PNG")
            done += 1
            num_detections += len(records)
            images[str(entry["image_id"])] = str(entry["path"])
            if format == "per-image":
                height, width = entry["orig_size"]
                write_json_atomically({"image": str(entry["path"]), "width": width, "height": height,
                                       "drawing": drawing.name if drawing is not None else None,
                                       "detections": records}, out / f"{stem}.json", indent=1)
            else:
                results += [{"image_id": entry["image_id"], "file_name": str(entry["path"]),
                             "category_id": r["category_id"], "bbox": r["bbox"], "score": r["score"]} for r in records]
    finally:
        if bar is not None:
            bar.close()
    if format == "coco-results":
        write_json_atomically(results, out / PREDICTIONS_FILE)
        write_json_atomically(images, out / IMAGES_FILE, indent=1)
    return {"images": done, "skipped": len(skipped) + len(problems), "detections": num_detections, "out": out,
            "categories": categories.source}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m detector.predict",
                                     description="Run a trained detector on image files; draw and save its detections.")
    parser.add_argument("checkpoint", type=Path, help="a .pth file written by detector.train (or a run directory)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=f"image files, folders or glob patterns ({', '.join(IMAGE_EXTENSIONS)})")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions/)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="keep detections with at least this score (default: the config's inference.score_threshold)")
    parser.add_argument("--max-detections", type=int, default=None, help="per image (default: the config's)")
    parser.add_argument("--test-size", type=int, default=None,
                        help="shorter side of the resized image (default: the config's data.test_min_size)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the config's eval_batch_size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--format", default="coco-results", choices=FORMATS,
                        help="coco-results: predictions.json for all images + images.json; per-image: one JSON per image")
    parser.add_argument("--no-draw", action="store_true", help="write no drawings")
    parser.add_argument("--recursive", action="store_true", help="also the images in sub-folders of a folder (and ** in patterns)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of data, path and checkpoint errors (or set {DEBUG_ENV}=1)")
    args = parser.parse_intermixed_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        summary = run_prediction(args.checkpoint, args.inputs, out=args.out, score_threshold=args.score_threshold,
                                 max_detections=args.max_detections, test_size=args.test_size,
                                 batch_size=args.batch_size, device=args.device, format=args.format,
                                 draw=not args.no_draw, recursive=args.recursive, progress=not args.no_progress)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    written = "drawings, " if not args.no_draw else ""
    written += f"{PREDICTIONS_FILE} and {IMAGES_FILE}" if args.format == "coco-results" else "one JSON per image"
    print(f"{summary['images']} images predicted ({summary['detections']} detections), {summary['skipped']} skipped; "
          f"{written} in {summary['out']}")
    return summary


if __name__ == "__main__":
    main()
