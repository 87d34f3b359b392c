"""Pure-PyTorch reference of every mgid op.

Plain, vectorised PyTorch (no Python loop over items or queries), written to be read next to
``docs/ALGORITHM.md``. It is the oracle of every test, the fallback where the compiled
extension is absent, and what ``MGID_OPS=reference`` selects. Autograd flows through it natively,
with the detach points of the public MNAD/MGID code.

Shapes: query ``q`` (B, C, H, W); items ``P`` (M, C); N = B*H*W queries.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from mgid.errors import InputError, MissingDependencyError

NORM_EPS = 1e-12  # as F.normalize
COV_EPS = 1e-5  # ridge added to every covariance (public code)
TRIPLET_MARGIN = 1.0
TRIPLET_EPS = 1e-6


def flatten_queries(query: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (N, C), N = B*H*W, in NCHW pixel order (b, h, w)."""
    b, c, h, w = query.shape
    return query.permute(0, 2, 3, 1).reshape(b * h * w, c)


def unflatten_queries(x: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(N, C) -> (B, C, H, W); inverse of `flatten_queries`."""
    return x.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def normalized_queries(query: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> q_hat (N, C): every query scaled to unit L2 norm (eps 1e-12)."""
    return F.normalize(flatten_queries(query), dim=1, eps=NORM_EPS)


def memory_read(query: torch.Tensor, items: torch.Tensor, grad_through_weights: bool = False) -> torch.Tensor:
    """MNAD memory read.

    query (B, C, H, W), items (M, C) -> (B, 2C, H, W) = concat[q_hat, W P] with
    W = softmax(q_hat P^T) over items. Items never receive a gradient. With
    ``grad_through_weights=False`` (the public code) the read half carries no gradient at all
    (W is detached); with ``True`` the gradient reaches q through W.
    """
    b, _, h, w = query.shape
    q_hat = normalized_queries(query)
    p = items.detach().to(q_hat.dtype)
    weights = torch.softmax(q_hat @ p.t(), dim=1)
    if not grad_through_weights:
        weights = weights.detach()
    read = weights @ p
    return unflatten_queries(torch.cat([q_hat, read], dim=1), b, h, w)


def memory_update_stats(
    query: torch.Tensor, items: torch.Tensor, max_over_assigned: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item statistics of the MNAD update, the part that reduces across queries (and ranks).

    Returns ``(col_max (M,), weighted_sum (M, C))`` with S = q_hat P^T, a(k) = argmax_m S[k, m],
    col_max[m] = max of S[:, m] over all queries (public code) or over the queries assigned to m
    (``max_over_assigned``, the paper; -inf where none is assigned), and
    weighted_sum[m] = sum over k with a(k) = m of exp(S[k, m] - col_max[m]) * q_hat[k].
    exp(S - col_max) equals the column softmax over queries divided by its column maximum,
    the public code's weight. Both outputs are float32 (float64 for float64 input); no gradient.
    """
    with torch.no_grad():
        acc = torch.float64 if query.dtype == torch.float64 else torch.float32
        q_hat = normalized_queries(query.to(acc))
        p = items.to(acc)
        scores = q_hat @ p.t()  # (N, M)
        assigned = scores.argmax(dim=1)  # (N,) first maximum on ties
        m = p.shape[0]
        if max_over_assigned:
            col_max = torch.full((m,), float("-inf"), dtype=acc, device=p.device)
            own_score = scores.gather(1, assigned[:, None]).squeeze(1)
            col_max = col_max.scatter_reduce(0, assigned, own_score, reduce="amax", include_self=True)
        else:
            col_max = scores.max(dim=0).values if scores.shape[0] > 0 else torch.full(
                (m,), float("-inf"), dtype=acc, device=p.device)
        own_score = scores.gather(1, assigned[:, None]).squeeze(1)
        weight = torch.exp(own_score - col_max[assigned])  # (N,)
        weighted_sum = torch.zeros_like(p).index_add_(0, assigned, weight[:, None] * q_hat)
        return col_max, weighted_sum


def memory_update_finish(items: torch.Tensor, weighted_sum: torch.Tensor) -> torch.Tensor:
    """New items (M, C) = normalize(P + weighted_sum), in the items' dtype."""
    acc = weighted_sum.dtype
    return F.normalize(items.detach().to(acc) + weighted_sum, dim=1, eps=NORM_EPS).to(items.dtype)


def memory_update(query: torch.Tensor, items: torch.Tensor, max_over_assigned: bool = False) -> torch.Tensor:
    """MNAD top-1 memory update: query (B, C, H, W), items (M, C) -> new unit-norm items (M, C).

    P_new[m] = normalize(P[m] + sum_{k: a(k)=m} exp(S[k,m] - col_max[m]) q_hat[k]); see
    `memory_update_stats`. Items with no assigned query are only re-normalised.
    """
    _, weighted_sum = memory_update_stats(query, items, max_over_assigned)
    return memory_update_finish(items, weighted_sum)


def memory_losses(query: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MNAD compactness and separateness losses, both 0-dim, differentiable in ``query``.

    compactness = MSE(q_hat, P[top1]); separateness = TripletMarginLoss(margin 1, eps 1e-6)
    (q_hat, P[top1], P[top2]); top1/top2 the two highest-scoring items per query (first index
    on ties). Items are detached. Requires M >= 2.
    """
    q_hat = normalized_queries(query)
    p = items.detach().to(q_hat.dtype)
    with torch.no_grad():
        scores = q_hat @ p.t()
        top1 = scores.argmax(dim=1)
        top2 = scores.scatter(1, top1[:, None], float("-inf")).argmax(dim=1)
    positive, negative = p[top1], p[top2]
    compactness = F.mse_loss(q_hat, positive)
    separateness = F.triplet_margin_loss(q_hat, positive, negative, margin=TRIPLET_MARGIN, eps=TRIPLET_EPS)
    return compactness, separateness


def memory_step(
    query: torch.Tensor, items: torch.Tensor, grad_through_weights: bool = False, max_over_assigned: bool = False,
    with_losses: bool = True, with_update: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step of the memory: ``(read, compactness, separateness, col_max, weighted_sum)``.

    The ops above, each on the same query and items: `memory_read` (B, 2C, H, W),
    `memory_losses` (two 0-dim; 0 without ``with_losses``) and `memory_update_stats`
    ((M,), (M, C); -inf and 0 without ``with_update``), computed independently: the oracle of the
    fused kernel, which gets all of them from one set of scores.
    """
    read = memory_read(query, items, grad_through_weights)
    if with_losses:
        compactness, separateness = memory_losses(query, items)
    else:
        compactness = separateness = (flatten_queries(query) * 0).sum()
    if with_update:
        col_max, weighted_sum = memory_update_stats(query, items, max_over_assigned)
    else:
        acc = torch.float64 if query.dtype == torch.float64 else torch.float32
        col_max = torch.full((items.shape[0],), float("-inf"), dtype=acc, device=items.device)
        weighted_sum = torch.zeros(items.shape, dtype=acc, device=items.device)
    return read, compactness, separateness, col_max, weighted_sum


def feature_covariance(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): f f^T / (HW - 1) + 1e-5 I, f = features as (B, C, HW).

    No centring: the instance-normalised features the loss is applied to have zero mean.
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    eye = torch.eye(c, dtype=features.dtype, device=features.device)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w - 1) + COV_EPS * eye


def cross_frame_variance(cov1: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Element-wise variance of two values: (cov1 - cov2)^2 / 4, shape (B, C, C)."""
    return (cov1 - cov2).pow(2) / 4


# The 1-D k-means of the fused kernels (csrc/whitening_math.h, whose constants these repeat).
KMEANS_GRID = 1024
KMEANS_GRID_TAIL = 512
LLOYD_MAX_ITER = 300
# Children per node of the divide and conquer's tree (the kernels use 2). Every fan-out gives the full
# scan's programme bit for bit; a wider tree has fewer levels, and in eager PyTorch each level costs a
# fixed ~100 small ops, so 32 (2 levels at G 1024 instead of 11) is what the training shape runs fastest.
KMEANS_DC_FANOUT = 32
# The certificate's rounding bound tau, as kmeans_dc_tolerance in csrc/whitening_math.h (derived there):
# E1 = SLACK u n (|p1[turn]| + |p1[n]|), E2 = SLACK u n Q and tau = base + per_range R + per_y Ys with
# base = A E1^2 + B u Q + C E2, per_range = D E1, per_y = E E1.
UNIT_ROUNDOFF = 2.0**-53
_TAU_SLACK = 1.001
_TAU_E1_SQUARED = 64.0
_TAU_Q = 520.0
_TAU_E2 = 16.0
_TAU_RANGE = 16.0
_TAU_Y = 32.0


def kmeans_grid_positions(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Candidate cluster boundaries p_0 = 0 < ... < p_G = n of the dynamic programme, int64 (G+1,).

    Every position when n <= 1024 (the programme is then exact); otherwise 512 equal-count
    positions over the first n - 512 sorted values and each of the last 512 positions, where the
    sparse heavy tail forms small clusters of its own.
    """
    if n <= KMEANS_GRID:
        return torch.arange(n + 1, device=device)
    head, head_n = KMEANS_GRID - KMEANS_GRID_TAIL, n - KMEANS_GRID_TAIL
    g = torch.arange(KMEANS_GRID + 1, device=device)
    return torch.where(g <= head, g * head_n // head, head_n + (g - head))


class _KmeansGrid(NamedTuple):
    """The sorted inputs gathered on the grid (kmeans_grid_entry in csrc/whitening_math.h).

    pos, q1, q2: (G+1,) positions and the prefix sums of y = x - mean(x) and y^2 there; posf: pos as
    float64 (exact integers, so posf[g] - posf[h] is the kernels' double(pos[g] - pos[h])); y_first[g] =
    y[pos[g]] and y_last[g] = y[pos[g] - 1], the ends of the runs a certificate spans (clamped at
    the array ends, where they are never read).
    """

    pos: torch.Tensor
    q1: torch.Tensor
    q2: torch.Tensor
    posf: torch.Tensor
    y_first: torch.Tensor
    y_last: torch.Tensor


class _Tolerance(NamedTuple):
    """tau of a certificate over positions [a, b): base + per_range (y[b-1] - y[a]) + per_y max(|y[a]|, |y[b-1]|)."""

    base: float
    per_range: float
    per_y: float


class _Scan(NamedTuple):
    """Leftmost minimum of v(h, g) = d_prev[h] + grid_sse(h, g) over each cell's candidates (kmeans_dp_scan).

    v: the minimum (+inf where a cell has no candidate); h: its leftmost minimiser (int64); left /
    right: the smallest value at a candidate left / right of h (+inf if none); first / last: the
    values at the cell's first and last candidates (+inf if none). All of the cells' shape.
    """

    v: torch.Tensor
    h: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor


class KmeansProgramme(NamedTuple):
    """The grid dynamic programme of `kmeans1d_fast_threshold`.

    d: (k, G+1) float64, D[l][g] (layer 0 for every g; layer l >= 1 for g >= l + 1, +inf elsewhere).
    arg: (k, G+1) int64, the leftmost minimiser of D[l][g] for l >= 1, g >= l + 1 (0 elsewhere).
    pos: (G+1,) int64, `kmeans_grid_positions`. full_scans: cells whose certificate failed and
    that scanned every candidate (the kernels' fallback, the full scan's O(G) cost for that cell).
    """

    d: torch.Tensor
    arg: torch.Tensor
    pos: torch.Tensor
    full_scans: int


def _kmeans_inputs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted float64 values x, y = x - mean(x), and the prefix sums [0, y0, y0 + y1, ...] of y and y^2.

    The same ATen calls as the kernels' inputs (kmeans_inputs in csrc/checks.h), so the same floats.
    """
    if values.numel() == 0:
        raise InputError("bsw threshold: values must hold at least one element")
    x, _ = torch.sort(values.detach().reshape(-1).to(torch.float64))
    y = x - x.mean()
    zero = x.new_zeros(1)
    return x, y, torch.cat([zero, torch.cumsum(y, 0)]), torch.cat([zero, torch.cumsum(y * y, 0)])


def _dc_tolerance(y: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> _Tolerance:
    """kmeans_dc_tolerance of csrc/whitening_math.h, in the same double operations."""
    n = y.numel()
    q = float(p2[n])
    turn = int((y <= 0).sum())  # the first y > 0, y being sorted
    a, b = abs(float(p1[turn])), abs(float(p1[n]))
    e1 = _TAU_SLACK * UNIT_ROUNDOFF * n * (a + b)
    e2 = _TAU_SLACK * UNIT_ROUNDOFF * n * q
    return _Tolerance(_TAU_E1_SQUARED * e1 * e1 + _TAU_Q * UNIT_ROUNDOFF * q + _TAU_E2 * e2, _TAU_RANGE * e1,
                      _TAU_Y * e1)


def _tau(tol: _Tolerance, ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """tau of runs within [a, b) from ya = y[a], yb = y[b-1] (kmeans_dc_tau)."""
    return tol.base + tol.per_range * (yb - ya) + tol.per_y * torch.maximum(ya.abs(), yb.abs())


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] for a 1-D ``t``; index_select is several times faster than advanced indexing on the CPU."""
    return t.index_select(0, idx.reshape(-1)).reshape(idx.shape)


def _scan(start: torch.Tensor, width: int, g: torch.Tensor, end: torch.Tensor, d_prev: torch.Tensor,
          grid: _KmeansGrid, margins: bool) -> _Scan:
    """The cells g (N, C) of N groups at once; group i's cells share the candidates start[i] + [0, width)
    (start: (N,)) and cell (i, c) takes those up to end[i, c] (inclusive; none if below start[i]),
    with end[i, c] < g[i, c] and width > every end - start. One dense (N, C, width) block: each
    candidate's terms are gathered once a group, and the padding past a cell's end holds +inf.
    ``margins`` False leaves left and right at +inf (a tree level that no later level reads)."""
    inf = float("inf")
    w = torch.arange(width, device=g.device)
    h = (start[:, None] + w).clamp_max(grid.pos.numel() - 1)  # (N, W); past the grid only as padding
    # v(h, g) operation for operation as kmeans_dp_value (posf: positions as exact float64 integers),
    # in place because the block is the bulk of the work.
    v = _gather(grid.q1, g)[:, :, None] - _gather(grid.q1, h)[:, None, :]  # s
    v.mul_(v).div_(_gather(grid.posf, g)[:, :, None] - _gather(grid.posf, h)[:, None, :])  # s^2 / len
    v = torch.sub(_gather(grid.q2, g)[:, :, None] - _gather(grid.q2, h)[:, None, :], v, out=v)
    v.clamp_min_(0.0).add_(_gather(d_prev, h)[:, None, :])
    span = end - start[:, None]
    v.masked_fill_(w > span[:, :, None], inf)
    m, at = v.min(dim=2)  # the first minimal index, as the kernels' strict < scan
    first = v[:, :, 0].clone()
    last = v.gather(2, span.clamp(0, width - 1)[:, :, None]).squeeze(2)
    if margins:
        left = torch.where(w < at[:, :, None], v, inf).amin(dim=2)
        right = v.masked_fill_(w <= at[:, :, None], inf).amin(dim=2)
    else:
        left = right = torch.full_like(m, inf)
    return _Scan(m, start[:, None] + at, left, right, first, last)


def _pivots(lo: torch.Tensor, hi: torch.Tensor, fanout: int) -> tuple[torch.Tensor, ...]:
    """The pivots of tree nodes [lo, hi] (N,): p_j = lo - 1 + floor(j (hi - lo + 2) / fanout), j in
    [1, fanout), the kernels' mid (lo + hi) // 2 for fanout 2. Returns g (N, fanout - 1), keep (the
    strictly increasing pivots: the others repeat one or are lo - 1), and the children [lo', hi'], the
    non-empty gaps between lo - 1, the pivots and hi + 1."""
    steps = torch.arange(1, fanout, device=lo.device)
    edges = torch.cat([(lo - 1)[:, None], (lo - 1)[:, None] + steps * (hi - lo + 2)[:, None] // fanout,
                       (hi + 1)[:, None]], 1)
    g = edges[:, 1:-1]
    child_lo, child_hi = edges[:, :-1] + 1, edges[:, 1:] - 1
    child = child_lo <= child_hi
    return g, g > edges[:, :-2], child_lo[child], child_hi[child]


def _dc_layer(layer: int, d_prev: torch.Tensor, grid: _KmeansGrid, tol: _Tolerance,
              fanout: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Layer ``layer`` >= 1 of the programme by the kernels' certified divide and conquer.

    The cells [layer + 1, G] form a tree whose node [lo, hi] has up to ``fanout`` - 1 pivots spread
    evenly (`_pivots`), its children the gaps between them. A pivot g scans only
    [opt(lo - 1), min(g - 1, opt(hi + 1))], from cells of earlier tree levels, since the leftmost
    minimiser is monotone in g in exact arithmetic. Each pivot certifies that no skipped candidate
    beats (left: or ties) its minimum, from the quadrangle inequality, the margins of cells lo - 1 and
    hi + 1 and the rounding bound tau (kmeans_dc_certify), and scans [layer, g) in full where it
    cannot: so every cell is the full scan's, bit for bit. The kernels' tree is over [layer + 1, G];
    here the root is [layer + 1, G - 1] and cell G joins the first level, so that every later node has
    a right neighbour (else the rightmost node's window runs to its pivots, across the sparse tail).
    A tree level is one vectorised step. Returns D[layer] (G+1,), its minimisers (G+1,) int64 and
    the number of cells that scanned in full.
    """
    big = grid.pos.numel() - 1
    spare = big + 1  # a scratch cell: where the repeated pivots of a node are stored
    device = d_prev.device
    inf = float("inf")
    d_cur = torch.full((big + 2,), inf, dtype=torch.float64, device=device)
    arg = torch.zeros(big + 2, dtype=torch.int64, device=device)
    lam = torch.full_like(d_cur, inf)  # margins: how much the candidates left / right of opt(g) lose
    rho = torch.full_like(d_cur, inf)
    first = torch.tensor([layer], device=device)

    # Level 0: every candidate of each cell, so nothing to certify and the margins are exact.
    g, keep, lo, hi = _pivots(first + 1, first.new_full((1,), big - 1), fanout)
    cells = torch.cat([g[keep], first.new_full((1,), big)])[None, :]
    sc = _scan(first, big - layer, cells, cells - 1, d_prev, grid, margins=lo.numel() > 0)
    d_cur[cells], arg[cells], lam[cells], rho[cells] = sc.v, sc.h, sc.left - sc.v, sc.right - sc.v

    y_layer = grid.y_first[layer]
    full_scans = 0
    while lo.numel():
        left_cell, right_cell = lo - 1, hi + 1
        g, keep, lo, hi = _pivots(lo, hi, fanout)
        margins = lo.numel() > 0
        start = torch.where(left_cell > layer, arg[left_cell], layer)  # hlo: opt(lo - 1), or the layer's first
        end = torch.minimum(arg[right_cell][:, None], g - 1)  # hhi
        width = max(int((end - start[:, None]).max()) + 1, 1)
        sc = _scan(start, width, g, end, d_prev, grid, margins)
        m, h = sc.v, sc.h
        lmarg, rmarg = sc.left - m, sc.right - m
        hlo = start[:, None]
        skip_l = hlo > layer
        tau_l = _tau(tol, y_layer, _gather(grid.y_last, g))
        bound_l = (sc.first - m) + lam[left_cell][:, None] - tau_l
        skip_r = end < g - 1
        tau_r = _tau(tol, _gather(grid.y_first, end.clamp_min(0)), grid.y_last[right_cell][:, None])
        bound_r = (sc.last - m) + rho[right_cell][:, None] - tau_r
        ok = (hlo <= end) & (~skip_l | (bound_l > 0)) & (~skip_r | (bound_r >= 0))
        if margins:
            lmarg = torch.where(skip_l & (bound_l < lmarg), bound_l, lmarg)
            rmarg = torch.where(skip_r & (bound_r < rmarg), bound_r, rmarg)

        cell = torch.where(keep, g, spare).reshape(-1)
        m, h, lmarg, rmarg = m.reshape(-1), h.reshape(-1), lmarg.reshape(-1), rmarg.reshape(-1)
        redo = torch.nonzero(keep.reshape(-1) & ~ok.reshape(-1)).squeeze(1)
        if redo.numel():
            full_scans += redo.numel()
            g_redo = cell[redo]
            fs = _scan(torch.full_like(g_redo, layer), int(g_redo.max()) - layer, g_redo[:, None], g_redo[:, None] - 1,
                       d_prev, grid, margins)
            m, h, lmarg, rmarg = m.clone(), h.clone(), lmarg.clone(), rmarg.clone()
            m[redo], h[redo] = fs.v[:, 0], fs.h[:, 0]
            lmarg[redo], rmarg[redo] = (fs.left - fs.v)[:, 0], (fs.right - fs.v)[:, 0]
        d_cur[cell], arg[cell], lam[cell], rho[cell] = m, h, lmarg, rmarg
    return d_cur[:spare], arg[:spare], full_scans


def kmeans_grid_programme(values: torch.Tensor, k: int, fanout: int = KMEANS_DC_FANOUT) -> KmeansProgramme:
    """Stage 1 of `kmeans1d_fast_threshold`: the grid dynamic programme, with its tables.

    values: any shape and floating dtype, at least one element (ValueError otherwise), clustered in
    float64; k: clusters, clamped to [1, G]; fanout >= 2 (ValueError otherwise): the tree's width,
    which changes the work, never a bit of the result. O(fanout k G log_fanout G) candidates instead
    of the full scan's O(k G^2), in O(k log_fanout G) vectorised steps. Finite values: a cell whose
    candidates hold NaN or inf scans in full, as in the kernels, but the result is not specified.
    """
    if fanout < 2:
        raise InputError(f"kmeans_grid_programme: fanout must be >= 2, got {fanout}")
    x, y, p1, p2 = _kmeans_inputs(values)
    return _grid_programme(x, y, p1, p2, k, fanout)


def _grid_programme(x: torch.Tensor, y: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, k: int,
                    fanout: int) -> KmeansProgramme:
    """`kmeans_grid_programme` on the prepared inputs of `_kmeans_inputs`."""
    n = x.numel()
    pos = kmeans_grid_positions(n, x.device)
    big = pos.numel() - 1
    k = max(1, min(int(k), big))
    last = torch.tensor(n - 1, device=x.device)
    grid = _KmeansGrid(pos, p1[pos], p2[pos], pos.to(torch.float64), y[pos.clamp_max(last)], y[(pos - 1).clamp_min(0)])
    tol = _dc_tolerance(y, p1, p2)
    # Layer 0, one cluster over [0, p_g) (segment_sse): 0 for the empty run at g = 0 (0/0 there).
    raw = grid.q2 - grid.q1 * grid.q1 / pos.to(torch.float64)
    d = torch.where(raw > 0, raw, 0.0)
    d_rows, arg_rows, full_scans = [d], [torch.zeros_like(pos)], 0
    for layer in range(1, k):
        d, arg, redone = _dc_layer(layer, d, grid, tol, fanout)
        d_rows.append(d)
        arg_rows.append(arg)
        full_scans += redone
    return KmeansProgramme(torch.stack(d_rows), torch.stack(arg_rows), pos, full_scans)


def kmeans1d_fast_threshold(values: torch.Tensor, k: int) -> torch.Tensor:
    """Upper bound of the lowest cluster of a 1-D k-means of ``values``, 0-dim float64.

    values: any shape and floating dtype, at least one element (ValueError otherwise), finite; k:
    clusters, clamped to [1, min(n, 1024)]. What the kernels compute, in two deterministic stages on
    the sorted values x (float64), bit for bit (``torch.ops.mgid.bsw_threshold``):
    1. exact dynamic programming with boundaries restricted to `kmeans_grid_positions`
       (D[l][g] = min_h D[l-1][h] + SSE(p_h, p_g), leftmost minimiser on ties): the optimal
       clustering when there are at most 1024 values. Each layer by the kernels' certified divide
       and conquer (`kmeans_grid_programme`), whose every value and minimiser is the full
       O(G^2) scan's;
    2. Lloyd iterations from that partition (a boundary is the first value above the midpoint of
       two adjacent centres; an empty cluster keeps its centre) until no boundary moves.
    Sums are taken of x - mean(x) so SSE = sum(y^2) - sum(y)^2 / len does not cancel. The result is
    the largest value in the lowest cluster, so ``values <= threshold`` is that cluster.
    """
    x, y, p1, p2 = _kmeans_inputs(values)
    prog = _grid_programme(x, y, p1, p2, k, KMEANS_DC_FANOUT)
    return lloyd_threshold(x, y, p1, prog.pos, prog.arg)


def lloyd_threshold(x: torch.Tensor, y: torch.Tensor, p1: torch.Tensor, pos: torch.Tensor,
                    arg: torch.Tensor) -> torch.Tensor:
    """Stage 2 of `kmeans1d_fast_threshold`: backtrack the grid programme, refine by Lloyd, 0-dim float64.

    x, y, p1: the prepared inputs of `_kmeans_inputs` (sorted values, centred values, prefix sums of y);
    pos: (G + 1,) int64 grid positions; arg: (k, G + 1) int64 leftmost minimisers of the programme (row l >= 1
    used). Returns the largest value of the lowest cluster (-inf when it is empty).
    """
    n = x.numel()
    k = arg.shape[0]
    bounds = []
    g = pos.numel() - 1
    for layer in range(k - 1, 0, -1):  # backtrack (kmeans_backtrack)
        g = int(arg[layer, g])
        bounds.append(int(pos[g]))
    bounds = torch.tensor(bounds[::-1], dtype=torch.int64, device=x.device)

    def centers_of(b: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        edges = torch.cat([b.new_zeros(1), b, b.new_full((1,), n)])
        count = (edges[1:] - edges[:-1]).to(x.dtype)
        return torch.where(count > 0, (p1[edges[1:]] - p1[edges[:-1]]) / count.clamp_min(1), fallback)

    centers = centers_of(bounds, torch.zeros(k, dtype=x.dtype, device=x.device))
    for _ in range(LLOYD_MAX_ITER):
        new_bounds = torch.searchsorted(y, (centers[:-1] + centers[1:]) / 2, right=True)
        centers = centers_of(new_bounds, centers)
        moved = not torch.equal(new_bounds, bounds)
        bounds = new_bounds
        if not moved:
            break
    first_end = int(bounds[0]) if k > 1 else n
    return x[first_end - 1] if first_end > 0 else x.new_tensor(float("-inf"))


def kmeans1d_exact_threshold(values: torch.Tensor, k: int) -> torch.Tensor:
    """Like `kmeans1d_fast_threshold` with the globally optimal 1-D k-means.

    Uses the ``kmeans1d`` package (the public code's choice, O(kn) SMAWK); runs on the host, so a
    CUDA input synchronises.
    """
    try:
        import kmeans1d
    except ImportError as err:  # pragma: no cover - kmeans1d is an install requirement
        raise MissingDependencyError("bsw_mask(method='exact') needs the 'kmeans1d' package: pip install kmeans1d") from err
    flat = values.detach().reshape(-1).to("cpu", torch.float64)
    k = max(1, min(int(k), flat.numel()))
    clusters, _ = kmeans1d.cluster(flat.tolist(), k)
    labels = torch.tensor(clusters)
    # The lowest cluster is the one holding the smallest value: with fewer distinct values than k,
    # kmeans1d leaves low cluster numbers empty, so ``labels == 0`` would select nothing.
    lowest = flat[labels == labels[flat.argmin()]]
    thr = lowest.max()
    return thr.to(values.device)


def bsw_mask(cov1: torch.Tensor, cov2: torch.Tensor, k: int = 50, method: str = "fast") -> torch.Tensor:
    """Background-selective mask (B, C, C), bool.

    Vr = (cov1 - cov2)^2 / 4 over all B*C*C elements is clustered by 1-D k-means; the elements of
    the lowest-variance cluster, restricted to the upper triangle with its diagonal, are selected.
    ``method`` "fast" (default, what the kernels run: `kmeans1d_fast_threshold`) or
    "exact" (the optimal clustering of the public code's ``kmeans1d``, on the host).
    """
    vr = cross_frame_variance(cov1.detach(), cov2.detach())
    if method == "fast":
        thr = kmeans1d_fast_threshold(vr, k)
    elif method == "exact":
        thr = kmeans1d_exact_threshold(vr, k)
    else:
        raise InputError(f"bsw_mask: method must be 'fast' or 'exact', got {method!r}")
    c = cov1.shape[-1]
    upper = torch.ones(c, c, dtype=torch.bool, device=cov1.device).triu()
    return (vr.to(torch.float64) <= thr) & upper


def bsw_loss_masked(cov1: torch.Tensor, cov2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(M * (|cov1| + |cov2|)) / (B * sum(M)), 0 when the mask is empty; 0-dim."""
    b = cov1.shape[0]
    m = mask.to(cov1.dtype)
    count = m.sum()
    total = (m * (cov1.abs() + cov2.abs())).sum()
    return torch.where(count > 0, total / (b * count.clamp_min(1)), total * 0)


def bsw_loss(features1: torch.Tensor, features2: torch.Tensor, k: int = 50, method: str = "fast") -> torch.Tensor:
    """Background selective whitening loss of two frames' features (B, C, H, W) each; 0-dim."""
    cov1 = feature_covariance(features1)
    cov2 = feature_covariance(features2)
    mask = bsw_mask(cov1, cov2, k, method)
    return bsw_loss_masked(cov1, cov2, mask)
