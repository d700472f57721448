"""COCO-format detection dataset (specs/data.md §2).

The annotation file is parsed and checked once, at construction; images are read lazily.
pycocotools is not needed here (it is used only for evaluation).
"""
import contextlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)
#: The degenerate-box warning names this many annotation ids, then a count.
DROPPED_IDS_SHOWN = 5

CROWD_MODES = ("drop", "ignore")


class CocoDetection(torch.utils.data.Dataset):
    """A COCO detection dataset returning ``(image, target)``; specs/data.md §2.

    Images are ordered by ascending image id. ``image`` is a (3, H, W) float32 RGB tensor in
    [0, 1]. ``target`` is a dict:

    - ``boxes``: (G, 4) float32 xyxy (continuous, no +1), clipped to the image;
    - ``labels``: (G,) int64 in 0..K-1, index of the COCO category id in the ascending
      ``category_ids``;
    - ``ignore_boxes``: (I, 4) float32 xyxy crowd regions when ``crowd="ignore"``, else (0, 4);
    - ``image_id``: int, the COCO image id;
    - ``orig_size``: (H, W) ints of the image file;
    - ``scale_factor``: (sx, sy) = (1.0, 1.0); ``Resize`` updates it;
    - ``flipped``: False; ``RandomHorizontalFlip`` toggles it.

    Attributes:
        category_ids: list of K COCO category ids, ascending; ``category_ids[label]`` maps back.
        category_names: list of K names in the same order.
        image_ids: list of image ids in dataset order.
        dropped_degenerate_ids: ids of the annotations dropped as degenerate, in file order.
        num_dropped_degenerate: number of annotations dropped as degenerate (non-finite, or
            w <= 0 or h <= 0 after clipping to the image), crowd ones included.

    ``annotations_required=False`` also reads an image-info file without an
    ``"annotations"`` list (COCO test-dev's ``image_info_test-dev2017.json``): every image
    then has no GT, for inference only.
    """

    def __init__(self, image_dir, ann_file, *, transforms=None, crowd="drop", annotations_required=True,
                 cache_images=False):
        if crowd not in CROWD_MODES:
            raise ValueError(f"crowd: expected one of {CROWD_MODES}, got {crowd!r}")
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.crowd = crowd
        data = _read_json(self.ann_file, annotations_required)
        images = _parse_images(data, self.ann_file)
        categories = _parse_categories(data, self.ann_file)
        self.category_ids = sorted(categories)
        self.category_names = [categories[c] for c in self.category_ids]
        self.image_ids = sorted(images)
        self._images = images
        self._records, self.dropped_degenerate_ids = _parse_annotations(
            data, self.ann_file, images, {c: i for i, c in enumerate(self.category_ids)}
        )
        self.num_dropped_degenerate = len(self.dropped_degenerate_ids)
        if self.num_dropped_degenerate:
            shown = ", ".join(str(i) for i in self.dropped_degenerate_ids[:DROPPED_IDS_SHOWN])
            more = f" and {self.num_dropped_degenerate - DROPPED_IDS_SHOWN} more" \
                if self.num_dropped_degenerate > DROPPED_IDS_SHOWN else ""
            logger.warning("%s: dropped %d degenerate annotation(s) (non-finite, or w <= 0 or h <= 0 after "
                           "clipping to the image): annotation ids %s%s", self.ann_file, self.num_dropped_degenerate,
                           shown, more)

        self._pixels = self._read_all_pixels() if cache_images else None

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, index):
        image_id = self.image_ids[index]
        image = self._load_image(image_id)
        target = self.get_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def get_target(self, index):
        """The target dict of item ``index`` before transforms (no image read)."""
        image_id = self.image_ids[index]
        info = self._images[image_id]
        boxes, labels, ignore = [], [], []
        for box, label, is_crowd in self._records.get(image_id, ()):
            if not is_crowd:
                boxes.append(box)
                labels.append(label)
            elif self.crowd == "ignore":
                ignore.append(box)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
            "image_id": image_id,
            "orig_size": (info["height"], info["width"]),
            "scale_factor": (1.0, 1.0),
            "flipped": False,
        }

    def _load_image(self, image_id):
        """(3, H, W) float32 RGB in [0, 1]: from the in-memory cache when there is one."""
        pixels = self._pixels[image_id] if self._pixels is not None else self._read_pixels(image_id)
        return pixels_to_float(pixels)

    def _read_pixels(self, image_id):
        """(3, H, W) pixels of one image file (``read_pixels``), checked against its entry."""
        info = self._images[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {image_id}: file not found: {path}")
        pixels = read_pixels(path, image_id)
        if tuple(pixels.shape[1:]) != (info["height"], info["width"]):
            raise ValueError(f"{path}: image is {pixels.shape[1]}x{pixels.shape[2]} (HxW) but {self.ann_file} "
                             f"says {info['height']}x{info['width']} for image id {image_id}")
        return pixels

    def _read_all_pixels(self):
        """{image id: pixels} of every image, read once (``cache_images=True``, specs/data.md §2).

        Refused with one ValueError when the 8-bit pixels alone would take more than half of
        the memory the machine has available.
        """
        needed = sum(3 * info["height"] * info["width"] for info in self._images.values())
        available = available_memory_bytes()
        if available is not None and needed > available / 2:
            raise ValueError(f"data.cache_images: the {len(self._images)} images of {self.ann_file} need "
                             f"{needed / 2**30:.1f} GiB in memory, more than half of the {available / 2**30:.1f} GiB "
                             "available; set data.cache_images=false")
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
            pixels = list(pool.map(self._read_pixels, self.image_ids))  # the first bad image, in order, raises
        return dict(zip(self.image_ids, pixels))


#: PIL modes of 16-bit single-channel images (PNG, TIFF): scaled by 1 / 65535, not saturated.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_image(path, image_id=None):
    """(3, H, W) float32 RGB in [0, 1] from an image file (specs/data.md §2).

    8-bit images are divided by 255; 16-bit single-channel images (PIL modes ``I;16*``, and
    mode ``I`` when every value fits 16 bits) by 65535 and repeated over the 3 channels, so
    they keep their dynamic range. Anything PIL cannot decode (a truncated or garbage file)
    and modes without a meaningful [0, 1] scale (32-bit integer or float images) raise
    ValueError naming the file and the image id.
    """
    return pixels_to_float(read_pixels(path, image_id))


def pixels_to_float(pixels):
    """(3, H, W) float32 in [0, 1] from ``read_pixels``'s output: uint8 divided by 255, a
    float32 (16-bit) image copied, so the caller may modify the result."""
    return pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels.clone()


def read_pixels(path, image_id=None):
    """(3, H, W) pixels of an image file, before scaling (``decode_image`` scales them).

    uint8 RGB for 8-bit images; float32 in [0, 1] for 16-bit single-channel images (already
    divided by 65535, repeated over the 3 channels). Errors as ``decode_image``.
    """
    where = f"{path}" + (f" (image id {image_id})" if image_id is not None else "")
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode in SIXTEEN_BIT_MODES or pil.mode == "I":
                array = np.asarray(pil).astype(np.float32)
                if array.size and (array.min() < 0 or array.max() > 65535):
                    raise ValueError(f"{where}: a 32-bit integer image (values {array.min():g}..{array.max():g}); "
                                     "convert it to 8 or 16 bits per channel")
                gray = torch.from_numpy(array / 65535.0)
                return gray[None].expand(3, -1, -1).contiguous()
            if pil.mode == "F":
                raise ValueError(f"{where}: a floating-point image has no fixed [0, 1] scale; convert it to 8 or 16 bits")
            array = np.asarray(pil.convert("RGB"))
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: cannot decode the image: {error}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def available_memory_bytes():
    """Bytes of memory available to new allocations without swapping, or None where the
    platform does not say: Linux's ``MemAvailable`` (free memory plus the page cache it can
    drop), else the free pages of ``sysconf``."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read_json(path, annotations_required=True):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    if not annotations_required and "annotations" not in data:
        data["annotations"] = []  # an image-info file (COCO test-dev): images and categories only
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing key {key!r} (a list) at the top level")
    return data


def _require(entry, key, kind, where):
    """entry[key] checked to be of ``kind`` (int or str; bool is not an int)."""
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"{where}: missing key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _parse_images(data, path, errors=None):
    """{image id: {"file_name", "height", "width"}}; raises ValueError on bad or duplicate
    entries, or, with an ``errors`` list, appends each message to it and skips the entry."""
    images = {}
    for index, entry in enumerate(data["images"]):
        with _collect(errors):
            where = f"{path}: images[{index}]"
            image_id = _require(entry, "id", int, where)
            where = f"{where} (id {image_id})"
            if image_id in images:
                raise ValueError(f"{where}: duplicate image id {image_id}")
            record = {"file_name": _require(entry, "file_name", str, where)}
            for key in ("height", "width"):
                record[key] = _require(entry, key, int, where)
                if record[key] <= 0:
                    raise ValueError(f"{where}: {key!r} must be positive, got {record[key]}")
            images[image_id] = record
    return images


def _parse_categories(data, path, errors=None):
    """{category id: name}; raises ValueError on bad or duplicate entries (or collects them)."""
    categories = {}
    for index, entry in enumerate(data["categories"]):
        with _collect(errors):
            where = f"{path}: categories[{index}]"
            category_id = _require(entry, "id", int, where)
            if category_id in categories:
                raise ValueError(f"{where}: duplicate category id {category_id}")
            categories[category_id] = str(entry.get("name", category_id))
    return categories


def _parse_annotations(data, path, images, label_of, errors=None):
    """Group annotations by image as (xyxy box, label, is_crowd); list the ids of the dropped
    degenerate boxes. Raises ValueError on a bad entry (or collects the messages)."""
    records, seen, dropped = {}, set(), []
    for index, entry in enumerate(data["annotations"]):
        with _collect(errors):
            where = f"{path}: annotations[{index}]"
            ann_id = _require(entry, "id", int, where)
            where = f"{where} (id {ann_id})"
            if ann_id in seen:
                raise ValueError(f"{where}: duplicate annotation id {ann_id}")
            seen.add(ann_id)
            image_id = _require(entry, "image_id", int, where)
            category_id = _require(entry, "category_id", int, where)
            if image_id not in images:
                raise ValueError(f"{where}: unknown image_id {image_id}")
            if category_id not in label_of:
                raise ValueError(f"{where}: unknown category_id {category_id}")
            box = _xywh_to_clipped_xyxy(_parse_bbox(entry, where), images[image_id])
            if box is None:
                dropped.append(ann_id)
                continue
            is_crowd = bool(entry.get("iscrowd", 0))
            records.setdefault(image_id, []).append((box, label_of[category_id], is_crowd))
    return records, dropped


@contextlib.contextmanager
def _collect(errors):
    """Inside: a ValueError propagates (``errors`` None) or is appended to ``errors``."""
    try:
        yield
    except ValueError as error:
        if errors is None:
            raise
        errors.append(str(error))


def check_coco_dataset(image_dir, ann_file, *, workers=None, progress=True):
    """Every problem of a COCO-format split at once (specs/data.md §2.2): every entry of the
    annotation file validated, every image file decoded (in parallel) and its size compared
    with its entry.

    Returns:
        (problems, summary): a list of one-line messages naming the file, entry and id, and
        a dict with the numbers of images, annotations, categories and degenerate boxes.
    """
    from concurrent.futures import ThreadPoolExecutor

    image_dir, ann_file = Path(image_dir), Path(ann_file)
    problems = []
    try:
        data = _read_json(ann_file)
    except (ValueError, FileNotFoundError) as error:
        return [str(error)], {}
    if not image_dir.is_dir():
        problems.append(f"{image_dir}: no such image folder")
    images = _parse_images(data, ann_file, problems)
    categories = _parse_categories(data, ann_file, problems)
    _, dropped = _parse_annotations(data, ann_file, images, {c: i for i, c in enumerate(sorted(categories))}, problems)

    def check(item):
        image_id, info = item
        path = image_dir / info["file_name"]
        if not path.is_file():
            return f"{path} (image id {image_id}): file not found"
        try:
            image = decode_image(path, image_id)
        except ValueError as error:
            return str(error)
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            return (f"{path} (image id {image_id}): image is {image.shape[1]}x{image.shape[2]} (HxW) but "
                    f"{ann_file} says {info['height']}x{info['width']}")
        return None

    items = sorted(images.items())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"check {ann_file.name}", unit="img", dynamic_ncols=True)
    if image_dir.is_dir():
        with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
            for message in pool.map(check, items):  # PIL releases the GIL while decoding
                if message is not None:
                    problems.append(message)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    summary = {"images": len(images), "annotations": len(data["annotations"]), "categories": len(categories),
               "degenerate_annotations": len(dropped)}
    return problems, summary


def _parse_bbox(entry, where):
    bbox = entry.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
    ):
        raise ValueError(f"{where}: 'bbox' must be a list of 4 numbers [x, y, w, h], got {bbox!r}")
    return [float(v) for v in bbox]


def _xywh_to_clipped_xyxy(bbox, image):
    """COCO [x, y, w, h] -> xyxy clipped to [0, W] x [0, H]; None when degenerate."""
    if not all(math.isfinite(v) for v in bbox):
        return None
    x, y, w, h = bbox
    x1, x2 = min(max(x, 0.0), image["width"]), min(max(x + w, 0.0), image["width"])
    y1, y2 = min(max(y, 0.0), image["height"]), min(max(y + h, 0.0), image["height"])
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return [x1, y1, x2, y2]
