"""Parity of detector/gfl.py with reference/gfl.py (specs/gfl.md).

float64: equal to 1e-10; float32: within 1e-5 of the float64 reference on the float32-rounded
inputs (relative, and absolute at the scale of the operands). Leading dims of the twin equal
the reference row by row. DFL gradients equal the closed form ``softmax - two-point target``
and pass ``gradcheck``. The DGQP module equals the functional form with its weights.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector import gfl as DG  # noqa: E402
from reference import gfl as RG  # noqa: E402
from tests.parity.helpers import DEVICES, to_numpy, to_torch  # noqa: E402

F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-5)


@st.composite
def gfl_inputs(draw, max_rows=12):
    """reg_max, points (A, 2), strides (A,), logits (A, 4 (R + 1)), targets (A, 4) in [0, R], boxes (A, 4)."""
    reg_max = draw(st.sampled_from([1, 2, 7, 16]))
    rows = draw(st.integers(0, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.0, 0.5, 3.0, 10.0]))
    logits = rng.normal(size=(rows, 4 * (reg_max + 1))) * scale
    if draw(st.booleans()):
        logits = np.round(logits)  # ties in the top-k
    targets = rng.uniform(0, reg_max, size=(rows, 4))
    special = rng.integers(0, 4, size=(rows, 4))
    targets = np.where(special == 0, np.floor(targets), targets)
    targets = np.where(special == 1, reg_max * (rng.uniform(size=(rows, 4)) < 0.5), targets)
    points = rng.uniform(0, 1333, size=(rows, 2))
    strides = rng.choice([8.0, 16.0, 32.0, 64.0, 128.0], size=rows)
    xs, ys = np.sort(rng.uniform(-200, 1500, size=(2, rows, 2)), axis=-1)
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    return reg_max, points, strides, logits, targets, boxes


def f32(array):
    return np.asarray(array, dtype=np.float32).astype(np.float64)


def assert_f32(actual, expected, scale=1.0):
    assert actual.dtype == torch.float32
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=F32["rtol"], atol=F32["atol"] * max(scale, 1.0))


@pytest.mark.parametrize("device", DEVICES)
@given(gfl_inputs())
def test_functions_match_reference(device, inputs):
    reg_max, points, strides, logits, targets, boxes = inputs
    topk = min(RG.DGQP_TOPK, reg_max + 1)
    rng = np.random.default_rng(len(logits))
    stats = RG.dgqp_statistics(logits, reg_max, topk)
    w1, b1, w2, b2 = rng.normal(size=(16, stats.shape[1])), rng.normal(size=16), rng.normal(size=(1, 16)), rng.normal(size=1)
    weights = rng.uniform(size=len(logits))
    losses = RG.distribution_focal_loss(logits, targets, reg_max)
    cases = [
        ("integral", (logits,), dict(reg_max=reg_max), 1.0),
        ("decode_distribution", (points, strides, logits), dict(reg_max=reg_max), 1333.0 + 128.0 * reg_max),
        ("distance_targets", (points, strides, boxes), dict(reg_max=reg_max), 1.0 + 1500.0 / 8),
        ("distribution_focal_loss", (logits, targets), dict(reg_max=reg_max), 1.0),
        ("weighted_dfl", (losses, weights), {}, float(losses.sum())),
        ("dgqp_statistics", (logits,), dict(reg_max=reg_max, topk=topk), 1.0),
        ("dgqp_statistics", (logits,), dict(reg_max=reg_max, topk=topk, add_mean=False), 1.0),
        ("dgqp_quality", (stats, w1, b1, w2, b2), {}, 1.0),
    ]
    for name, args, options, scale in cases:
        expected = getattr(RG, name)(*args, **options)
        actual = getattr(DG, name)(*(to_torch(a, device=device) for a in args), **options)
        assert actual.dtype == torch.float64 and actual.device.type == device, name
        np.testing.assert_allclose(to_numpy(actual), expected, **F64, err_msg=name)
        expected32 = getattr(RG, name)(*(f32(a) for a in args), **options)
        actual32 = getattr(DG, name)(*(to_torch(a, torch.float32, device) for a in args), **options)
        assert_f32(actual32, expected32, scale)


@given(gfl_inputs(), st.integers(1, 3))
def test_leading_dims_match_reference_row_by_row(inputs, batch):
    reg_max, points, strides, logits, targets, boxes = inputs
    stacked = np.stack([logits + b for b in range(batch)])  # (B, A, 4 (R + 1)): shifted copies
    stacked_targets = np.stack([targets] * batch)
    decoded = DG.decode_distribution(to_torch(points), to_torch(strides), to_torch(stacked), reg_max)
    loss = DG.distribution_focal_loss(to_torch(stacked), to_torch(stacked_targets), reg_max)
    stats = DG.dgqp_statistics(to_torch(stacked), reg_max, topk=1)
    dist = DG.distance_targets(to_torch(points), to_torch(strides), to_torch(np.stack([boxes] * batch)), reg_max)
    assert decoded.shape == (batch, len(logits), 4) and stats.shape == (batch, len(logits), 8)
    for b in range(batch):
        np.testing.assert_allclose(to_numpy(decoded[b]), RG.decode_distribution(points, strides, stacked[b], reg_max), **F64)
        np.testing.assert_allclose(to_numpy(loss[b]), RG.distribution_focal_loss(stacked[b], targets, reg_max), **F64)
        np.testing.assert_allclose(to_numpy(stats[b]), RG.dgqp_statistics(stacked[b], reg_max, topk=1), **F64)
        np.testing.assert_allclose(to_numpy(dist[b]), RG.distance_targets(points, strides, boxes, reg_max), **F64)
    weights = np.ones((batch, len(logits)))
    expected = sum(RG.weighted_dfl(RG.distribution_focal_loss(stacked[b], targets, reg_max), weights[b]) for b in range(batch))
    np.testing.assert_allclose(float(DG.weighted_dfl(loss, to_torch(weights))), expected, **F64)


@pytest.mark.parametrize("device", DEVICES)
@given(gfl_inputs(max_rows=6))
def test_dfl_gradient_is_softmax_minus_the_two_point_target(device, inputs):
    reg_max, _, _, logits, targets, _ = inputs
    x = to_torch(logits, device=device).requires_grad_(True)
    upstream = torch.rand(len(logits), 4, dtype=torch.float64, device=device)
    (DG.distribution_focal_loss(x, to_torch(targets, device=device), reg_max) * upstream).sum().backward()
    # closed form, in NumPy
    side = logits.reshape(len(logits), 4, reg_max + 1)
    prob = np.exp(side - side.max(axis=-1, keepdims=True))
    prob /= prob.sum(axis=-1, keepdims=True)
    left = np.minimum(np.floor(targets), reg_max - 1).astype(int)
    target = np.zeros_like(prob)
    np.put_along_axis(target, left[..., None], ((left + 1) - targets)[..., None], axis=-1)
    np.put_along_axis(target, left[..., None] + 1, (targets - left)[..., None], axis=-1)
    expected = ((prob - target) * to_numpy(upstream)[..., None]).reshape(logits.shape)
    np.testing.assert_allclose(to_numpy(x.grad), expected, rtol=1e-10, atol=1e-12)


def test_dfl_gradcheck_and_float32_gradients_are_finite():
    rng = np.random.default_rng(0)
    logits = to_torch(rng.normal(size=(3, 4 * 8)) * 2).requires_grad_(True)
    targets = to_torch([[0.0, 0.5, 6.9, 7.0], [1.0, 2.25, 3.5, 6.0], [0.1, 0.9, 4.0, 5.5]])
    assert torch.autograd.gradcheck(lambda x: DG.distribution_focal_loss(x, targets, 7), (logits,))
    # the DGQP path is differentiable w.r.t. the distribution logits too
    assert torch.autograd.gradcheck(lambda x: DG.dgqp_statistics(x, 7, topk=3), (logits,))
    big = torch.tensor(rng.normal(size=(5, 68)) * 1e3, dtype=torch.float32, requires_grad=True)
    DG.distribution_focal_loss(big, torch.full((5, 4), 15.9), 16).sum().backward()
    assert torch.isfinite(big.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_distribution_quality_module_equals_the_functional_form(device):
    torch.manual_seed(0)
    module = DG.DistributionQuality().double().to(device)
    assert (module.fc1.in_features, module.fc1.out_features, module.fc2.out_features) == (20, 64, 1)
    assert float(module.fc1.bias.detach().abs().sum()) == 0 and float(module.fc2.weight.detach().std()) < 0.05
    with torch.no_grad():  # sharper weights than the init, so the comparison means something
        for layer in (module.fc1, module.fc2):
            layer.weight.normal_(std=1.0)
            layer.bias.normal_(std=1.0)
    logits = torch.randn(2, 7, 68, dtype=torch.float64, device=device) * 3
    quality = module(logits)
    assert quality.shape == (2, 7)
    weights = [to_numpy(p) for p in (module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias)]
    for b in range(2):
        expected = RG.dgqp_quality(RG.dgqp_statistics(to_numpy(logits[b])), *weights)
        np.testing.assert_allclose(to_numpy(quality[b]), expected, **F64)
    quality.sum().backward()
    assert module.fc1.weight.grad is not None
    no_mean = DG.DistributionQuality(reg_max=7, topk=2, hidden=8, add_mean=False)
    assert no_mean.fc1.in_features == 8 and no_mean(torch.zeros(3, 32)).shape == (3,)
    with pytest.raises(ValueError, match="logits"):
        no_mean(torch.zeros(3, 68))
    for bad in (dict(hidden=0), dict(topk=18), dict(reg_max=0), dict(add_mean="yes"), dict(hidden=True)):
        with pytest.raises(ValueError):
            DG.DistributionQuality(**bad)


def test_half_logits_are_computed_in_float32():
    logits = torch.randn(4, 68).half()
    assert DG.integral(logits).dtype == torch.float32
    loss = DG.distribution_focal_loss(logits, torch.full((4, 4), 3.3), 16)
    assert loss.dtype == torch.float32
    np.testing.assert_allclose(to_numpy(loss), RG.distribution_focal_loss(to_numpy(logits), np.full((4, 4), 3.3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: DG.integral(torch.zeros(1, 64)), "logits"),
        (lambda: DG.integral(torch.zeros(68)), "logits"),
        (lambda: DG.integral(torch.zeros(1, 68), reg_max=True), "reg_max"),
        (lambda: DG.decode_distribution(torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 68)), "strides: row 0"),
        (lambda: DG.decode_distribution(torch.zeros(3, 2), torch.ones(3), torch.zeros(2, 68)), "points"),
        (lambda: DG.distance_targets(torch.zeros(1, 2), torch.ones(1), torch.tensor([[1.0, 0, 0, 1]])), "target_boxes: row 0"),
        (lambda: DG.distance_targets(torch.zeros(1, 2), torch.ones(1), torch.tensor([[0.0, 0, 1, 1]]), eps=16), "eps"),
        (lambda: DG.distribution_focal_loss(torch.zeros(2, 68), torch.tensor([[0.0] * 4, [0, 0, 16.01, 0]])), "targets: row 1 side 2"),
        (lambda: DG.distribution_focal_loss(torch.zeros(2, 3, 68), torch.full((2, 3, 4), -1.0)), r"targets: row \(0, 0\) side 0"),
        (lambda: DG.distribution_focal_loss(torch.zeros(1, 68), torch.zeros(2, 4)), "targets"),
        (lambda: DG.weighted_dfl(torch.zeros(2, 4), torch.tensor([1.0, -1.0])), "weights: row 1"),
        (lambda: DG.weighted_dfl(torch.zeros(2, 4), torch.ones(2), loss_weight=-1), "loss_weight"),
        (lambda: DG.dgqp_statistics(torch.zeros(1, 68), topk=18), "topk"),
        (lambda: DG.dgqp_statistics(torch.zeros(1, 68), add_mean=1), "add_mean"),
        (lambda: DG.dgqp_quality(torch.zeros(1, 20), torch.zeros(64, 19), torch.zeros(64), torch.zeros(1, 64), torch.zeros(1)), "w1"),
        (lambda: DG.dgqp_quality(torch.zeros(1, 20), torch.zeros(64, 20), torch.zeros(64), torch.zeros(2, 64), torch.zeros(1)), "w2"),
        (lambda: DG.integral(torch.zeros(1, 68, device="meta")), "logits"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_empty_inputs():
    empty = torch.zeros(0, 68)
    assert DG.integral(empty).shape == (0, 4)
    assert DG.decode_distribution(torch.zeros(0, 2), torch.zeros(0), empty).shape == (0, 4)
    assert DG.distance_targets(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, 4)).shape == (0, 4)
    assert DG.distribution_focal_loss(empty, torch.zeros(0, 4)).shape == (0, 4)
    assert DG.dgqp_statistics(empty).shape == (0, 20)
    assert float(DG.weighted_dfl(torch.zeros(0, 4), torch.zeros(0))) == 0.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tensors_on_another_device_raise():
    logits = torch.zeros(1, 68, device="cuda")
    with pytest.raises(ValueError, match="targets"):
        DG.distribution_focal_loss(logits, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="points"):
        DG.decode_distribution(torch.zeros(1, 2), torch.ones(1, device="cuda"), logits)
    # array-likes are created on the logits' device
    assert DG.distribution_focal_loss(logits, [[0.0, 1.0, 2.0, 3.0]]).device.type == "cuda"
