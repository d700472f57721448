"""Fused classification loss of the batched loss step (specs/losses.md §7.1), no reference twin.

Performance machinery, not a twin of a reference file: :func:`classification_loss_sum`
returns ``sum over (b, a, k) of weights[b, a] * loss(logits[b, a, k], target[b, a, k])``
for the focal loss, QFL or VFL of ``detector/losses.py`` (specs/losses.md §2-§4), with the
targets given sparsely (a handful of positives, every other target 0), and the same value
as the dense elementwise definition to float rounding (parity tests).

Why: the dense definition builds a (B, A, K) target tensor and several (B, A, K)
temporaries, and autograd keeps more for backward; at B = 16, A = 22,300, K = 80 every one
of them is 114 MB, so the step is bound by memory traffic (and, on the CPU, by the scalar
``log1p`` inside ``softplus`` / BCE-with-logits). Here a ``torch.autograd.Function``
walks the (B * A, K) logits in row chunks of about ``CHUNK_ELEMENTS`` values that stay in
the CPU cache, computes each element's loss and closed-form gradient for target 0 (the
negatives' term: ``c * p**g * softplus(x)``), adds the row-weighted losses and writes the
row-weighted gradients into one (B, A, K) buffer; then it corrects the P positives
(subtracts their target-0 loss, adds the loss at their target, overwrites their gradient).
Backward is ``grad_output * buffer``, in place the first time. Nothing is computed for the
gradient when grad mode is off or the logits do not require grad.

Closed forms (x the logit, p = s(x), S = 1 - p = s(-x), sp = softplus(x) = BCE(x, 0),
BCE(x, y) = sp - x y, dBCE/dx = p - y, dp/dx = p S):

- target 0, all three losses: ``c * p**g * sp`` with (c, g) = (1 - alpha, gamma) for focal
  (c = 1 when alpha is None), (1, beta) for QFL, (alpha, gamma) for VFL; derivative
  ``c * p**g * (g * S * sp + p)``.
- focal, target y: ``a_t * m**gamma * BCE`` with ``m = 1 - p_t = p (1 - y) + S y``,
  ``a_t = alpha y + (1 - alpha)(1 - y)``; ``dm/dx = p S (1 - 2y)``; derivative
  ``a_t * (gamma * m**(gamma - 1) * dm/dx * BCE + m**gamma * (p - y))``.
- QFL, target y: ``|p - y|**beta * BCE``; derivative
  ``beta * sign(p - y) * |p - y|**(beta - 1) * p S * BCE + |p - y|**beta * (p - y)``.
- VFL, target y > 0: ``w * BCE`` with ``w = y`` (``iou_weighted``) or 1; derivative
  ``w * (p - y)``. A target of exactly 0 is a negative (the target-0 form above).

``softplus`` is evaluated without ``log1p`` (scalar in PyTorch's CPU kernels):
``sp = max(x, 0) + log1p(q / v)`` with ``q = min(p, S) = s(-|x|)`` and ``v = max(p, S) = 1 - q``,
and ``log1p(q / v) = -log(v) = q * log(v) / (v - 1)`` (Goldberg's correction of the
rounding of ``v``; the ratio is 1 where ``v`` rounds to 1), accurate to a few ulps for
every finite ``x``.
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from detector.losses import CLS_LOSSES, FOCAL_ALPHA, FOCAL_GAMMA, QFL_BETA, VFL_ALPHA, VFL_GAMMA
from detector.validation import check_choice, check_exponent, check_unit

#: Logits per chunk on the CPU: a chunk's six working buffers (512 KB each in float32) stay
#: in the L2 / L3 caches while some fifteen elementwise passes run over them. On a batch of
#: 16 x 22,300 anchors x 80 classes (one thread), 2**17..2**19 ran within a few percent of
#: each other, 2**16 ~15% and 2**15 ~30% slower (per-call overhead), 2**20 ~25% slower
#: (cache misses). The result does not depend on the chunking.
CHUNK_ELEMENTS = 2**17
#: Logits per chunk elsewhere (CUDA): large chunks, few kernel launches.
DEVICE_CHUNK_ELEMENTS = 2**22

#: Default of ``alpha`` / ``gamma``: the constants of ``detector/losses.py`` for the kind.
KIND_DEFAULT = "kind default"


def classification_loss_sum(
    logits,
    weights,
    pos_index,
    pos_class,
    pos_target,
    kind="focal",
    *,
    alpha=KIND_DEFAULT,
    gamma=KIND_DEFAULT,
    beta=QFL_BETA,
    iou_weighted=True,
    chunk_elements=None,
):
    """Weighted sum of an elementwise classification loss over all anchors and classes.

    Equals ``(weights[..., None] * loss(logits, targets)).sum()`` with ``targets`` zero
    except ``targets.view(-1, K)[pos_index, pos_class] = pos_target`` and ``loss`` the
    elementwise ``sigmoid_focal_loss`` ("focal"), ``quality_focal_loss`` ("qfl") or
    ``varifocal_loss`` ("vfl") of ``detector/losses.py`` (specs/losses.md §7.1).

    Args:
        logits: (B, A, K) floating logits (float32 or float64); the result and the gradient
            have their dtype and device.
        weights: (B, A) per-anchor weights (the loss step's label weights: 0 at IGNORE
            anchors); a constant (no gradient flows into it).
        pos_index: (P,) int64 flat anchor indices into B * A, each at most once.
        pos_class: (P,) int64 class of each positive, in 0..K-1.
        pos_target: (P,) target at that class, in [0, 1] (1 for focal's hard targets, the
            soft score for QFL / VFL; a VFL target of exactly 0 is a negative); a constant.
        kind: "focal", "qfl" or "vfl".
        alpha: focal: weight of the positive side in [0, 1], or None for none; VFL: weight
            of the negatives, >= 0. Default ``FOCAL_ALPHA`` / ``VFL_ALPHA``.
        gamma: focal / VFL exponent, >= 0. Default ``FOCAL_GAMMA`` / ``VFL_GAMMA``.
        beta: QFL exponent, >= 0.
        iou_weighted: VFL: weight a positive by its target (True) or by 1.
        chunk_elements: logits per chunk (default ``CHUNK_ELEMENTS`` on the CPU,
            ``DEVICE_CHUNK_ELEMENTS`` elsewhere); any value >= 1 gives the same result.

    Returns:
        0-d tensor. The preconditions are not checked against the data (no device
        synchronisation): indices in range, unique anchors, targets in [0, 1], finite logits.
    """
    check_choice(kind, CLS_LOSSES, "kind")
    params = _loss_params(kind, alpha, gamma, beta, iou_weighted)
    if not (isinstance(logits, torch.Tensor) and logits.ndim == 3 and logits.is_floating_point()):
        raise ValueError(f"logits: expected a (B, A, K) floating tensor, got {_describe(logits)}")
    batch, num_anchors, _ = logits.shape
    if not (isinstance(weights, torch.Tensor) and tuple(weights.shape) == (batch, num_anchors)):
        raise ValueError(f"weights: expected a ({batch}, {num_anchors}) tensor, got {_describe(weights)}")
    vectors = (pos_index, pos_class, pos_target)
    if not all(isinstance(v, torch.Tensor) and v.ndim == 1 for v in vectors) or len({len(v) for v in vectors}) != 1:
        raise ValueError("pos_index, pos_class, pos_target: expected three 1-D tensors of one length")
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS if logits.device.type == "cpu" else DEVICE_CHUNK_ELEMENTS
    if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements: expected an int >= 1, got {chunk_elements!r}")
    weights = weights.detach().to(logits.dtype)
    pos_target = pos_target.detach().to(logits.dtype)
    pos_index, pos_class = pos_index.long(), pos_class.long()
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedClassificationLoss.apply(logits, weights, pos_index, pos_class, pos_target, params, chunk_elements)
    return _loss_and_gradient(logits.detach(), weights, pos_index, pos_class, pos_target, params, chunk_elements,
                              want_grad=False)[0]


class _FusedClassificationLoss(torch.autograd.Function):
    """Forward: the sum and the closed-form gradient buffer; backward: grad_output times it.

    The first backward scales the buffer in place and hands it over (no second (B, A, K)
    allocation); a later backward through a retained graph (``retain_graph=True``,
    ``gradcheck``) recomputes the buffer from the saved logits, bit for bit the same.
    """

    @staticmethod
    def forward(ctx, logits, weights, pos_index, pos_class, pos_target, params, chunk_elements):
        total, grad = _loss_and_gradient(logits.detach(), weights, pos_index, pos_class, pos_target, params,
                                         chunk_elements, want_grad=True)
        ctx.save_for_backward(logits, weights, pos_index, pos_class, pos_target)
        ctx.params, ctx.chunk_elements, ctx.grad = params, chunk_elements, grad
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        logits, weights, pos_index, pos_class, pos_target = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # the buffer was handed over by an earlier backward
            grad = _loss_and_gradient(logits.detach(), weights, pos_index, pos_class, pos_target, ctx.params,
                                      ctx.chunk_elements, want_grad=True)[1]
        return grad.mul_(grad_output), None, None, None, None, None, None


def _loss_params(kind, alpha, gamma, beta, iou_weighted):
    """(kind, c, g, alpha, gamma, beta, iou_weighted): the negatives' ``c * p**g * sp``, checked."""
    if kind == "focal":
        alpha = FOCAL_ALPHA if alpha is KIND_DEFAULT else alpha
        gamma = FOCAL_GAMMA if gamma is KIND_DEFAULT else gamma
        if alpha is not None:
            check_unit(alpha, "alpha")
        check_exponent(gamma, "gamma")
        return kind, 1.0 if alpha is None else 1.0 - float(alpha), float(gamma), alpha, float(gamma), None, None
    if kind == "qfl":
        check_exponent(beta, "beta")
        return kind, 1.0, float(beta), None, None, float(beta), None
    alpha = VFL_ALPHA if alpha is KIND_DEFAULT else alpha
    gamma = VFL_GAMMA if gamma is KIND_DEFAULT else gamma
    check_exponent(alpha, "alpha")
    check_exponent(gamma, "gamma")
    return kind, float(alpha), float(gamma), float(alpha), float(gamma), None, bool(iou_weighted)


def _loss_and_gradient(logits, weights, pos_index, pos_class, pos_target, params, chunk_elements, want_grad):
    """(0-d sum, (B, A, K) gradient or None) of detached inputs."""
    _, c, g = params[:3]
    num_classes = logits.shape[-1]
    flat = logits.reshape(-1, num_classes)
    row_weights = weights.reshape(-1, 1) * c  # (B * A, 1): c * w of the negatives' term
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if want_grad else None
    grad_flat = grad.view(-1, num_classes) if want_grad else None
    rows = max(1, chunk_elements // max(1, num_classes))
    size = min(rows, len(flat)) * num_classes
    buffers = [torch.empty(size, dtype=logits.dtype, device=logits.device) for _ in range(6)]
    partials = []
    for start in range(0, len(flat), rows):
        stop = min(start + rows, len(flat))
        partials.append(_negative_terms(flat[start:stop], row_weights[start:stop], g, buffers,
                                        grad_flat[start:stop] if want_grad else None).sum())
    total = torch.stack(partials).sum() if partials else logits.new_zeros(())

    if len(pos_index):  # the positives: swap their target-0 term for the term at their target
        elements = pos_index * num_classes + pos_class
        x = flat.reshape(-1).index_select(0, elements)
        w = weights.reshape(-1).index_select(0, pos_index)
        negative = _negative_terms(x[:, None], (w * c)[:, None], g, [torch.empty_like(x) for _ in range(6)], None)
        loss, element_grad = _target_terms(x, pos_target, params, want_grad)
        total = total - negative.sum() + (w * loss).sum()
        if want_grad:
            grad.view(-1).index_copy_(0, elements, w * element_grad)
    return total, grad


def _negative_terms(x, row_weights, g, buffers, grad_out):
    """Target-0 terms of one chunk: returns ``row_weights * p**g * sp`` (n, K), a buffer view;
    writes ``row_weights * p**g * (g * S * sp + p)`` into ``grad_out`` unless it is None."""
    n = x.numel()
    shape = x.shape
    p, s, q, v, sp, pg = (b[:n].view(shape) for b in buffers)
    torch.sigmoid(x, out=p)
    torch.sub(p.new_ones(()), p, out=s)  # S = 1 - p
    torch.minimum(p, s, out=q)  # s(-|x|)
    torch.maximum(p, s, out=v)  # 1 - q
    torch.log(v, out=sp)
    v.sub_(1.0)
    sp.div_(v).nan_to_num_(nan=1.0)  # log(v) / (v - 1), 1 where v rounds to 1
    torch.clamp(x, min=0, out=v)
    torch.addcmul(v, q, sp, out=sp)  # softplus(x) = max(x, 0) + q log(v) / (v - 1)
    if g == 2.0:
        torch.mul(p, p, out=pg)
    else:
        torch.pow(p, g, out=pg)
    pg.mul_(row_weights)  # c w p**g
    if grad_out is not None:
        torch.addcmul(p, s, sp, value=g, out=s)  # p + g S sp
        torch.mul(pg, s, out=grad_out)
    return torch.mul(pg, sp, out=q)


def _target_terms(x, y, params, want_grad):
    """Unweighted (loss, d loss / dx or None) of each logit ``x`` at its target ``y`` (1-D)."""
    kind, _, _, alpha, gamma, beta, iou_weighted = params
    p, s = torch.sigmoid(x), torch.sigmoid(-x)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    if kind == "focal":
        m = p * (1.0 - y) + s * y  # 1 - p_t
        a_t = 1.0 if alpha is None else alpha * y + (1.0 - alpha) * (1.0 - y)
        m_g = m.pow(gamma)
        loss = a_t * m_g * bce
        if not want_grad:
            return loss, None
        dm = p * s * (1.0 - 2.0 * y)
        return loss, a_t * (_power_derivative(m, gamma) * dm * bce + m_g * (p - y))
    if kind == "qfl":
        d = p - y
        m_b = d.abs().pow(beta)
        loss = m_b * bce
        if not want_grad:
            return loss, None
        return loss, _power_derivative(d.abs(), beta) * torch.sign(d) * p * s * bce + m_b * d
    # VFL: a target of exactly 0 is a negative
    positive = y > 0
    weight = y if iou_weighted else torch.ones_like(y)
    p_g = p.pow(gamma)
    loss = torch.where(positive, weight * bce, alpha * p_g * bce)
    if not want_grad:
        return loss, None
    return loss, torch.where(positive, weight * (p - y), alpha * p_g * (gamma * s * bce + p))


def _power_derivative(m, exponent):
    """d(m**e)/dm = e * m**(e - 1), 0 for e = 0 (infinite at m = 0 for 0 < e < 1, as autograd's)."""
    if exponent == 0:
        return torch.zeros_like(m)
    if exponent == 2.0:
        return 2.0 * m
    return exponent * m.pow(exponent - 1.0)


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return type(value).__name__
