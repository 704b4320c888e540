"""The text-feature world (`pd_align.text_world`): features as the notebook describes them, gold equal to the text
toy's, held-out prompts and topics kept out of training, the conflict share as requested, reproducible runs, the CLI."""
import json, os, subprocess
import pandas as pd
import pytest
import torch

import pd_align.text_world as tw
from pd_align.text_toy import ASPECTS, TOPICS, make_prompt, score_matrix, gold_weights, topic_of
from pd_align.toy import holistic_margins, mix_conflict

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore'}
QUICK = tw.TextWorldConfig(**tw.QUICK)


@pytest.fixture(scope='module')
def quick():
    return tw.simulate(QUICK, progress=False)


def test_features_hand_checked():
    "phi of one response, counted by hand: 7 unigrams + 6 bigrams with topics abstracted, then the length."
    cats, dogs = make_prompt('cats'), make_prompt('dogs')
    resp = 'hello. cats are common. dogs are bad.'
    assert tw.abstract_tokens(cats, resp) == ['hello', 'TOPIC', 'are', 'common', 'OTHER', 'are', 'bad']
    assert tw.abstract_tokens(dogs, resp) == ['hello', 'OTHER', 'are', 'common', 'TOPIC', 'are', 'bad']
    phi = tw.featurize([cats, dogs], [resp, resp], dim=128)
    assert phi.shape == (2, 129)
    assert phi[0, :128].sum() == 13 and phi[0, 128] == pytest.approx(-0.3)
    grams = ['hello', 'TOPIC', 'are', 'common', 'OTHER', 'are', 'bad', 'hello TOPIC', 'TOPIC are', 'are common',
             'common OTHER', 'OTHER are', 'are bad']
    expected = torch.zeros(128)
    for g in grams: expected[tw.hash_bucket(g, 128)] += 1
    assert torch.equal(phi[0, :128], expected)
    assert not torch.equal(phi[0], phi[1]) # the same words mean different features for another topic
    # a topic word never reaches phi: the same sentence about any topic has the same features
    assert torch.equal(tw.featurize([make_prompt('birds')], ['birds are common.'])[0],
                       tw.featurize([make_prompt('trains')], ['trains are common.'])[0])
    assert tw.hash_bucket('TOPIC are', 128) == 9 # MD5, stable across processes
    with pytest.raises(ValueError, match='differ in length'): tw.featurize([cats], [resp, resp])


def test_candidate_sets_api():
    prompts = [make_prompt('cats'), make_prompt('rivers', 2)]
    sets = tw.candidate_sets(prompts, n=24, seed=3)
    assert [len(s) for s in sets] == [24, 24] and all(len(set(s)) == 24 for s in sets)
    assert tw.candidate_sets(prompts, n=24, seed=3) == sets
    assert tw.candidate_sets(prompts[:1], n=24, seed=3) == sets[:1] # prompt i's set ignores later prompts
    assert tw.candidate_sets(prompts, n=24, seed=4) != sets
    assert sum('rivers' in r for r in sets[1]) > 12 # mostly on topic (a sentence may digress to another topic)
    with pytest.raises(ValueError, match='n must be >= 2'): tw.candidate_sets(prompts, n=1)
    with pytest.raises(ValueError, match='names none of the topics'): tw.candidate_sets(['hello\n'], n=4)


def test_gold_is_the_text_toys():
    w = tw.make_text_world(tw.sample_prompts(TOPICS, 10, 'g'), n_candidates=8, seed='g')
    flat_p = [p for p, cs in zip(w.prompts, w.candidates) for _ in cs]
    flat_r = [r for cs in w.candidates for r in cs]
    assert torch.equal(w.scores.reshape(-1, len(ASPECTS)), score_matrix(flat_p, flat_r))
    assert torch.allclose(w.gold.reshape(-1), score_matrix(flat_p, flat_r) @ gold_weights())
    assert torch.allclose(w.toy.rewards, (w.scores / 0.1).float())
    assert w.toy.ref_logits.abs().sum() == 0 # uniform reference


def test_heldout_never_enters_training(monkeypatch):
    "Every training run's pairs index the training world only; held-out worlds do not change what is trained."
    seen, made = [], []
    real_run, real_worlds = tw.shared_run, tw.seed_worlds
    def spy_run(world, *a, **k):
        seen.append(world)
        return real_run(world, *a, **k)
    monkeypatch.setattr(tw, 'shared_run', spy_run)
    monkeypatch.setattr(tw, 'seed_worlds', lambda c, s: made.append(real_worlds(c, s)) or made[-1])
    rows, _, _ = tw.run_seed(QUICK, 0)
    ws = made[0]
    assert len(seen) == len(QUICK.shares) * len(QUICK.methods) and all(w is ws.train.toy for w in seen)
    assert not {topic_of(p) for p in ws.train.prompts} & set(ws.eval_topics)
    assert {topic_of(p) for p in ws.topics.prompts} <= set(ws.eval_topics)
    assert not set(map(tuple, ws.heldout.candidates)) & set(map(tuple, ws.train.candidates))
    # more held-out prompts: the training side (and so every trained policy) is unchanged
    monkeypatch.undo()
    other, _, _ = tw.run_seed(tw.TextWorldConfig(**{**tw.QUICK, 'n_heldout': 11}), 0)
    a, b = pd.DataFrame(rows), pd.DataFrame(other)
    assert (a['gold_train'] - b['gold_train']).abs().max() < 1e-12
    assert (a['gold'] - b['gold']).abs().max() > 0 # the held-out sets themselves did change


def test_realised_conflict_share(quick):
    data = quick.data
    assert len(data) == QUICK.seeds * len(QUICK.shares)
    assert (data['realised_share'] - data['share']).abs().max() <= 0.5 / QUICK.pairs_per_aspect
    ws = tw.seed_worlds(QUICK, 0)
    pool = tw.labelled_pool(ws.train, 800, 0)
    for share in (0.0, 0.25, 0.4):
        pairs = pool.subset(mix_conflict(ws.train.toy, pool, share, 100))
        assert (holistic_margins(ws.train.toy, pairs) < 0).double().mean().item() == pytest.approx(share, abs=0.005)


def test_quick_run_every_method_converged_and_reproducible(quick):
    runs = quick.runs
    assert set(runs['method']) == {'sft', *tw.TEXT_WORLD_METHODS}
    assert runs['converged'].all() and (runs.loc[runs['method'] != 'sft', 'steps'] > 0).all()
    assert (runs.loc[runs['method'] == 'pd_oracle', 'label_conflict'] == 0).all()
    # ALL and the ceiling learn: far above the uniform reference on held-out prompts and topics
    s = quick.summary.set_index(['share', 'method'])
    for share in QUICK.shares:
        assert s.loc[(share, 'full'), 'gold'] > s.loc[(share, 'sft'), 'gold'] + 0.1
    t = quick.topics.set_index(['share', 'method'])
    assert t.loc[(0.3, 'gold_labels'), 'gold_topics'] > t.loc[(0.3, 'sft'), 'gold_topics'] + 0.1
    again = tw.simulate(QUICK, progress=False).runs
    assert (again['gold'] - runs['gold']).abs().max() < 1e-12
    shifted = tw.simulate(tw.TextWorldConfig(**{**tw.QUICK, 'seed': 5, 'seeds': 1}), progress=False).runs
    assert (shifted['gold'].values[:5] != runs['gold'].values[:5]).any()


def test_compare_verdicts():
    runs = pd.DataFrame([dict(seed=s, share=0.1, method=m, gold=g + 0.001 * s)
                         for s in range(5) for m, g in (('full', 0.2), ('pd', 0.3), ('random', 0.1))])
    c = tw.compare(runs, comparisons=(('pd', 'full', 1), ('random', 'full', 1), ('pd', 'random', -1)))
    assert list(c['verdict']) == ['agrees', 'disagrees', 'disagrees']
    assert c['difference'].tolist() == pytest.approx([0.1, -0.1, 0.2])
    assert list(tw.compare(runs.assign(share=0.4), comparisons=(('pd', 'full', 1),))['verdict']) == \
        ['agrees (no paper row)']


def test_config_errors():
    with pytest.raises(ValueError, match='margin'): tw.TextWorldConfig(methods=('full', 'margin'))
    with pytest.raises(ValueError, match='shares'): tw.TextWorldConfig(shares=(0.1, 1.5))
    with pytest.raises(ValueError, match='folds'): tw.TextWorldConfig(folds=1)
    with pytest.raises(ValueError, match='temperature'): tw.make_text_world([make_prompt('cats')], temperature=0)


def test_cli_text_world(tmp_path):
    "`pd-align text-world --quick` prints both tables and writes results as data; a bad --shares is one line."
    out = tmp_path / 'tw'
    r = subprocess.run(['pd-align', 'text-world', '--quick', '--seeds', '2', '--out', str(out)], capture_output=True,
                       text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'held-out prompts' in r.stdout and 'held-out topics' in r.stdout and 'full = ALL' in r.stdout
    assert ' ± ' in r.stdout and 'verdict' in r.stdout
    files = set(os.listdir(out))
    assert {'results.json', 'results.csv', 'runs.csv', 'topics.csv', 'comparisons.csv', 'table.txt',
            'text_world.png'} <= files
    doc = json.loads((out / 'results.json').read_text())
    assert doc['seeds'] == [0, 1] and doc['config']['quick'] and doc['provenance']['package'] == 'pd_align'
    assert sorted(pd.read_csv(out / 'results.csv')['share'].unique()) == [0.1, 0.3]
    bad = subprocess.run(['pd-align', 'text-world', '--shares', 'low'], capture_output=True, text=True, cwd=tmp_path,
                         env=ENV, timeout=120)
    lines = [l for l in bad.stderr.splitlines() if l.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and 'shares' in lines[0] and 'Traceback' not in bad.stderr


def test_set_expected_gold_is_the_loglinear_policys():
    "For the log-linear policy, `set_expected_gold` of its logits equals `pd_align.loglinear.expected_gold`."
    from pd_align.loglinear import policy_logits, expected_gold
    w = tw.make_text_world(tw.sample_prompts(TOPICS, 6, 's'), n_candidates=8, seed='s')
    theta = torch.randn(3, w.features.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gold = tw.candidate_gold(w.prompts, w.candidates)
    assert torch.allclose(gold, w.gold)
    logits = policy_logits(theta, w.features, w.toy.ref_logits)
    assert torch.allclose(tw.set_expected_gold(logits, gold), expected_gold(theta, w.features, w.toy.ref_logits, w.gold))
    with pytest.raises(ValueError, match='one set per prompt'): tw.candidate_gold(w.prompts[:2], w.candidates)
