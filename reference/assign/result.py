"""The assignment structure every assigner returns (specs/conventions.md §4)."""
from dataclasses import dataclass

import numpy as np

from reference.conventions import BACKGROUND


@dataclass(frozen=True)
class Assignment:
    """The result of assigning one image's anchors/points to its GTs.

    Attributes:
        matched_gt: (A,) int64 in {IGNORE = -2, BACKGROUND = -1, 0..G-1}.
        matched_metric: (A,) float64, the assigner's metric between the anchor and its
            assigned GT; 0 where ``matched_gt < 0``.
        gt_threshold: (G,) float64, each GT's positive threshold; NaN where the
            algorithm has none.
        candidate_index: (G, C) int64, each GT's candidate anchors in selection order
            (ATSS family); (G, 0) for algorithms without candidates.
    """

    matched_gt: np.ndarray
    matched_metric: np.ndarray
    gt_threshold: np.ndarray
    candidate_index: np.ndarray

    @property
    def positive(self):
        """(A,) bool, anchors assigned to a GT."""
        return self.matched_gt >= 0

    @property
    def num_positives(self):
        return int(self.positive.sum())


def empty_assignment(num_anchors, num_gts, num_candidates=0):
    """All-background assignment: the result for G = 0 and the starting point of every assigner.

    Returns:
        Assignment with matched_gt (A,) = BACKGROUND, matched_metric (A,) = 0,
        gt_threshold (G,) = NaN, candidate_index (G, num_candidates) = -1.
    """
    return Assignment(
        matched_gt=np.full(num_anchors, BACKGROUND, dtype=np.int64),
        matched_metric=np.zeros(num_anchors, dtype=np.float64),
        gt_threshold=np.full(num_gts, np.nan, dtype=np.float64),
        candidate_index=np.full((num_gts, num_candidates), -1, dtype=np.int64),
    )
