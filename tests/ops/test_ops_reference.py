"""The pure-PyTorch reference (``mgid.ops.reference``) against naive transcriptions of the equations.

Over 400 lines because each equation's naive transcription sits beside its test, one section
per op; moving the transcriptions elsewhere would separate the oracle from what it checks.

The reference is the oracle of every kernel test, so it is itself checked here against code written
straight from docs/ALGORITHM.md: explicit Python loops over queries and items on tiny inputs
(B 2, C 5, 3x4, M 4), plain Python floats, no vectorisation shared with the reference. Where the
reference uses an identity (e.g. V[k,m] / max_k' V[k',m] = exp(S[k,m] - max_k' S[k',m])), the
transcription computes the literal form (the full column softmax) so the identity is checked too.
Random inputs are seeded and tie-free (continuous random values); ties are tested on purpose with
basis-vector items whose scores are exact regardless of summation order.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mgid.ops import reference as ref

B, C, H, W, M = 2, 5, 3, 4, 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _query(seed: int = 0, dtype=torch.float64, shape=(B, C, H, W)) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _items(seed: int = 1, m: int = M, c: int = C, dtype=torch.float64, unit: bool = True) -> torch.Tensor:
    p = torch.randn(m, c, generator=_gen(seed), dtype=torch.float64)
    if unit:
        p = F.normalize(p, dim=1)
    return p.to(dtype)


# ---------------------------------------------------------------------------------------------
# Naive transcriptions (Python loops, Python floats)
# ---------------------------------------------------------------------------------------------

def _pixels(query: torch.Tensor) -> list[list[float]]:
    """Queries in NCHW pixel order (b, h, w), each a list of C floats."""
    b_, c_, h_, w_ = query.shape
    q = query.double().tolist()
    return [[q[b][c][h][w] for c in range(c_)] for b in range(b_) for h in range(h_) for w in range(w_)]


def _normalize(v: list[float], eps: float = 1e-12) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / max(norm, eps) for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _argmax_first(row: list[float], exclude: int | None = None) -> int:
    best = None
    for i, v in enumerate(row):
        if i == exclude:
            continue
        if best is None or v > row[best]:  # strict: the first maximum wins ties
            best = i
    return best


def naive_scores(query, items):
    q_hat = [_normalize(v) for v in _pixels(query)]
    p = items.double().tolist()
    s = [[_dot(q, pm) for pm in p] for q in q_hat]
    return q_hat, p, s


def naive_read(query: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """concat[q_hat, softmax_items(q_hat P^T) P] as (B, 2C, H, W), float64."""
    b_, c_, h_, w_ = query.shape
    q_hat, p, s = naive_scores(query, items)
    out = torch.zeros(b_, 2 * c_, h_, w_, dtype=torch.float64)
    k = 0
    for b in range(b_):
        for h in range(h_):
            for w in range(w_):
                row_max = max(s[k])
                e = [math.exp(v - row_max) for v in s[k]]
                z = sum(e)
                weights = [v / z for v in e]
                for c in range(c_):
                    out[b, c, h, w] = q_hat[k][c]
                    out[b, c_ + c, h, w] = sum(weights[m] * p[m][c] for m in range(len(p)))
                k += 1
    return out


def naive_update(query, items, max_over_assigned: bool = False):
    """Returns (new_items, col_max, delta, assignment) from the literal MNAD update equations."""
    q_hat, p, s = naive_scores(query, items)
    n, m_, c_ = len(q_hat), len(p), len(p[0])
    # V: softmax over ALL queries (column-wise), computed literally.
    v = [[0.0] * m_ for _ in range(n)]
    for m in range(m_):
        z = sum(math.exp(s[k][m]) for k in range(n))
        for k in range(n):
            v[k][m] = math.exp(s[k][m]) / z
    assign = [_argmax_first(s[k]) for k in range(n)]
    new_items, col_max, delta = [], [], []
    for m in range(m_):
        members = [k for k in range(n) if assign[k] == m]
        if max_over_assigned:
            vmax = max((v[k][m] for k in members), default=None)
            col_max.append(max((s[k][m] for k in members), default=float("-inf")))
        else:
            vmax = max(v[k][m] for k in range(n))
            col_max.append(max(s[k][m] for k in range(n)))
        d = [0.0] * c_
        for k in members:
            for c in range(c_):
                d[c] += v[k][m] / vmax * q_hat[k][c]
        delta.append(d)
        new_items.append(_normalize([p[m][c] + d[c] for c in range(c_)]))
    return (torch.tensor(new_items, dtype=torch.float64), torch.tensor(col_max, dtype=torch.float64),
            torch.tensor(delta, dtype=torch.float64), assign)


def naive_losses(query, items, eps: float = 1e-6, margin: float = 1.0):
    """(compactness, separateness_by_hand, separateness_by_module, top1, top2)."""
    q_hat, p, s = naive_scores(query, items)
    n, c_ = len(q_hat), len(p[0])
    top1 = [_argmax_first(row) for row in s]
    top2 = [_argmax_first(row, exclude=t) for row, t in zip(s, top1)]
    compact = sum((q_hat[k][c] - p[top1[k]][c]) ** 2 for k in range(n) for c in range(c_)) / (n * c_)

    def dist(x, y):  # torch.pairwise_distance: || x - y + eps ||_2
        return math.sqrt(sum((a - b + eps) ** 2 for a, b in zip(x, y)))

    sep_hand = sum(max(dist(q_hat[k], p[top1[k]]) - dist(q_hat[k], p[top2[k]]) + margin, 0.0)
                   for k in range(n)) / n
    module = torch.nn.TripletMarginLoss(margin=margin, eps=eps)
    sep_module = module(torch.tensor(q_hat, dtype=torch.float64),
                        torch.tensor([p[t] for t in top1], dtype=torch.float64),
                        torch.tensor([p[t] for t in top2], dtype=torch.float64))
    return compact, sep_hand, sep_module.item(), top1, top2


def naive_covariance(features: torch.Tensor) -> torch.Tensor:
    b_, c_, h_, w_ = features.shape
    f = features.double().reshape(b_, c_, h_ * w_).tolist()
    hw = h_ * w_
    out = torch.zeros(b_, c_, c_, dtype=torch.float64)
    for b in range(b_):
        for i in range(c_):
            for j in range(c_):
                out[b, i, j] = sum(f[b][i][t] * f[b][j][t] for t in range(hw)) / (hw - 1) + (1e-5 if i == j else 0.0)
    return out


def naive_bsw_loss_masked(cov1, cov2, mask) -> float:
    b_, c_, _ = cov1.shape
    total, count = 0.0, 0
    for b in range(b_):
        for i in range(c_):
            for j in range(c_):
                if mask[b, i, j]:
                    total += abs(float(cov1[b, i, j])) + abs(float(cov2[b, i, j]))
                    count += 1
    return total / (b_ * count) if count else 0.0


def naive_bsw_mask_exact(cov1, cov2, k) -> torch.Tensor:
    """The public code: Vr = (S1 - S2)^2 / 4, kmeans1d over all elements, cluster 0, upper triangle."""
    kmeans1d = pytest.importorskip("kmeans1d")  # optional where it is not installed: the test skips
    b_, c_, _ = cov1.shape
    c1, c2 = cov1.double().tolist(), cov2.double().tolist()
    flat = [(c1[b][i][j] - c2[b][i][j]) ** 2 / 4 for b in range(b_) for i in range(c_) for j in range(c_)]
    labels, _ = kmeans1d.cluster(flat, min(k, len(flat)))
    mask = torch.zeros(b_, c_, c_, dtype=torch.bool)
    idx = 0
    for b in range(b_):
        for i in range(c_):
            for j in range(c_):
                mask[b, i, j] = labels[idx] == 0 and i <= j
                idx += 1
    return mask


def _in_features(seed: int, shape=(B, C, H, W)) -> torch.Tensor:
    """Instance-normalised random features (zero mean per channel), float64."""
    return F.instance_norm(torch.randn(*shape, generator=_gen(seed), dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Memory read
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_through_weights", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_memory_read_matches_naive(seed, grad_through_weights):
    q, p = _query(seed), _items(seed + 10)
    want = naive_read(q, p)
    got = ref.memory_read(q, p, grad_through_weights)
    assert got.shape == (B, 2 * C, H, W) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # float32 query with float32 items: same result to float32 precision, float32 output.
    got32 = ref.memory_read(q.float(), p.float(), grad_through_weights)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=0, atol=2e-6)


def test_memory_read_non_unit_items_and_zero_query():
    """Items are used as given (not re-normalised by the read); an all-zero query pixel gives q_hat = 0
    (norm clamped at 1e-12), uniform weights, and r = the mean item."""
    q = _query(3)
    q[1, :, 2, 1] = 0
    p = _items(4, unit=False) * 3
    got = ref.memory_read(q, p)
    torch.testing.assert_close(got, naive_read(q, p), rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1, :C, 2, 1], torch.zeros(C, dtype=torch.float64))
    torch.testing.assert_close(got[1, C:, 2, 1], p.mean(0), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Memory update
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_over_assigned", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_memory_update_matches_naive(seed, max_over_assigned):
    q, p = _query(seed), _items(seed + 20)
    want, _, _, _ = naive_update(q, p, max_over_assigned)
    got = ref.memory_update(q, p, max_over_assigned)
    assert got.shape == (M, C) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(M, dtype=torch.float64), rtol=0, atol=1e-12)
    got32 = ref.memory_update(q.float(), p.float(), max_over_assigned)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=0, atol=2e-6)


def test_memory_update_public_and_paper_variants_differ():
    """The two normalisations of the weight are different quantities; a test input where they agree
    would not tell them apart, so check ours is not such an input."""
    q, p = _query(0), _items(20)
    public = ref.memory_update(q, p, max_over_assigned=False)
    paper = ref.memory_update(q, p, max_over_assigned=True)
    assert (public - paper).abs().max() > 1e-3


def _positive_queries_and_an_unreachable_item(seed: int):
    """Queries with positive components; items 0..2 positive, item 3 negative (never the top-1), and
    items not unit length so the re-normalisation of the unassigned item is visible."""
    q = _query(seed).abs() + 0.05
    p = _items(seed + 30, unit=False).abs() + 0.1
    p[3] = -p[3]
    p = p * torch.tensor([[2.0], [0.5], [1.5], [3.0]], dtype=torch.float64)
    return q, p


@pytest.mark.parametrize("max_over_assigned", [False, True])
def test_memory_update_unassigned_item_is_only_renormalised(max_over_assigned):
    q, p = _positive_queries_and_an_unreachable_item(5)
    want, col_max, delta, assign = naive_update(q, p, max_over_assigned)
    assert 3 not in assign and len(set(assign)) >= 2  # the input does what it claims
    got = ref.memory_update(q, p, max_over_assigned)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[3], F.normalize(p[3], dim=0), rtol=0, atol=1e-15)
    stats_max, stats_sum = ref.memory_update_stats(q, p, max_over_assigned)
    torch.testing.assert_close(stats_sum[3], torch.zeros(C, dtype=torch.float64))
    if max_over_assigned:
        assert stats_max[3].item() == float("-inf")
    else:
        assert math.isfinite(stats_max[3].item())
    torch.testing.assert_close(stats_max, col_max, rtol=0, atol=1e-12)


@pytest.mark.parametrize("max_over_assigned", [False, True])
@pytest.mark.parametrize("seed", [0, 4])
def test_memory_update_stats_consistency(seed, max_over_assigned):
    """col_max is the column max of S (all queries, or the assigned ones); weighted_sum is delta;
    normalize(P + weighted_sum) is memory_update's output."""
    q, p = _query(seed), _items(seed + 40, unit=False)
    want_items, want_max, want_delta, _ = naive_update(q, p, max_over_assigned)
    col_max, weighted_sum = ref.memory_update_stats(q, p, max_over_assigned)
    assert col_max.shape == (M,) and weighted_sum.shape == (M, C)
    torch.testing.assert_close(col_max, want_max, rtol=0, atol=1e-12)
    torch.testing.assert_close(weighted_sum, want_delta, rtol=0, atol=1e-12)
    torch.testing.assert_close(F.normalize(p + weighted_sum, dim=1), ref.memory_update(q, p, max_over_assigned),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(ref.memory_update_finish(p, weighted_sum), want_items, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,acc", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                       (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_memory_update_stats_accumulation_dtype(dtype, acc):
    """Statistics accumulate in float32 for half inputs (they are summed across ranks)."""
    col_max, weighted_sum = ref.memory_update_stats(_query(0, dtype), _items(1, dtype=dtype))
    assert col_max.dtype == acc and weighted_sum.dtype == acc


def test_ties_take_the_first_maximum():
    """Items 1 and 2 are the same basis vector e0, so their scores are bitwise equal for every query
    (a dot product with a basis vector adds exact zeros). argmax takes the first maximum: queries
    pointing along e0 go to item 1, item 2 is never assigned and stays put; top-2 of those queries is
    item 2."""
    eye = torch.eye(C, dtype=torch.float64)
    p = torch.stack([eye[1], eye[0], eye[0], eye[2]])
    q = _query(6)
    q[:, 0] = q[:, 0].abs() + 3.0  # e0 dominates every query
    want, _, _, assign = naive_update(q, p)
    assert set(assign) == {1}
    got = ref.memory_update(q, p)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.equal(got[2], p[2]) and not torch.allclose(got[1], p[1])
    compact, sep_hand, _, top1, top2 = naive_losses(q, p)
    assert set(top1) == {1} and set(top2) == {2}
    c, s = ref.memory_losses(q, p)
    assert c.item() == pytest.approx(compact, abs=1e-12)
    assert s.item() == pytest.approx(sep_hand, abs=1e-12)


def test_memory_update_has_no_gradient():
    q = _query(0).requires_grad_()
    p = _items(1).requires_grad_()
    out = ref.memory_update(q, p)
    assert not out.requires_grad
    col_max, weighted_sum = ref.memory_update_stats(q, p)
    assert not col_max.requires_grad and not weighted_sum.requires_grad


# ---------------------------------------------------------------------------------------------
# Memory losses
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_memory_losses_match_naive(seed):
    q, p = _query(seed), _items(seed + 50)
    compact, sep_hand, sep_module, _, _ = naive_losses(q, p)
    assert sep_module == pytest.approx(sep_hand, abs=1e-12)  # our reading of TripletMarginLoss
    c, s = ref.memory_losses(q, p)
    assert c.dim() == 0 and s.dim() == 0
    assert c.item() == pytest.approx(compact, abs=1e-12)
    assert s.item() == pytest.approx(sep_module, abs=1e-12)
    c32, s32 = ref.memory_losses(q.float(), p.float())
    assert c32.item() == pytest.approx(compact, abs=1e-6)
    assert s32.item() == pytest.approx(sep_module, abs=1e-6)


def test_memory_losses_triplet_hinge_is_active_and_inactive():
    """With separated items some queries' triplet terms are clamped at 0 and some are not, so the
    max(., 0) of the transcription is exercised (a loss that is all hinge or all linear would not
    catch a missing clamp)."""
    q = _query(7)
    p = _items(8)
    q_hat, pl, s = naive_scores(q, p)
    top1 = [_argmax_first(r) for r in s]
    top2 = [_argmax_first(r, exclude=t) for r, t in zip(s, top1)]
    terms = [math.dist(qh, pl[a]) - math.dist(qh, pl[b]) + 1.0 for qh, a, b in zip(q_hat, top1, top2)]
    assert any(t > 0 for t in terms)
    # Make a query's top-1 item coincide with it: its term is 0 - d_an + 1 < 0 when d_an > 1.
    p2 = p.clone()
    p2[0] = F.normalize(q[0, :, 0, 0], dim=0)
    p2[1] = -p2[0]
    q_hat2, pl2, s2 = naive_scores(q, p2)
    t1 = [_argmax_first(r) for r in s2]
    t2 = [_argmax_first(r, exclude=t) for r, t in zip(s2, t1)]
    terms2 = [math.dist(qh, pl2[a]) - math.dist(qh, pl2[b]) + 1.0 for qh, a, b in zip(q_hat2, t1, t2)]
    assert any(t < 0 for t in terms2) and any(t > 0 for t in terms2)
    _, sep_hand, _, _, _ = naive_losses(q, p2)
    assert ref.memory_losses(q, p2)[1].item() == pytest.approx(sep_hand, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Covariance and BSW
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_feature_covariance_matches_naive(seed):
    f = _in_features(seed)
    want = naive_covariance(f)
    got = ref.feature_covariance(f)
    assert got.shape == (B, C, C)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # Uncentred by design: a non-zero-mean input is not centred.
    g = _query(seed + 1) + 2.0
    torch.testing.assert_close(ref.feature_covariance(g), naive_covariance(g), rtol=0, atol=1e-12)
    torch.testing.assert_close(ref.feature_covariance(f.float()).double(), want, rtol=0, atol=1e-5)


def test_bsw_loss_masked_matches_naive():
    c1 = ref.feature_covariance(_in_features(0))
    c2 = ref.feature_covariance(_in_features(1))
    mask = torch.rand(B, C, C, generator=_gen(2)) < 0.4
    assert 0 < mask.sum() < mask.numel()
    got = ref.bsw_loss_masked(c1, c2, mask)
    assert got.dim() == 0
    assert got.item() == pytest.approx(naive_bsw_loss_masked(c1, c2, mask), abs=1e-12)
    # The divisor is B * (selected count of the whole batch), not the per-sample count: a mask
    # that selects only in sample 0 still divides by B.
    mask0 = mask.clone()
    mask0[1] = False
    want0 = ((c1[0].abs() + c2[0].abs()) * mask0[0]).sum() / (B * mask0.sum())
    assert ref.bsw_loss_masked(c1, c2, mask0).item() == pytest.approx(want0.item(), abs=1e-12)


def test_bsw_loss_masked_empty_mask_is_zero_with_zero_gradient():
    c1 = ref.feature_covariance(_in_features(0)).requires_grad_()
    c2 = ref.feature_covariance(_in_features(1)).detach().requires_grad_()
    loss = ref.bsw_loss_masked(c1, c2, torch.zeros(B, C, C, dtype=torch.bool))
    assert loss.item() == 0.0
    g1, g2 = torch.autograd.grad(loss, (c1, c2))
    assert torch.equal(g1, torch.zeros_like(g1)) and torch.equal(g2, torch.zeros_like(g2))


def _levelled_covariances(seed: int, levels=(0.0, 2.0, 6.0)):
    """cov2 = cov1 + d with d drawn element-wise from ``levels`` (not symmetric), so Vr = d^2/4 takes
    exactly len(levels) values and the lowest-variance cluster is {d == 0}, in both triangles."""
    g = _gen(seed)
    c1 = torch.randn(B, C, C, generator=g, dtype=torch.float64)
    which = torch.randint(0, len(levels), (B, C, C), generator=g)
    d = torch.tensor(levels, dtype=torch.float64)[which]
    return c1, c1 + d, d


@pytest.mark.parametrize("method", ["fast", "exact"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bsw_mask_selects_lowest_cluster_upper_triangle(seed, method):
    c1, c2, d = _levelled_covariances(seed)
    low = d == 0
    assert low.tril(-1).any()  # the lower triangle has low-variance elements that must be dropped
    mask = ref.bsw_mask(c1, c2, k=3, method=method)
    assert mask.dtype == torch.bool and mask.shape == (B, C, C)
    assert torch.equal(mask, low & torch.ones(C, C, dtype=torch.bool).triu())
    # Swapping the frames changes nothing (the variance of two values is symmetric).
    assert torch.equal(ref.bsw_mask(c2, c1, k=3, method=method), mask)


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_bsw_mask_k1_selects_whole_upper_triangle(method):
    c1, c2, _ = _levelled_covariances(3)
    mask = ref.bsw_mask(c1, c2, k=1, method=method)
    assert torch.equal(mask, torch.ones(B, C, C, dtype=torch.bool).triu())


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_bsw_mask_identical_frames_select_whole_upper_triangle(method):
    """Two identical frames: every variance is 0, all elements are background, so the mask is the
    whole upper triangle and the loss is the mean |Sigma| there. (With the default k 50 there is
    one distinct value, fewer than k: the ``kmeans1d`` package then leaves cluster 0 empty; the
    lowest non-empty cluster must be taken, not an empty mask and a silent loss of 0.)"""
    f = _in_features(4)
    cov = ref.feature_covariance(f)
    mask = ref.bsw_mask(cov, cov.clone(), k=50, method=method)
    upper = torch.ones(B, C, C, dtype=torch.bool).triu()
    assert torch.equal(mask, upper)
    want = naive_bsw_loss_masked(cov, cov, upper)
    assert ref.bsw_loss(f, f.clone(), k=50, method=method).item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_bsw_mask_exact_matches_public_code_transcription(seed, k):
    c1 = ref.feature_covariance(_in_features(seed))
    c2 = ref.feature_covariance(_in_features(seed) + 0.3 * _in_features(seed + 100))
    want = naive_bsw_mask_exact(c1, c2, k)
    assert want.any()
    assert torch.equal(ref.bsw_mask(c1, c2, k=k, method="exact"), want)
    # fast: same composition (variance, threshold, <=, upper triangle) with its own threshold.
    vr = (c1 - c2) ** 2 / 4
    thr = ref.kmeans1d_fast_threshold(vr, k)
    assert torch.equal(ref.bsw_mask(c1, c2, k=k, method="fast"), (vr <= thr) & torch.ones(C, C, dtype=torch.bool).triu())


def test_bsw_mask_is_not_differentiated():
    c1 = ref.feature_covariance(_in_features(0)).requires_grad_()
    c2 = ref.feature_covariance(_in_features(1)).requires_grad_()
    assert not ref.bsw_mask(c1, c2, k=5).requires_grad


@pytest.mark.parametrize("k", [3, 10])
def test_bsw_loss_matches_naive_composition(k):
    f1 = _in_features(0)
    f2 = F.instance_norm(f1 + 0.3 * _in_features(1))
    c1, c2 = naive_covariance(f1), naive_covariance(f2)
    mask = naive_bsw_mask_exact(c1, c2, k)
    want = naive_bsw_loss_masked(c1, c2, mask)
    assert ref.bsw_loss(f1, f2, k=k, method="exact").item() == pytest.approx(want, abs=1e-12)
    fast_mask = ref.bsw_mask(ref.feature_covariance(f1), ref.feature_covariance(f2), k=k)
    assert ref.bsw_loss(f1, f2, k=k).item() == pytest.approx(naive_bsw_loss_masked(c1, c2, fast_mask), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradient semantics
# ---------------------------------------------------------------------------------------------

def test_read_half_has_no_gradient_by_default_and_items_never_do():
    q = _query(0).requires_grad_()
    p = _items(1).requires_grad_()
    out = ref.memory_read(q, p, grad_through_weights=False)
    (g_read,) = torch.autograd.grad(out[:, C:].sum(), q, allow_unused=True, retain_graph=True)
    assert g_read is None or torch.equal(g_read, torch.zeros_like(q))
    (g_items,) = torch.autograd.grad(out.sum(), p, allow_unused=True, retain_graph=True)
    assert g_items is None
    # The q_hat half does carry a gradient.
    (g_qhat,) = torch.autograd.grad(out[:, :C].pow(2).mul(torch.arange(C, dtype=torch.float64)[:, None, None]).sum(), q)
    assert g_qhat.abs().max() > 1e-3


def test_read_half_has_gradient_with_grad_through_weights():
    q = _query(0).requires_grad_()
    p = _items(1).requires_grad_()
    out = ref.memory_read(q, p, grad_through_weights=True)
    (g_read,) = torch.autograd.grad(out[:, C:].sum(), q, retain_graph=True)
    assert g_read.abs().max() > 1e-3
    (g_items,) = torch.autograd.grad(out.sum(), p, allow_unused=True)
    assert g_items is None


def test_default_read_gradient_is_the_q_hat_half_gradient():
    """With W detached, the full vector-Jacobian product equals the one of the q_hat half alone."""
    q = _query(1).requires_grad_()
    p = _items(2)
    grad_out = torch.randn(B, 2 * C, H, W, generator=_gen(3), dtype=torch.float64)
    (g_default,) = torch.autograd.grad(ref.memory_read(q, p), q, grad_out)
    (g_qhat,) = torch.autograd.grad(ref.memory_read(q, p, True)[:, :C], q, grad_out[:, :C])
    torch.testing.assert_close(g_default, g_qhat, rtol=0, atol=1e-14)
    (g_full,) = torch.autograd.grad(ref.memory_read(q, p, True), q, grad_out)
    assert (g_full - g_default).abs().max() > 1e-3


def test_losses_do_not_reach_items():
    q = _query(0).requires_grad_()
    p = _items(1).requires_grad_()
    c, s = ref.memory_losses(q, p)
    assert torch.autograd.grad(c + s, p, allow_unused=True, retain_graph=True)[0] is None
    gq = torch.autograd.grad(c + s, q)[0]
    assert gq.abs().max() > 0


# ---------------------------------------------------------------------------------------------
# gradcheck (float64)
# ---------------------------------------------------------------------------------------------

def test_gradcheck_memory_read_full():
    q = _query(0).requires_grad_()
    p = _items(1)
    assert torch.autograd.gradcheck(lambda x: ref.memory_read(x, p, True), (q,))


def test_gradcheck_memory_read_default_q_hat_half():
    """The default mode's read half has a zero gradient by definition (detached, checked above), so
    gradcheck applies to the differentiable q_hat half."""
    q = _query(0).requires_grad_()
    p = _items(1)
    assert torch.autograd.gradcheck(lambda x: ref.memory_read(x, p, False)[:, :C], (q,))


@pytest.mark.parametrize("term", [0, 1])
def test_gradcheck_memory_losses(term):
    """top-1/top-2 are piecewise constant; random tie-free inputs keep them fixed under the 1e-6
    perturbation, and the triplet hinge is away from its kink (checked)."""
    q = _query(2).requires_grad_()
    p = _items(3)
    q_hat, pl, s = naive_scores(q.detach(), p)
    for row in s:  # margin between top-1 / top-2 / top-3 scores, far above gradcheck's eps
        srt = sorted(row, reverse=True)
        assert srt[0] - srt[1] > 1e-4 and srt[1] - srt[2] > 1e-4
    assert torch.autograd.gradcheck(lambda x: ref.memory_losses(x, p)[term], (q,))


def test_gradcheck_feature_covariance():
    f = _in_features(0).requires_grad_()
    assert torch.autograd.gradcheck(ref.feature_covariance, (f,))


def test_gradcheck_bsw_loss_masked():
    c1 = ref.feature_covariance(_in_features(0)).requires_grad_()
    c2 = ref.feature_covariance(_in_features(1)).requires_grad_()
    mask = torch.rand(B, C, C, generator=_gen(2)) < 0.5
    assert mask.any()
    assert (c1.detach().abs().min() > 1e-4) and (c2.detach().abs().min() > 1e-4)  # away from |.|'s kink
    assert torch.autograd.gradcheck(lambda a, b: ref.bsw_loss_masked(a, b, mask), (c1, c2))


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_gradcheck_bsw_loss(method):
    """Frame 2 equals frame 1 except channels 0 and 1, so Vr is exactly 0 off rows/columns 0 and 1 and
    O(1) on most of them: with k 2 the partition is far from a cluster boundary. The test first
    checks that masks under perturbations 100x gradcheck's eps equal the unperturbed mask."""
    f1 = _in_features(0)
    f2 = f1.clone()
    f2[:, :2] = _in_features(1)[:, :2]
    k = 2

    def mask_of(a, b):
        return ref.bsw_mask(ref.feature_covariance(a), ref.feature_covariance(b), k, method)

    base = mask_of(f1, f2)
    assert base.any() and not base.triu().all()
    for s in range(5):
        e1 = 1e-4 * torch.randn(f1.shape, generator=_gen(100 + s), dtype=torch.float64)
        e2 = 1e-4 * torch.randn(f1.shape, generator=_gen(200 + s), dtype=torch.float64)
        assert torch.equal(mask_of(f1 + e1, f2 + e2), base)
    f1.requires_grad_()
    f2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ref.bsw_loss(a, b, k, method), (f1, f2))


# ---------------------------------------------------------------------------------------------
# Reduced precision (CPU)
# ---------------------------------------------------------------------------------------------

# Tolerances: half-precision inputs round q to 11 (fp16) / 8 (bf16) significant bits and the
# reference computes in that dtype; outputs are unit-scale. Measured max errors are ~0.4 (fp16) and
# ~0.55 (bf16) of the format's machine epsilon (9.8e-4 / 7.8e-3); the bound is 2 epsilons.
HALF_TOL = {torch.float16: 2 * 2.0 ** -10, torch.bfloat16: 2 * 2.0 ** -7}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_read_close_to_float32(dtype):
    q, p = _query(0, torch.float32), _items(1, dtype=torch.float32)
    want = ref.memory_read(q, p)
    got = ref.memory_read(q.to(dtype), p)  # float32 items with a half query
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, rtol=0, atol=HALF_TOL[dtype])
    got_full = ref.memory_read(q.to(dtype), p.to(dtype), grad_through_weights=True)
    torch.testing.assert_close(got_full.float(), want, rtol=0, atol=HALF_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_update_and_losses_close_to_float32(dtype):
    q, p = _query(0, torch.float32), _items(1, dtype=torch.float32)
    new = ref.memory_update(q.to(dtype), p)
    assert new.dtype == torch.float32  # new items keep the items' dtype
    torch.testing.assert_close(new, ref.memory_update(q, p), rtol=0, atol=HALF_TOL[dtype])
    c, s = ref.memory_losses(q.to(dtype), p)
    c32, s32 = ref.memory_losses(q, p)
    assert c.item() == pytest.approx(c32.item(), abs=HALF_TOL[dtype])
    assert s.item() == pytest.approx(s32.item(), abs=HALF_TOL[dtype])
    f = _in_features(0).float()
    cov = ref.feature_covariance(f.to(dtype))
    torch.testing.assert_close(cov.float(), ref.feature_covariance(f), rtol=0, atol=HALF_TOL[dtype])
