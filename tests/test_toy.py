"The toy world: determinism, the theorem's bounds on every run, the PD-selection claim, and `run_toy`'s files."
import json, math
import pandas
import pytest
import torch
from pd_align.data import get_aspects
from pd_align.divergence import conflict_rate, spearman
from pd_align.toy import (ASPECTS, conflict_correlation, make_world, draw_pairs, sample_subdatasets, toy_pairs, pair_scores,
                          oracle_pd, estimate_aspect_rewards, estimated_pd, train_tabular_dpo, evaluate, simulate,
                          run_experiment, run_toy)
from pd_align.experiments import mean_ci

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


def test_dataset_and_tensor_paths_agree():
    w = make_world(conflict='mid', seed=1)
    ds, pr = sample_subdatasets(w, 40, seed=3), draw_pairs(w, 40, seed=3)
    assert get_aspects(ds) == list(ASPECTS) and len(ds) == 160
    back = toy_pairs(ds, w)
    for f in ('prompt', 'chosen', 'rejected', 'aspect'): assert torch.equal(getattr(back, f), getattr(pr, f))
    assert torch.allclose(oracle_pd(w, ds), oracle_pd(w, pr), atol=1e-5)
    assert torch.allclose(pair_scores(w, ds)[0], pair_scores(w, pr)[0], atol=1e-6)


def test_conflict_rate_grows_with_the_level():
    rates = []
    for level in ('low', 'mid', 'high'):
        w = make_world(conflict=level, seed=0)
        rates.append(conflict_rate(*pair_scores(w, draw_pairs(w, 500, seed=0)), w.weights))
    assert rates[0] < rates[1] < rates[2], rates


def test_length_penalty_debiases_the_estimated_pd():
    w = make_world(conflict='mid', seed=0, length_bias=1.0)
    pr = draw_pairs(w, 500, seed=0)
    true = oracle_pd(w, pr)
    with_pen = spearman(estimated_pd(w, pr, estimate_aspect_rewards(w, pr, length_penalty=True)), true)
    without = spearman(estimated_pd(w, pr, estimate_aspect_rewards(w, pr, length_penalty=False)), true)
    assert with_pen > without + 0.1, (with_pen, without)


def test_dpo_improves_on_the_reference():
    w = make_world(conflict='low', seed=0)
    ev = evaluate(w, train_tabular_dpo(w, draw_pairs(w, 300, seed=0)))
    assert ev['gold_norm'] > 0.2 and ev['win_rate'] > 0.55 and 0 < ev['kl'] < math.log(6)


def test_simulate_is_deterministic_and_bounds_hold_on_every_run():
    kw = dict(conflicts=('mid', 'high'), seeds=2, progress=False, **SMALL)
    r1, r2 = simulate(**kw), simulate(**kw)
    pandas.testing.assert_frame_equal(r1.runs, r2.runs)
    pandas.testing.assert_frame_equal(r1.summary, r2.summary)
    assert set(r1.runs['kind']) == {'main', 'sweep', 'quality'}
    assert r1.runs['bounds_ok'].all()
    assert (r1.runs['bound_lower'] <= r1.runs['holistic_loss'] + 1e-9).all()
    assert (r1.runs['holistic_loss'] <= r1.runs['bound_upper'] + 1e-9).all()


def test_pd_selection_beats_random_and_full_at_high_conflict():
    "The claim under test (issue 4): PD-30% (oracle) > random-30% and > full data at high conflict, 5 seeds, default sizes."
    s = run_experiment(('high',), seeds=5, ratio=0.3, sweep=False, quality=False, progress=False,
                       methods=('full', 'random', 'pd_oracle')).set_index('method')
    pd_row = s.loc['pd_oracle']
    msg = s[['gold', 'gold_ci', 'd_full', 'd_full_ci', 'd_random', 'd_random_ci']].round(4).to_string()
    assert pd_row['gold'] > s.loc['random', 'gold'] and pd_row['gold'] > s.loc['full', 'gold'], msg
    # and not by luck: the paired 95% intervals exclude zero
    assert pd_row['d_random'] - pd_row['d_random_ci'] > 0, msg
    assert pd_row['d_full'] - pd_row['d_full_ci'] > 0, msg
    assert s['bounds_ok'].all()


def test_run_toy_writes_the_files(tmp_path):
    df = run_toy(seeds=2, conflicts='low,high', out=tmp_path, progress=False, **SMALL)
    names = {p.name for p in tmp_path.iterdir()}
    assert {'results.json', 'results.csv', 'runs.csv', 'worlds.csv', 'ratio_sweep.png', 'pd_histogram.png',
            'conflict_rate.png', 'pd_quality.png'} <= names, names
    assert not [n for n in names if n.endswith('.tmp')]
    js = json.loads((tmp_path / 'results.json').read_text())
    assert js['config']['seeds'] == 2 and len(js['summary']) == len(df) == 2 * 9
    assert (tmp_path / 'ratio_sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert list(pandas.read_csv(tmp_path / 'results.csv')['conflict'].unique()) == ['low', 'high']
    with pytest.raises(ValueError, match='conflict'): run_toy(conflicts='extreme', progress=False)


def test_mean_ci_is_a_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert math.isnan(mean_ci([1.0])[1])
