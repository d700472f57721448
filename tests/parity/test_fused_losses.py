"""Parity of detector/fused_losses.py (specs/losses.md §7.1) with the elementwise definition.

The fused sum ``classification_loss_sum`` equals ``(w[..., None] * loss(logits, y)).sum()``
of ``detector/losses.py`` (float64 to 1e-9 relative, gradients too: autograd of the dense
definition) and of ``reference/losses.py`` (NumPy, float64), for focal, QFL and VFL, on
small batches with sparse positives, IGNORE rows, fractional weights and logits up to
+-60; ``gradcheck`` of the closed-form gradient; chunking, empty and degenerate cases;
float32 within float32 rounding.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from detector import fused_losses as FL  # noqa: E402
from detector import losses as DL  # noqa: E402
from reference import losses as RL  # noqa: E402
from tests.parity.helpers import DEVICES, to_numpy  # noqa: E402

KINDS = ("focal", "qfl", "vfl")
F64 = dict(rtol=1e-9, atol=1e-12)
DENSE = {"focal": DL.sigmoid_focal_loss, "qfl": DL.quality_focal_loss, "vfl": DL.varifocal_loss}
REFERENCE = {"focal": RL.sigmoid_focal_loss, "qfl": RL.quality_focal_loss, "vfl": RL.varifocal_loss}
SPECIAL_LOGITS = np.array([-60.0, -30.0, -17.0, -1e-3, 0.0, 1e-3, 17.0, 30.0, 60.0])


@st.composite
def fused_batches(draw, max_batch=3, max_anchors=40, max_classes=6):
    """Dict of NumPy arrays: logits (B, A, K), weights (B, A), pos_index, pos_class, pos_target
    (at most one positive class per anchor), and the kind. Values come from a drawn seed."""
    batch = draw(st.integers(1, max_batch))
    anchors = draw(st.integers(1, max_anchors))
    classes = draw(st.integers(1, max_classes))
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.5, 3.0, 10.0, 30.0]))
    logits = rng.normal(0.0, scale, size=(batch, anchors, classes))
    special = rng.random(logits.shape) < draw(st.sampled_from([0.0, 0.1, 0.5]))
    logits[special] = rng.choice(SPECIAL_LOGITS, size=int(special.sum()))
    weight_mode = draw(st.sampled_from(["ones", "binary", "fractional"]))
    if weight_mode == "ones":
        weights = np.ones((batch, anchors))
    elif weight_mode == "binary":  # IGNORE rows weigh 0
        weights = (rng.random((batch, anchors)) > 0.3).astype(np.float64)
    else:
        weights = rng.random((batch, anchors)) * (rng.random((batch, anchors)) > 0.2)
    count = draw(st.integers(0, batch * anchors))
    pos_index = rng.permutation(batch * anchors)[:count]
    pos_class = rng.integers(0, classes, size=count)
    target_mode = draw(st.sampled_from(["hard", "soft", "soft_with_ends"]))
    if target_mode == "hard":
        pos_target = np.ones(count)
    else:
        pos_target = rng.random(count)
        if target_mode == "soft_with_ends":  # exactly 0 (a VFL negative) and exactly 1
            pos_target[rng.random(count) < 0.3] = 0.0
            pos_target[rng.random(count) < 0.3] = 1.0
    return dict(kind=kind, logits=logits, weights=weights, pos_index=pos_index, pos_class=pos_class,
                pos_target=pos_target)


def dense_targets(case):
    batch, anchors, classes = case["logits"].shape
    targets = np.zeros((batch * anchors, classes))
    targets[case["pos_index"], case["pos_class"]] = case["pos_target"]
    return targets.reshape(batch, anchors, classes)


def torch_inputs(case, dtype=torch.float64, device="cpu"):
    return (
        torch.as_tensor(case["logits"], dtype=dtype, device=device),
        torch.as_tensor(case["weights"], dtype=dtype, device=device),
        torch.as_tensor(case["pos_index"], dtype=torch.int64, device=device),
        torch.as_tensor(case["pos_class"], dtype=torch.int64, device=device),
        torch.as_tensor(case["pos_target"], dtype=dtype, device=device),
    )


def fused(case, dtype=torch.float64, device="cpu", **options):
    """(sum, gradient w.r.t. the logits) of the fused function."""
    logits, weights, pos_index, pos_class, pos_target = torch_inputs(case, dtype, device)
    logits.requires_grad_(True)
    value = FL.classification_loss_sum(logits, weights, pos_index, pos_class, pos_target, case["kind"], **options)
    (grad,) = torch.autograd.grad(value, logits)
    return value.detach(), grad


def dense(case, dtype=torch.float64, device="cpu"):
    """(sum, gradient) of the elementwise definition of detector/losses.py, by autograd."""
    logits, weights, *_ = torch_inputs(case, dtype, device)
    logits.requires_grad_(True)
    targets = torch.as_tensor(dense_targets(case), dtype=dtype, device=device)
    value = (weights[..., None] * DENSE[case["kind"]](logits, targets)).sum()
    (grad,) = torch.autograd.grad(value, logits)
    return value.detach(), grad


@pytest.mark.parametrize("device", DEVICES)
@given(fused_batches())
@settings(max_examples=80)
def test_fused_sum_and_gradient_equal_the_elementwise_definition(device, case):
    value, grad = fused(case, device=device)
    expected_value, expected_grad = dense(case, device=device)
    assert value.dtype == torch.float64 and value.ndim == 0 and grad.shape == expected_grad.shape
    np.testing.assert_allclose(to_numpy(value), to_numpy(expected_value), **F64)
    np.testing.assert_allclose(to_numpy(grad), to_numpy(expected_grad), **F64)
    reference = (case["weights"][..., None] * REFERENCE[case["kind"]](case["logits"], dense_targets(case))).sum()
    np.testing.assert_allclose(to_numpy(value), reference, **F64)


@pytest.mark.parametrize("device", DEVICES)
@given(fused_batches())
@settings(max_examples=40)
def test_float32_agrees_within_float32_rounding(device, case):
    value, grad = fused(case, torch.float32, device)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    assert bool(torch.isfinite(grad).all())
    expected_value, expected_grad = dense(case)
    np.testing.assert_allclose(to_numpy(value), to_numpy(expected_value), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(grad), to_numpy(expected_grad), rtol=1e-4, atol=1e-5)


@given(fused_batches(max_anchors=20), st.sampled_from([1, 2, 5, 7, 64, 10**6]))
@settings(max_examples=40)
def test_chunking_does_not_change_the_result(case, chunk_elements):
    value, grad = fused(case, chunk_elements=chunk_elements)
    expected_value, expected_grad = fused(case)
    np.testing.assert_allclose(to_numpy(value), to_numpy(expected_value), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(to_numpy(grad), to_numpy(expected_grad), rtol=1e-13, atol=1e-300)


def small_case(kind, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(2, 5, 3))
    targets = np.array([1.0, 0.7, 0.0, 0.35]) if kind != "focal" else np.ones(4)
    return dict(kind=kind, logits=logits, weights=np.array([[1, 0, 0.5, 1, 1], [1, 1, 0.25, 0, 1.0]]),
                pos_index=np.array([0, 3, 6, 9]), pos_class=np.array([2, 0, 1, 1]), pos_target=targets)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [{}, {"chunk_elements": 4}], ids=["one_chunk", "chunks"])
def test_gradcheck(kind, options):
    logits, weights, pos_index, pos_class, pos_target = torch_inputs(small_case(kind))
    logits.requires_grad_(True)

    def function(x):
        return FL.classification_loss_sum(x, weights, pos_index, pos_class, pos_target, kind, **options)

    assert torch.autograd.gradcheck(function, (logits,))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [{"alpha": None}, {"alpha": 0.5, "gamma": 1.5}, {"gamma": 0.0}, {"beta": 1.0},
                                     {"beta": 0.0}, {"iou_weighted": False}, {"alpha": 0.25, "gamma": 3.0}])
def test_other_loss_constants_equal_the_elementwise_definition(kind, options):
    if kind == "qfl":
        options = {key: value for key, value in options.items() if key == "beta"}
    elif kind == "focal":
        options = {key: value for key, value in options.items() if key in ("alpha", "gamma")}
    else:
        options = {key: value for key, value in options.items() if key != "beta" and value is not None}
    case = small_case(kind, seed=1)
    value, grad = fused(case, **options)
    logits, weights, *_ = torch_inputs(case)
    logits.requires_grad_(True)
    targets = torch.as_tensor(dense_targets(case))
    expected = (weights[..., None] * DENSE[kind](logits, targets, **options)).sum()
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_no_positives_and_all_weights_zero(device, kind):
    case = small_case(kind)
    none = dict(case, pos_index=np.zeros(0, dtype=np.int64), pos_class=np.zeros(0, dtype=np.int64),
                pos_target=np.zeros(0))
    value, grad = fused(none, device=device)
    expected_value, expected_grad = dense(none, device=device)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)
    zero = dict(case, weights=np.zeros_like(case["weights"]))
    value, grad = fused(zero, device=device)
    assert float(value) == 0.0 and not bool(grad.any())
    empty = dict(case, logits=np.zeros((2, 0, 3)), weights=np.zeros((2, 0)), pos_index=np.zeros(0, dtype=np.int64),
                 pos_class=np.zeros(0, dtype=np.int64), pos_target=np.zeros(0))
    value, grad = fused(empty, device=device)
    assert float(value) == 0.0 and grad.shape == (2, 0, 3)


GRID = np.concatenate([-np.geomspace(1e-8, 740.0, 60), [0.0], np.geomspace(1e-8, 700.0, 60)])


@pytest.mark.parametrize("kind", ["qfl", "vfl"])
def test_negatives_are_accurate_per_element_for_every_finite_logit(kind):
    """The target-0 term without log1p (specs/losses.md §7.1) keeps a few-ulp relative
    accuracy element by element, values and gradients, down to where p^2 * softplus
    underflows (x < -248). (Autograd of torch's BCE-with-logits is only accurate in absolute
    terms there: its BCE(x, 0) rounds to 0 below x = -37.)"""
    expected = REFERENCE[kind](GRID, np.zeros_like(GRID))  # log1p-based NumPy reference
    ones, no = torch.ones(1, 1, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    values = [float(FL.classification_loss_sum(torch.tensor([[[x]]], dtype=torch.float64), ones, no, no,
                                               torch.zeros(0, dtype=torch.float64), kind)) for x in GRID]
    np.testing.assert_allclose(values, expected, rtol=1e-13, atol=0)
    case = dict(kind=kind, logits=GRID[None, None], weights=np.ones((1, 1)), pos_index=np.zeros(0, dtype=np.int64),
                pos_class=np.zeros(0, dtype=np.int64), pos_target=np.zeros(0))
    _, grad = fused(case)
    # the closed form c p^2 (2 (1 - p) sp + p) in NumPy with log1p: p, 1 - p and sp to an ulp
    e = np.exp(-np.abs(GRID))
    p = np.where(GRID >= 0, 1.0, e) / (1.0 + e)
    not_p = np.where(GRID >= 0, e, 1.0) / (1.0 + e)
    softplus = np.maximum(GRID, 0.0) + np.log1p(e)
    c = 1.0 if kind == "qfl" else RL.VFL_ALPHA
    np.testing.assert_allclose(to_numpy(grad)[0, 0], c * p**2 * (2.0 * not_p * softplus + p), rtol=1e-13, atol=0)


def test_worked_examples_of_the_spec():
    """specs/losses.md §2-§4 at x = 0 / x = ln 3, one positive class among K = 2."""
    zeros = torch.zeros(1, 1, 2)
    ones, first, second = torch.ones(1, 1, dtype=torch.float64), torch.tensor([0]), torch.tensor([1])
    zeros = zeros.double()
    focal = FL.classification_loss_sum(zeros, ones, first, second, torch.tensor([1.0], dtype=torch.float64), "focal")
    assert float(focal) == pytest.approx((0.0625 + 0.1875) * np.log(2), rel=1e-12)
    x = torch.full((1, 1, 2), np.log(3.0), dtype=torch.float64)
    qfl = FL.classification_loss_sum(x, ones, first, second, torch.tensor([0.25], dtype=torch.float64), "qfl")
    qfl_negative = 0.75**2 * np.log(4.0)
    assert float(qfl) == pytest.approx(0.25 * (np.log(4) - 0.25 * np.log(3)) + qfl_negative, rel=1e-12)
    vfl = FL.classification_loss_sum(x, ones, first, second, torch.tensor([0.25], dtype=torch.float64), "vfl")
    assert float(vfl) == pytest.approx(0.25 * (np.log(4) - 0.25 * np.log(3)) + 0.75 * 0.75**2 * np.log(4), rel=1e-12)
    vfl_zero = FL.classification_loss_sum(x, ones, first, second, torch.tensor([0.0], dtype=torch.float64), "vfl")
    assert float(vfl_zero) == pytest.approx(2 * 0.75 * 0.75**2 * np.log(4), rel=1e-12)  # target 0: a negative


def test_backward_scales_by_grad_output_and_can_run_twice():
    case = small_case("qfl")
    logits, weights, pos_index, pos_class, pos_target = torch_inputs(case)
    logits.requires_grad_(True)
    value = FL.classification_loss_sum(logits, weights, pos_index, pos_class, pos_target, "qfl")
    (once,) = torch.autograd.grad(value, logits, retain_graph=True)
    (scaled,) = torch.autograd.grad(value * 3.0, logits, retain_graph=True)
    (again,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(scaled, 3.0 * once, rtol=1e-15, atol=0)
    assert torch.equal(again, once)


def test_no_gradient_work_without_grad():
    case = small_case("vfl")
    logits, weights, pos_index, pos_class, pos_target = torch_inputs(case)
    expected = FL.classification_loss_sum(logits.requires_grad_(True), weights, pos_index, pos_class, pos_target, "vfl")
    assert expected.requires_grad
    with torch.no_grad():
        value = FL.classification_loss_sum(logits, weights, pos_index, pos_class, pos_target, "vfl")
    assert not value.requires_grad and value.grad_fn is None
    plain = FL.classification_loss_sum(logits.detach(), weights, pos_index, pos_class, pos_target, "vfl")
    assert plain.grad_fn is None
    torch.testing.assert_close(value, expected.detach(), rtol=0, atol=0)
    torch.testing.assert_close(plain, expected.detach(), rtol=0, atol=0)


def test_invalid_arguments_are_refused():
    logits, weights, pos_index, pos_class, pos_target = torch_inputs(small_case("focal"))
    with pytest.raises(ValueError, match="kind"):
        FL.classification_loss_sum(logits, weights, pos_index, pos_class, pos_target, "bce")
    with pytest.raises(ValueError, match="logits"):
        FL.classification_loss_sum(logits[0], weights, pos_index, pos_class, pos_target)
    with pytest.raises(ValueError, match="weights"):
        FL.classification_loss_sum(logits, weights[:, :2], pos_index, pos_class, pos_target)
    with pytest.raises(ValueError, match="pos_index, pos_class, pos_target"):
        FL.classification_loss_sum(logits, weights, pos_index, pos_class[:1], pos_target)
    with pytest.raises(ValueError, match="gamma"):
        FL.classification_loss_sum(logits, weights, pos_index, pos_class, pos_target, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        FL.classification_loss_sum(logits, weights, pos_index, pos_class, pos_target, alpha=1.5)
    with pytest.raises(ValueError, match="chunk_elements"):
        FL.classification_loss_sum(logits, weights, pos_index, pos_class, pos_target, chunk_elements=0)
