"""Data side of the training pipeline (specs/data.md), one module per concern; import from
them directly so that a reader and an IDE can follow every name:

- ``detector.data.synthetic``: the built-in digits dataset (runs without torch:
  ``python -m detector.data.synthetic``);
- ``detector.data.coco``: the COCO-format loader, image decoding, whole-split checks;
- ``detector.data.transforms``: resize, flip, normalise, back to original coordinates;
- ``detector.data.collate``: batches and padded targets;
- ``detector.data.loaders``: the datasets, sampler and loaders of a run.
"""
