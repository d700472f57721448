"""The class inputs of the prediction-aware assigners (TAL, SimOTA, DSL) are checked once in
each tree (``validation.as_class_scores`` / ``as_class_labels``): the same values pass, and
bad input gets the same message from both trees; the detector's batched form names
(image, slot) and ignores padded GT slots."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector import validation as D  # noqa: E402
from reference import validation as R  # noqa: E402

BAD_SCORES = [
    (np.array([[0.2, 0.3], [0.4, np.nan]]), r"pred_scores: row 1 class 1 is nan, expected a probability in \[0, 1\]"),
    (np.array([[0.2, np.inf], [0.4, 0.5]]), r"pred_scores: row 0 class 1 is inf, expected a probability in \[0, 1\]"),
    (np.array([[0.2, 0.3], [-0.5, 0.5]]), r"pred_scores: row 1 class 0 is -0.5, expected a probability in \[0, 1\]"),
    (np.zeros((3, 2)), r"pred_scores: expected shape \(2, K\) with K >= 1 \(one row per anchor\), got \(3, 2\)"),
    (np.zeros((2, 0)), r"pred_scores: expected shape \(2, K\) with K >= 1"),
    (np.zeros(2), r"pred_scores: expected shape \(N, N\), got \(2,\)"),
]
BAD_LABELS = [
    ([0, 2], r"gt_labels: row 1 is 2, expected a class in 0..1"),
    ([-1, 0], r"gt_labels: row 0 is -1, expected a class in 0..1"),
    ([0.0, 1.0], r"gt_labels: expected a \(2,\) integer array, got shape \(2,\) dtype (torch\.)?float"),
    ([True, False], r"gt_labels: expected a \(2,\) integer array, got shape \(2,\) dtype (torch\.)?bool"),
    ([0], r"gt_labels: expected a \(2,\) integer array, got shape \(1,\)"),
]


@pytest.mark.parametrize("scores, message", BAD_SCORES)
def test_bad_scores_get_the_same_message(scores, message):
    with pytest.raises(ValueError, match=message) as reference_error:
        R.as_class_scores(scores, "pred_scores", (2,))
    with pytest.raises(ValueError, match=message) as detector_error:
        D.as_class_scores(torch.from_numpy(scores), "pred_scores", (2,))
    assert str(detector_error.value) == str(reference_error.value)


@pytest.mark.parametrize("labels, message", BAD_LABELS)
def test_bad_labels_get_the_same_message(labels, message):
    with pytest.raises(ValueError, match=message) as reference_error:
        R.as_class_labels(labels, "gt_labels", (2,), 2)
    with pytest.raises(ValueError, match=message) as detector_error:
        D.as_class_labels(labels, "gt_labels", (2,), 2)
    assert str(detector_error.value).replace("torch.", "") == str(reference_error.value)  # dtype names: torch.bool


@given(st.integers(0, 5), st.integers(1, 4), st.data())
def test_good_inputs_pass_unchanged(num_anchors, num_classes, data):
    scores = np.array(data.draw(st.lists(st.lists(st.floats(0, 1), min_size=num_classes, max_size=num_classes),
                                         min_size=num_anchors, max_size=num_anchors)), dtype=np.float64)
    scores = scores.reshape(num_anchors, num_classes)
    labels = data.draw(st.lists(st.integers(0, num_classes - 1), max_size=4))
    reference_scores = R.as_class_scores(scores, "pred_scores", (num_anchors,))
    detector_scores = D.as_class_scores(torch.from_numpy(scores), "pred_scores", (num_anchors,))
    np.testing.assert_array_equal(detector_scores.numpy(), reference_scores)
    reference_labels = R.as_class_labels(labels, "gt_labels", (len(labels),), num_classes)
    detector_labels = D.as_class_labels(labels, "gt_labels", (len(labels),), num_classes)
    assert reference_labels.dtype == np.int64 and detector_labels.dtype == torch.int64
    np.testing.assert_array_equal(detector_labels.numpy(), reference_labels)


def test_batched_labels_check_only_the_slots_that_hold_a_gt():
    valid = torch.tensor([[True, False], [True, True]])
    labels = torch.tensor([[1, -7], [0, 1]])  # (0, 1) is padding: anything goes there
    checked = D.as_class_labels(labels, "gt_labels", (2, 2), 2, valid=valid)
    assert checked.tolist() == [[1, 0], [0, 1]]  # padded slots become 0
    with pytest.raises(ValueError, match=r"gt_labels: row \(1, 0\) is 2, expected a class in 0..1"):
        D.as_class_labels(torch.tensor([[1, -7], [2, 1]]), "gt_labels", (2, 2), 2, valid=valid)
    empty = D.as_class_labels([], "gt_labels", (0,), 3)
    assert empty.dtype == torch.int64 and empty.shape == (0,)  # [] is a float array: accepted when empty


def test_batched_scores_name_image_and_anchor():
    scores = torch.full((2, 3, 2), 0.5)
    scores[1, 2, 0] = 1.5
    with pytest.raises(ValueError, match=r"pred_scores: row \(1, 2\) class 0 is 1.5"):
        D.as_class_scores(scores, "pred_scores", (2, 3))
