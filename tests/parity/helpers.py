"""Shared helpers for parity tests (reference NumPy vs detector torch).

Generic on purpose: conversions, device lists, GT padding and an assertion that two
``Assignment`` objects (one NumPy, one torch) agree.
"""
import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()

#: Parametrise a test over devices; the CUDA case is marked ``cuda`` and skipped without one.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]),
]


def to_torch(array, dtype=torch.float64, device="cpu"):
    """NumPy/array-like -> tensor; floating arrays get ``dtype``, integer/bool keep theirs."""
    array = np.asarray(array)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.to(device)


def to_numpy(tensor):
    """Tensor -> NumPy array on the host (float tensors become float64)."""
    array = tensor.detach().cpu()
    if array.is_floating_point():
        array = array.double()
    return array.numpy()


def pad_gt_boxes(gt_list, dtype=torch.float64, device="cpu"):
    """List of B (G_b, 4) arrays -> gt_boxes (B, G_max, 4) zero-padded and gt_valid (B, G_max)."""
    batch = len(gt_list)
    g_max = max((len(g) for g in gt_list), default=0)
    boxes = np.zeros((batch, g_max, 4))
    valid = np.zeros((batch, g_max), dtype=bool)
    for b, gts in enumerate(gt_list):
        boxes[b, : len(gts)] = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
        valid[b, : len(gts)] = True
    return to_torch(boxes, dtype, device), torch.from_numpy(valid).to(device)


def assert_same_assignment(expected, actual, *, metric_atol=0.0, threshold_atol=0.0, num_gts=None):
    """Assert that a reference Assignment (NumPy) equals a detector Assignment (torch).

    ``matched_gt`` and ``candidate_index`` must be identical; ``gt_threshold`` equal with
    NaN == NaN (exactly, or within ``threshold_atol``); ``matched_metric`` within
    ``metric_atol`` (0: exactly). ``num_gts`` trims padded GT slots of a batched result.
    """
    threshold = to_numpy(actual.gt_threshold)
    candidates = to_numpy(actual.candidate_index)
    if num_gts is not None:
        threshold, candidates = threshold[:num_gts], candidates[:num_gts]
    np.testing.assert_array_equal(to_numpy(actual.matched_gt), expected.matched_gt, err_msg="matched_gt")
    np.testing.assert_array_equal(candidates, expected.candidate_index, err_msg="candidate_index")
    if threshold_atol:
        np.testing.assert_allclose(threshold, expected.gt_threshold, rtol=0, atol=threshold_atol, err_msg="gt_threshold")
    else:
        np.testing.assert_array_equal(threshold, expected.gt_threshold, err_msg="gt_threshold")
    if metric_atol:
        np.testing.assert_allclose(to_numpy(actual.matched_metric), expected.matched_metric, rtol=0, atol=metric_atol, err_msg="matched_metric")
    else:
        np.testing.assert_array_equal(to_numpy(actual.matched_metric), expected.matched_metric, err_msg="matched_metric")


def assert_batched_equals_stacked(batched, singles):
    """A batched torch Assignment equals the per-image ones (padded GT slots: NaN / -1)."""
    for b, single in enumerate(singles):
        image = batched.image(b)
        g = single.gt_threshold.shape[0]
        torch.testing.assert_close(image.matched_gt, single.matched_gt, rtol=0, atol=0)
        torch.testing.assert_close(image.matched_metric, single.matched_metric, rtol=0, atol=0)
        torch.testing.assert_close(image.gt_threshold[:g], single.gt_threshold, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(image.candidate_index[:g], single.candidate_index, rtol=0, atol=0)
        assert torch.isnan(image.gt_threshold[g:]).all()
        assert (image.candidate_index[g:] == -1).all()
