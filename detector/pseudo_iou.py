"""Pseudo-IoU of points and GT boxes (specs/pseudo_iou.md).

Three forms of one quantity, the IoU of a GT with the GT-sized box centred on a point:

- ``pseudo_iou_algorithm1``: the paper's Algorithm 1 on (l, t, r, b) distances; exact for
  points strictly inside the GT (the only place the assigners use it);
- ``pseudo_iou_explicit``: build the pseudo boxes and take their box IoU;
- ``pseudo_iou``: the closed form a / (2 - a), exact everywhere (the canonical one).

Twin of ``reference/pseudo_iou.py``; tensors in the input's floating dtype (half and
bfloat16 up-cast to float32, integers to the default dtype), on the input's device.
"""
import numpy as np
import torch

from detector.boxes import _common_dtype, aligned_box_iou, safe_divide
from detector.validation import as_boxes, as_points, as_values


def pseudo_iou_algorithm1(ltrb):
    """Pseudo-IoU by the paper's Algorithm 1, typos corrected (specs/pseudo_iou.md §1.1).

    Args:
        ltrb: (..., 4) distances (l, t, r, b) from a point to the left, top, right and
            bottom sides of its GT (negative where the point is outside that side).

    Returns:
        (...) values in (1/7, 1] where min(l, t, r, b) > 0; equal to the explicit IoU
        wherever |dx| <= w and |dy| <= h; outside that region a negative or spurious
        value (specs/pseudo_iou.md §2); 0 where the union is 0. Never NaN.
    """
    ltrb = as_values(ltrb, "ltrb", ndim=max(_ndim(ltrb), 1), width=4)
    return _pseudo_iou_algorithm1(ltrb)


def _pseudo_iou_algorithm1(ltrb):
    """Algorithm 1 on checked (..., 4) distances (used by the assigners on their own distances)."""
    l, t, r, b = ltrb.unbind(dim=-1)
    # Step 1: the pseudo box has the GT's size and is centred on the point.
    l_a = r_a = (l + r) / 2
    t_a = b_a = (t + b) / 2
    area_b = (l + r) * (t + b)
    area_a = (l_a + r_a) * (t_a + b_a)  # the paper prints (t_A + t_A)
    # Step 2: intersection extents measured from the point.
    l_i = torch.minimum(l_a, l)
    r_i = torch.minimum(r_a, r)
    t_i = torch.minimum(t_a, t)
    b_i = torch.minimum(b_a, b)
    # Steps 3-5: intersection, union, ratio (0 where the union is 0; a negative union, which
    # only distances from outside the GT give, is divided: specs/pseudo_iou.md §2).
    area_i = (l_i + r_i) * (t_i + b_i)
    union = area_a + area_b - area_i
    return safe_divide(area_i, union, where=union != 0)


def pseudo_iou_explicit(points, gt_boxes):
    """Pseudo-IoU as the box IoU of each GT with its pseudo box (specs/pseudo_iou.md §1.2).

    Args:
        points: (A, 2) (x, y).
        gt_boxes: (G, 4) xyxy.

    Returns:
        (G, A) in [0, 1]; 0 for zero-area GTs.
    """
    points = as_points(points, "points")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    points, gt_boxes = _common_dtype(points, gt_boxes)
    half_w = (gt_boxes[:, 2, None] - gt_boxes[:, 0, None]) / 2  # (G, 1)
    half_h = (gt_boxes[:, 3, None] - gt_boxes[:, 1, None]) / 2  # (G, 1)
    x, y = points[None, :, 0], points[None, :, 1]  # (1, A)
    pseudo_boxes = torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], dim=-1)  # (G, A, 4)
    num_gts, num_points = pseudo_boxes.shape[:2]
    gts = gt_boxes[:, None, :].expand(num_gts, num_points, 4)  # (G, A, 4)
    return aligned_box_iou(gts.reshape(-1, 4), pseudo_boxes.reshape(-1, 4)).reshape(num_gts, num_points)


def pseudo_iou(points, gt_boxes):
    """Canonical Pseudo-IoU, the closed form a / (2 - a) (specs/pseudo_iou.md §1.3).

    a = max(0, 1 - |dx| / w) * max(0, 1 - |dy| / h), with (dx, dy) the offset of the point
    from the GT centre and (w, h) the GT size.

    Args:
        points: (A, 2) (x, y).
        gt_boxes: (G, 4) xyxy.

    Returns:
        (G, A) in [0, 1]: equal to ``pseudo_iou_explicit`` everywhere; 0 for
        zero-area GTs.
    """
    points = as_points(points, "points")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    points, gt_boxes = _common_dtype(points, gt_boxes)
    x1, y1, x2, y2 = (gt_boxes[:, i, None] for i in range(4))  # (G, 1) each
    w, h = x2 - x1, y2 - y1
    has_area = (w != 0) & (h != 0)  # zero-area GT: union 0, Pseudo-IoU 0
    safe_w = torch.where(has_area, w, torch.ones_like(w))
    safe_h = torch.where(has_area, h, torch.ones_like(h))
    dx = (points[None, :, 0] - (x1 + x2) / 2).abs()  # (G, A)
    dy = (points[None, :, 1] - (y1 + y2) / 2).abs()  # (G, A)
    a = (1 - dx / safe_w).clamp(min=0.0) * (1 - dy / safe_h).clamp(min=0.0)
    return torch.where(has_area, a / (2 - a), torch.zeros_like(a))


def _ndim(values):
    return values.ndim if isinstance(values, torch.Tensor) else np.ndim(values)
