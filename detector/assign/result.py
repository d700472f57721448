"""The assignment structure every assigner returns (specs/conventions.md §4).

Twin of ``reference/assign/result.py``. Batched assigners return the same structure with
a leading B dimension on every field.
"""
from dataclasses import dataclass

import torch

from detector.conventions import BACKGROUND


@dataclass(frozen=True)
class Assignment:
    """The result of assigning anchors/points to GTs (one image, or a batch).

    Attributes:
        matched_gt: (A,) or (B, A) int64 in {IGNORE = -2, BACKGROUND = -1, 0..G-1}.
        matched_metric: (A,) or (B, A) float, the assigner's metric between the anchor and
            its assigned GT; 0 where ``matched_gt < 0``.
        gt_threshold: (G,) or (B, G_max) float, each GT's positive threshold; NaN where the
            algorithm has none and for padded GT slots.
        candidate_index: (G, C) or (B, G_max, C) int64, each GT's candidate anchors in
            selection order (ATSS family); C = 0 for algorithms without candidates; -1 for
            padded GT slots.
    """

    matched_gt: torch.Tensor
    matched_metric: torch.Tensor
    gt_threshold: torch.Tensor
    candidate_index: torch.Tensor

    @property
    def positive(self):
        """(A,) or (B, A) bool, anchors assigned to a GT."""
        return self.matched_gt >= 0

    @property
    def num_positives(self):
        return int(self.positive.sum())

    def image(self, index):
        """The single-image ``Assignment`` of image ``index`` of a batched result."""
        return Assignment(
            matched_gt=self.matched_gt[index],
            matched_metric=self.matched_metric[index],
            gt_threshold=self.gt_threshold[index],
            candidate_index=self.candidate_index[index],
        )


def empty_assignment(num_anchors, num_gts, num_candidates=0, *, device=None, dtype=None):
    """All-background assignment: the result for G = 0 and the starting point of every assigner.

    Returns:
        Assignment with matched_gt (A,) = BACKGROUND, matched_metric (A,) = 0,
        gt_threshold (G,) = NaN, candidate_index (G, num_candidates) = -1.
    """
    dtype = dtype or torch.get_default_dtype()
    return Assignment(
        matched_gt=torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=device),
        matched_metric=torch.zeros(num_anchors, dtype=dtype, device=device),
        gt_threshold=torch.full((num_gts,), float("nan"), dtype=dtype, device=device),
        candidate_index=torch.full((num_gts, num_candidates), -1, dtype=torch.int64, device=device),
    )
