"""Inputs on the meta device or on another device than the priors raise a ValueError that
names the argument (specs/conventions.md §2); assigners never move inputs silently."""
import pytest

torch = pytest.importorskip("torch")

from detector.anchors import multi_level_anchors, multi_level_points  # noqa: E402
from detector.assign.anchor_free import assign_pseudo_iou, assign_pseudo_iou_batched  # noqa: E402
from detector.assign.atss import assign_atss, assign_atss_batched  # noqa: E402
from detector.assign.dynamic_atss import assign_dynamic_atss_batched  # noqa: E402
from detector.assign.max_iou import assign_max_iou_batched  # noqa: E402

pytestmark = pytest.mark.torch

CUDA = torch.cuda.is_available()


def _scene(device="cpu"):
    anchors, counts = multi_level_anchors((64, 64), (8, 16, 32), device=device)
    points, _, point_counts = multi_level_points((64, 64), (8, 16, 32), device=device)
    gt_boxes = torch.tensor([[[4.0, 4.0, 40.0, 44.0]]], device=device)
    gt_valid = torch.ones((1, 1), dtype=torch.bool, device=device)
    return anchors, counts, points, point_counts, gt_boxes, gt_valid


@pytest.mark.parametrize("argument", ["anchors", "gt_boxes"])
def test_meta_tensors_are_refused_by_name(argument):
    anchors, counts, points, point_counts, gt_boxes, gt_valid = _scene()
    inputs = {"anchors": anchors, "gt_boxes": gt_boxes}
    inputs[argument] = inputs[argument].to("meta")
    with pytest.raises(ValueError, match=f"{argument}: .*meta device"):
        assign_atss_batched(inputs["anchors"], counts, inputs["gt_boxes"], gt_valid)
    with pytest.raises(ValueError, match="gt_boxes: .*meta device"):
        assign_pseudo_iou(points, point_counts, gt_boxes[0].to("meta"), strides=(8, 16, 32),
                          regress_ranges=((-1, 64), (64, 128), (128, 1e8)))
    with pytest.raises(ValueError, match="anchors: .*meta device"):
        assign_atss(anchors.to("meta"), counts, gt_boxes[0])


def test_pred_boxes_on_the_meta_device_are_refused():
    anchors, counts, _, _, gt_boxes, gt_valid = _scene()
    with pytest.raises(ValueError, match="pred_boxes"):
        assign_dynamic_atss_batched(anchors, counts, gt_boxes, gt_valid, anchors[None].to("meta"))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_mismatched_devices_are_refused_by_name():
    anchors, counts, points, point_counts, gt_boxes, gt_valid = _scene("cuda")
    with pytest.raises(ValueError, match="gt_boxes: on cpu, but anchors is on cuda"):
        assign_atss_batched(anchors, counts, gt_boxes.cpu(), gt_valid)
    with pytest.raises(ValueError, match="gt_valid: on cpu"):
        assign_max_iou_batched(anchors, gt_boxes, gt_valid.cpu())
    with pytest.raises(ValueError, match="pred_boxes: on cpu"):
        assign_dynamic_atss_batched(anchors, counts, gt_boxes, gt_valid, anchors[None].cpu())
    with pytest.raises(ValueError, match="gt_boxes: on cpu, but points is on cuda"):
        assign_pseudo_iou_batched(points, point_counts, gt_boxes.cpu(), gt_valid, strides=(8, 16, 32),
                                  regress_ranges=((-1, 64), (64, 128), (128, 1e8)))
