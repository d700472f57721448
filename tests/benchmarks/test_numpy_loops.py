"""The plain NumPy loops of ``scripts/benchmark.py`` (``scripts/numpy_loops.py``) assign
what the references assign, so the benchmark's baseline rows time the same job.

COCO-like scenes of real size (800 x 1333, 22,300 anchors or points) with random GT sizes;
such scenes have no exact metric ties between GTs, where the loops' running maxima and the
references' tie rules could differ by construction.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import numpy_loops  # noqa: E402
from reference.anchors import multi_level_anchors, multi_level_points  # noqa: E402
from reference.coders import decode_deltas  # noqa: E402
from reference.assign import anchor_free, atss, dsl, dynamic_atss, max_iou, simota, tal  # noqa: E402

IMAGE_SIZE = (800, 1333)
NUM_CLASSES = 80


def scene(seed, num_gts):
    rng = np.random.default_rng(seed)
    height, width = IMAGE_SIZE
    side = np.exp(rng.uniform(np.log(8), np.log(600), num_gts))
    aspect = np.exp(rng.uniform(-np.log(3), np.log(3), num_gts))
    w, h = np.minimum(side * np.sqrt(aspect), width), np.minimum(side / np.sqrt(aspect), height)
    x1, y1 = rng.uniform(0, 1, num_gts) * (width - w), rng.uniform(0, 1, num_gts) * (height - h)
    return rng, np.stack([x1, y1, x1 + w, y1 + h], axis=1)


@pytest.mark.parametrize("seed,num_gts", [(0, 1), (1, 7), (2, 30)])
def test_anchor_loops_equal_references(seed, num_gts):
    rng, gts = scene(seed, num_gts)
    anchors, counts = multi_level_anchors(IMAGE_SIZE)
    pred = decode_deltas(anchors, rng.normal(0, 0.3, size=(len(anchors), 4)))
    np.testing.assert_array_equal(numpy_loops.atss_loop(anchors, counts, gts), atss.assign_atss(anchors, counts, gts).matched_gt)
    np.testing.assert_array_equal(
        numpy_loops.atss_loop(anchors, counts, gts, pred),
        dynamic_atss.assign_dynamic_atss(anchors, counts, gts, pred).matched_gt,
    )
    for low_quality in (False, True):
        np.testing.assert_array_equal(
            numpy_loops.max_iou_loop(anchors, gts, match_low_quality=low_quality),
            max_iou.assign_max_iou(anchors, gts, match_low_quality=low_quality).matched_gt,
        )


@pytest.mark.parametrize("seed,num_gts", [(3, 1), (4, 7), (5, 30)])
def test_point_loops_equal_references(seed, num_gts):
    _, gts = scene(seed, num_gts)
    points, _, counts = multi_level_points(IMAGE_SIZE)
    np.testing.assert_array_equal(numpy_loops.fcos_loop(points, counts, gts), anchor_free.assign_fcos(points, counts, gts).matched_gt)
    np.testing.assert_array_equal(
        numpy_loops.fcos_loop(points, counts, gts, pseudo_iou_threshold=0.4),
        anchor_free.assign_pseudo_iou(points, counts, gts).matched_gt,
    )


@pytest.mark.parametrize("seed,num_gts", [(6, 1), (7, 7), (8, 30)])
def test_prediction_aware_loops_equal_references(seed, num_gts):
    # the benchmark's predictions: decoded noisy deltas, uniform ** 4 class probabilities
    rng, gts = scene(seed, num_gts)
    anchors, counts = multi_level_anchors(IMAGE_SIZE)
    pred = decode_deltas(anchors, rng.normal(0, 0.3, size=(len(anchors), 4)))
    scores = rng.uniform(0, 1, size=(len(anchors), NUM_CLASSES)) ** 4
    labels = rng.integers(0, NUM_CLASSES, num_gts)
    expected = tal.assign_tal(anchors, gts, labels, scores, pred).matched_gt
    assert (expected >= 0).any()
    np.testing.assert_array_equal(numpy_loops.tal_loop(anchors, gts, labels, scores, pred), expected)
    expected = simota.assign_simota(anchors, counts, gts, labels, pred, scores).matched_gt
    assert (expected >= 0).any()
    np.testing.assert_array_equal(numpy_loops.simota_loop(anchors, gts, labels, pred, scores), expected)
    expected = dsl.assign_dsl(anchors, counts, gts, labels, pred, scores).matched_gt
    assert (expected >= 0).any()
    np.testing.assert_array_equal(numpy_loops.dsl_loop(anchors, gts, labels, pred, scores), expected)


def test_prediction_aware_loops_on_empty_and_degenerate_scenes():
    anchors, counts = multi_level_anchors((64, 96))
    rng = np.random.default_rng(9)
    scores = rng.uniform(0, 1, size=(len(anchors), 3))
    pred = anchors + rng.normal(0, 2, size=anchors.shape).clip(-1, 1) * [[-1, -1, 1, 1]]
    pred[::7] = np.nan  # diverged predictions: IoU 0
    for gts in (np.zeros((0, 4)), np.array([[10.0, 10.0, 10.0, 30.0]]), np.array([[0.0, 0.0, 96.0, 64.0], [0.0, 0.0, 96.0, 64.0]])):
        labels = np.arange(len(gts)) % 3
        np.testing.assert_array_equal(numpy_loops.tal_loop(anchors, gts, labels, scores, pred),
                                      tal.assign_tal(anchors, gts, labels, scores, pred).matched_gt)
        np.testing.assert_array_equal(numpy_loops.simota_loop(anchors, gts, labels, pred, scores),
                                      simota.assign_simota(anchors, counts, gts, labels, pred, scores).matched_gt)
        np.testing.assert_array_equal(numpy_loops.dsl_loop(anchors, gts, labels, pred, scores),
                                      dsl.assign_dsl(anchors, counts, gts, labels, pred, scores).matched_gt)
