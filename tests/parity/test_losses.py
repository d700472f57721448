"""Parity of detector/losses.py (and the torchvision ops it uses) with reference/losses.py.

float64: equal to 1e-9 relative (the formulas are the same up to operation order and
torch's own BCE-with-logits kernel). float32: close to the float64 reference within
float32 rounding. The batched loss step equals the reference per-image sums reduced as
one batch (specs/losses.md §6, §7).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from detector import loss_step as LS  # noqa: E402
from detector import losses as DL  # noqa: E402
from detector.coders import decode_deltas as torch_decode_deltas  # noqa: E402
from reference import losses as RL  # noqa: E402
from reference import targets as RT  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.conventions import IGNORE  # noqa: E402
from tests.strategies import gt_boxes, image_sizes, pred_deltas  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]
F64 = dict(rtol=1e-9, atol=1e-12)
F32 = dict(rtol=2e-5, atol=2e-5)


def tensor(array, dtype=torch.float64, device="cpu"):
    return torch.as_tensor(np.asarray(array), dtype=dtype, device=device)


def numpy(value):
    return value.detach().cpu().double().numpy()


@st.composite
def logits_and_targets(draw):
    n = draw(st.integers(1, 30))
    logits = draw(st.lists(st.floats(-60, 60) | st.sampled_from([-50.0, 50.0, 0.0]), min_size=n, max_size=n))
    targets = draw(st.lists(st.floats(0, 1) | st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    return np.array(logits), np.array(targets)


ELEMENTWISE = [
    ("bce_with_logits", {}),
    ("sigmoid_focal_loss", {}),
    ("sigmoid_focal_loss", {"alpha": None, "gamma": 1.5}),
    ("quality_focal_loss", {}),
    ("varifocal_loss", {}),
    ("varifocal_loss", {"iou_weighted": False}),
]


@pytest.mark.parametrize("device", DEVICES)
@given(logits_and_targets())
def test_elementwise_losses_match_reference(device, inputs):
    """Includes torchvision.ops.sigmoid_focal_loss (the focal twin) against the reference."""
    logits, targets = inputs
    for name, options in ELEMENTWISE:
        expected = getattr(RL, name)(logits, targets, **options)
        actual = getattr(DL, name)(tensor(logits, device=device), tensor(targets, device=device), **options)
        assert actual.dtype == torch.float64
        np.testing.assert_allclose(numpy(actual), expected, **F64, err_msg=name)
        actual32 = getattr(DL, name)(tensor(logits, torch.float32, device), tensor(targets, torch.float32, device), **options)
        assert actual32.dtype == torch.float32 and bool(torch.isfinite(actual32).all())
        expected32 = getattr(RL, name)(logits.astype(np.float32), targets.astype(np.float32), **options)
        np.testing.assert_allclose(numpy(actual32), expected32, rtol=1e-4, atol=1e-5, err_msg=name)


@given(data=st.data())
def test_box_losses_match_reference(data):
    size = data.draw(image_sizes(max_side=400))
    first = data.draw(gt_boxes(size, 1, 20))
    second = data.draw(gt_boxes(size, len(first), len(first)))
    for name, options in [("giou_loss", {}), ("iou_loss", {}), ("iou_loss", {"mode": "linear"})]:
        expected = getattr(RL, name)(first, second, **options)
        actual = getattr(DL, name)(tensor(first), tensor(second), **options)
        np.testing.assert_allclose(numpy(actual), expected, **F64, err_msg=name)
        actual32 = getattr(DL, name)(tensor(first, torch.float32), tensor(second, torch.float32), **options)
        np.testing.assert_allclose(numpy(actual32), expected, rtol=1e-4, atol=1e-4, err_msg=name)


@given(data=st.data())
def test_torchvision_box_ops_match_reference_on_positive_area_boxes(data):
    """torchvision's pairwise GIoU / IoU equal ours where no 0/0 occurs (they return NaN there)."""
    size = data.draw(image_sizes(max_side=400))
    boxes = data.draw(gt_boxes(size, 1, 15))
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    from reference.boxes import box_giou, box_iou

    np.testing.assert_allclose(numpy(torchvision.ops.generalized_box_iou(tensor(boxes), tensor(boxes))), box_giou(boxes, boxes), **F64)
    np.testing.assert_allclose(numpy(torchvision.ops.box_iou(tensor(boxes), tensor(boxes))), box_iou(boxes, boxes), **F64)
    giou_loss_tv = torchvision.ops.generalized_box_iou_loss(tensor(boxes), tensor(boxes.copy()[::-1].copy()), reduction="none")
    np.testing.assert_allclose(numpy(giou_loss_tv), RL.giou_loss(boxes, boxes[::-1]), rtol=1e-6, atol=1e-6)  # tv adds eps=1e-7


# ---------------------------------------------------------------------------------------
# the loss step


@st.composite
def loss_batches(draw, max_side=192):
    """B images sharing anchors: random assignments (IGNORE/BACKGROUND/GT), padded GTs."""
    size = draw(image_sizes(max_side=max_side, min_side=32))
    anchors, _ = multi_level_anchors(size, (8, 16, 32))
    num_anchors = len(anchors)
    batch = draw(st.integers(1, 3))
    num_classes = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images = []
    for _ in range(batch):
        gts = draw(gt_boxes(size, 0, 8))
        deltas = draw(pred_deltas(num_anchors))
        pred = numpy(torch_decode_deltas(tensor(anchors), tensor(deltas)))
        matched = rng.integers(IGNORE, len(gts), size=num_anchors) if len(gts) else rng.integers(IGNORE, 0, size=num_anchors)
        # mostly background, as in real assignments
        matched = np.where(rng.uniform(size=num_anchors) < 0.6, -1, matched).astype(np.int64)
        images.append(
            dict(
                cls_logits=rng.normal(-2.0, 3.0, size=(num_anchors, num_classes)),
                pred_boxes=pred,
                quality_logits=rng.normal(size=num_anchors),
                centers=(anchors[:, :2] + anchors[:, 2:]) / 2,
                matched_gt=matched,
                gt_boxes=gts,
                gt_labels=rng.integers(0, num_classes, size=len(gts)),
                box_deltas=deltas,  # the raw codes of pred_boxes, for the delta box losses
                anchors=anchors,
            )
        )
    return images


def pad_batch(images, dtype=torch.float64, device="cpu"):
    g_max = max(len(image["gt_boxes"]) for image in images) + 1  # always one padded slot
    batch = len(images)
    gt_boxes = torch.zeros(batch, g_max, 4, dtype=dtype, device=device)
    gt_labels = torch.full((batch, g_max), -1, dtype=torch.int64, device=device)
    gt_valid = torch.zeros(batch, g_max, dtype=torch.bool, device=device)
    for b, image in enumerate(images):
        g = len(image["gt_boxes"])
        gt_boxes[b, :g] = tensor(image["gt_boxes"], dtype, device)
        gt_labels[b, :g] = torch.as_tensor(image["gt_labels"], device=device)
        gt_valid[b, :g] = True
    stack = lambda key: torch.stack([tensor(image[key], dtype, device) for image in images])  # noqa: E731
    return dict(
        cls_logits=stack("cls_logits"),
        pred_boxes=stack("pred_boxes"),
        quality_logits=stack("quality_logits"),
        centers=tensor(images[0]["centers"], dtype, device),
        box_deltas=stack("box_deltas"),
        anchors=tensor(images[0]["anchors"], dtype, device),
        matched_gt=torch.stack([torch.as_tensor(image["matched_gt"], device=device) for image in images]),
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        gt_valid=gt_valid,
    )


OPTIONS = st.tuples(st.sampled_from(DL.CLS_LOSSES), st.sampled_from(DL.BOX_LOSSES), st.sampled_from(DL.QUALITY_BRANCHES))


def without_zero_area_positives(images, box_loss):
    """The delta box losses need GTs of positive size at the positives (a zero-width GT has no
    log(w) code): for them, positives on zero-area GTs become background."""
    if box_loss not in RL.DELTA_BOX_LOSSES:
        return images
    result = []
    for image in images:
        gts = image["gt_boxes"]
        flat = (gts[:, 2] <= gts[:, 0]) | (gts[:, 3] <= gts[:, 1]) if len(gts) else np.zeros(0, dtype=bool)
        matched = image["matched_gt"]
        bad = (matched >= 0) & flat[np.maximum(matched, 0)] if len(gts) else np.zeros(len(matched), dtype=bool)
        result.append(dict(image, matched_gt=np.where(bad, -1, matched)))
    return result


def reference_terms(images, cls_loss, box_loss, quality, box_loss_weight=2.0):
    sums = []
    for image in images:
        image = dict(image) | ({"quality_logits": None} if quality == "none" else {})
        sums.append(RL.loss_sums(**image, cls_loss=cls_loss, box_loss=box_loss, quality=quality))
    return RL.reduce_loss_sums(sums, box_loss_weight)


@pytest.mark.parametrize("device", DEVICES)
@given(loss_batches(), OPTIONS)
@settings(max_examples=40)
def test_batched_loss_step_equals_reference_batch(device, images, options):
    cls_loss, box_loss, quality = options
    images = without_zero_area_positives(images, box_loss)
    expected = reference_terms(images, *options)
    batch = pad_batch(images, device=device)
    if quality == "none":
        batch["quality_logits"] = None
    actual = LS.detection_losses_batched(**batch, cls_loss=cls_loss, box_loss=box_loss, quality=quality)
    assert set(actual) == set(expected)
    for key in expected:
        assert actual[key].dtype == torch.float64
        np.testing.assert_allclose(numpy(actual[key]), expected[key], **F64, err_msg=key)

    batch32 = pad_batch(images, torch.float32, device)
    if quality == "none":
        batch32["quality_logits"] = None
    actual32 = LS.detection_losses_batched(**batch32, cls_loss=cls_loss, box_loss=box_loss, quality=quality)
    for key in expected:
        assert actual32[key].dtype == torch.float32
        # decoded boxes rounded to float32 move IoU targets by ~1e-7 relative
        np.testing.assert_allclose(numpy(actual32[key]), expected[key], rtol=1e-4, atol=1e-4, err_msg=key)


@given(loss_batches(), OPTIONS)
@settings(max_examples=30)
def test_single_image_loss_step_and_sums_match_reference(images, options):
    cls_loss, box_loss, quality = options
    images = without_zero_area_positives(images, box_loss)
    image = dict(images[0]) | ({"quality_logits": None} if quality == "none" else {})
    expected = RL.loss_sums(**image, cls_loss=cls_loss, box_loss=box_loss, quality=quality)
    as_torch = {key: (value if value is None or key in ("matched_gt", "gt_labels") else tensor(value)) for key, value in image.items()}
    as_torch["matched_gt"] = torch.as_tensor(image["matched_gt"])
    as_torch["gt_labels"] = torch.as_tensor(image["gt_labels"])
    actual = DL.loss_sums(**as_torch, cls_loss=cls_loss, box_loss=box_loss, quality=quality)
    assert set(actual) == set(expected)
    assert int(actual["num_pos"]) == expected["num_pos"]
    for key in set(expected) - {"num_pos"}:
        np.testing.assert_allclose(numpy(actual[key]), expected[key], **F64, err_msg=key)
    terms = DL.detection_losses(**as_torch, cls_loss=cls_loss, box_loss=box_loss, quality=quality, box_loss_weight=1.5)
    expected_terms = RL.detection_losses(**image, cls_loss=cls_loss, box_loss=box_loss, quality=quality, box_loss_weight=1.5)
    for key in expected_terms:
        np.testing.assert_allclose(numpy(terms[key]), expected_terms[key], **F64, err_msg=key)


# ---------------------------------------------------------------------------------------
# box losses on delta-xywh codes (specs/losses.md §5.1)


@pytest.mark.parametrize("device", DEVICES)
@given(st.integers(0, 40), st.integers(0, 2**32 - 1), st.sampled_from([1.0 / 9.0, 1.0, 0.05]))
def test_delta_losses_match_reference(device, count, seed, beta):
    rng = np.random.default_rng(seed)
    pred = rng.normal(0.0, 1.0, (count, 4)) * rng.choice([0.01, 0.1, 3.0], (count, 1))
    target = pred + rng.normal(0.0, 0.2, (count, 4)) * rng.choice([0.0, 0.1, 1.0], (count, 1))
    np.testing.assert_array_equal(numpy(DL.l1_loss(tensor(pred, device=device), tensor(target, device=device))),
                                  RL.l1_loss(pred, target))  # |.| and 3 additions in the same order: exact
    actual = DL.smooth_l1_loss(tensor(pred, device=device), tensor(target, device=device), beta)
    np.testing.assert_allclose(numpy(actual), RL.smooth_l1_loss(pred, target, beta), **F64)


def test_delta_losses_worked_examples():
    pred, target = np.array([[0.0, 0.0, 0.0, 0.0], [0.5, -0.05, 1.0, 0.0]]), np.array([[0.0] * 4, [0.0, 0.0, 0.0, 2.0]])
    np.testing.assert_allclose(RL.l1_loss(pred, target), [0.0, 0.5 + 0.05 + 1.0 + 2.0])
    # beta = 1/9: 0.05 < beta is quadratic (0.5 * 0.0025 * 9), the others linear (d - 1/18)
    expected = (0.5 - 1 / 18) + 0.5 * 0.05 ** 2 * 9 + (1.0 - 1 / 18) + (2.0 - 1 / 18)
    np.testing.assert_allclose(RL.smooth_l1_loss(pred, target), [0.0, expected])
    np.testing.assert_allclose(numpy(DL.smooth_l1_loss(tensor(pred), tensor(target))), [0.0, expected])
    for module, convert in ((RL, np.asarray), (DL, tensor)):
        with pytest.raises(ValueError, match="beta"):
            module.smooth_l1_loss(convert(pred), convert(target), beta=0.0)
        with pytest.raises(ValueError, match="target_deltas"):
            module.l1_loss(convert(pred), convert(target[:1]))


def test_l1_loss_step_on_one_positive_by_hand():
    """RetinaNet's box term: L1 between the predicted codes and the GT's codes on the anchor
    (stds 1), summed over the 4 coordinates, divided by the positives; weight 1."""
    anchors = np.array([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    gts = np.array([[0.0, 0.0, 20.0, 10.0]])  # codes on anchor 0: dx = 0.5, dy = 0, dw = ln 2, dh = 0
    deltas = np.array([[0.25, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    stds = (1.0, 1.0, 1.0, 1.0)
    from reference.coders import decode_deltas

    image = dict(cls_logits=np.zeros((2, 1)), pred_boxes=decode_deltas(anchors, deltas, stds), quality_logits=None,
                 centers=(anchors[:, :2] + anchors[:, 2:]) / 2, matched_gt=np.array([0, -1]), gt_boxes=gts,
                 gt_labels=np.array([0]), box_deltas=deltas, anchors=anchors, delta_stds=stds)
    expected = 0.25 + 0.0 + np.log(2.0) + 0.5
    terms = RL.detection_losses(**image, box_loss="l1", quality="none", box_loss_weight=1.0)
    assert terms["loss_box"] == pytest.approx(expected)
    batched = LS.detection_losses_batched(
        tensor(image["cls_logits"])[None], tensor(image["pred_boxes"])[None], None, tensor(image["centers"]),
        torch.tensor([[0, -1]]), tensor(gts)[None], torch.tensor([[0]]), box_loss="l1", quality="none",
        box_deltas=tensor(deltas)[None], anchors=tensor(anchors), delta_stds=stds, box_loss_weight=1.0)
    assert float(batched["loss_box"]) == pytest.approx(expected)
    # with the default stds (0.1, 0.1, 0.2, 0.2) the targets are 10 and 5 times larger
    default = RL.detection_losses(**(image | {"delta_stds": (0.1, 0.1, 0.2, 0.2)}), box_loss="l1", quality="none",
                                  box_loss_weight=1.0)
    assert default["loss_box"] == pytest.approx(abs(0.25 - 5.0) + np.log(2.0) / 0.2 + 0.5)
    # the delta losses need the codes and the anchors, and GTs of positive size at the positives
    with pytest.raises(ValueError, match="box_deltas, anchors"):
        RL.loss_sums(**(image | {"box_deltas": None}), box_loss="smooth_l1", quality="none")
    with pytest.raises(ValueError, match="box_deltas, anchors"):
        LS.loss_sums_batched(tensor(image["cls_logits"])[None], tensor(image["pred_boxes"])[None], None,
                             tensor(image["centers"]), torch.tensor([[0, -1]]), tensor(gts)[None], torch.tensor([[0]]),
                             box_loss="l1", quality="none")
    with pytest.raises(ValueError, match="zero width or height"):
        RL.loss_sums(**(image | {"gt_boxes": np.array([[0.0, 0.0, 0.0, 10.0]])}), box_loss="l1", quality="none")


@given(st.lists(st.floats(0, 50), min_size=0, max_size=10), st.data())
def test_weighted_mean_matches_reference(values, data):
    weights = data.draw(st.lists(st.sampled_from([0.0, 0.5]) | st.floats(0, 1), min_size=len(values), max_size=len(values)))
    expected = RL.weighted_mean(np.array(values), np.array(weights))
    actual = DL.weighted_mean(tensor(values), tensor(weights))
    np.testing.assert_allclose(numpy(actual), expected, **F64)
    for count in (0, 1, 7):
        assert float(DL.num_pos_normalizer(count)) == RL.num_pos_normalizer(count)


@given(loss_batches(), st.sampled_from(("qfl", "vfl")), st.integers(0, 2**32 - 1))
@settings(max_examples=30)
def test_soft_targets_match_reference_batched_and_single(images, cls_loss, seed):
    """An assigner's soft targets (``matched_metric``) replace the IoU target of QFL / VFL
    identically in the reference, the single-image twin and the batched loss step."""
    rng = np.random.default_rng(seed)
    for image in images:  # soft targets in [0, 1]; garbage at non-positives must be ignored
        image["soft_targets"] = np.where(image["matched_gt"] >= 0, rng.uniform(size=len(image["matched_gt"])), 7.0)
    expected = []
    for image in images:
        expected.append(RL.loss_sums(**image, cls_loss=cls_loss, box_loss="giou", quality="centerness"))
        single = DL.loss_sums(**{k: (torch.as_tensor(v) if k in ("matched_gt", "gt_labels") else tensor(v))
                                 for k, v in image.items()}, cls_loss=cls_loss, box_loss="giou", quality="centerness")
        np.testing.assert_allclose(numpy(single["cls"]), expected[-1]["cls"], **F64)
    reference = RL.reduce_loss_sums(expected, 2.0)
    batch = pad_batch([{k: v for k, v in image.items() if k != "soft_targets"} for image in images])
    soft = torch.stack([tensor(image["soft_targets"]) for image in images])
    actual = LS.detection_losses_batched(**batch, cls_loss=cls_loss, box_loss="giou", quality="centerness",
                                         soft_targets=soft)
    for key in reference:
        np.testing.assert_allclose(numpy(actual[key]), reference[key], **F64, err_msg=key)
    # the IoU target is what soft_targets=None means: passing the IoUs gives the default
    image = dict(images[0])
    ious = RT.iou_targets(image["pred_boxes"], image["matched_gt"], image["gt_boxes"])
    default = RL.loss_sums(**{k: v for k, v in image.items() if k != "soft_targets"}, cls_loss=cls_loss)
    assert RL.loss_sums(**(image | {"soft_targets": ious}), cls_loss=cls_loss) == pytest.approx(default)


def test_soft_targets_outside_the_unit_interval_are_refused():
    matched = np.array([0, -1])
    with pytest.raises(ValueError, match=r"soft_targets: expected values in \[0, 1\] at the positives"):
        RL.soft_target_scores(np.array([1.5, 0.0]), matched)
    with pytest.raises(ValueError, match=r"soft_targets: expected values in \[0, 1\] at the positives"):
        DL.soft_target_scores(torch.tensor([1.5, 0.0]), torch.as_tensor(matched))
    assert RL.soft_target_scores(np.array([0.25, 9.0]), matched).tolist() == [0.25, 0.0]
    assert DL.soft_target_scores(torch.tensor([0.25, 9.0]), torch.as_tensor(matched)).tolist() == [0.25, 0.0]


# ---------------------------------------------------------------------------------------
# QFL of probabilities (GFLV2's joint score; specs/losses.md §3.1)


@st.composite
def probs_and_targets(draw):
    n = draw(st.integers(1, 30))
    probs = draw(st.lists(st.floats(0, 1) | st.sampled_from([0.0, 1.0, 1e-30, 1 - 1e-12]), min_size=n, max_size=n))
    targets = draw(st.lists(st.floats(0, 1) | st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    return np.array(probs), np.array(targets)


def _qfl_prob_formula(p, y, beta=2.0):
    """The NumPy formula, written out: |y - p|^beta * -(y ln p + (1 - y) ln(1 - p)), logs clamped at -100."""
    with np.errstate(divide="ignore"):
        return np.abs(y - p) ** beta * -(y * np.maximum(np.log(p), -100.0) + (1 - y) * np.maximum(np.log1p(-p), -100.0))


@pytest.mark.parametrize("device", DEVICES)
@given(probs_and_targets(), st.sampled_from([2.0, 1.5, 0.0]))
def test_quality_focal_loss_of_probabilities_matches_reference(device, inputs, beta):
    probs, targets = inputs
    expected = _qfl_prob_formula(probs, targets, beta)
    np.testing.assert_allclose(RL.quality_focal_loss_prob(probs, targets, beta), expected, **F64)
    p = tensor(probs, device=device).requires_grad_()
    actual = DL.quality_focal_loss_prob(p, tensor(targets, device=device), beta)
    assert actual.dtype == torch.float64
    np.testing.assert_allclose(numpy(actual), expected, **F64)
    actual.sum().backward()
    assert bool(torch.isfinite(p.grad).all())  # also at p = 0 and p = 1
    actual32 = DL.quality_focal_loss_prob(tensor(probs, torch.float32, device), tensor(targets, torch.float32, device), beta)
    expected32 = _qfl_prob_formula(probs.astype(np.float32).astype(np.float64), targets.astype(np.float32).astype(np.float64), beta)
    np.testing.assert_allclose(numpy(actual32), expected32, rtol=1e-4, atol=1e-5)


def test_quality_focal_loss_of_probabilities_is_qfl_of_the_logit():
    logits = np.array([-30.0, -3.0, 0.0, np.log(3.0), 4.0])
    targets = np.array([0.0, 0.5, 0.5, 0.25, 1.0])
    probs = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(RL.quality_focal_loss_prob(probs, targets), RL.quality_focal_loss(logits, targets), rtol=1e-9)
    # worked example of specs/losses.md §3: p = 0.75, y = 0.25 -> 0.5^2 * (ln 4 - 0.25 ln 3)
    assert RL.quality_focal_loss_prob(np.array([0.75]), np.array([0.25]))[0] == pytest.approx(0.25 * (np.log(4) - 0.25 * np.log(3)))
    assert RL.quality_focal_loss_prob(np.array([0.0, 1.0]), np.array([1.0, 0.0])).tolist() == [100.0, 100.0]  # clamped logs
    for module, make in ((RL, np.array), (DL, torch.tensor)):
        with pytest.raises(ValueError, match=r"probs: element \(0,\) is 1\.5"):
            module.quality_focal_loss_prob(make([1.5]), make([0.5]))
        with pytest.raises(ValueError, match=r"targets: element \(0,\) is -0\.5"):
            module.quality_focal_loss_prob(make([0.5]), make([-0.5]))
