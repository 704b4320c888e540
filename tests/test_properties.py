"""Property-based tests (hypothesis) for preference divergence, the losses, selection and the theory bounds.

Every property names, in its docstring, one concrete mutation of the library code that makes it fail;
`test_property_catches_mutation` applies each mutation (a one-line edit of the function's source,
exec'd and monkeypatched into the module) and checks that the property then fails.
Example counts live in `EXAMPLES` (read by tests/test_reliability.py)."""
import __future__, inspect, math, textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st
from hypothesis.errors import Flaky
from hypothesis.extra.numpy import arrays

from pd_align import divergence, losses, selection, theory

# generated cases per property; tests/test_reliability.py reports (and checks) these numbers
EXAMPLES = dict(pd_antisymmetry=200, pd_ignores_own_aspect=200, pd_shift_invariance=200, pd_weight_scale=200, pd_sign=200,
                loss_finite=150, seq_logps_finite=100, dfpo_reduces_to_dpo=200, dpo_decreasing=200, dfpo_decreasing_in_pd=200,
                select_count=200, select_deterministic=100, select_ties=200, select_no_duplicates=200, select_by_pd_split=200,
                select_dataset=25, loss_bounds=200, select_budget=40, select_tie_seed=150)

def _settings(name:str, shrink:bool=True) -> settings:
    "Bounded, derandomised (reproducible in CI), no deadline, no example database; mutation runs skip shrinking."
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None, derandomize=True,
                    phases=list(Phase) if shrink else [Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

def prop(name:str, *strategies):
    "Make `check` a hypothesis test of property `name`; keep `check` and the strategies to rerun it under a mutation."
    def deco(check):
        test = _settings(name)(given(*strategies)(check))
        test.prop_name, test.check, test.strategies = name, check, strategies
        return test
    return deco

def close(a, b, atol=1e-9, rtol=1e-9): torch.testing.assert_close(a, b, atol=atol, rtol=rtol)

# ----------------------------------------------------------------------------- strategies
score = st.floats(-10, 10, allow_nan=False, width=64)

@st.composite
def score_case(draw, max_n=12, max_k=5, weights=True):
    "Chosen/rejected [N,K] scores, aspect indices [N], optional positive weights [K]."
    n, k = draw(st.integers(1, max_n)), draw(st.integers(2, max_k))
    c = draw(arrays(np.float64, (n, k), elements=score))
    r = draw(arrays(np.float64, (n, k), elements=score))
    a = draw(arrays(np.int64, n, elements=st.integers(0, k - 1)))
    w = draw(st.none() | arrays(np.float64, k, elements=st.floats(0.05, 20))) if weights else None
    return torch.tensor(c), torch.tensor(r), torch.tensor(a), None if w is None else torch.tensor(w)

def pd_of(c, r, a, w=None): return divergence.preference_divergence(c, r, a, w)

# ----------------------------------------------------------------------------- preference divergence
@prop('pd_antisymmetry', score_case())
def test_pd_antisymmetry(case):
    """Swapping chosen and rejected negates PD: PD(r, c) = -PD(c, r).
    Mutation caught: `delta = c - r` -> `delta = c` in `preference_divergence` (rejected scores dropped)."""
    c, r, a, w = case
    close(pd_of(r, c, a, w), -pd_of(c, r, a, w))

@prop('pd_ignores_own_aspect', score_case(), st.data())
def test_pd_ignores_own_aspect(case, data):
    """PD does not depend on the labelling aspect's own scores (any values, NaN and inf included).
    Mutation caught: deleting `other[torch.arange(N, device=c.device), a] = False` (PD = minus the holistic margin)."""
    c, r, a, w = case
    wild = st.floats(allow_nan=True, allow_infinity=True) | score
    c2, r2, rows = c.clone(), r.clone(), torch.arange(len(a))
    c2[rows, a] = torch.tensor([data.draw(wild) for _ in rows], dtype=c.dtype)
    r2[rows, a] = torch.tensor([data.draw(wild) for _ in rows], dtype=c.dtype)
    close(pd_of(c2, r2, a, w), pd_of(c, r, a, w))

@prop('pd_shift_invariance', score_case(), st.data())
def test_pd_shift_invariance(case, data):
    """Adding a constant to one aspect's rewards of both responses (all rows) leaves PD unchanged.
    Mutation caught: `delta = c - r` -> `delta = torch.log1p(c.abs()) - torch.log1p(r.abs())` (log-scale comparison)."""
    c, r, a, w = case
    j = data.draw(st.integers(0, c.shape[1] - 1))
    t = data.draw(st.floats(-100, 100))
    c2, r2 = c.clone(), r.clone()
    c2[:, j] += t; r2[:, j] += t
    close(pd_of(c2, r2, a, w), pd_of(c, r, a, w), atol=1e-9 * (1 + abs(t)))

@prop('pd_weight_scale', score_case(weights=False), st.data())
def test_pd_weight_scale(case, data):
    """Weights are normalised: scaling all of them by s > 0 changes nothing.
    Mutation caught: `return w / w.sum()` -> `return w` in `divergence.normalise_weights` (weights not normalised)."""
    c, r, a, _ = case
    k = c.shape[1]
    w = torch.tensor([data.draw(st.floats(0.05, 20)) for _ in range(k)], dtype=torch.float64)
    s = data.draw(st.floats(1e-3, 1e3).filter(lambda s: abs(s - 1) > 1e-3))
    close(pd_of(c, r, a, s * w), pd_of(c, r, a, w))

@prop('pd_sign', score_case(), st.sampled_from([1.0, -1.0]), st.data())
def test_pd_sign(case, sign, data):
    """Consensus is negative: if every other aspect prefers the chosen response, PD < 0; if all prefer the rejected one, PD > 0.
    Mutation caught: `pd = -(known` -> `pd = (known` in `preference_divergence` (sign convention flipped)."""
    c, r, a, w = case
    gap = torch.tensor([[data.draw(st.floats(1e-3, 10)) for _ in range(c.shape[1])] for _ in range(c.shape[0])], dtype=c.dtype)
    pd = pd_of(r + sign * gap, r, a, w)
    assert ((pd < 0) if sign > 0 else (pd > 0)).all(), (sign, pd)

# ----------------------------------------------------------------------------- losses
extreme = st.floats(-1e4, 1e4, width=32) | st.sampled_from([-1e4, 1e4, 0.0])
dtypes = st.sampled_from([torch.float32, torch.bfloat16])

@st.composite
def logp_case(draw, max_n=8):
    "Four [N] log-probability tensors (policy chosen/rejected, reference chosen/rejected) in one dtype, extreme values."
    n, dt = draw(st.integers(1, max_n)), draw(dtypes)
    return [torch.tensor([draw(extreme) for _ in range(n)], dtype=dt) for _ in range(4)]

@prop('loss_finite', logp_case(), st.floats(1e-3, 10), st.floats(-1e4, 1e4, width=32), st.floats(1e-3, 1))
def test_losses_finite_for_extreme_inputs(logps, beta, pd, w):
    """DPO and DFPO losses and their gradients are finite and >= 0 for log-probs/margins up to 1e4 in fp32 and bf16.
    Mutation caught: `losses = neg_logsigmoid(beta * margin)` -> `losses = -torch.log(torch.sigmoid(beta * margin))`
    in `dpo_loss` (sigmoid underflows to 0, the loss is inf); the same edit of `return neg_logsigmoid(t)` in `dfpo_loss`."""
    pc = logps[0].clone().requires_grad_()
    pd_t = torch.full_like(logps[0], pd)
    for fn, extra in ((losses.dpo_loss, {}), (losses.dfpo_loss, dict(pd=pd_t, aspect_weight=w))):
        out, cr, rr = fn(pc, *logps[1:], beta=beta, **extra)
        assert torch.isfinite(out).all() and (out >= 0).all(), (fn.__name__, out)
        assert torch.isfinite(cr).all() and torch.isfinite(rr).all()
        g, = torch.autograd.grad(out.sum(), pc)
        assert torch.isfinite(g).all(), (fn.__name__, g)

@prop('seq_logps_finite', st.integers(1, 3), st.integers(2, 6), st.integers(2, 8), dtypes, st.data())
def test_sequence_logps_finite_and_nonpositive(B, T, V, dt, data):
    """sequence_logps is finite and <= 0 for logits up to +-1e4 in fp32/bf16, and 0 when nothing is masked in.
    Mutation caught: `torch.logsumexp(z, -1)` -> `z.exp().sum(-1).log()` in `sequence_logps` (overflow to inf)."""
    logits = torch.tensor(data.draw(arrays(np.float32, (B, T, V), elements=extreme)), dtype=dt)
    labels = torch.tensor(data.draw(arrays(np.int64, (B, T), elements=st.integers(0, V - 1))))
    mask = torch.tensor(data.draw(arrays(np.bool_, (B, T))))
    for avg in (False, True):
        lp = losses.sequence_logps(logits, labels, mask, average=avg)
        assert lp.shape == (B,) and torch.isfinite(lp).all() and (lp <= 0).all(), lp
        assert (lp[~mask[:, 1:].any(1)] == 0).all()

@prop('dfpo_reduces_to_dpo', logp_case(), st.floats(1e-3, 2), st.booleans())
def test_dfpo_equals_dpo_at_zero_pd_unit_weight(logps, beta, as_tensor):
    """DFPO with PD = 0 and w = 1 (scalars or tensors) is exactly DPO, rewards included.
    Mutation caught: `t = beta * margin` -> `t = margin` in `dfpo_loss` (beta forgotten)."""
    pd, w = (torch.zeros_like(logps[0]), torch.ones_like(logps[0])) if as_tensor else (0.0, 1.0)
    d, f = losses.dpo_loss(*logps, beta=beta), losses.dfpo_loss(*logps, pd=pd, aspect_weight=w, beta=beta)
    for x, y in zip(d, f): torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)

def _dpo_at(margin:float, beta:float) -> float:
    z = torch.zeros(1, dtype=torch.float64)
    return losses.dpo_loss(torch.tensor([margin], dtype=torch.float64), z, z, z, beta=beta)[0].item()

@prop('dpo_decreasing', st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(1e-3, 2))
def test_dpo_loss_decreasing_in_margin(m1, m2, beta):
    """A larger policy margin never raises the DPO loss, and strictly lowers it where the loss is not saturated.
    Mutation caught: `losses = neg_logsigmoid(beta * margin)` -> `losses = neg_logsigmoid(-beta * margin)` (sign flip)."""
    lo, hi = sorted((m1, m2))
    assert _dpo_at(hi, beta) <= _dpo_at(lo, beta)
    if beta * (hi - lo) > 1e-3 and beta * hi < 30: assert _dpo_at(hi, beta) < _dpo_at(lo, beta)

@prop('dfpo_decreasing_in_pd', st.floats(-50, 50), st.floats(-50, 50), st.floats(-50, 50), st.floats(0.05, 1), st.floats(1e-3, 2))
def test_dfpo_decreasing_in_pd(margin, pd1, pd2, w, beta):
    """At a fixed policy margin, a larger PD never raises the DFPO loss f((h + PD)/w), and strictly lowers it where the
    loss is not saturated (a conflicting pair's aspect label is already explained by a smaller holistic margin).
    Mutation caught: `t = t + pd` -> `t = t - pd` in `dfpo_loss` (PD sign flipped)."""
    lo, hi = sorted((pd1, pd2))
    z = torch.zeros(1, dtype=torch.float64)
    f = lambda pd: losses.dfpo_loss(torch.tensor([margin], dtype=torch.float64), z, z, z, pd=torch.tensor([pd], dtype=torch.float64),
                                    aspect_weight=w, beta=beta)[0].item()
    assert f(hi) <= f(lo)
    if hi - lo > 1e-3 and (beta * margin + lo) / w < 30: assert f(hi) < f(lo)

# ----------------------------------------------------------------------------- selection
values = st.integers(-2, 2).map(float) | st.floats(-1e6, 1e6)  # many ties
ratios = (st.integers(1, 1000) | st.sampled_from([10, 100, 1000])).flatmap(lambda q: st.tuples(st.integers(1, q), st.just(q)))  # ratio p/q

@st.composite
def select_case(draw, max_n=40):
    n = draw(st.integers(1, max_n) | st.sampled_from([25, 50, 100, 200]))  # round sizes expose float noise in ratio * n
    v = torch.tensor(draw(arrays(np.float64, n, elements=values)))
    p, q = draw(ratios)
    return v, p, q

RANKERS = {'select_by_pd': False, 'select_highest_pd': True, 'select_by_margin': True, 'select_by_holistic_margin': True}

@prop('select_count', select_case(), st.integers(0, 2**31 - 1))
@example((torch.zeros(100), 7, 100), 0)  # 0.07 * 100 = 7.000000000000001
@example((torch.zeros(25), 28, 100), 0)  # 0.28 * 25 = 7.000000000000001
def test_select_exact_count(case, seed):
    """Every routine keeps exactly ceil(p/q * N) indices for ratio p/q (exact rational arithmetic, so float
    noise like 0.3 * 10 = 3.0000000000000004 must not add one); `select_full` keeps all N.
    Mutations caught: `math.ceil(` -> `math.floor(` in `selection.n_keep`; also
    `math.ceil(Fraction(float(ratio)).limit_denominator(10**9) * n)` -> `math.ceil(ratio * n)` (float noise)."""
    v, p, q = case
    n, ratio, want = len(v), p / q, -(-p * len(v) // q)
    assert selection.n_keep(ratio, n) == want
    for name in RANKERS: assert len(getattr(selection, name)(v, ratio)) == want, name
    assert len(selection.select_random(n, ratio, seed)) == want
    assert len(selection.select_full(n)) == n

@prop('select_deterministic', select_case(), st.integers(0, 2**31 - 1))
def test_select_deterministic(case, seed):
    """Same input (and seed) -> the same indices, every routine.
    Mutation caught: `g = torch.Generator().manual_seed(int(seed))` -> `g = None` in `select_random` (seed ignored)."""
    v, p, q = case
    for name in RANKERS: assert torch.equal(getattr(selection, name)(v, p / q), getattr(selection, name)(v.clone(), p / q))
    assert torch.equal(selection.select_random(len(v), p / q, seed), selection.select_random(len(v), p / q, seed))

@prop('select_ties', select_case())
def test_select_ties_lowest_index_first(case):
    """With `seed=None`, ranked selections equal the reference order: by value (ascending for PD, descending otherwise),
    ties by lowest index.
    Mutation caught: `_ranked` breaking ties by the highest index
    (`return sub[np.argsort(-v if largest else v, kind='stable')]` -> `return sub[::-1][np.argsort((-v if largest else v)[::-1], kind='stable')]`)."""
    v, p, q = case
    k = -(-p * len(v) // q)
    for name, largest in RANKERS.items():
        ref = sorted(range(len(v)), key=lambda i: (-v[i].item() if largest else v[i].item(), i))[:k]
        assert getattr(selection, name)(v, p / q, seed=None).tolist() == ref, name

@prop('select_tie_seed', select_case(), st.integers(0, 2**31 - 1))
def test_select_tie_order_is_a_function_of_the_seed_only(case, seed):
    """Issue 15 item 2. With a seed, ranked selections equal the reference order: by value, ties by the position of the
    index in `torch.randperm(N)` drawn from the seed, so the tie order depends on the seed only (not on where a pair
    sits in the data); a strictly increasing map of the values keeps the selection; the Dataset-level `select` agrees.
    Mutation caught: `_top` ignoring the seed (`tie = None if seed is None else _seeded_rank(len(values), seed)` -> `tie = None`)."""
    from datasets import Dataset
    v, p, q = case
    n, k = len(v), -(-p * len(v) // q)
    pos = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).argsort().tolist()
    for name, largest in RANKERS.items():
        ref = sorted(range(n), key=lambda i: (-v[i].item() if largest else v[i].item(), pos[i]))[:k]
        assert getattr(selection, name)(v, p / q, seed=seed).tolist() == ref, name
        assert getattr(selection, name)(2 * v, p / q, seed=seed).tolist() == ref, name
    ds = Dataset.from_dict(dict(id=[str(i) for i in range(n)], pd=v.tolist()))
    assert selection.select(ds, 'pd', p / q, seed=seed)['orig_index'] == sorted(selection.select_by_pd(v, p / q, seed=seed).tolist())

@prop('select_no_duplicates', select_case(), st.integers(0, 2**31 - 1))
def test_select_never_duplicates(case, seed):
    """Selected indices are distinct, valid ([0, N)) and long integers, for every routine.
    Mutation caught: `torch.randperm(n, generator=g)[:k]` -> `torch.randint(n, (k,), generator=g)` in `select_random` (with replacement)."""
    v, p, q = case
    outs = [getattr(selection, name)(v, p / q) for name in RANKERS] + [selection.select_random(len(v), p / q, seed), selection.select_full(len(v))]
    for idx in outs:
        assert idx.dtype == torch.long and len(set(idx.tolist())) == len(idx)
        assert ((idx >= 0) & (idx < len(v))).all()

@prop('select_by_pd_split', select_case())
def test_select_by_pd_splits_at_a_threshold(case):
    """select_by_pd picks a set whose max PD <= the min PD of the rest (select_highest_pd: min >= max of the rest).
    Mutation caught: `largest=False` -> `largest=True` in `select_by_pd` (picks the highest PD)."""
    v, p, q = case
    for name, sign in (('select_by_pd', 1), ('select_highest_pd', -1)):
        keep = getattr(selection, name)(v, p / q)
        rest = torch.ones(len(v), dtype=torch.bool); rest[keep] = False
        if rest.any(): assert (sign * v[keep]).max() <= (sign * v[rest]).min(), name

@prop('select_dataset', st.integers(1, 30), ratios, st.sampled_from(['pd', 'pd_high', 'random', 'margin', 'full']), st.booleans(), st.data())
def test_select_dataset(n, pq, method, per_aspect, data):
    """`select` on a Dataset: exact count (per aspect group when stratified), unique ids, `orig_index` increasing,
    the `pd` column carried over, and for 'pd' every kept PD <= every dropped PD (within each group).
    Mutation caught: `[:b] for g, b in zip(groups, budgets)` -> `[:max(b - 1, 0)] for g, b in zip(groups, budgets)` in
    `select` (a pair lost per group)."""
    from datasets import Dataset
    p, q = pq
    pd = data.draw(arrays(np.float64, n, elements=values)).tolist()
    asp = data.draw(st.lists(st.sampled_from('abc'), min_size=n, max_size=n))
    margin = data.draw(arrays(np.float64, n, elements=values)).tolist()
    ds = Dataset.from_dict(dict(id=[f'x{i}' for i in range(n)], aspect=asp, pd=pd, margin=margin))
    out = selection.select(ds, method=method, ratio=p / q, seed=3, per_aspect=per_aspect)
    groups = {g: [i for i in range(n) if asp[i] == g] for g in dict.fromkeys(asp)} if per_aspect else {None: list(range(n))}
    want = n if method == 'full' else -(-p * n // q)      # per aspect too: the global budget, split across the groups
    oi = out['orig_index']
    assert len(out) == want and oi == sorted(set(oi))
    assert out['id'] == [f'x{i}' for i in oi] and out['pd'] == [pd[i] for i in oi]
    if method == 'pd':
        for g in groups.values():
            kept = [pd[i] for i in g if i in set(oi)]; dropped = [pd[i] for i in g if i not in set(oi)]
            if kept and dropped: assert max(kept) <= min(dropped)

@prop('select_budget', st.lists(st.integers(1, 25), min_size=1, max_size=5), ratios, st.sampled_from(list(selection.METHODS)),
      st.booleans(), st.integers(0, 2**31 - 1), st.data())
def test_select_budget_is_exact_for_every_method_ratio_and_split(sizes, pq, method, per_aspect, seed, data):
    """Issue 15 item 3. Every method at ratio p/q keeps exactly ceil(p/q * N) pairs (all N for 'full'), globally or per
    aspect for any split of N into groups; per aspect, group j keeps floor or ceil of p/q * n_j.
    Mutation caught: `per_aspect_budget` rounding up in every group
    (`for g in order[:total - sum(out)]: out[g] += 1` -> `for g in order: out[g] += 1`)."""
    from datasets import Dataset
    p, q = pq
    asp = [f'a{j}' for j, m in enumerate(sizes) for _ in range(m)]
    n = len(asp)
    vals = data.draw(arrays(np.float64, n, elements=values)).tolist()
    ds = Dataset.from_dict(dict(id=[f'x{i}' for i in range(n)], aspect=asp, pd=vals, margin=vals, holistic_margin=vals))
    out = selection.select(ds, method, p / q, seed=seed, per_aspect=per_aspect)
    assert len(out) == (n if method == 'full' else -(-p * n // q))
    budgets = selection.per_aspect_budget(p / q, sizes, seed)  # the split itself, whatever `method` and `per_aspect` drew
    assert sum(budgets) == -(-p * n // q) and all((p * m) // q <= b <= -(-p * m // q) for m, b in zip(sizes, budgets))
    if per_aspect and method != 'full':
        kept = list(out['aspect'])
        for j, m in enumerate(sizes): assert (p * m) // q <= kept.count(f'a{j}') <= -(-p * m // q), (j, m)

# ----------------------------------------------------------------------------- theory bounds
@st.composite
def bound_case(draw):
    n = draw(st.integers(1, 10))
    f = lambda lo, hi: torch.tensor(draw(arrays(np.float64, n, elements=st.floats(lo, hi))))
    h = f(1e-3, 30)
    return h, f(-5, 5), f(-5, 5), f(0.05, 1), draw(st.floats(0, 1)), draw(st.floats(0, 5))

@prop('loss_bounds', bound_case())
def test_loss_bounds_hold(case):
    """Theorem (03_theory): with 0 < h_min <= h_i <= H, lower <= exact <= upper; exact equals `holistic_loss`;
    with default levels (min h, max h) too.
    Mutation caught: `q.mean(-1)` -> `(1 - q).mean(-1)` in `loss_bounds` (Q built from p, the chance the label is right)."""
    h, pd, am, aw, shrink, grow = case
    hmin, hmax = h.min().item() * shrink, h.max().item() + grow
    for kw in ({}, dict(h_min=hmin, h_max=hmax)):
        lo, ex, up = theory.loss_bounds(h, pd, am, aw, **kw)
        tol = 1e-9 * (1 + ex.abs())
        assert lo <= ex + tol and ex <= up + tol, (kw, lo, ex, up)
    close(ex, theory.holistic_loss(h, pd, am, aw).to(ex.dtype))

def test_loss_bounds_refuse_violated_conditions():
    "Levels that do not bracket h are refused, not silently used (the theorem's condition)."
    h = torch.tensor([0.5, 2.0])
    with pytest.raises(ValueError, match='h_min'): theory.loss_bounds(h, torch.zeros(2), 1.0, 0.5, h_min=1.0)
    with pytest.raises(ValueError, match='h_max'): theory.loss_bounds(h, torch.zeros(2), 1.0, 0.5, h_max=1.0)

# ----------------------------------------------------------------------------- mutations
def mutate(module, name:str, old:str, new:str):
    "A copy of `module.name` whose source has `old` replaced by `new` (exec'd in a copy of the module's globals)."
    src = textwrap.dedent(inspect.getsource(getattr(module, name)))
    assert src.count(old) == 1, f"mutation target {old!r} is not in {module.__name__}.{name} exactly once: update MUTATIONS"
    ns = dict(vars(module))
    code = compile(src.replace(old, new), f'<mutant of {module.__name__}.{name}>', 'exec',
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, ns)
    return ns[name]

# (property test, module, function, source snippet, replacement)
MUTATIONS = [
    (test_pd_antisymmetry, divergence, 'preference_divergence', 'delta = c - r', 'delta = c'),
    (test_pd_ignores_own_aspect, divergence, 'preference_divergence', 'other[torch.arange(N, device=c.device), a] = False', 'pass'),
    (test_pd_shift_invariance, divergence, 'preference_divergence', 'delta = c - r', 'delta = torch.log1p(c.abs()) - torch.log1p(r.abs())'),
    (test_pd_weight_scale, divergence, 'normalise_weights', 'return w / w.sum()', 'return w'),
    (test_pd_sign, divergence, 'preference_divergence', 'pd = -(known', 'pd = (known'),
    (test_losses_finite_for_extreme_inputs, losses, 'dpo_loss', 'losses = neg_logsigmoid(beta * margin)', 'losses = -torch.log(torch.sigmoid(beta * margin))'),
    (test_losses_finite_for_extreme_inputs, losses, 'dfpo_loss', 'return neg_logsigmoid(t)', 'return -torch.log(torch.sigmoid(t))'),
    (test_sequence_logps_finite_and_nonpositive, losses, 'sequence_logps', 'torch.logsumexp(z, -1)', 'z.exp().sum(-1).log()'),
    (test_dfpo_equals_dpo_at_zero_pd_unit_weight, losses, 'dfpo_loss', 't = beta * margin', 't = margin'),
    (test_dpo_loss_decreasing_in_margin, losses, 'dpo_loss', 'losses = neg_logsigmoid(beta * margin)', 'losses = neg_logsigmoid(-beta * margin)'),
    (test_dfpo_decreasing_in_pd, losses, 'dfpo_loss', 't = t + pd', 't = t - pd'),
    (test_select_exact_count, selection, 'n_keep', 'math.ceil(', 'math.floor('),
    (test_select_exact_count, selection, 'n_keep', 'math.ceil(Fraction(float(ratio)).limit_denominator(10**9) * n)', 'math.ceil(ratio * n)'),
    (test_select_deterministic, selection, 'select_random', 'g = torch.Generator().manual_seed(int(seed))', 'g = None'),
    (test_select_ties_lowest_index_first, selection, '_ranked', "return sub[np.argsort(-v if largest else v, kind='stable')]",
     "return sub[::-1][np.argsort((-v if largest else v)[::-1], kind='stable')]"),
    (test_select_tie_order_is_a_function_of_the_seed_only, selection, '_top',
     'tie = None if seed is None else _seeded_rank(len(values), seed)', 'tie = None'),
    (test_select_budget_is_exact_for_every_method_ratio_and_split, selection, 'per_aspect_budget',
     'for g in order[:total - sum(out)]: out[g] += 1', 'for g in order: out[g] += 1'),
    (test_select_never_duplicates, selection, 'select_random', 'torch.randperm(n, generator=g)[:k]', 'torch.randint(n, (k,), generator=g)'),
    (test_select_by_pd_splits_at_a_threshold, selection, 'select_by_pd', 'largest=False', 'largest=True'),
    (test_select_dataset, selection, 'select', '[:b] for g, b in zip(groups, budgets)', '[:max(b - 1, 0)] for g, b in zip(groups, budgets)'),
    (test_loss_bounds_hold, theory, 'loss_bounds', 'q.mean(-1)', '(1 - q).mean(-1)'),
]

@pytest.mark.parametrize('prop_test,module,name,old,new', MUTATIONS,
                         ids=[f'{m[0].__name__[5:]}:{m[2]}:{m[4][:24]}' for m in MUTATIONS])
def test_property_catches_mutation(prop_test, module, name, old, new, monkeypatch):
    "Each property fails once its named mutation is applied to the library (and passes without it: the tests above)."
    monkeypatch.setattr(module, name, mutate(module, name, old, new))
    run = _settings(prop_test.prop_name, shrink=False)(given(*prop_test.strategies)(prop_test.check))
    with pytest.raises((AssertionError, Flaky)): run()
