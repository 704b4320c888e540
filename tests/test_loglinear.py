"The shared-parameter log-linear policy: gradient = autograd, DPO recovers a Bradley-Terry reward, stopping rule."
import torch
import pytest
from pd_align.loglinear import (LoglinearRuns, loglinear_run, run_objective, objective_gradient, train_loglinear,
                                StopRule, convergence, expected_gold, implicit_margin, pair_features, policy_logits)


def _runs(g):
    feats = torch.randn(8, 5, 6, generator=g, dtype=torch.float64)
    def idx(n): return (torch.randint(8, (n,), generator=g), torch.randint(5, (n,), generator=g),
                        torch.randint(5, (n,), generator=g))
    return feats, LoglinearRuns.cat([
        loglinear_run(feats, *idx(30)),
        loglinear_run(feats, *idx(12), weight=torch.rand(12, generator=g) + 0.1),
        loglinear_run(feats, *idx(20), loss='dfpo', pd=torch.randn(20, generator=g, dtype=torch.float64),
                      aspect_weight=0.25)])


@pytest.mark.parametrize('beta,l2', [(0.1, 0.0), (1.0, 1e-2)])
def test_dpo_gradient_equals_autograd(beta, l2):
    feats, runs = _runs(torch.Generator().manual_seed(0))
    theta = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(run_objective(theta, runs, beta, l2).sum(), theta)
    closed = objective_gradient(theta.detach(), runs, beta, l2)
    assert torch.allclose(closed, auto, atol=1e-12, rtol=1e-10)
    assert closed.abs().max() > 1e-3  # not a trivially zero gradient


def test_margin_is_log_ratio_difference():
    g = torch.Generator().manual_seed(1)
    feats, ref = torch.randn(4, 3, 2, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g).double()
    th = torch.tensor([0.7, -1.3], dtype=torch.float64)
    lp, rl = policy_logits(th, feats, ref).log_softmax(-1), ref.log_softmax(-1)
    p, c, r = torch.tensor([0, 3]), torch.tensor([2, 0]), torch.tensor([1, 2])
    want = 0.3 * ((lp[p, c] - rl[p, c]) - (lp[p, r] - rl[p, r]))
    assert torch.allclose(implicit_margin(th, pair_features(feats, p, c, r), 0.3), want, atol=1e-12)


def test_dpo_recovers_bradley_terry_reward():
    g = torch.Generator().manual_seed(3)
    u = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    feats = torch.randn(300, 5, 4, generator=g, dtype=torch.float64)
    n = 30_000
    p, a = torch.randint(300, (n,), generator=g), torch.randint(5, (n,), generator=g)
    b = (a + 1 + torch.randint(4, (n,), generator=g)) % 5
    r = feats @ u
    wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(r[p, a] - r[p, b])
    fit = train_loglinear(loglinear_run(feats, p, torch.where(wins, a, b), torch.where(wins, b, a)), beta=0.5, l2=0.0)
    assert (0.5 * fit.theta[0] - u).abs().max() < 0.08
    steps, ok = convergence(fit)
    assert ok.all() and (steps < 20).all()
    held = torch.randn(100, 5, 4, generator=g, dtype=torch.float64)
    gold = held @ u
    got = expected_gold(fit.theta[0], held, torch.zeros(100, 5, dtype=torch.float64), gold)
    assert gold.mean() + 1.0 < got < gold.max(-1).values.mean()


def test_cap_hit_is_reported():
    feats, runs = _runs(torch.Generator().manual_seed(4))
    fit = train_loglinear(runs, beta=0.1, l2=1e-4, rule=StopRule(gtol=0.0, rtol=0.0, max_steps=2))
    assert fit.n_steps.tolist() == [2, 2, 2] and not fit.converged.any() and (fit.reason == 2).all()
    full = train_loglinear(runs, beta=0.1, l2=1e-4)
    assert full.converged.all() and (full.history['loss'][0] >= full.history['loss'][1]).all()
    assert full.history['loss'].shape[1] == 3


def test_bad_input_names_the_field():
    feats = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match='features'): pair_features(feats[0], torch.tensor([0]), torch.tensor([0]),
                                                                     torch.tensor([1]))
    with pytest.raises(ValueError, match='pd'): loglinear_run(feats, torch.tensor([0]), torch.tensor([0]),
                                                              torch.tensor([1]), loss='dfpo')
    with pytest.raises(ValueError, match='gold'): expected_gold(torch.zeros(4), feats, torch.zeros(2, 3),
                                                                torch.zeros(3, 3))
