"The toy world: determinism, the conflict-share mixing, the relabellings, the identity check (and a mutation it catches), the PD claim at default size, and `run_toy`'s files."
import json, math
from pathlib import Path
import pandas
import pytest
import torch
from pd_align.data import get_aspects
from pd_align.divergence import conflict_rate, spearman
from pd_align.experiments import mean_ci, read_results
from pd_align.toy import (ASPECTS, LENGTH_BIAS, DEFAULT_METHODS, conflict_correlation, make_world, draw_pairs, sample_subdatasets,
                          toy_pairs, gold_pair_scores, oracle_pd, estimate_aspect_rewards, estimate_unified_reward, estimated_pd,
                          holistic_margins, mix_conflict, relabel_flips, identity_gap, train_tabular_dpo, evaluate, simulate,
                          run_experiment, run_toy, parse_shares, _length_balance_weights, ToyConfig, simulate_config)

SMALL = dict(n_prompts=30, pairs_per_aspect=150, steps=60)


def test_world_is_deterministic_and_has_the_requested_correlation():
    a, b = make_world(conflict='high', seed=7), make_world(conflict='high', seed=7)
    for f in ('rewards', 'lengths', 'features'): assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.rewards, make_world(conflict='high', seed=8).rewards)
    big = make_world(n_prompts=2000, conflict='high', seed=0)
    emp = torch.corrcoef(big.rewards.reshape(-1, 4).T)
    assert abs(emp[~torch.eye(4, dtype=bool)].mean().item() - (-0.3)) < 0.02
    assert conflict_correlation('high', 6) == pytest.approx(-0.18)
    with pytest.raises(ValueError, match='conflict'): make_world(conflict=-0.4)
    with pytest.raises(ValueError, match='weights'): make_world(weights=[1, 2])
    with pytest.raises(ValueError, match='length_bias'): make_world(length_bias=[1, 2])
    assert make_world(length_bias=LENGTH_BIAS).length_bias.tolist() == list(LENGTH_BIAS)


def test_per_aspect_length_bias_moves_only_those_labels():
    w = make_world(n_prompts=300, conflict='mid', seed=0, length_bias=(2.0, 0.0, 0.0, 0.0))
    pr = draw_pairs(w, 3000, seed=0)
    longer = (w.lengths[pr.prompt, pr.chosen] > w.lengths[pr.prompt, pr.rejected]).float()
    by_aspect = [longer[pr.aspect == k].mean().item() for k in range(4)]
    assert by_aspect[0] > 0.7 and all(abs(v - 0.5) < 0.05 for v in by_aspect[1:]), by_aspect  # rho=0: length is unrelated to r_1..r_3


def test_dataset_and_tensor_paths_agree():
    w = make_world(conflict='mid', seed=1)
    ds, pr = sample_subdatasets(w, 40, seed=3), draw_pairs(w, 40, seed=3)
    assert get_aspects(ds) == list(ASPECTS) and len(ds) == 160
    back = toy_pairs(ds, w)
    for f in ('prompt', 'chosen', 'rejected', 'aspect'): assert torch.equal(getattr(back, f), getattr(pr, f))
    assert torch.allclose(oracle_pd(w, ds), oracle_pd(w, pr), atol=1e-5)


def test_mix_conflict_hits_the_share_exactly():
    w = make_world(conflict='mid', seed=0, length_bias=LENGTH_BIAS)
    pool = draw_pairs(w, 2000, seed=0)
    for share in (0.0, 0.25, 0.4):
        sub = pool.subset(mix_conflict(w, pool, share, 400))
        assert torch.bincount(sub.aspect).tolist() == [400] * 4
        assert (holistic_margins(w, sub) < 0).double().mean().item() == pytest.approx(share, abs=1e-12)
        assert conflict_rate(*gold_pair_scores(w, sub), w.weights) == pytest.approx(share, abs=1e-6)
    with pytest.raises(ValueError, match='pool'): mix_conflict(w, draw_pairs(w, 400, seed=0), 0.45, 400)
    with pytest.raises(ValueError, match='share'): mix_conflict(w, pool, 1.5, 400)


def test_relabellings_are_holistic_and_noisy():
    w = make_world(conflict='mid', seed=2, length_bias=LENGTH_BIAS)
    pool = draw_pairs(w, 2000, seed=2)
    f = relabel_flips(w, pool, seed=2)
    assert torch.equal(f['gold_labels'], holistic_margins(w, pool) < 0)
    for k in ('ova', 'avg'):
        disagree = (f[k] != f['gold_labels']).double().mean().item()
        assert 0.1 < disagree < 0.45, (k, disagree)
    assert torch.equal(relabel_flips(w, pool, seed=2)['ova'], f['ova']) and not torch.equal(relabel_flips(w, pool, seed=3)['ova'], f['ova'])


def test_length_balance_weights_give_each_side_half():
    dlen = torch.tensor([1.0, 2.0, 3.0, -1.0, 0.5, -2.0, -3.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    w = _length_balance_weights(dlen, group, 2)
    assert w[:3].sum().item() == pytest.approx(0.5) and w[3].item() == pytest.approx(0.5)
    assert w[4].item() == pytest.approx(0.5) and w[5:].sum().item() == pytest.approx(0.5)
    one_sided = _length_balance_weights(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), 1)
    assert one_sided.tolist() == [0.5, 0.5]


def test_length_penalty_debiases_the_estimated_pd():
    w = make_world(conflict='mid', seed=0, length_bias=1.0)
    pr = draw_pairs(w, 500, seed=0)
    true = oracle_pd(w, pr)
    with_pen = spearman(estimated_pd(w, pr, estimate_aspect_rewards(w, pr, length_penalty=True)), true)
    without = spearman(estimated_pd(w, pr, estimate_aspect_rewards(w, pr, length_penalty=False)), true)
    assert with_pen > without + 0.1, (with_pen, without)


def test_unified_reward_tracks_the_holistic_reward():
    w = make_world(conflict='mid', seed=0)
    pr = draw_pairs(w, 500, seed=0)
    u = estimate_unified_reward(w, pr)
    assert u.shape == w.holistic.shape
    assert spearman(u.flatten(), w.holistic.flatten()) > 0.7


def test_dpo_improves_on_the_reference():
    w = make_world(conflict='low', seed=0)
    ev = evaluate(w, train_tabular_dpo(w, draw_pairs(w, 300, seed=0)))
    assert ev['gold_norm'] > 0.2 and ev['win_rate'] > 0.55 and 0 < ev['kl'] < math.log(6)


def test_identity_check_holds_and_catches_mutations():
    "L_H from the gold rewards = L_DPO + mean(q h) to 1e-9; a wrong PD (sign, weight, float32 margins) breaks it."
    w = make_world(n_prompts=30, conflict='mid', seed=0)
    pr = draw_pairs(w, 150, seed=0)
    pol = train_tabular_dpo(w, pr, steps=60)
    idx = torch.arange(len(pr))
    l_h, gap = identity_gap(w, pr, idx, pol)
    assert gap < 1e-12 and 0 < l_h < 1
    pd = oracle_pd(w, pr).double()
    ch, rj = gold_pair_scores(w, pr)
    mutations = {'sign of PD flipped': -pd,
                 'PD without the aspect weights': pd * 4,
                 'PD including the labelling aspect': pd - (ch.double() - rj.double()).gather(1, pr.aspect[:, None]).squeeze(1) / 4,
                 'PD from float32 margins': pd.float().double() + 1e-6 * torch.randn(len(pd), dtype=torch.float64)}
    for name, bad in mutations.items():
        assert identity_gap(w, pr, idx, pol, pd=bad)[1] > 1e-9, name


def test_simulate_is_deterministic_and_the_identity_holds_on_every_run():
    kw = dict(shares=(0.1, 0.3), seeds=2, progress=False, **SMALL)
    r1, r2 = simulate(**kw), simulate(**kw)
    pandas.testing.assert_frame_equal(r1.runs, r2.runs)
    pandas.testing.assert_frame_equal(r1.summary, r2.summary)
    assert set(r1.runs['kind']) == {'main', 'sweep', 'quality'}
    assert (r1.runs['identity_gap'] < 1e-9).all()
    assert list(r1.summary['method'].unique()) == list(DEFAULT_METHODS)
    assert r1.worlds['realised_share'].tolist() == pytest.approx(r1.worlds['share'].tolist())
    s = r1.summary.set_index(['share', 'method'])
    assert s.loc[(0.3, 'full'), 'label_conflict'] == pytest.approx(0.3) and s.loc[(0.3, 'gold_labels'), 'label_conflict'] == 0
    assert s['n_train'].dtype.kind == 'i' and s.loc[(0.1, 'pd'), 'n_train'] == 180
    with pytest.raises(ValueError, match='methods'): simulate(methods=('holistic',), **kw)
    with pytest.raises(ValueError, match='sweep_share'): simulate(sweep_share=0.2, **kw)


def test_conflict_share_claim_at_default_size():
    "The claim under test (issue 13): at default size, ALL degrades with the conflict share, PD-30% (true PD) does not, and beats ALL at 30%."
    runs = simulate(shares=(0.1, 0.3), seeds=6, sweep_share=None, quality=False, progress=False,
                    methods=('full', 'random', 'pd_oracle')).runs
    g = lambda m, s: runs[(runs['method'] == m) & (runs['share'] == s)].set_index('seed')['gold']
    d_full, h_full = mean_ci(g('full', 0.3) - g('full', 0.1))
    d_pd, h_pd = mean_ci(g('pd_oracle', 0.3) - g('pd_oracle', 0.1))
    assert d_full + h_full < 0, (d_full, h_full)
    assert abs(d_pd) < abs(d_full) / 3, (d_pd, d_full)
    m, h = mean_ci(g('pd_oracle', 0.3) - g('full', 0.3))
    assert m - h > 0, (m, h)
    m, h = mean_ci(g('pd_oracle', 0.3) - g('random', 0.3))
    assert m - h > 0, (m, h)


def test_run_toy_writes_the_files(tmp_path):
    res = run_toy(quick=True, out=tmp_path, progress=False, **SMALL)
    names = {p.name for p in tmp_path.iterdir()}
    assert {'results.json', 'results.csv', 'runs.csv', 'worlds.csv', 'table.txt', 'conflict_share.png', 'pd_quality.png',
            'pd_histogram.png'} <= names, names
    assert not [n for n in names if n.endswith('.tmp')]
    js = json.loads((tmp_path / 'results.json').read_text())
    assert js['config']['seeds'] == 3 and js['seeds'] == [0, 1, 2] and len(js['summary']) == len(res.summary) == 2 * len(DEFAULT_METHODS)
    assert js['provenance']['version'] and 'git_commit' in js['provenance']
    assert (tmp_path / 'conflict_share.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(pandas.read_csv(tmp_path / 'results.csv')['share'].unique()) == [0.1, 0.3]
    table = (tmp_path / 'table.txt').read_text()
    assert ' 600 ' in table and '600.0' not in table and '±' in table and 'key: full = ALL' in table
    back = read_results(tmp_path)
    pandas.testing.assert_frame_equal(back.summary, res.summary, check_dtype=False, check_exact=False, rtol=1e-6)
    assert run_toy(quick=True, seeds=2, shares='0.2', progress=False, **SMALL).config['seeds'] == 2
    with pytest.raises(ValueError, match='shares'): parse_shares('low')
    with pytest.raises(ValueError, match='shares'): run_toy(shares='0.1,1.5', progress=False)


def test_toy_config_is_the_experiment_and_reads_back_the_committed_one():
    "`ToyConfig` is what `simulate` runs and stores; the committed results' config makes the same `ToyConfig`."
    c = ToyConfig(shares=(0.1, 0.3), seeds=1, methods=('full', 'random'), sweep_share=None, quality=False, **SMALL)
    res = simulate_config(c, progress=False)
    assert res.config == c.as_dict() and res.config['shares'] == [0.1, 0.3]
    assert set(res.runs['method']) == {'full', 'random'}
    assert ToyConfig(shares=(0.0, 0.2, 0.4)).sweep_share == 0.2 # 'middle' is resolved when the config is made
    with pytest.raises(TypeError, match='conflicts'): simulate(conflicts=('high',)) # an unknown setting fails
    stored = read_results(Path(__file__).resolve().parent.parent / 'nbs' / 'results' / 'toy').config
    again = ToyConfig(**{k: v for k, v in stored.items() if k not in ('seconds', 'quick')})
    assert again.as_dict() == {k: v for k, v in stored.items() if k not in ('seconds', 'quick')}


# --- the shared-parameter (log-linear) policy beside the tabular one (issue 24)
from pd_align.loglinear import LoglinearRuns, run_objective, objective_gradient, train_loglinear, StopRule
from pd_align.toy import (shared_run, crossfit_pd, policy_map, map_summary, map_sentence, policy_table, TabularRuns,
                          tabular_run, train_runs)

TINY = dict(n_prompts=30, pairs_per_aspect=120, n_heldout=40, sweep_share=None, quality=False)


def test_shared_policy_dpo_gradient_equals_autograd():
    w = make_world(conflict='mid', seed=0, length_bias=LENGTH_BIAS)
    pr = draw_pairs(w, 100, seed=0)
    runs = LoglinearRuns.cat([shared_run(w, pr), shared_run(w, pr, torch.arange(50)),
                              shared_run(w, pr, loss='dfpo', pd=oracle_pd(w, pr))])
    theta = torch.randn(3, w.features.shape[-1], dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(run_objective(theta, runs, 0.1, 1e-4).sum(), theta)
    closed = objective_gradient(theta.detach(), runs, 0.1, 1e-4)
    assert torch.allclose(closed, auto, atol=1e-12) and closed.abs().max() > 1e-3


def test_shared_run_is_the_tabular_run_on_features():
    "Same pairs, same orientation (relabelled), same PD as `tabular_run`."
    w = make_world(conflict='mid', seed=1)
    pr = draw_pairs(w, 60, seed=1)
    flip = torch.rand(len(pr)) < 0.5
    pd = oracle_pd(w, pr)
    t, s = tabular_run(w, pr, None, flip, 'dfpo', pd), shared_run(w, pr, None, flip, 'dfpo', pd)
    want = w.features[t.prompt[0], t.chosen[0]] - w.features[t.prompt[0], t.rejected[0]]
    assert torch.allclose(s.dphi[0], want.double()) and torch.allclose(s.pd[0], t.pd[0].double())


def test_heldout_prompts_never_enter_training():
    "Held-out prompts change the gold of the shared policy, never what it was trained on (same training loss)."
    w = make_world(conflict='mid', seed=2, n_heldout=30)
    base = make_world(conflict='mid', seed=2)
    assert torch.equal(w.features, base.features) and w.heldout.n_prompts == 30
    assert int(draw_pairs(w, 500, seed=0).prompt.max()) < w.n_prompts
    kw = dict(shares=(0.2,), seeds=2, policy='shared', progress=False, **{**TINY, 'n_heldout': 40})
    a = simulate(**kw).runs
    b = simulate(**{**kw, 'n_heldout': 80}).runs
    for col in ('holistic_loss', 'n_steps', 'label_conflict', 'identity_gap'):
        assert a[col].tolist() == b[col].tolist(), col
    assert (a['gold'] - b['gold']).abs().max() > 1e-3  # different held-out prompts, different gold
    assert set(a['evaluated_on']) == {'held-out prompts'}


def test_stopping_rule_is_applied_to_every_method_and_policy():
    res = simulate(shares=(0.2,), seeds=1, policy='both', progress=False, **TINY)
    r = res.runs
    assert set(r['method']) == set(DEFAULT_METHODS)
    for p in ('tabular', 'shared'):
        assert set(r.loc[r['policy'] == p, 'method']) == set(DEFAULT_METHODS)
    sh, tb = r[r['policy'] == 'shared'], r[r['policy'] == 'tabular']
    assert sh['converged'].all() and (sh['n_steps'] < 30).all() and set(sh['stop_reason']) <= {
        'gradient norm < gtol', 'loss plateau'}
    assert (~tb['converged']).all() and (tb['n_steps'] == 150).all()  # the cap hit is visible
    assert set(tb['stop_reason']) == {'max_steps reached (not converged)'}
    loose = simulate(shares=(0.2,), seeds=1, policy='tabular', rtol=0.2, progress=False, **TINY).runs
    assert loose['converged'].all() and (loose['n_steps'] < 150).all()  # the same rule stops tabular runs too
    curves = res.tables['curves']
    assert set(curves['method']) == set(DEFAULT_METHODS) and set(curves['policy']) == {'tabular', 'shared'}
    assert 'tabular gold' in policy_table(res.summary, 0.2).columns


def test_tabular_rule_default_is_fixed_steps():
    w = make_world(conflict='mid', seed=0)
    run = tabular_run(w, draw_pairs(w, 100, seed=0))
    info = {}
    a = train_runs(run, steps=20, info=info)
    assert info['n_steps'].tolist() == [20] and not info['converged'].any()
    assert torch.equal(a, train_runs(run, steps=20, rule=StopRule(0.0, 0.0, 10, 20)))


def test_shared_policy_recovers_the_holistic_direction_in_a_realisable_world():
    "Features = rotated exact rewards (no noise): DPO on gold labels points theta along the holistic reward."
    w = make_world(n_prompts=200, conflict='mid', seed=0, feature_noise=0.0)
    X = w.features.reshape(-1, w.features.shape[-1]).double()
    u = torch.linalg.lstsq(X, w.holistic.reshape(-1, 1).double()).solution[:, 0]
    assert torch.allclose(X @ u, w.holistic.reshape(-1).double(), atol=1e-4)  # realisable
    pr = draw_pairs(w, 1000, seed=0)
    gold = holistic_margins(w, pr) < 0
    fit = train_loglinear(shared_run(w, pr, flip=gold), beta=0.1, l2=1e-4)
    cos = torch.nn.functional.cosine_similarity(fit.theta[0], u, dim=0).item()
    assert fit.converged.all() and cos > 0.95, cos


def test_crossfit_pd_uses_heads_that_never_saw_the_prompt():
    w = make_world(conflict='mid', seed=0, length_bias=LENGTH_BIAS)
    pr = draw_pairs(w, 400, seed=0)
    true = oracle_pd(w, pr)
    cf = crossfit_pd(w, pr, 2)
    assert spearman(cf, true) > 0.5
    odd = pr.prompt % 2 == 1
    changed = pr.subset(torch.arange(len(pr)))
    changed.chosen = torch.where(odd, pr.rejected, pr.chosen)  # relabel every odd-prompt pair
    changed.rejected = torch.where(odd, pr.chosen, pr.rejected)
    cf2 = crossfit_pd(w, changed, 2)
    # even-prompt pairs are scored by heads fit on odd prompts, whose labels changed; odd ones by unchanged heads
    # (their own orientation flipped, so their unscaled deltas flip sign): the ranking of odd pairs is reversed
    assert spearman(cf2[odd], -cf[odd]) > 0.9 and spearman(cf2[~odd], cf[~odd]) < 0.9
    with pytest.raises(ValueError, match='folds'): crossfit_pd(w, pr, 1)


def test_policy_map_marks_the_cells_above_zero():
    m = policy_map(values=(0.0,), ratios=(0.3, 0.5), shares=(0.1,), seeds=2, progress=False, **{
        k: v for k, v in TINY.items() if k not in ('sweep_share', 'quality')})
    s = m.summary
    assert len(s) == 2 * 2 * 2 and (s['n_seeds'] == 2).all()
    assert s['beats_full'].tolist() == (s['d_full'] - s['d_full_ci'] > 0).tolist()
    assert map_sentence(s).startswith("The paper's 10%-conflict result")
    with pytest.raises(ValueError, match='policy'): ToyConfig(policy='lm')
