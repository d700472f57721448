"""Parity of detector/targets.py with reference/targets.py: per image and batched (specs/targets.md)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector import batched_targets as BT  # noqa: E402
from detector import targets as DT  # noqa: E402
from reference import targets as RT  # noqa: E402
from reference.conventions import IGNORE  # noqa: E402
from tests.strategies import anchor_scenes, gt_boxes  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]


def tensor(array, dtype=torch.float64, device="cpu"):
    return torch.as_tensor(np.asarray(array), dtype=dtype, device=device)


@st.composite
def target_images(draw, image_size=None, num_anchors=None):
    """One image: anchors of a small scene, GTs, a random assignment, predictions, scores."""
    scene = draw(anchor_scenes(max_side=160, max_boxes=8, max_levels=3)) if image_size is None else None
    size = scene["image_size"] if scene else image_size
    anchors = scene["anchors"] if scene else None
    gts = scene["gt_boxes"] if scene else draw(gt_boxes(size, 0, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if anchors is not None:
        num_anchors = len(anchors)
    elif num_anchors is None:
        num_anchors = draw(st.integers(0, 60))
    matched = rng.integers(IGNORE, len(gts), size=num_anchors) if len(gts) else rng.integers(IGNORE, 0, size=num_anchors)
    num_classes = draw(st.integers(1, 5))
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2 if anchors is not None else rng.uniform(-10, 170, size=(num_anchors, 2))
    corner = rng.uniform(0, 160, size=(num_anchors, 2))
    return dict(
        gt_boxes=gts,
        gt_labels=rng.integers(0, num_classes, size=len(gts)),
        num_classes=num_classes,
        matched_gt=matched.astype(np.int64),
        centers=centers,
        pred_boxes=np.concatenate([corner, corner + rng.uniform(0, 50, size=(num_anchors, 2))], axis=1),
        scores=rng.uniform(size=num_anchors),
    )


def check_image(image, device, dtype=torch.float64, rtol=0.0, atol=0.0):
    matched = torch.as_tensor(image["matched_gt"], device=device)
    labels = torch.as_tensor(image["gt_labels"], device=device)
    gts = tensor(image["gt_boxes"], dtype, device)
    for scores in (None, image["scores"]):
        expected = RT.class_targets(image["matched_gt"], image["gt_labels"], image["num_classes"], scores)
        actual = DT.class_targets(matched, labels, image["num_classes"], None if scores is None else tensor(scores, dtype, device))
        for e, a in zip(expected, actual):
            np.testing.assert_allclose(a.cpu().double().numpy(), e, rtol=rtol, atol=atol)
    np.testing.assert_allclose(DT.box_targets(matched, gts).cpu().double().numpy(), RT.box_targets(image["matched_gt"], image["gt_boxes"]), rtol=rtol, atol=atol)
    expected = RT.centerness_targets(image["centers"], image["matched_gt"], image["gt_boxes"])
    actual = DT.centerness_targets(tensor(image["centers"], dtype, device), matched, gts)
    np.testing.assert_allclose(actual.cpu().double().numpy(), expected, rtol=max(rtol, 1e-15), atol=atol)
    expected = RT.iou_targets(image["pred_boxes"], image["matched_gt"], image["gt_boxes"])
    actual = DT.iou_targets(tensor(image["pred_boxes"], dtype, device), matched, gts)
    np.testing.assert_allclose(actual.cpu().double().numpy(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@given(target_images())
@settings(max_examples=40)
def test_targets_match_reference_float64(device, image):
    check_image(image, device)


@given(target_images(image_size=(160, 160)))
@settings(max_examples=30)
def test_targets_match_reference_float32(image):
    image = dict(image)
    for key in ("gt_boxes", "centers", "pred_boxes", "scores"):
        image[key] = image[key].astype(np.float32).astype(np.float64)  # same inputs on both sides
    check_image(image, "cpu", torch.float32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@given(st.integers(0, 60).flatmap(lambda n: st.lists(target_images((160, 160), n), min_size=1, max_size=3)))
@settings(max_examples=30)
def test_batched_targets_equal_per_image_reference(device, images):
    num_classes = max(image["num_classes"] for image in images)
    g_max = max(len(image["gt_boxes"]) for image in images) + 1
    batch = len(images)
    gts = torch.zeros(batch, g_max, 4, dtype=torch.float64, device=device)
    labels = torch.full((batch, g_max), -1, dtype=torch.int64, device=device)
    valid = torch.zeros(batch, g_max, dtype=torch.bool, device=device)
    for b, image in enumerate(images):
        g = len(image["gt_boxes"])
        gts[b, :g], labels[b, :g], valid[b, :g] = tensor(image["gt_boxes"], device=device), torch.as_tensor(image["gt_labels"]), True
    matched = torch.stack([torch.as_tensor(image["matched_gt"]) for image in images]).to(device)
    centers = torch.stack([tensor(image["centers"]) for image in images]).to(device)
    preds = torch.stack([tensor(image["pred_boxes"]) for image in images]).to(device)
    scores = torch.stack([tensor(image["scores"]) for image in images]).to(device)

    cls_t, weights = BT.class_targets_batched(matched, labels, num_classes, scores, valid)
    box_t = BT.box_targets_batched(matched, gts, valid)
    ctr_t = BT.centerness_targets_batched(centers, matched, gts, valid)
    iou_t = BT.iou_targets_batched(preds, matched, gts, valid)
    for b, image in enumerate(images):
        expected_cls, expected_weights = RT.class_targets(image["matched_gt"], image["gt_labels"], num_classes, image["scores"])
        np.testing.assert_array_equal(cls_t[b].cpu().numpy(), expected_cls)
        np.testing.assert_array_equal(weights[b].cpu().numpy(), expected_weights)
        np.testing.assert_array_equal(box_t[b].cpu().numpy(), RT.box_targets(image["matched_gt"], image["gt_boxes"]))
        np.testing.assert_allclose(ctr_t[b].cpu().numpy(), RT.centerness_targets(image["centers"], image["matched_gt"], image["gt_boxes"]), rtol=1e-15)
        np.testing.assert_array_equal(iou_t[b].cpu().numpy(), RT.iou_targets(image["pred_boxes"], image["matched_gt"], image["gt_boxes"]))


def test_batched_targets_reject_a_match_to_a_padded_slot():
    gts = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, False]])
    with pytest.raises(ValueError, match=r"matched_gt: row \(0, 1\)"):
        BT.box_targets_batched(torch.tensor([[0, 1]]), gts, valid)


# ---------------------------------------------------------------------------------------
# ignore regions (specs/targets.md §8)


@st.composite
def ignore_images(draw, num_anchors=None):
    """An image's assignment, centres (half of them on a 4 px grid, hitting the 8 px grid
    boxes' edges) and ignore regions (every box kind, zero-area included)."""
    regions = draw(gt_boxes((96, 96), 0, 5))
    if num_anchors is None:
        num_anchors = draw(st.integers(0, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    grid = 4.0 * rng.integers(-1, 26, size=(num_anchors, 2))
    free = rng.uniform(-10, 106, size=(num_anchors, 2))
    centers = np.where(rng.random((num_anchors, 1)) < 0.5, grid, free)
    if len(regions):  # a third of the centres on a region's side, corner or centre line
        on_side = rng.random(num_anchors) < 1 / 3
        picked = regions[rng.integers(0, len(regions), size=num_anchors)]
        fx, fy = rng.choice([0.0, 0.5, 1.0], size=(2, num_anchors))
        sides = np.stack([picked[:, 0] + fx * (picked[:, 2] - picked[:, 0]), picked[:, 1] + fy * (picked[:, 3] - picked[:, 1])], 1)
        centers = np.where(on_side[:, None], sides, centers)
    matched = np.where(rng.random(num_anchors) < 0.5, -1, rng.integers(IGNORE, 4, size=num_anchors)).astype(np.int64)
    return dict(matched_gt=matched, centers=centers, ignore_boxes=regions)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(ignore_images())
@settings(max_examples=40)
def test_ignore_regions_match_reference(device, dtype, image):
    if dtype == torch.float32:  # the same (float32-representable) inputs on both sides
        image = {k: v.astype(np.float32).astype(np.float64) if v.dtype.kind == "f" else v for k, v in image.items()}
    expected = RT.ignore_regions(image["matched_gt"], image["centers"], image["ignore_boxes"])
    actual = DT.ignore_regions(
        torch.as_tensor(image["matched_gt"], device=device), tensor(image["centers"], dtype, device),
        tensor(image["ignore_boxes"], dtype, device),
    )
    assert actual.dtype == torch.int64 and actual.device.type == device
    np.testing.assert_array_equal(actual.cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
@given(st.integers(0, 60).flatmap(lambda n: st.lists(ignore_images(n), min_size=1, max_size=3)))
@settings(max_examples=30)
def test_batched_ignore_regions_equal_per_image_reference(device, images):
    centers = images[0]["centers"]  # shared by the batch
    i_max = max(len(image["ignore_boxes"]) for image in images) + 1
    batch = len(images)
    # padded slots hold a region covering every centre: they must not count
    boxes = torch.tensor([-1000.0, -1000.0, 1000.0, 1000.0], dtype=torch.float64).repeat(batch, i_max, 1).to(device)
    valid = torch.zeros(batch, i_max, dtype=torch.bool, device=device)
    for b, image in enumerate(images):
        count = len(image["ignore_boxes"])
        boxes[b, :count], valid[b, :count] = tensor(image["ignore_boxes"], device=device), True
    matched = torch.stack([torch.as_tensor(image["matched_gt"]) for image in images]).to(device)
    actual = BT.ignore_regions_batched(matched, tensor(centers, device=device), boxes, valid)
    assert actual.shape == matched.shape and actual.dtype == torch.int64
    for b, image in enumerate(images):
        expected = RT.ignore_regions(image["matched_gt"], centers, image["ignore_boxes"])
        np.testing.assert_array_equal(actual[b].cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ignore_regions_worked_examples_on_device(device, dtype):
    # specs/targets.md §8: inside, on the left edge, outside, a positive inside; then every
    # side and corner of the region, and a zero-width region through the first centre
    centers = np.array([[5.0, 5.0], [0.0, 5.0], [15.0, 5.0], [5.0, 5.0], [10.0, 5.0], [5.0, 0.0], [5.0, 10.0], [0.0, 0.0], [10.0, 10.0]])
    matched = np.array([-1, -1, -1, 0, -1, -1, -1, -1, -1])
    for region, expected in (([0.0, 0.0, 10.0, 10.0], [IGNORE, -1, -1, 0, -1, -1, -1, -1, -1]),
                             ([5.0, 0.0, 5.0, 10.0], matched)):
        actual = DT.ignore_regions(torch.as_tensor(matched, device=device), tensor(centers, dtype, device), tensor([region], dtype, device))
        np.testing.assert_array_equal(actual.cpu().numpy(), expected)
        np.testing.assert_array_equal(RT.ignore_regions(matched, centers, np.array([region])), expected)


def test_ignore_regions_batched_bad_input():
    matched = torch.full((2, 3), -1)
    centers = torch.zeros(3, 2)
    boxes = torch.zeros(2, 1, 4)
    valid = torch.ones(2, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"ignore_boxes: row \(1, 0\)"):
        BT.ignore_regions_batched(matched, centers, torch.tensor([[[0.0, 0, 1, 1]], [[2.0, 0, 1, 1]]]), valid)
    with pytest.raises(ValueError, match=r"matched_gt: row \(1, 2\)"):
        BT.ignore_regions_batched(torch.tensor([[-1, -1, -1], [-1, -1, -3]]), centers, boxes, valid)
    with pytest.raises(ValueError, match="ignore_valid"):
        BT.ignore_regions_batched(matched, centers, boxes, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="ignore_boxes: expected 2 images"):
        BT.ignore_regions_batched(matched, centers, torch.zeros(1, 1, 4), valid[:1])
    with pytest.raises(ValueError, match="centers"):
        BT.ignore_regions_batched(matched, torch.zeros(4, 2), boxes, valid)
    with pytest.raises(ValueError, match="ignore_boxes: row 0"):
        DT.ignore_regions(torch.tensor([-1]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0, 0.0, 1.0]]))


def test_ignore_regions_batched_without_regions_is_identity():
    matched = torch.tensor([[0, -1, -2], [-1, -1, 1]])
    actual = BT.ignore_regions_batched(matched, torch.ones(3, 2), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    torch.testing.assert_close(actual, matched)
