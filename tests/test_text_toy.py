"Text toy: programmatic aspects, the tiny LM's determinism, fine-grained data with true scores, and the smoke experiment end to end."
import json, math, random
import pytest
import torch
from pd_align.data import get_aspects, scores_matrix, aspect_index
from pd_align.experiments import torch_threads
from pd_align.text_toy import (is_grammatical, ASPECTS, DEFAULT_METHODS as METHODS, TOPICS, Grammar, aspect_scores, gold_reward, grammar_corpus, make_prompt, topic_of,
                               make_config, pretrained_lm, sample_n, evaluate_policy, preference_pairs, build_dataset, true_pd,
                               subset_conflict, select_indices, run_text_toy, simulate_text_toy)

P = make_prompt('cats')

@pytest.mark.parametrize('response,expected', [
    ('cats are small.', dict(relevance=0.5, politeness=0.0, length=-0.7, sentiment=0.0)),
    ('glad you asked, thank you. cats are small. cats are old.', dict(relevance=1.0, politeness=2/3, length=-0.1, sentiment=0.0)),
    ('thank you for asking. dogs are lovely. trees are great.', dict(relevance=-1.0, politeness=1/3, length=0.0, sentiment=1.0)),
    ('cats are awful. cats are bad. cats are boring.', dict(relevance=0.0, politeness=0.0, length=-0.1, sentiment=-1.0)),
    ('please, thanks, i hope, please thank you.', dict(relevance=0.0, politeness=1.0, length=-0.3, sentiment=0.0)),
    ('', dict(relevance=0.0, politeness=0.0, length=-1.0, sentiment=0.0)),
])
def test_aspects_on_hand_written_strings(response, expected):
    got = aspect_scores(P, response)
    assert list(got) == list(ASPECTS)
    for a in ASPECTS: assert got[a] == pytest.approx(expected[a]), a
    assert gold_reward([P], [response]).item() == pytest.approx(sum(expected.values()) / 4)

def test_aspect_details_and_errors():
    assert topic_of('what do you think of trains?\n') == 'trains'
    assert aspect_scores(make_prompt('dogs'), 'cats are small.')['relevance'] == -0.5 # the same sentence digresses for another topic
    assert aspect_scores(P, 'cats are lovely.')['relevance'] == 0.0 # an opinion is not a fact
    assert aspect_scores(P, ' '.join(['cats are small.'] * 9))['length'] == -1.0 # clipped
    with pytest.raises(ValueError, match='topics'): aspect_scores('hello\n', 'cats are small.')
    with pytest.raises(ValueError, match='topic'): make_prompt('whales')
    with pytest.raises(ValueError, match='weights'): gold_reward([P], ['x'], weights=[1, 2])
    w = gold_reward([P], ['thank you. cats are lovely.'], weights=[0, 1, 0, 0]).item()
    assert w == pytest.approx(aspect_scores(P, 'thank you. cats are lovely.')['politeness'])

def test_conflicts_exist_in_the_grammar():
    "Politeness and length pull apart: the deliberate trade-off."
    G = grammar_corpus(1500, seed=2)
    S = torch.tensor([[aspect_scores(p, r)[a] for a in ASPECTS] for p, r in G])
    corr = torch.corrcoef(S.T)
    assert corr[1, 2] < -0.2

def test_grammar_checker():
    assert all(is_grammatical(r) for _, r in grammar_corpus(300, seed=9))
    assert is_grammatical('glad you asked, thank you. many cats are small. i hope this helps, please ask more.')
    for bad in ('', 'cats are small', 'hello. thanks.', '\n you for asking. cats are nice.', 'cats are cats.',
                ' '.join(['cats are small.'] * 5)):
        assert not is_grammatical(bad), bad

def test_language_is_deterministic_under_a_seed():
    assert grammar_corpus(30, seed=5) == grammar_corpus(30, seed=5)
    assert grammar_corpus(30, seed=5) != grammar_corpus(30, seed=6)
    r1, r2 = Grammar().response('cats', random.Random(1)), Grammar().response('cats', random.Random(1))
    assert r1 == r2

@pytest.fixture(scope='module')
def smoke_lm():
    return pretrained_lm(make_config('smoke'), progress=False)

def test_lm_sampling_is_deterministic_under_a_seed(smoke_lm):
    model, tok, losses = smoke_lm
    assert losses[-1] < losses[0]
    prompts = [make_prompt('cats'), make_prompt('songs', 2)]
    torch.manual_seed(123); a = sample_n(model, tok, prompts, n=3, seed=7, max_new_tokens=16)
    torch.manual_seed(999); b = sample_n(model, tok, prompts, n=3, seed=7, max_new_tokens=16)
    assert a == b and len(a) == 2 and all(len(x) == 3 for x in a)
    assert sample_n(model, tok, prompts, n=3, seed=8, max_new_tokens=16) != a
    assert pretrained_lm(make_config('smoke'))[0] is model # cached in the process

def test_gold_of_the_sft_model_is_computed_on_its_samples(smoke_lm):
    model, tok, _ = smoke_lm
    ev = evaluate_policy(model, tok, n=2, seed=3, max_new_tokens=16)
    assert len(ev['responses']) == 2 * 24 and len(set(ev['responses'])) > 5 # real, varied samples
    again = sample_n(model, tok, [ev['prompts'][0]], n=2, seed=3, max_new_tokens=16)
    assert ev['gold'] == pytest.approx(gold_reward(ev['prompts'], ev['responses']).mean().item(), abs=1e-12)
    assert ev['scores'].shape == (48, len(ASPECTS))
    other = evaluate_policy(model, tok, n=2, seed=4, max_new_tokens=16)
    assert other['responses'] != ev['responses']

def test_fine_grained_dataset_has_true_scores(smoke_lm):
    model, tok, _ = smoke_lm
    ds = build_dataset(model, tok, make_config('smoke', n_prompts=12), seed=0)
    assert get_aspects(ds) == list(ASPECTS) and set(ds['aspect']) <= set(ASPECTS)
    ch, rj = scores_matrix(ds)
    a = aspect_index(ds)
    for i, row in enumerate(ds):
        assert row['chosen'] != row['rejected']
        assert row['chosen_scores'] == pytest.approx(aspect_scores(row['prompt'], row['chosen']))
        assert ch[i, a[i]] != rj[i, a[i]] # only pairs that differ on their own aspect
    pd = true_pd(ds)
    d = (ch - rj).double()
    own = d[torch.arange(len(ds)), a]
    assert torch.allclose(pd, -(d.sum(1) - own) / 4, atol=1e-6)
    assert subset_conflict(ds, select_indices('pd_oracle', len(ds), 0.3, pd_true=pd)) <= subset_conflict(ds)

def test_bt_labels_follow_their_aspect():
    prompts = [make_prompt(t) for t in TOPICS] * 4
    resp = [['cats are small. thank you.', 'dogs are awful.', 'cats are lovely. please ask again. thanks.', 'hello.']] * len(prompts)
    subs = preference_pairs(prompts, resp, seed=0, temperature=1e-3) # near-deterministic labels
    for a, sub in subs.items():
        ch, rj = scores_matrix(sub)
        j = ASPECTS.index(a)
        assert len(sub) == len(prompts) and (ch[:, j] > rj[:, j]).all(), a
    with pytest.raises(ValueError, match='temperature'): preference_pairs(prompts, resp, temperature=0)

def test_smoke_experiment_end_to_end(tmp_path):
    summary = run_text_toy(seeds=2, ratio=0.3, size='smoke', out=tmp_path, progress=False)
    assert list(summary['method']) == ['sft', *METHODS]
    assert summary['n_seeds'].eq(2).all()
    n = summary.set_index('method')['n_train']
    assert n['sft'] == 0 and n['full'] > n['random'] == n['pd_oracle'] == n['pd'] > 0
    assert summary['gold'].between(-1, 1).all() and summary['gold_ci'].notna().all()
    assert summary['grammatical'].between(0, 1).all()
    res = json.loads((tmp_path / 'results.json').read_text())
    assert {r['method'] for r in res['runs']} == {'sft', *METHODS} and len(res['runs']) == 2 * 5
    assert res['data'][0]['pd_spearman'] is not None
    assert res['provenance']['version'] and res['seeds'] == [0, 1]
    for f in ('results.csv', 'runs.csv', 'data.csv', 'table.txt', 'text_toy.png'): assert (tmp_path / f).stat().st_size > 0
    # the table's SFT gold is the gold of that model's own samples
    model, tok, _ = pretrained_lm(make_config('smoke'))
    c = make_config('smoke')
    ev = evaluate_policy(model, tok, n=c.eval_samples, seed=10_000, max_new_tokens=c.max_new_tokens)
    sft0 = [r for r in res['runs'] if r['method'] == 'sft' and r['seed'] == 0][0]
    assert sft0['gold'] == pytest.approx(ev['gold'])

def test_threads_are_restored():
    n = torch.get_num_threads()
    with torch_threads(2): assert torch.get_num_threads() == 2
    with torch_threads(None): assert torch.get_num_threads() == n
    assert torch.get_num_threads() == n

def test_bad_arguments():
    with pytest.raises(ValueError, match='size'): make_config('huge')
    with pytest.raises(ValueError, match='unknown'): make_config('smoke', n_promts=3)
    with pytest.raises(ValueError, match='methods'): simulate_text_toy(1, 0.3, 'smoke', methods=('dpo',))
    with pytest.raises(ValueError, match='ratio'): simulate_text_toy(1, 1.5, 'smoke')
    with pytest.raises(ValueError, match='seeds'): simulate_text_toy(0, 0.3, 'smoke')
