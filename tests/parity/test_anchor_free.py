"""Parity of detector/assign/anchor_free.py with the reference (specs/anchor_free.md).

float64: identical matched_gt and gt_threshold, matched_metric to 1e-12. float32: indices
agree except at points whose reference decision is within a 1e-5 relative margin of a
boundary (inside test, range bound, centre region, filter threshold, area tie); such
points are counted and bounded. Batched == per-image reference; the pair budget
``max_elements`` never changes the result.
"""
import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.assign import anchor_free as DAF  # noqa: E402
from reference.assign import anchor_free as RAF  # noqa: E402
from reference.conventions import FCOS_REGRESS_RANGES  # noqa: E402
from tests.parity.helpers import DEVICES, assert_same_assignment, pad_gt_boxes, to_numpy, to_torch  # noqa: E402
from tests.strategies import STRIDES, gt_boxes, point_scenes  # noqa: E402

NAMES = ["all_inside", "pseudo_iou", "scaled_box", "centerness", "fcos"]


@st.composite
def rule_options(draw, name):
    if name == "pseudo_iou":
        return {"threshold": draw(st.sampled_from([0.0, 0.3, 0.4, 0.5, 0.6, 1 / 3])), "inclusive": draw(st.booleans())}
    if name == "centerness":
        return {"threshold": draw(st.sampled_from([0.0, 0.25, 0.35, 0.5])), "inclusive": draw(st.booleans())}
    if name == "scaled_box":
        return {"scale": draw(st.sampled_from([0.3, 0.5, 0.6, 1.0, 2.0]))}
    if name == "fcos":
        return {"center_sampling": draw(st.booleans()), "center_radius": draw(st.sampled_from([1.0, 1.5, 2.5]))}
    return {}


def level_kwargs(strides):
    first = STRIDES.index(strides[0])
    return {"strides": strides, "regress_ranges": FCOS_REGRESS_RANGES[first : first + len(strides)]}


def reference(name, scene, boxes=None, **options):
    boxes = scene["gt_boxes"] if boxes is None else boxes
    return getattr(RAF, f"assign_{name}")(scene["points"], scene["num_points_per_level"], boxes, **level_kwargs(scene["strides"]), **options)


def detector(name, scene, boxes=None, dtype=torch.float64, device="cpu", **options):
    boxes = scene["gt_boxes"] if boxes is None else boxes
    return getattr(DAF, f"assign_{name}")(
        to_torch(scene["points"], dtype, device), scene["num_points_per_level"], to_torch(boxes, dtype, device),
        **level_kwargs(scene["strides"]), **options,
    )


# --------------------------------------------------------------------------------------
# float64: identical


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25)
@given(data=st.data())
def test_float64_single_image_identical(device, name, data):
    scene = data.draw(point_scenes(max_side=1333, max_boxes=12))
    options = data.draw(rule_options(name))
    expected = reference(name, scene, **options)
    actual = detector(name, scene, device=device, **options)
    assert actual.matched_gt.device.type == device and actual.matched_metric.dtype == torch.float64
    assert_same_assignment(expected, actual, metric_atol=1e-12)


def crowded_boxes(image_size, count, seed):
    """(count, 4) boxes from a seed: tiny, huge, slender, zero-area, border-touching,
    grid-aligned, duplicated and nested ones (drawn with NumPy: hypothesis would draw
    300 boxes one value at a time)."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    kind = rng.integers(0, 8, count)
    size = np.exp(rng.uniform(np.log(0.5), np.log(max(height, width)), (count, 2)))
    size[kind == 1] = rng.uniform(0, 8, (int((kind == 1).sum()), 2))  # tiny
    size[kind == 2, 0] = size[kind == 2, 1] * 8  # slender
    size[kind == 3, rng.integers(0, 2)] = 0.0  # zero-area
    size = np.minimum(size, [width, height])
    corner = rng.uniform(0, 1, (count, 2)) * ([width, height] - size)
    corner[kind == 4] = 0.0  # border-touching
    boxes = np.concatenate([corner, corner + size], axis=1)
    grid = kind == 5
    boxes[grid] = np.round(boxes[grid] / 8) * 8
    for i in np.flatnonzero(kind == 6)[1:]:  # duplicate an earlier box
        boxes[i] = boxes[rng.integers(0, i)]
    for i in np.flatnonzero(kind == 7)[1:]:  # nested in an earlier box
        outer = boxes[rng.integers(0, i)]
        shrink = rng.uniform(0, 0.45)
        boxes[i] = outer + shrink * np.tile(outer[2:] - outer[:2], 2) * [1, 1, -1, -1]
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    return boxes


@settings(max_examples=4)
@given(point_scenes(max_side=1333, max_boxes=0), st.integers(150, 300), st.integers(0, 2**32 - 1))
def test_float64_crowded_scenes_identical(scene, count, seed):
    scene = dict(scene, gt_boxes=crowded_boxes(scene["image_size"], count, seed))
    for name in NAMES:
        assert_same_assignment(reference(name, scene), detector(name, scene), metric_atol=1e-12)


@settings(max_examples=20)
@given(data=st.data())
def test_points_not_on_a_grid(data):
    """Shuffled points within each level (no grid layout): the y-sorted window path."""
    scene = data.draw(point_scenes(max_side=400, max_boxes=12))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    offsets = np.cumsum([0] + scene["num_points_per_level"])
    order = np.concatenate([start + rng.permutation(stop - start) for start, stop in zip(offsets[:-1], offsets[1:])])
    shuffled = dict(scene, points=scene["points"][order], point_strides=scene["point_strides"][order])
    name = data.draw(st.sampled_from(NAMES))
    options = data.draw(rule_options(name))
    expected = reference(name, shuffled, **options)
    assert_same_assignment(expected, detector(name, shuffled, **options), metric_atol=1e-12)
    # and it is the grid result permuted
    grid = detector(name, scene, **options)
    np.testing.assert_array_equal(expected.matched_gt, to_numpy(grid.matched_gt)[order])


@settings(max_examples=20)
@given(data=st.data())
def test_max_elements_never_changes_the_result(data):
    scene = data.draw(point_scenes(max_side=400, max_boxes=20))
    name = data.draw(st.sampled_from(NAMES))
    boxes, valid = pad_gt_boxes([scene["gt_boxes"], scene["gt_boxes"][::-1]])
    batched = getattr(DAF, f"assign_{name}_batched")
    points = to_torch(scene["points"])
    kwargs = level_kwargs(scene["strides"])
    full = batched(points, scene["num_points_per_level"], boxes, valid, **kwargs)
    for budget in (1, 7, data.draw(st.integers(2, 5000))):
        small = batched(points, scene["num_points_per_level"], boxes, valid, max_elements=budget, **kwargs)
        torch.testing.assert_close(small.matched_gt, full.matched_gt, rtol=0, atol=0)
        torch.testing.assert_close(small.matched_metric, full.matched_metric, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# batched == per-image reference


@st.composite
def batches(draw, max_side=640):
    scene = draw(point_scenes(max_side=max_side, max_boxes=0))
    size = scene["image_size"]
    count = draw(st.integers(1, 4))
    gts = [draw(st.one_of(st.just(np.zeros((0, 4))), gt_boxes(size, 0, 6), gt_boxes(size, 20, 40))) for _ in range(count)]
    return scene, gts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12)
@given(data=st.data())
def test_batched_equals_reference_per_image(device, name, data):
    scene, gts = data.draw(batches())
    options = data.draw(rule_options(name))
    boxes, valid = pad_gt_boxes(gts, device=device)
    boxes[~valid] = float("nan")  # padding content is ignored
    result = getattr(DAF, f"assign_{name}_batched")(
        to_torch(scene["points"], device=device), scene["num_points_per_level"], boxes, valid, **level_kwargs(scene["strides"]), **options
    )
    g_max = boxes.shape[1]
    assert result.matched_gt.shape == (len(gts), len(scene["points"])) and result.gt_threshold.shape == (len(gts), g_max)
    assert result.candidate_index.shape == (len(gts), g_max, 0)
    for b, image_gts in enumerate(gts):
        expected = reference(name, scene, boxes=image_gts, **options)
        assert_same_assignment(expected, result.image(b), metric_atol=1e-12, num_gts=len(image_gts))
        assert torch.isnan(result.gt_threshold[b, len(image_gts) :]).all()


# --------------------------------------------------------------------------------------
# float32: equal away from boundaries


def near_boundary(scene, point, name, options, rel=1e-5):
    """Whether point ``point``'s reference decision is within ``rel`` (relative) of a boundary."""
    boxes = scene["gt_boxes"]
    x, y = scene["points"][point]
    scale = 1.0 + max(abs(x), abs(y), np.abs(boxes).max(initial=0.0))
    eps = rel * scale
    level = np.searchsorted(np.cumsum(scene["num_points_per_level"]), point, side="right")
    lo, hi = level_kwargs(scene["strides"])["regress_ranges"][level]
    stride = scene["strides"][level]
    ltrb = np.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], axis=1)  # (G, 4)
    largest = ltrb.max(axis=1)
    close = (np.abs(ltrb.min(axis=1)) < eps) | (np.abs(largest - lo) < eps) | (np.abs(largest - hi) < eps)
    if name == "fcos" and options.get("center_sampling", True):
        limit = 2 * options.get("center_radius", 1.5) * stride
        close |= (np.abs(np.abs(ltrb[:, 0] - ltrb[:, 2]) - limit) < 2 * eps) | (np.abs(np.abs(ltrb[:, 1] - ltrb[:, 3]) - limit) < 2 * eps)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    inside = ltrb.min(axis=1) > -eps
    areas = w * h
    tol = eps * (w + h)[:, None] + eps * (w + h)[None, :]
    ties = (np.abs(areas[:, None] - areas[None, :]) <= tol) & inside[:, None] & inside[None, :]
    np.fill_diagonal(ties, False)
    close |= ties.any(axis=1)
    if name in ("pseudo_iou", "centerness", "scaled_box"):
        # the filter value moves by about (coordinate error) / (box size)
        with np.errstate(divide="ignore", invalid="ignore"):
            size = np.minimum(w, h)
            if name == "scaled_box":
                s = options["scale"]
                value = np.minimum(s * (ltrb[:, 0] + ltrb[:, 2]) - np.abs(ltrb[:, 0] - ltrb[:, 2]), s * (ltrb[:, 1] + ltrb[:, 3]) - np.abs(ltrb[:, 1] - ltrb[:, 3]))
                close |= np.abs(value) < 4 * eps
            else:
                ref = RAF._pseudo_iou_algorithm1(ltrb) if name == "pseudo_iou" else RAF._centerness(ltrb)
                # centerness has sqrt(ratio) slopes near 0: use a looser relative margin there
                close |= inside & (np.abs(ref - options["threshold"]) < 10 * eps / np.maximum(size, 1e-12) + 1e-6)
    return bool(close.any())


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25)
@given(data=st.data())
def test_float32_agrees_except_near_boundaries(name, data):
    scene = data.draw(point_scenes(max_side=1333, max_boxes=30))
    options = data.draw(rule_options(name))
    expected = reference(name, scene, **options)
    actual = detector(name, scene, dtype=torch.float32, **options)
    assert actual.matched_metric.dtype == torch.float32 and not torch.isnan(actual.matched_metric).any()
    got = to_numpy(actual.matched_gt)
    differ = np.flatnonzero(got != expected.matched_gt)
    note(f"{len(differ)} of {len(got)} points differ in float32")
    unexplained = [int(a) for a in differ if not near_boundary(scene, a, name, options)]
    assert not unexplained, f"float32 differs away from any boundary at points {unexplained[:10]}"
    assert len(differ) <= 0.01 * len(got) + 5  # the bound on near-boundary flips
    same = got == expected.matched_gt
    np.testing.assert_allclose(to_numpy(actual.matched_metric)[same], expected.matched_metric[same], rtol=0, atol=2e-4)
    np.testing.assert_array_equal(to_numpy(actual.gt_threshold), expected.gt_threshold.astype(np.float32))


def test_float32_grid_scene_with_integer_boxes_is_exact():
    """Integer boxes and half-stride points are exact in float32: no boundary is blurred."""
    rng = np.random.default_rng(0)
    scene = {"points": None}
    from reference.anchors import multi_level_points

    points, point_strides, counts = multi_level_points((512, 640))
    xy = rng.integers(0, 600, size=(60, 2))
    wh = rng.integers(0, 300, size=(60, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float64)
    scene = {"points": points, "num_points_per_level": counts, "strides": STRIDES, "gt_boxes": boxes}
    for name in NAMES:
        expected = reference(name, scene)
        actual = detector(name, scene, dtype=torch.float32)
        np.testing.assert_array_equal(to_numpy(actual.matched_gt), expected.matched_gt, err_msg=name)
