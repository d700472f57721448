"""Parity of detector/vfnet.py with reference/vfnet.py (specs/vfnet.md).

float64: equal to 1e-12; float32: within 1e-5 of the float64 reference. The batched IoU and
VFL targets equal the per-image reference image by image; ``gradient_mul`` scales the
gradient of the offsets with respect to the distances and nothing else.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector import vfnet as DV  # noqa: E402
from reference import vfnet as RV  # noqa: E402
from reference.conventions import BACKGROUND, IGNORE  # noqa: E402
from tests.parity.helpers import DEVICES, pad_gt_boxes, to_numpy, to_torch  # noqa: E402

F64 = dict(rtol=1e-12, atol=1e-12)


@st.composite
def distances_and_strides(draw, max_rows=12):
    rows = draw(st.integers(0, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    distances = rng.uniform(0, 600, size=(rows, 4)) * (rng.uniform(size=(rows, 4)) > 0.1)
    strides = rng.choice([8.0, 16.0, 32.0, 64.0, 128.0], size=rows)
    return distances, strides


@st.composite
def scenes(draw, max_images=3, max_anchors=10, max_gts=4):
    """B images: boxes (A, 4), matched_gt (A,), gt_boxes (G, 4), gt_labels (G,)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, max_images))
    anchors = draw(st.integers(0, max_anchors))
    images = []
    for _ in range(batch):
        gts = int(rng.integers(0, max_gts + 1))
        xy = rng.uniform(0, 100, size=(gts + anchors, 2))
        wh = rng.uniform(0, 50, size=(gts + anchors, 2)) * (rng.uniform(size=(gts + anchors, 1)) > 0.1)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        gt_boxes, pred = boxes[:gts], boxes[gts:]
        choices = [BACKGROUND, IGNORE] + list(range(gts))
        matched = rng.choice(choices, size=anchors).astype(np.int64)
        images.append((pred, matched, gt_boxes, rng.integers(0, 3, size=gts)))
    return images


@pytest.mark.parametrize("device", DEVICES)
@given(distances_and_strides())
def test_star_functions_match_reference(device, inputs):
    distances, strides = inputs
    for name in ("star_points", "star_dcn_offsets"):
        expected = getattr(RV, name)(distances, strides)
        got = getattr(DV, name)(to_torch(distances, device=device), to_torch(strides, device=device))
        np.testing.assert_allclose(to_numpy(got), expected, **F64)
        got32 = getattr(DV, name)(to_torch(distances, torch.float32, device), to_torch(strides, torch.float32, device))
        assert got32.dtype == torch.float32
        np.testing.assert_allclose(to_numpy(got32), expected, rtol=1e-5, atol=1e-5)
    # one stride for every row, and the unchecked form with leading dims
    if len(distances):
        np.testing.assert_allclose(to_numpy(DV.star_dcn_offsets(to_torch(distances), 16.0)),
                                   RV.star_dcn_offsets(distances, 16.0), **F64)
        maps = to_torch(distances).reshape(1, 1, -1, 4)
        got = DV.star_dcn_offsets_unchecked(maps, to_torch(strides).reshape(1, 1, -1))
        np.testing.assert_allclose(to_numpy(got).reshape(-1, 18), RV.star_dcn_offsets(distances, strides), **F64)


@pytest.mark.parametrize("gradient_mul", [0.0, 0.1, 1.0])
def test_gradient_mul_scales_the_gradient_only(gradient_mul):
    generator = torch.Generator().manual_seed(0)
    distances = (torch.rand(5, 4, generator=generator, dtype=torch.float64) * 100).requires_grad_()
    weights = torch.randn(5, 18, generator=generator, dtype=torch.float64)
    offsets = DV.star_dcn_offsets(distances, 8.0, gradient_mul=gradient_mul)
    np.testing.assert_allclose(to_numpy(offsets), RV.star_dcn_offsets(to_numpy(distances), 8.0), **F64)
    (grad,) = torch.autograd.grad((offsets * weights).sum(), distances)
    (full,) = torch.autograd.grad((DV.star_dcn_offsets(distances, 8.0, gradient_mul=1.0) * weights).sum(), distances)
    torch.testing.assert_close(grad, gradient_mul * full, rtol=1e-12, atol=1e-12)
    assert bool((full != 0).all())


@pytest.mark.parametrize("device", DEVICES)
@given(scenes())
def test_targets_match_reference_per_image_and_batched(device, images):
    for pred, matched, gt_boxes, gt_labels in images:
        expected = RV.vfnet_iou_targets(pred, matched, gt_boxes)
        got = DV.vfnet_iou_targets(to_torch(pred, device=device), to_torch(matched, device=device),
                                   to_torch(gt_boxes, device=device))
        np.testing.assert_allclose(to_numpy(got), expected, **F64)
        targets, weights = RV.varifocal_targets(pred, matched, gt_boxes, gt_labels, 3)
        got_targets, got_weights = DV.varifocal_targets(
            to_torch(pred, device=device), to_torch(matched, device=device), to_torch(gt_boxes, device=device),
            to_torch(gt_labels, device=device), 3)
        np.testing.assert_allclose(to_numpy(got_targets), targets, **F64)
        np.testing.assert_array_equal(to_numpy(got_weights), weights)
    gt_padded, gt_valid = pad_gt_boxes([g for _, _, g, _ in images], device=device)
    g_max = gt_padded.shape[1]
    labels = torch.zeros(len(images), g_max, dtype=torch.int64, device=device)
    for b, (_, _, _, gt_labels) in enumerate(images):
        labels[b, :len(gt_labels)] = to_torch(gt_labels, device=device)
    pred = to_torch(np.stack([p for p, _, _, _ in images]), device=device)
    matched = to_torch(np.stack([m for _, m, _, _ in images]), device=device)
    batched = DV.vfnet_iou_targets_batched(pred, matched, gt_padded, gt_valid)
    batched_targets, _ = DV.varifocal_targets_batched(pred, matched, gt_padded, labels, 3, gt_valid)
    for b, (p, m, g, gl) in enumerate(images):
        np.testing.assert_allclose(to_numpy(batched[b]), RV.vfnet_iou_targets(p, m, g), **F64)
        np.testing.assert_allclose(to_numpy(batched_targets[b]), RV.varifocal_targets(p, m, g, gl, 3)[0], **F64)
    assert not batched.requires_grad
