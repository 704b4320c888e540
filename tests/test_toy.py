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
