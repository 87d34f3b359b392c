"""Pure-PyTorch reference of every mgid op.

Plain, vectorised PyTorch (no Python loop over items or queries), written to be read next to
``docs/ALGORITHM.md``. It is the oracle of every test, the fallback where the compiled
extension is absent, and what ``MGID_OPS=reference`` selects. Autograd flows through it natively,
with the detach points of the public MNAD/MGID code.

Shapes: query ``q`` (B, C, H, W); items ``P`` (M, C); N = B*H*W queries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12  # as F.normalize
COV_EPS = 1e-5  # ridge added to every covariance (public code)
TRIPLET_MARGIN = 1.0
TRIPLET_EPS = 1e-6


def flatten_queries(query: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (N, C), N = B*H*W, in NCHW pixel order (b, h, w)."""
    b, c, h, w = query.shape
    return query.permute(0, 2, 3, 1).reshape(b * h * w, c)


def unflatten_queries(x: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(N, C) -> (B, C, H, W); inverse of :func:`flatten_queries`."""
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
    :func:`memory_update_stats`. Items with no assigned query are only re-normalised.
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

    The ops above, each on the same query and items: :func:`memory_read` (B, 2C, H, W),
    :func:`memory_losses` (two 0-dim; 0 without ``with_losses``) and :func:`memory_update_stats`
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


def kmeans1d_fast_threshold(values: torch.Tensor, k: int) -> torch.Tensor:
    """Upper bound of the lowest cluster of a 1-D k-means of ``values`` (any shape), 0-dim float64.

    What the kernels compute, in two deterministic stages on the sorted values x (float64):
    1. exact dynamic programming with boundaries restricted to :func:`kmeans_grid_positions`
       (D[l][g] = min_h D[l-1][h] + SSE(p_h, p_g), leftmost minimiser on ties): the optimal
       clustering when there are at most 1024 values;
    2. Lloyd iterations from that partition (a boundary is the first value above the midpoint of
       two adjacent centres; an empty cluster keeps its centre) until no boundary moves.
    Sums are taken of x - mean(x) so SSE = sum(y^2) - sum(y)^2 / len does not cancel. The result is
    the largest value in the lowest cluster, so ``values <= threshold`` is that cluster.
    """
    x, _ = torch.sort(values.detach().reshape(-1).to(torch.float64))
    n = x.numel()
    mu = x.mean()
    y = x - mu
    zero = x.new_zeros(1)
    p1 = torch.cat([zero, torch.cumsum(y, 0)])
    p2 = torch.cat([zero, torch.cumsum(y * y, 0)])
    pos = kmeans_grid_positions(n, x.device)
    grid = pos.numel() - 1
    k = max(1, min(int(k), grid))

    # SSE of the run [p_h, p_g) for every pair h < g: (G+1, G+1).
    s = p1[pos][None, :] - p1[pos][:, None]
    length = (pos[None, :] - pos[:, None]).to(x.dtype)
    sse = ((p2[pos][None, :] - p2[pos][:, None]) - s * s / length).clamp_min(0)
    h_idx = torch.arange(grid + 1, device=x.device)
    before = h_idx[:, None] < h_idx[None, :]
    d = sse[0].clone()  # layer 0: one cluster over [0, p_g)
    argmins = []
    for layer in range(1, k):
        valid = before & (h_idx[:, None] >= layer)
        total = torch.where(valid, d[:, None] + sse, torch.full_like(sse, float("inf")))
        d = total.min(dim=0).values
        argmins.append(torch.argmin(total, dim=0))  # the first minimiser, as the kernels
    bounds = []
    g = grid
    for arg in reversed(argmins):
        g = int(arg[g])
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
    """Like :func:`kmeans1d_fast_threshold` with the globally optimal 1-D k-means.

    Uses the ``kmeans1d`` package (the public code's choice, O(kn) SMAWK); runs on the host, so a
    CUDA input synchronises.
    """
    try:
        import kmeans1d
    except ImportError as err:  # pragma: no cover - kmeans1d is an install requirement
        raise RuntimeError("bsw_mask(method='exact') needs the 'kmeans1d' package: pip install kmeans1d") from err
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
    ``method`` "fast" (default, what the kernels run: :func:`kmeans1d_fast_threshold`) or
    "exact" (the optimal clustering of the public code's ``kmeans1d``, on the host).
    """
    vr = cross_frame_variance(cov1.detach(), cov2.detach())
    if method == "fast":
        thr = kmeans1d_fast_threshold(vr, k)
    elif method == "exact":
        thr = kmeans1d_exact_threshold(vr, k)
    else:
        raise ValueError(f"bsw_mask: method must be 'fast' or 'exact', got {method!r}")
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
