"""Pascal VOC read from its devkit layout and converted to COCO-format JSON (specs/data.md §6).

The rest of the pipeline (``CocoDetection``, ``check_coco_dataset``, pycocotools) reads
the converted file unchanged; the images stay where they are, the file names of the JSON
being relative to the VOCdevkit folder (``VOC2007/JPEGImages/000001.jpg``).

Layout read::

    VOCdevkit/VOC2007/Annotations/<id>.xml
    VOCdevkit/VOC2007/ImageSets/Main/<split>.txt
    VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    (the same for VOC2012)

A set is named ``"<year>/<split>"``: ``"2007/trainval"``, ``"2012/trainval"``, ``"2007/test"``.
"""
import hashlib
import json
import math
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from detector.data.synthetic import default_cache_root
from detector.files import write_json_atomically

#: The 20 VOC classes in the devkit's order; class ``VOC_CLASSES[k]`` has COCO category id
#: ``k + 1`` and, categories being read in ascending id order, training label ``k``.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: Bumped whenever the conversion changes, so that an old cached JSON is never reused.
CONVERTER_VERSION = 1
#: ``"<year>/<split>"``: a four-digit year and a split file name of ``ImageSets/Main``.
_SET_PATTERN = re.compile(r"^(\d{4})/([A-Za-z0-9_-]+)$")


def parse_voc_set(name):
    """``"2007/trainval"`` -> ``("2007", "trainval")``; anything else raises ValueError."""
    match = _SET_PATTERN.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"VOC set {name!r}: expected 'YEAR/SPLIT', e.g. '2007/trainval' or '2007/test'")
    return match.group(1), match.group(2)


def build_voc_annotations(root, sets, cache_root=None):
    """The COCO-format annotation file of the VOC ``sets`` under ``root``, converted once.

    Args:
        root: the VOCdevkit folder (holding ``VOC2007``, ``VOC2012``).
        sets: the sets to concatenate, e.g. ``("2007/trainval", "2012/trainval")``.
        cache_root: default ``synthetic.default_cache_root()`` (``$LABELASSIGN_DATA`` or
            ``~/.cache/labelassign``). The file is ``cache_root / "voc-<h>" / "instances.json"``,
            ``h`` = the first 12 hex digits of the SHA-256 of ``CONVERTER_VERSION``, the
            resolved ``root``, the sets, the text of each split file and the size and
            modification time of each listed XML: an edited annotation gives a new file.

    Returns:
        the path of the JSON (written atomically: a reader never sees a partial file).

    Raises:
        ValueError: one line naming the folder, file or object at fault (see ``voc_to_coco``).
    """
    root = Path(root).expanduser()
    sets = tuple(sets)
    listing = _list_sets(root, sets)
    fingerprint = hashlib.sha256()
    fingerprint.update(json.dumps({"version": CONVERTER_VERSION, "root": str(root.resolve()),
                                   "sets": list(sets)}, sort_keys=True).encode())
    for year, _, list_file, text, ids in listing:
        fingerprint.update(text.encode())
        for image_id in ids:
            path = _xml_path(root, year, image_id)
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise ValueError(f"{path}: no such annotation file (image {image_id!r} of {list_file})") from None
            fingerprint.update(f"{image_id}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    path = cache_root / f"voc-{fingerprint.hexdigest()[:12]}" / "instances.json"
    if not path.is_file():
        write_json_atomically(_convert(root, sets, listing), path)
    return path


def voc_to_coco(root, sets):
    """The COCO dict of the VOC ``sets`` under ``root`` (nothing written).

    - ``images``: ids 1..N in the order of the sets and of the lines of their split files;
      ``file_name`` = ``VOC<year>/JPEGImages/<id>.jpg`` (relative to ``root``); ``width``,
      ``height`` from the XML ``size`` (the image files are not opened here).
    - ``categories``: ids 1..20 with the names of ``VOC_CLASSES``.
    - ``annotations``: ids 1..M in image order then XML order; ``bbox`` = ``[x1, y1, x2 - x1,
      y2 - y1]`` with the continuous xyxy box ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax,
      y2 = ymax`` of the 1-based inclusive VOC pixel box; ``area`` = w * h; ``iscrowd`` = 1
      and ``difficult`` = 1 for a difficult object, ``iscrowd`` = 0 and ``difficult`` = 0
      otherwise.

    Raises:
        ValueError, one line each: a missing ``VOC<year>`` folder or split file, a listed
        XML missing or malformed, a missing or non-numeric ``size``/``bndbox`` field, a box
        with ``xmin > xmax``, ``ymin > ymax`` or outside ``[1, width] x [1, height]``, an
        unknown class name, an image listed twice; each names the file and, for an
        object, its index in the XML (0-based) and class name.
    """
    root = Path(root).expanduser()
    sets = tuple(sets)
    return _convert(root, sets, _list_sets(root, sets))


def _list_sets(root, sets):
    """[(year, split, list file, its text, [image ids])] of every set; checks the folders."""
    if not sets:
        raise ValueError("VOC sets: expected at least one 'YEAR/SPLIT' set")
    if not root.is_dir():
        raise ValueError(f"{root}: no such VOCdevkit folder")
    listing, seen = [], set()
    for name in sets:
        year, split = parse_voc_set(name)
        if name in seen:
            raise ValueError(f"VOC set {name!r} is listed twice")
        seen.add(name)
        year_dir = root / f"VOC{year}"
        for folder in (year_dir, year_dir / "Annotations", year_dir / "ImageSets" / "Main"):
            if not folder.is_dir():
                raise ValueError(f"{folder}: no such folder (set {name!r} needs {root}/VOC{year}/Annotations and "
                                 f"ImageSets/Main)")
        list_file = year_dir / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise ValueError(f"{list_file}: no such split file (set {name!r})")
        text = list_file.read_text(encoding="utf-8")
        ids = [line.split()[0] for line in text.splitlines() if line.strip()]
        listing.append((year, split, list_file, text, ids))
    return listing


def _xml_path(root, year, image_id):
    return root / f"VOC{year}" / "Annotations" / f"{image_id}.xml"


def _convert(root, sets, listing):
    images, annotations, seen = [], [], {}
    for name, (year, _, list_file, _, ids) in zip(sets, listing):
        for line, image_id in enumerate(ids, 1):
            key = (year, image_id)
            if key in seen:
                raise ValueError(f"{list_file}: image {image_id!r} (line {line}) is also in set {seen[key]!r}")
            seen[key] = name
            path = _xml_path(root, year, image_id)
            if not path.is_file():
                raise ValueError(f"{path}: no such annotation file (image {image_id!r} of {list_file})")
            width, height, objects = _read_xml(path)
            coco_image_id = len(images) + 1
            images.append({"id": coco_image_id, "file_name": f"VOC{year}/JPEGImages/{image_id}.jpg",
                           "width": width, "height": height})
            for label, (x1, y1, x2, y2), difficult in objects:
                w, h = x2 - x1, y2 - y1
                annotations.append({"id": len(annotations) + 1, "image_id": coco_image_id, "category_id": label + 1,
                                    "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(difficult),
                                    "difficult": int(difficult)})
    return {
        "info": {"description": "Pascal VOC converted to COCO format", "sets": list(sets),
                 "voc_root": str(root), "converter_version": CONVERTER_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "voc"} for k, name in enumerate(VOC_CLASSES)],
    }


def _read_xml(path):
    """(width, height, [(label, continuous xyxy box, difficult)]) of one VOC annotation file."""
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError as error:
        raise ValueError(f"{path}: malformed XML: {error}") from None
    node = tree.getroot()
    size = node.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>")
    width = _number(size, "width", path, "size")
    height = _number(size, "height", path, "size")
    if width != int(width) or height != int(height) or width <= 0 or height <= 0:
        raise ValueError(f"{path}: <size> must have positive integer width and height, got {width:g} x {height:g}")
    width, height = int(width), int(height)
    objects = []
    for index, obj in enumerate(node.findall("object")):
        name_node = obj.find("name")
        name = (name_node.text or "").strip() if name_node is not None else ""
        where = f"object {index} ({name!r})" if name else f"object {index}"
        if name not in VOC_CLASSES:
            raise ValueError(f"{path}: {where}: unknown class name {name!r}; expected one of the 20 VOC classes")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: {where}: missing <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, key, path, f"{where}: bndbox") for key in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
            raise ValueError(f"{path}: {where}: box (xmin, ymin, xmax, ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) "
                             f"is not inside the {width}x{height} (WxH) image (1-based: 1 <= xmin <= xmax <= width, "
                             "1 <= ymin <= ymax <= height)")
        difficult_node = obj.find("difficult")
        difficult = False
        if difficult_node is not None and (difficult_node.text or "").strip():
            text = difficult_node.text.strip()
            if text not in ("0", "1"):
                raise ValueError(f"{path}: {where}: <difficult> must be 0 or 1, got {text!r}")
            difficult = text == "1"
        objects.append((VOC_CLASSES.index(name), (xmin - 1.0, ymin - 1.0, xmax, ymax), difficult))
    return width, height, objects


def _number(parent, key, path, where):
    """The finite float of ``parent/<key>``; a missing or non-numeric field raises ValueError."""
    node = parent.find(key)
    if node is None or node.text is None or not node.text.strip():
        raise ValueError(f"{path}: {where}: missing <{key}>")
    try:
        value = float(node.text.strip())
    except ValueError:
        raise ValueError(f"{path}: {where}: <{key}> is not a number: {node.text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: {where}: <{key}> is not finite: {node.text.strip()!r}")
    return value
