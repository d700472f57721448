"""detector/losses.py, detector/loss_step.py and the targets in torch alone: gradients, dtypes,
NaN-freedom, batched == per-image (specs/losses.md, specs/targets.md)."""
import math

import pytest

torch = pytest.importorskip("torch")

from detector import batched_targets as BT  # noqa: E402
from detector import loss_step as LS  # noqa: E402
from detector import losses as DL  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]
ELEMENTWISE = [DL.bce_with_logits, DL.sigmoid_focal_loss, DL.quality_focal_loss, DL.varifocal_loss]


def grad_of(function, logits, targets):
    logits = logits.clone().requires_grad_(True)
    value = function(logits, targets)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value.detach(), grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("function", ELEMENTWISE, ids=lambda f: f.__name__)
def test_extreme_logits_give_finite_values_and_gradients_in_float32(device, function):
    logits = torch.tensor([-50.0, -20.0, 0.0, 20.0, 50.0] * 3, device=device)
    targets = torch.tensor([0.0] * 5 + [1.0] * 5 + [0.3] * 5, device=device)
    value, grad = grad_of(function, logits, targets)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    assert bool(torch.isfinite(value).all()) and bool(torch.isfinite(grad).all())
    assert bool((value >= 0).all())


def test_qfl_from_logits_never_reaches_minus_inf_in_float32():
    """log(sigmoid(x)) is -inf for x = -120 in float32; the BCE-with-logits form stays exact."""
    x = torch.tensor([-120.0, 120.0])
    assert torch.isinf(torch.log(torch.sigmoid(x[:1]))).item()
    value = DL.quality_focal_loss(x, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(value, torch.tensor([120.0, 120.0]))


@pytest.mark.parametrize("function", ELEMENTWISE, ids=lambda f: f.__name__)
def test_elementwise_gradcheck_float64(function):
    logits = torch.linspace(-6, 6, 13, dtype=torch.float64)
    targets = torch.tensor([0.0, 1.0, 0.25, 0.0, 0.7, 1.0, 0.0, 0.5, 0.9, 0.0, 0.1, 1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: function(x, targets), (logits.requires_grad_(True),))


def test_bce_gradient_is_sigmoid_minus_target():
    logits = torch.tensor([-50.0, -3.0, 0.0, 2.0, 50.0], dtype=torch.float64)
    targets = torch.tensor([1.0, 0.2, 0.5, 0.0, 0.0], dtype=torch.float64)
    _, grad = grad_of(DL.bce_with_logits, logits, targets)
    torch.testing.assert_close(grad, torch.sigmoid(logits) - targets)


BOXES = {
    "identical": ([[1.0, 2.0, 5.0, 9.0]], [[1.0, 2.0, 5.0, 9.0]]),
    "identical zero-area": ([[3.0, 3.0, 3.0, 3.0]], [[3.0, 3.0, 3.0, 3.0]]),
    "zero-width pred": ([[3.0, 0.0, 3.0, 9.0]], [[0.0, 0.0, 10.0, 10.0]]),
    "disjoint": ([[0.0, 0.0, 1.0, 1.0]], [[2.0, 0.0, 3.0, 1.0]]),
    "collinear lines": ([[0.0, 0.0, 0.0, 4.0]], [[0.0, 5.0, 0.0, 9.0]]),
}


@pytest.mark.parametrize("case", BOXES)
@pytest.mark.parametrize("loss", ["giou", "iou_log", "iou_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_loss_gradients_are_finite_for_degenerate_boxes(case, loss, dtype):
    pred, target = (torch.tensor(b, dtype=dtype) for b in BOXES[case])
    pred.requires_grad_(True)
    function = {
        "giou": DL.giou_loss,
        "iou_log": DL.iou_loss,
        "iou_linear": lambda p, t: DL.iou_loss(p, t, mode="linear"),
    }[loss]
    value = function(pred, target)
    (grad,) = torch.autograd.grad(value.sum(), pred)
    assert bool(torch.isfinite(value).all()) and bool(torch.isfinite(grad).all())


def test_iou_log_loss_of_zero_iou_is_minus_log_eps_with_zero_gradient():
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True, dtype=torch.float64)
    value = DL.iou_loss(pred, torch.tensor([[2.0, 0.0, 3.0, 1.0]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(value.sum(), pred)
    torch.testing.assert_close(value, torch.tensor([-math.log(DL.IOU_LOSS_EPS)], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------------------------------
# the loss step


def make_batch(batch=3, num_anchors=50, num_classes=4, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, num_anchors, 2, generator=generator, dtype=dtype) * 80
    pred = torch.cat([corner, corner + 1 + torch.rand(batch, num_anchors, 2, generator=generator, dtype=dtype) * 40], dim=-1)
    gts = torch.tensor(
        [[[10.0, 10.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0], [0.0, 0.0, 0.0, 0.0]]] * batch, dtype=dtype
    )
    valid = torch.tensor([[True, True, False]] * batch)
    valid[0, 1] = False  # image 0 has a single GT
    matched = torch.randint(-2, 2, (batch, num_anchors), generator=generator)
    matched[0][matched[0] == 1] = -1
    matched[-1] = -1  # the last image has no positives
    return dict(
        cls_logits=torch.randn(batch, num_anchors, num_classes, generator=generator, dtype=dtype) * 3,
        pred_boxes=pred,
        quality_logits=torch.randn(batch, num_anchors, generator=generator, dtype=dtype),
        centers=torch.rand(num_anchors, 2, generator=generator, dtype=dtype) * 100,
        matched_gt=matched,
        gt_boxes=gts,
        gt_labels=torch.tensor([[1, 3, -1]] * batch),
        gt_valid=valid,
    )


@pytest.mark.parametrize("cls_loss", DL.CLS_LOSSES)
@pytest.mark.parametrize("quality", DL.QUALITY_BRANCHES)
def test_batched_sums_equal_the_sum_of_per_image_sums(cls_loss, quality):
    batch = make_batch(dtype=torch.float64)
    if quality == "none":
        batch["quality_logits"] = None
    options = dict(cls_loss=cls_loss, box_loss="giou", quality=quality)
    batched = LS.loss_sums_batched(**batch, **options)
    per_image = []
    for b in range(len(batch["cls_logits"])):
        valid = batch["gt_valid"][b]
        per_image.append(
            DL.loss_sums(
                batch["cls_logits"][b],
                batch["pred_boxes"][b],
                None if quality == "none" else batch["quality_logits"][b],
                batch["centers"],
                batch["matched_gt"][b],
                batch["gt_boxes"][b][valid],
                batch["gt_labels"][b][valid],
                **options,
            )
        )
    assert set(batched) == set(per_image[0])
    for key in batched:
        torch.testing.assert_close(batched[key], sum(s[key] for s in per_image), rtol=1e-12, atol=1e-12)
    terms = DL.reduce_loss_sums(per_image)
    for key, value in LS.detection_losses_batched(**batch, **options).items():
        torch.testing.assert_close(value, terms[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls_loss", DL.CLS_LOSSES)
@pytest.mark.parametrize("quality", DL.QUALITY_BRANCHES)
def test_loss_targets_batched_are_the_target_builders(cls_loss, quality):
    """Step 1 of the batched loss step (specs/losses.md §7) builds the targets of specs/targets.md §2-§5."""
    batch = make_batch(dtype=torch.float64)
    matched, gts, labels, valid = batch["matched_gt"], batch["gt_boxes"], batch["gt_labels"], batch["gt_valid"]
    cls_t, weights, box_t, quality_t, positive = LS.loss_targets_batched(
        batch["pred_boxes"], batch["centers"], matched, gts, labels, valid, 4, cls_loss, quality, torch.float32
    )
    ious = BT.iou_targets_batched(batch["pred_boxes"], matched, gts, valid)
    scores = None if cls_loss == "focal" else ious
    expected_cls, expected_weights = BT.class_targets_batched(matched, labels, 4, scores, valid, dtype=torch.float32)
    assert torch.equal(cls_t, expected_cls) and torch.equal(weights, expected_weights)
    assert torch.equal(box_t, BT.box_targets_batched(matched, gts, valid))
    expected_quality = {
        "centerness": lambda: BT.centerness_targets_batched(batch["centers"], matched, gts, valid),
        "iou": lambda: ious,
        "none": lambda: torch.ones(matched.shape, dtype=torch.float32),
    }[quality]()
    assert torch.equal(quality_t, expected_quality)
    assert torch.equal(positive, matched >= 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls_loss", DL.CLS_LOSSES)
@pytest.mark.parametrize("box_loss", ("giou", "iou"))  # the decoded-box losses; "l1"/"smooth_l1" read deltas (tests/parity)
def test_loss_step_backward_is_finite_in_float32_with_extreme_logits(device, cls_loss, box_loss):
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in make_batch().items()}
    batch["cls_logits"] = batch["cls_logits"].sign() * 50.0  # saturated
    batch["quality_logits"] = batch["quality_logits"].sign() * 50.0
    for key in ("cls_logits", "pred_boxes", "quality_logits"):
        batch[key] = batch[key].clone().requires_grad_(True)
    terms = LS.detection_losses_batched(**batch, cls_loss=cls_loss, box_loss=box_loss, quality="iou")
    assert all(value.dtype == torch.float32 for value in terms.values())
    sum(terms.values()).backward()
    for key in ("cls_logits", "pred_boxes", "quality_logits"):
        assert bool(torch.isfinite(batch[key].grad).all()), key
    assert all(bool(torch.isfinite(value)) for value in terms.values())


def test_zero_positives_give_zero_box_and_quality_terms_and_zero_box_gradient():
    batch = make_batch()
    batch["matched_gt"] = torch.where(batch["matched_gt"] >= 0, -1, batch["matched_gt"])
    batch["pred_boxes"].requires_grad_(True)
    terms = LS.detection_losses_batched(**batch)
    assert terms["loss_box"].item() == 0.0 and terms["loss_quality"].item() == 0.0
    assert terms["loss_cls"].item() > 0 and math.isfinite(terms["loss_cls"].item())
    sum(terms.values()).backward()
    torch.testing.assert_close(batch["pred_boxes"].grad, torch.zeros_like(batch["pred_boxes"]))


def test_iou_targets_are_detached_so_soft_cls_loss_sends_no_gradient_to_boxes():
    """specs/targets.md §5: the QFL/VFL soft target and the IoU weight are constants."""
    batch = make_batch(dtype=torch.float64)
    for key in ("cls_logits", "pred_boxes", "quality_logits"):
        batch[key].requires_grad_(True)
    assert not BT.iou_targets_batched(batch["pred_boxes"], batch["matched_gt"], batch["gt_boxes"], batch["gt_valid"]).requires_grad
    terms = LS.detection_losses_batched(**batch, cls_loss="qfl", quality="iou")
    for key in ("loss_cls", "loss_quality"):
        (grad,) = torch.autograd.grad(terms[key], batch["pred_boxes"], allow_unused=True, retain_graph=True)
        assert grad is None or bool((grad == 0).all()), key
    (grad,) = torch.autograd.grad(terms["loss_box"], batch["pred_boxes"])
    assert bool((grad != 0).any())


def test_dtypes_follow_the_logits():
    for dtype in (torch.float32, torch.float64):
        terms = LS.detection_losses_batched(**make_batch(dtype=dtype))
        assert {value.dtype for value in terms.values()} == {dtype}
    half = make_batch()
    half["cls_logits"] = half["cls_logits"].half()
    terms = LS.detection_losses_batched(**half)
    assert terms["loss_cls"].dtype == torch.float32  # half is up-cast (specs/conventions.md §7)


def test_padded_slot_match_and_bad_options_raise():
    batch = make_batch()
    batch["matched_gt"][1, 0] = 2  # slot 2 is padding
    with pytest.raises(ValueError, match="matched_gt"):
        LS.detection_losses_batched(**batch)
    with pytest.raises(ValueError, match="box_loss"):
        LS.detection_losses_batched(**make_batch(), box_loss="l1")
    with pytest.raises(ValueError, match="quality_logits"):
        LS.detection_losses_batched(**make_batch(), quality="none")
