"""Data side of the training pipeline: built-in dataset, COCO loader, transforms, batching.

See specs/data.md. Names are imported lazily so that ``python -m detector.data.synthetic``
needs neither torch nor a second import of its own module. The batching function is not
re-exported: its name equals its module's, which Python binds on the package once the
module is imported; import it as ``from detector.data.collate import collate``.
"""
import importlib

_EXPORTS = {
    "DatasetPaths": "synthetic",
    "build_digits_dataset": "synthetic",
    "default_cache_root": "synthetic",
    "CocoDetection": "coco",
    "Compose": "transforms",
    "Resize": "transforms",
    "RandomHorizontalFlip": "transforms",
    "Normalize": "transforms",
    "to_original_coordinates": "transforms",
    "Batch": "collate",
    "PaddedTargets": "collate",
    "pad_boxes": "collate",
    "pad_targets": "collate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
