"""``detector/assign/memo.py``: values derived from anchors or points are reused only while
the tensor is the same object, unchanged; results never depend on the memo."""
import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector.anchors import multi_level_anchors, multi_level_points  # noqa: E402
from detector.assign import memo as memo_module  # noqa: E402
from detector.assign.anchor_free import assign_fcos_batched, assign_pseudo_iou_batched  # noqa: E402
from detector.assign.atss import assign_atss_batched  # noqa: E402
from detector.assign.memo import memo, memo_disabled  # noqa: E402

IMAGE = (256, 384)


def _gts(seed, batch=2, count=6):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, size=(batch, count, 2))
    wh = rng.uniform(8, 150, size=(batch, count, 2))
    return torch.as_tensor(np.concatenate([xy, xy + wh], axis=-1), dtype=torch.float32), torch.ones((batch, count), dtype=torch.bool)


def _same(a, b):
    return torch.equal(a.matched_gt, b.matched_gt) and torch.equal(a.matched_metric, b.matched_metric)


def test_value_is_built_once_per_tensor_and_key():
    tensor = torch.zeros(3)
    calls = []
    for _ in range(3):
        assert memo(tensor, "k", lambda: calls.append(1) or len(calls)) == 1
    assert memo(tensor, "other", lambda: 7) == 7
    assert memo(torch.zeros(3), "k", lambda: 5) == 5  # equal values, another object: no reuse
    assert len(calls) == 1


def test_in_place_write_invalidates():
    tensor = torch.zeros(3)
    assert memo(tensor, "sum", lambda: float(tensor.sum())) == 0.0
    tensor[1] = 4.0  # bumps the version counter
    assert memo(tensor, "sum", lambda: float(tensor.sum())) == 4.0
    tensor.view(3)[0] = 1.0  # through a view too
    assert memo(tensor, "sum", lambda: float(tensor.sum())) == 5.0


def test_entry_is_dropped_with_its_tensor():
    tensor = torch.zeros(3)
    memo(tensor, "k", lambda: 1)
    ident = id(tensor)
    assert ident in memo_module._entries
    del tensor
    gc.collect()
    assert ident not in memo_module._entries


def test_disabled_and_inference_tensors_rebuild():
    tensor = torch.zeros(3)
    memo(tensor, "k", lambda: 1)
    with memo_disabled():
        assert memo(tensor, "k", lambda: 2) == 2
    with torch.inference_mode():
        frozen = torch.zeros(3)
    assert memo(frozen, "k", lambda: 3) == 3
    assert memo(frozen, "k", lambda: 4) == 4


def test_atss_with_memo_equals_without_after_anchor_changes():
    anchors, counts = multi_level_anchors(IMAGE, (8, 16, 32), 8)
    gts, valid = _gts(0)
    first = assign_atss_batched(anchors, counts, gts, valid)
    with memo_disabled():
        assert _same(first, assign_atss_batched(anchors, counts, gts, valid))
    assert _same(first, assign_atss_batched(anchors, counts, gts, valid))  # memo hit
    anchors[:, [0, 2]] += 4.0  # move every anchor in place: the memo must not serve old centres
    moved = assign_atss_batched(anchors, counts, gts, valid)
    with memo_disabled():
        assert _same(moved, assign_atss_batched(anchors, counts, gts, valid))
    assert not _same(first, moved)


@pytest.mark.parametrize("assign", [assign_fcos_batched, assign_pseudo_iou_batched])
def test_anchor_free_with_memo_equals_without_after_point_changes(assign):
    points, _, counts = multi_level_points(IMAGE, (8, 16, 32))
    ranges = ((-1.0, 64.0), (64.0, 128.0), (128.0, float("inf")))
    gts, valid = _gts(1)
    first = assign(points, counts, gts, valid, strides=(8, 16, 32), regress_ranges=ranges)
    assert _same(first, assign(points, counts, gts, valid, strides=(8, 16, 32), regress_ranges=ranges))
    points[:, 0] += 3.0
    moved = assign(points, counts, gts, valid, strides=(8, 16, 32), regress_ranges=ranges)
    with memo_disabled():
        assert _same(moved, assign(points, counts, gts, valid, strides=(8, 16, 32), regress_ranges=ranges))
    assert not _same(first, moved)


def test_bad_anchors_fail_every_time():
    anchors, counts = multi_level_anchors(IMAGE, (8, 16, 32), 8)
    anchors[5, 0] = float("nan")
    gts, valid = _gts(2)
    for _ in range(2):
        with pytest.raises(ValueError, match="anchors: row 5"):
            assign_atss_batched(anchors, counts, gts, valid)


def test_detector_priors_are_kept_per_size():
    from detector import configs
    from detector.modeling import Detector

    model = Detector(configs.get_config("demo"), 10)
    a = model.priors((128, 128), device="cpu")
    assert model.priors((128, 128), device="cpu") is a
    b = model.priors((256, 128), device="cpu")
    assert b is not a and b.anchors.shape[0] == 2 * a.anchors.shape[0]
