"""Detect the row-major grid of one pyramid level's anchor or point centres.

Shared by the two fast paths of the detector's assigners, the exact nearest-anchor search
of ATSS (``detector/assign/nearest.py``) and the GT windows of the anchor-free assigners
(``detector/assign/windows.py``); no reference twin. Anchor and point generators lay a
level out row-major, ``y`` outer and ``x`` inner (specs/conventions.md §3); a level that
passes this exact test can be searched by rows and columns instead of point by point.
"""
import math

import torch


def row_major_grid(centers):
    """The grid of a level's centres, when they form one exactly.

    Args:
        centers: (A_l, 2) (x, y) of one level, A_l >= 1.

    Returns:
        ``(xs, ys)``, contiguous (W_l,) and (H_l,) tensors with ``W_l * H_l = A_l``, when
        ``centers[r * W_l + c] == (xs[c], ys[r])`` for every row r and column c and both
        ``xs`` and ``ys`` are strictly increasing; None otherwise. One pass over the centres
        (and one device synchronisation to find the row length).
    """
    count = centers.shape[0]
    x, y = centers[:, 0], centers[:, 1]
    new_row = int((y != y[0]).to(torch.uint8).argmax())  # first centre off the first row; 0: none
    width = new_row if new_row > 0 else count
    if count % width:
        return None
    height = count // width
    grid_x, grid_y = x.reshape(height, width), y.reshape(height, width)
    xs, ys = grid_x[0].contiguous(), grid_y[:, 0].contiguous()
    if not (torch.equal(grid_x, xs.expand(height, width)) and torch.equal(grid_y, ys[:, None].expand(height, width))):
        return None
    if not bool(torch.cat([xs[1:] > xs[:-1], ys[1:] > ys[:-1]]).all()):
        return None
    return xs, ys


def pad_stack(vectors):
    """1-D tensors -> (len(vectors), longest), padded with +inf (after every finite value):
    the coordinates of several grids side by side, for batched ``searchsorted``."""
    longest = max(vector.shape[0] for vector in vectors)
    out = torch.full((len(vectors), longest), math.inf, dtype=vectors[0].dtype, device=vectors[0].device)
    for row, vector in enumerate(vectors):
        out[row, : vector.shape[0]] = vector
    return out
