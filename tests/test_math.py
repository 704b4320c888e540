"""The math core: losses, preference divergence, the loss-bound theory and selection.

Hand-computed examples, independent NumPy references on random inputs, gradcheck, the DFPO -> DPO
reduction, fp32/bf16 extremes, brute force over subsets, and error messages. Runs in a few seconds.
"""
import itertools, math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from hypothesis import given, settings, strategies as st

from pd_align.losses import sequence_logps, dpo_loss, dfpo_loss, neg_logsigmoid
from pd_align.divergence import (preference_divergence, holistic_margin, conflict_rate, agreement_matrix,
                                 standardize_scores, scale_margins, spearman)
from pd_align.theory import loss_bounds, holistic_loss, label_noise, dfpo_bound
from pd_align.selection import (n_keep, select_by_pd, select_highest_pd, select_by_margin, select_by_holistic_margin,
                                select_random, select_full, length_balanced, tempered_share, select)

RNG = np.random.default_rng(1234)
def np_f(t): return np.logaddexp(0.0, -t)            # -log sigmoid(t), exact in NumPy


# ---------------------------------------------------------------- losses
def test_neg_logsigmoid_exact_and_gradient_at_zero():
    t = np.concatenate([np.linspace(-60, 60, 1201), [-1e4, -39.9, -40.1, 39.9, 40.1, 1e4]])
    np.testing.assert_allclose(neg_logsigmoid(torch.tensor(t)).numpy(), np_f(t), rtol=1e-15, atol=1e-300)
    x = torch.zeros(3, requires_grad=True)
    neg_logsigmoid(x).sum().backward()
    assert x.grad.tolist() == [-0.5] * 3          # DPO starts at margin 0: the gradient must not vanish there


def test_sequence_logps_matches_numpy_reference():
    B, T, V = 4, 7, 9
    logits = RNG.normal(size=(B, T, V)) * 3
    labels = RNG.integers(0, V, (B, T))
    mask = RNG.random((B, T)) < 0.6
    mask[:, 0] = True                                   # position 0 is never scored (nothing predicts it)
    ref = np.zeros(B)
    for b in range(B):
        for t in range(1, T):
            if mask[b, t]:
                z = logits[b, t - 1]
                ref[b] += z[labels[b, t]] - (np.log(np.exp(z - z.max()).sum()) + z.max())
    got = sequence_logps(torch.tensor(logits), torch.tensor(labels), torch.tensor(mask))
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-10)
    n = mask[:, 1:].sum(1)
    avg = sequence_logps(torch.tensor(logits), torch.tensor(labels), torch.tensor(mask), average=True)
    np.testing.assert_allclose(avg.numpy(), ref / np.maximum(n, 1), atol=1e-10)


def test_sequence_logps_hand_example_and_ignore_index():
    # uniform over 4 tokens: each response token contributes log(1/4)
    logits, labels = torch.zeros(1, 5, 4), torch.tensor([[1, 2, 3, 0, 1]])
    got = sequence_logps(logits, labels, torch.tensor([[0, 0, 1, 1, 1]]))
    assert got.item() == pytest.approx(3 * math.log(0.25), abs=1e-6)
    labels_ign = labels.clone(); labels_ign[0, 4] = -100   # -100 counts as masked
    assert sequence_logps(logits, labels_ign, torch.tensor([[0, 0, 1, 1, 1]])).item() == pytest.approx(2 * math.log(.25), abs=1e-6)
    with pytest.raises(ValueError, match='shapes'):
        sequence_logps(torch.zeros(2, 5), labels, labels)


def test_dpo_loss_hand_example_and_rewards():
    beta = 0.5
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.0))  # margin = (1) - (-1) = 2
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)   # -log sigma(0.5 * 2)
    assert cr.item() == pytest.approx(0.5) and rj.item() == pytest.approx(-0.5)
    ls = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.2)[0].item()
    assert ls == pytest.approx(0.8 * math.log(1 + math.exp(-1)) + 0.2 * math.log(1 + math.exp(1)), abs=1e-6)
    assert dpo_loss(pc, pr, rc, rr, beta=beta, loss_type='ipo')[0].item() == pytest.approx((2 - 1 / (2 * beta)) ** 2)
    with pytest.raises(ValueError, match='label_smoothing'): dpo_loss(pc, pr, rc, rr, label_smoothing=0.5)
    with pytest.raises(ValueError, match='loss_type'): dpo_loss(pc, pr, rc, rr, loss_type='nope')


def test_dpo_and_dfpo_match_numpy_reference():
    N, beta = 50, 0.2
    lp = [RNG.normal(size=N) * 50 for _ in range(4)]
    pd, w = RNG.normal(size=N), RNG.uniform(0.1, 1, N)
    h = beta * ((lp[0] - lp[2]) - (lp[1] - lp[3]))
    t = [torch.tensor(x) for x in lp]
    np.testing.assert_allclose(dpo_loss(*t, beta=beta)[0].numpy(), np_f(h), atol=1e-10)
    np.testing.assert_allclose(dfpo_loss(*t, pd=torch.tensor(pd), aspect_weight=torch.tensor(w), beta=beta)[0].numpy(),
                               np_f((h + pd) / w), atol=1e-10)
    # scalar pd / weight broadcast
    np.testing.assert_allclose(dfpo_loss(*t, pd=0.3, aspect_weight=0.25, beta=beta)[0].numpy(), np_f((h + 0.3) / 0.25), atol=1e-10)


def test_dfpo_reduces_to_dpo_exactly():
    torch.manual_seed(0)
    for dt in (torch.float64, torch.float32, torch.bfloat16):
        lp = [(torch.randn(33) * 40).to(dt) for _ in range(4)]
        d = dpo_loss(*lp, beta=0.1)
        for pd, w in ((0.0, 1.0), (torch.zeros(33, dtype=dt), torch.ones(33, dtype=dt)), (0, 1)):
            f = dfpo_loss(*lp, pd=pd, aspect_weight=w, beta=0.1)
            for a, b in zip(d, f): assert torch.equal(a, b)


def test_dfpo_paper_uniform_form():
    N, K, beta = 40, 5, 0.1
    lp = [RNG.normal(size=N) * 10 for _ in range(4)]
    deltas, k = RNG.normal(size=(N, K)), RNG.integers(0, K, N)
    other = np.ones((N, K), bool); other[np.arange(N), k] = False
    dphi = -(deltas * other).sum(1)
    pd = preference_divergence(torch.tensor(deltas), torch.zeros(N, K, dtype=torch.float64), torch.tensor(k))
    h = beta * ((lp[0] - lp[2]) - (lp[1] - lp[3]))
    got = dfpo_loss(*map(torch.tensor, lp), pd=pd, aspect_weight=1 / K, beta=beta)[0].numpy()
    np.testing.assert_allclose(got, np_f(K * h + dphi), atol=1e-10)


def test_dfpo_bad_inputs():
    lp = [torch.zeros(3)] * 4
    with pytest.raises(ValueError, match='aspect_weight'): dfpo_loss(*lp, pd=0., aspect_weight=torch.tensor([1., 0., 1.]))
    with pytest.raises(ValueError, match='index 2'): dfpo_loss(*lp, pd=torch.tensor([0., 0., float('nan')]), aspect_weight=1.)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_losses_finite_at_extreme_margins(dtype):
    m = torch.tensor([-1e4, -1e3, -10., 0., 10., 1e3, 1e4], dtype=dtype)
    z = torch.zeros_like(m)
    for fn in (lambda x: dpo_loss(x, z, z, z, beta=1.0)[0],
               lambda x: dpo_loss(x, z, z, z, beta=1.0, label_smoothing=0.1)[0],
               lambda x: dfpo_loss(x, z, z, z, pd=-m, aspect_weight=torch.full_like(m, 0.01), beta=1.0)[0],
               lambda x: dfpo_loss(x, z, z, z, pd=1e4, aspect_weight=1e-2, beta=1.0)[0]):
        x = m.clone().requires_grad_()
        loss = fn(x)
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    loss = dpo_loss(m, z, z, z, beta=1.0)[0].float()
    assert loss[0].item() == pytest.approx(-m[0].item(), rel=1e-6) and loss[-1].item() == pytest.approx(0.0, abs=1e-6)  # bf16: 1e4 -> 9984
    big_logits = (torch.randn(2, 4, 5) * 1e4).to(dtype)
    assert torch.isfinite(sequence_logps(big_logits, torch.randint(0, 5, (2, 4)), torch.ones(2, 4))).all()


def test_gradcheck_float64():
    from torch.autograd import gradcheck
    torch.manual_seed(1)
    four = tuple((torch.randn(4, dtype=torch.float64) * 2).requires_grad_() for _ in range(4))
    pd = torch.randn(4, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, dtype=torch.float64) + .2).requires_grad_()
    assert gradcheck(lambda *a: dpo_loss(*a, beta=0.7)[0], four)
    assert gradcheck(lambda a, b, c, d, p, q: dfpo_loss(a, b, c, d, pd=p, aspect_weight=q, beta=0.7)[0], (*four, pd, w))
    lg = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    lab, msk = torch.randint(0, 5, (2, 4)), torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    assert gradcheck(lambda x: sequence_logps(x, lab, msk, average=True), (lg,))


# ---------------------------------------------------------------- divergence
def pd_numpy(c, r, a, w=None):
    K = c.shape[1]
    w = np.full(K, 1 / K) if w is None else w / w.sum()
    return np.array([-sum(w[j] * (c[i, j] - r[i, j]) for j in range(K) if j != a[i]) for i in range(len(a))])


def test_pd_hand_example_and_sign():
    c = torch.tensor([[3., 4., 5.], [1., 0., 0.]])
    r = torch.tensor([[1., 1., 1.], [0., 3., 6.]])
    pd = preference_divergence(c, r, torch.tensor([0, 0]))
    assert pd.tolist() == pytest.approx([-(3 + 4) / 3, (3 + 6) / 3])          # consensus < 0, conflict > 0
    assert (preference_divergence(r, c, torch.tensor([0, 0])) == -pd).all()    # swapping responses flips the sign


def test_pd_matches_numpy_reference_with_weights():
    for K in (1, 2, 4, 5):
        c, r, a = RNG.normal(size=(120, K)), RNG.normal(size=(120, K)), RNG.integers(0, K, 120)
        w = RNG.uniform(0.05, 2, K)
        got = preference_divergence(torch.tensor(c), torch.tensor(r), torch.tensor(a), torch.tensor(w))
        np.testing.assert_allclose(got.numpy(), pd_numpy(c, r, a, w), atol=1e-12)
        np.testing.assert_allclose(preference_divergence(torch.tensor(c), torch.tensor(r), torch.tensor(a)).numpy(),
                                   pd_numpy(c, r, a), atol=1e-12)


def test_pd_nan_policy():
    c = torch.tensor([[float('nan'), 2., 2.], [1., float('nan'), 4.], [1., float('nan'), float('nan')]])
    r = torch.zeros(3, 3)
    a = torch.tensor([0, 0, 0])
    assert preference_divergence(c[:1], r[:1], a[:1]).tolist() == pytest.approx([-4 / 3])   # own aspect NaN: fine
    with pytest.raises(ValueError, match=r'row 1 .*aspect 1'): preference_divergence(c, r, a)
    assert preference_divergence(c, r, a, on_missing='zero').tolist() == pytest.approx([-4 / 3, -4 / 3, 0.])
    # renormalize: known other aspects carry the whole other-aspect mass 2/3; none known -> 0
    assert preference_divergence(c, r, a, on_missing='renormalize').tolist() == pytest.approx([-4 / 3, -8 / 3, 0.])
    with pytest.raises(ValueError, match='on_missing'): preference_divergence(c, r, a, on_missing='drop')
    with pytest.raises(ValueError, match='outside'): preference_divergence(c, r, torch.tensor([0, 3, 0]))
    with pytest.raises(ValueError, match='weights'): preference_divergence(c, r, a, torch.tensor([1., -1., 1.]))


def test_holistic_margin_identity_and_conflict_rate():
    K, N = 4, 300
    c, r, a = RNG.normal(size=(N, K)), RNG.normal(size=(N, K)), RNG.integers(0, K, N)
    w = RNG.uniform(.1, 1, K); wn = w / w.sum()
    hm = holistic_margin(torch.tensor(c), torch.tensor(r), torch.tensor(w)).numpy()
    np.testing.assert_allclose(hm, ((c - r) * wn).sum(1), atol=1e-12)
    own = wn[a] * (c - r)[np.arange(N), a]
    np.testing.assert_allclose(hm, own - pd_numpy(c, r, a, w), atol=1e-12)
    assert conflict_rate(torch.tensor(c), torch.tensor(r), torch.tensor(w)) == pytest.approx((hm < 0).mean())
    # hand: margins (+2, -1) and (-3, +1): one holistic conflict of two
    assert conflict_rate(torch.tensor([[2., -1.], [-3., 1.]]), torch.zeros(2, 2)) == 0.5


def test_agreement_matrix_hand_and_reference():
    c = torch.tensor([[1., 1.], [1., 0.], [1., 2.], [0., 1.]])
    r = torch.tensor([[0., 0.], [0., 1.], [0., 1.], [0., 0.]])
    m = agreement_matrix(c, r, torch.tensor([0, 0, 0, 1]))
    assert m.tolist() == [[1.0, pytest.approx(2 / 3)], [0.5, 1.0]]   # tie on aspect 0 of row 3 counts 1/2
    K, N = 3, 400
    ci, ri = RNG.integers(0, 4, (N, K)).astype(float), RNG.integers(0, 4, (N, K)).astype(float)
    ci[RNG.random((N, K)) < .1] = np.nan
    ai = RNG.integers(0, K, N)
    ref = np.array([[np.nanmean(np.where(np.isnan(ci[ai == i, j] - ri[ai == i, j]), np.nan,
                                         (ci[ai == i, j] > ri[ai == i, j]) + .5 * (ci[ai == i, j] == ri[ai == i, j])))
                     for j in range(K)] for i in range(K)])
    np.testing.assert_allclose(agreement_matrix(torch.tensor(ci), torch.tensor(ri), torch.tensor(ai)).numpy(), ref, atol=1e-12)


def test_standardize_and_scale_margins():
    c, r = RNG.normal(3, 5, (200, 3)), RNG.normal(1, 2, (200, 3))
    zc, zr = standardize_scores(torch.tensor(c), torch.tensor(r))
    both = np.concatenate([c, r])
    np.testing.assert_allclose(zc.numpy(), (c - both.mean(0)) / both.std(0, ddof=1), atol=1e-12)
    d = RNG.normal(size=(101, 3)) * np.array([1, 10, 100])
    s = scale_margins(torch.tensor(d), gamma=0.8).numpy()
    np.testing.assert_allclose(s, np.clip(d / np.quantile(np.abs(d), .8, axis=0), -1, 1), atol=1e-12)
    assert (np.abs(s) <= 1).all() and (np.sign(s) == np.sign(d)).all()
    z = scale_margins(torch.tensor(d), method='zscore').numpy()
    np.testing.assert_allclose(z, d / np.sqrt((d ** 2).sum(0) / 100), atol=1e-12)   # spread about zero, no centring
    with pytest.raises(ValueError, match='method'): scale_margins(torch.tensor(d), method='minmax')


def test_spearman():
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    x, y = RNG.integers(0, 5, 300).astype(float), RNG.normal(size=300)
    def ref(a, b):
        rk = lambda v: np.array([(v < t).sum() + ((v == t).sum() + 1) / 2 for t in v])
        return np.corrcoef(rk(a), rk(b))[0, 1]
    assert spearman(torch.tensor(x), torch.tensor(x + y)) == pytest.approx(ref(x, x + y), abs=1e-12)
    assert spearman(np.exp(y), y) == pytest.approx(1.0)                       # monotone invariance
    with pytest.raises(ValueError, match='NaN'): spearman([1, np.nan, 3], [1, 2, 3])
    with pytest.warns(UserWarning): assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


# ---------------------------------------------------------------- theory
def _instance(N, K=4, batch=()):
    "Uniform-weight PD, own-aspect margin and weight of random pairs (NumPy reference for PD)."
    c, r = RNG.normal(size=(*batch, N, K)), RNG.normal(size=(*batch, N, K))
    a = RNG.integers(0, K, (*batch, N))
    own_mask = np.eye(K, dtype=bool)[a]
    pd = -((c - r) * ~own_mask).sum(-1) / K
    own = ((c - r) * own_mask).sum(-1)
    return torch.tensor(pd), torch.tensor(own), 1 / K


def test_lemma_and_bounds_random():
    B = 500
    for N in (1, 3, 19):
        pd, own, w = _instance(N, batch=(B,))
        h = torch.tensor(RNG.normal(size=(B, N)) * 5)
        lo, ex, up = loss_bounds(h, pd, own, w)
        q = 1 / (1 + np.exp(-(pd.numpy() - w * own.numpy())))
        hn = h.numpy()
        np.testing.assert_allclose(ex.numpy(), ((1 - q) * np_f(hn) + q * np_f(-hn)).mean(-1), atol=1e-12)
        np.testing.assert_allclose(ex.numpy(), (np_f(hn) + q * hn).mean(-1), atol=1e-12)          # Lemma
        np.testing.assert_allclose(lo.numpy(), np_f(hn).mean(-1) + hn.min(-1) * q.mean(-1), atol=1e-12)
        assert (lo <= ex + 1e-12).all() and (ex <= up + 1e-12).all()
        lo, ex, up = loss_bounds(h[:, :1].expand(B, N), pd, own, w)                               # tight for constant h
        np.testing.assert_allclose(lo.numpy(), ex.numpy(), atol=1e-12); np.testing.assert_allclose(up.numpy(), ex.numpy(), atol=1e-12)
    assert holistic_loss(torch.tensor([0.]), torch.tensor([0.]), 0., 1.).item() == pytest.approx(math.log(2))
    assert label_noise(torch.tensor([0.]), 2., .5).item() == pytest.approx(1 / (1 + math.e))
    with pytest.raises(ValueError, match='h_max'): loss_bounds(torch.tensor([1., 2.]), torch.zeros(2), 0., 1., h_max=1.5)


def test_greedy_pd_minimises_bounds_and_theorem_b_brute_force():
    for _ in range(40):
        N = int(RNG.integers(4, 10)); m = int(RNG.integers(1, N))
        pd, _, w = _instance(N)
        subs = torch.tensor(list(itertools.combinations(range(N), m)))
        masks = torch.zeros(len(subs), N, dtype=torch.bool).scatter_(1, subs, True)
        q = label_noise(pd, 0.5, 1.0)                           # common own-aspect term
        Q = q[subs].mean(1)
        A = float(RNG.normal()); B = A - float(RNG.uniform(0.01, 3))
        Fs = torch.tensor(np_f((np.where(masks.numpy(), A, B) + pd.numpy()) / w).sum(1))   # NumPy F(S) for every S
        best = select_by_pd(pd, m / N); worst = select_highest_pd(pd, m / N)
        assert len(best) == m
        assert q[best].mean().item() <= Q.min().item() + 1e-12 and q[worst].mean().item() >= Q.max().item() - 1e-12
        assert dfpo_bound(pd, best, A, B, w).item() == pytest.approx(Fs.min().item(), abs=1e-9)
        assert dfpo_bound(pd, worst, A, B, w).item() == pytest.approx(Fs.max().item(), abs=1e-9)


def test_dfpo_bound_hand():
    pd = torch.tensor([-1., 2.])
    got = dfpo_bound(pd, torch.tensor([0]), 1.0, 0.0, 0.5).item()
    assert got == pytest.approx(np_f(np.array((1 - 1) / .5)) + np_f(np.array((0 + 2) / .5)))
    assert dfpo_bound(pd, torch.tensor([True, False]), 1.0, 0.0, 0.5).item() == pytest.approx(got)


# ---------------------------------------------------------------- selection
def test_n_keep_and_ratio_validation():
    assert [n_keep(r, 10) for r in (0.1, 0.3, 0.35, 1.0)] == [1, 3, 4, 10]
    assert n_keep(0.3, 1000) == 300 and n_keep(0.7, 10) == 7
    for bad in (0, 1.01, -1, float('inf'), float('nan'), None, True):
        with pytest.raises(ValueError, match='ratio'): select_by_pd(torch.zeros(5), bad)


def test_select_rules_hand_and_ties():
    pd = torch.tensor([0., -2., 1., -2., -2., 3.])
    assert select_by_pd(pd, 0.5, seed=None).tolist() == [1, 3, 4]     # seed=None: ties by index
    assert select_by_pd(pd, 0.34, seed=None).tolist() == [1, 3, 4]    # ceil(2.04) = 3
    assert sorted(select_by_pd(pd, 0.5).tolist()) == [1, 3, 4]        # the tied three are all kept, in the seed's order
    assert select_highest_pd(pd, 0.34).tolist() == [5, 2, 0]
    assert select_by_margin(pd, 1 / 6).tolist() == [5]
    assert select_by_holistic_margin(-pd, 0.5, seed=None).tolist() == [1, 3, 4]
    assert select_full(3).tolist() == [0, 1, 2]
    a, b = select_random(100, 0.3, seed=7), select_random(100, 0.3, seed=7)
    assert a.tolist() == b.tolist() and len(a) == 30 and len(set(a.tolist())) == 30
    assert a.tolist() != select_random(100, 0.3, seed=8).tolist()
    with pytest.raises(ValueError, match='index 2'): select_by_pd(torch.tensor([0., 1., float('nan')]), 0.5)
    with pytest.raises(ValueError, match='margins'): select_by_margin(torch.zeros(2, 2), 0.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), st.floats(0.01, 1.0))
def test_select_by_pd_property(values, ratio):
    pd = torch.tensor(values, dtype=torch.float64)
    idx = select_by_pd(pd, ratio)
    assert len(idx) == n_keep(ratio, len(values)) and len(set(idx.tolist())) == len(idx)
    kept = pd[idx]
    assert (kept[1:] >= kept[:-1]).all()                              # most negative first
    rest = torch.ones(len(pd), dtype=torch.bool); rest[idx] = False
    if rest.any(): assert pd[rest].min() >= kept.max()


def _fg_dataset(n=80, seed=0):
    from pd_align.data import from_records
    g = np.random.default_rng(seed)
    names = ['helpfulness', 'honesty', 'truthfulness']
    recs = []
    for i in range(n):
        k = i % 3
        a, b = g.normal(size=3), g.normal(size=3)
        if a[k] < b[k]: a, b = b, a
        recs.append(dict(id=f'r{i}', prompt=f'p{i}', chosen='x' * int(5 + 10 * g.random()), rejected='y' * int(5 + 3 * g.random()),
                         aspect=names[k], chosen_scores=dict(zip(names, a.tolist())), rejected_scores=dict(zip(names, b.tolist())),
                         source='test'))
    return from_records(recs)


def test_select_dataset_oracle_pd_and_columns():
    from pd_align.data import scores_matrix, aspect_index
    ds = _fg_dataset()
    c, r = scores_matrix(ds)
    pd = preference_divergence(c.double(), r.double(), aspect_index(ds))
    sub = select(ds, 'pd', 0.25)
    expect = sorted(select_by_pd(pd, 0.25).tolist())
    assert list(sub['orig_index']) == expect and list(sub['id']) == [f'r{i}' for i in expect]
    np.testing.assert_allclose(list(sub['pd']), pd[expect].numpy(), atol=1e-12)
    assert {'prompt', 'chosen', 'rejected', 'aspect', 'chosen_scores'} <= set(sub.column_names)
    hi = select(ds, 'pd_high', 0.25)
    assert max(sub['pd']) <= min(hi['pd'])
    hm = holistic_margin(c.double(), r.double())
    assert sorted(select(ds, 'holistic', 0.25)['orig_index']) == sorted(select_by_holistic_margin(hm, 0.25).tolist())
    own = (c - r).double()[torch.arange(len(ds)), aspect_index(ds)]
    assert list(select(ds, 'margin', 0.25)['orig_index']) == sorted(select_by_margin(own, 0.25).tolist())
    assert len(select(ds, 'full')) == len(ds) and len(select(ds, 'random', 0.5, seed=3)) == 40
    strat = select(ds, 'pd', 0.25, per_aspect=True)                    # the global budget, split by largest remainder
    assert len(strat) == n_keep(0.25, len(ds))
    for name in ('helpfulness', 'honesty', 'truthfulness'):
        n = list(ds['aspect']).count(name)
        assert math.floor(0.25 * n) <= list(strat['aspect']).count(name) <= math.ceil(0.25 * n)
    with pytest.raises(ValueError, match='method'): select(ds, 'best')
    with pytest.raises(ValueError, match='ratio'): select(ds, 'pd', 0)
    plain = Dataset.from_list([{'id': 'a', 'chosen': 'x', 'rejected': 'y'}])
    with pytest.raises(ValueError, match='pd'): select(plain, 'pd', 0.5)
    assert 'pd' not in select(plain, 'random', 1.0).column_names


def test_length_balanced_rates():
    rows = [dict(id=str(i), chosen='c' * (30 if i % 10 < 7 else 5), rejected='r' * 10, aspect='ab'[i % 2]) for i in range(200)]
    ds = Dataset.from_list(rows)
    rep = {}
    out = length_balanced(ds, report=rep)
    assert rep['rate_before'] == pytest.approx(0.7) and rep['rate_after'] == pytest.approx(0.5)
    assert len(out) == 120 and len(set(out['id'])) == 120           # 30 shorter per aspect -> 60 per aspect
    rep = {}
    out = length_balanced(ds, tau=1.0, replace=True, report=rep, seed=1)
    assert len(out) == 200 and rep['rate_after'] == pytest.approx(round(tempered_share(.7, 1.) * 100) / 100)
    assert tempered_share(0.7, float('inf')) == 0.5 and tempered_share(0.5, 0.1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match='tau'): tempered_share(0.7, 0.0)
    # explicit length columns take precedence over the texts
    withlen = ds.add_column('chosen_len', [1] * 200).add_column('rejected_len', [2] * 200)
    rep = {}; length_balanced(withlen, report=rep)
    assert rep['rate_before'] == 0.0 and rep['n_after'] == 200                # one-sided groups are kept unchanged


# ---------------------------------------------------------------- issue 15: ties, budgets, PD column
def _tied_ratings(n_per_aspect=60, seed=0):
    """Integer ratings (0-4) on 3 aspects, the same rating patterns for every aspect (aspects cyclically shifted), stacked
    aspect by aspect as `aggregate` does: the oracle PD has the same distribution in every aspect, with many ties."""
    from pd_align.data import from_records
    g = np.random.default_rng(seed)
    names = ['helpfulness', 'correctness', 'coherence']
    pats = []
    while len(pats) < n_per_aspect:
        a, b = g.integers(0, 5, 3), g.integers(0, 5, 3)
        if a[0] != b[0]: pats.append((a, b) if a[0] > b[0] else (b, a))
    recs = []
    for k, name in enumerate(names):
        for i, (a, b) in enumerate(pats):
            sa, sb = np.roll(a, k), np.roll(b, k)          # pattern's own aspect moved to position k
            recs.append(dict(id=f'{name}/{i}', prompt=f'p{i}', chosen='x', rejected='y', aspect=name,
                             chosen_scores=dict(zip(names, sa.astype(float).tolist())),
                             rejected_scores=dict(zip(names, sb.astype(float).tolist())), source='test'))
    return from_records(recs), names


def test_ties_keep_an_unbiased_share_per_aspect():
    """Issue 15 item 2. With integer ratings the budget boundary falls inside a block of tied PD values; the kept share of
    every aspect, averaged over S seeds, must be 1/3 within 4 standard deviations of that mean (each seed draws the tied
    pairs it keeps without replacement: hypergeometric), and a seed must give the same subset every time."""
    ds, names = _tied_ratings()
    full = select(ds, 'pd', 1.0)
    pd = np.asarray(full['pd'])
    ratio, N = 0.25, len(ds)                                     # 45 kept: 30 below -1.0, 15 of the 21 tied at -1.0
    m = n_keep(ratio, N)
    t = np.sort(pd)[m - 1]                                       # the boundary value
    below, tied = int((pd < t).sum()), int((pd == t).sum())
    draw = m - below
    assert 0 < draw < tied, 'the boundary must fall inside a block of ties for this test to mean anything'
    asp = np.asarray(ds['aspect'])
    light = Dataset.from_dict(dict(id=ds['id'], aspect=ds['aspect'], pd=full['pd']))   # the same PD, no score columns: faster
    S = 200
    shares = np.array([[float((asp[select(light, 'pd', ratio, seed=s)['orig_index']] == a).mean()) for a in names] for s in range(S)])
    sd_one = math.sqrt(draw * (1 / 3) * (2 / 3) * (tied - draw) / (tied - 1)) / m
    tol = 4 * sd_one / math.sqrt(S)
    assert np.all(np.abs(shares.mean(0) - 1 / 3) < tol), (shares.mean(0), tol)
    assert select(ds, 'pd', ratio, seed=5)['orig_index'] == select(ds, 'pd', ratio, seed=5)['orig_index']
    assert len({tuple(select(ds, 'pd', ratio, seed=s)['orig_index']) for s in range(5)}) > 1


@pytest.mark.parametrize('sizes', [[7, 7, 7], [1, 2, 30], [5], [3, 10, 1, 6]])
@pytest.mark.parametrize('ratio', [0.05, 0.3, 0.5, 0.77])
def test_per_aspect_budget_keeps_the_global_count(sizes, ratio):
    "Issue 15 item 3: with per_aspect=True every method keeps exactly ceil(ratio * N) pairs, as 'random' does globally."
    asp = [g for g, n in zip('abcd', sizes) for _ in range(n)]
    N = len(asp)
    vals = np.random.default_rng(N).integers(-2, 3, N).astype(float).tolist()
    ds = Dataset.from_dict(dict(id=[f'x{i}' for i in range(N)], aspect=asp, pd=vals, margin=vals, holistic_margin=vals))
    for method in ('pd', 'pd_high', 'random', 'margin', 'holistic', 'full'):
        out = select(ds, method, ratio, seed=1, per_aspect=True)
        assert len(out) == (N if method == 'full' else n_keep(ratio, N)) == len(select(ds, method, ratio, seed=1)), method
        if method != 'full':
            for g, n in zip('abcd', sizes):
                assert math.floor(ratio * n + 1e-9) <= list(out['aspect']).count(g) <= math.ceil(ratio * n - 1e-9), (method, g)


def test_methods_without_pd_do_not_read_it_and_stored_pd_does_not_hide_weights():
    "Issue 15 item 4: a NaN `pd` stops only the PD methods; weights= never silently loses to a `pd` column."
    ds = _fg_dataset()
    with_pd = select(ds, 'pd', 1.0)                                      # adds the oracle `pd` column
    bad = with_pd.remove_columns('pd').add_column('pd', [float('nan')] + with_pd['pd'][1:])
    assert len(select(bad, 'random', 0.5)) == 40 and len(select(bad, 'full')) == 80 and len(select(bad, 'margin', 0.5)) == 40
    assert select(bad, 'full')['pd'][1:] == with_pd['pd'][1:]           # passed through untouched
    with pytest.raises(ValueError, match='NaN at index 0'): select(bad, 'pd', 0.5)
    w = {'helpfulness': 1, 'honesty': 1, 'truthfulness': 4}
    with pytest.raises(ValueError, match='weights'): select(with_pd, 'pd', 0.3, weights=w)
    # without the stale column, the same weights are used on the scores (normalised: the same as preference_divergence)
    from pd_align.data import scores_matrix, aspect_index
    c, r = scores_matrix(ds)
    got = select(ds, 'pd', 1.0, weights=w)['pd']
    np.testing.assert_allclose(got, preference_divergence(c.double(), r.double(), aspect_index(ds), torch.tensor([1., 1, 4])).numpy(), atol=1e-12)
