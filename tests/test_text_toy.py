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

# ---- the confirmatory experiment (issue 14): held-out split, conflict mixing, baselines' labels, protocol, CLI
from pathlib import Path
import pandas
from pd_align.text_toy import (split_topics, topic_prompts, labelled_pool, mix_conflicts, relabel, holistic_labels,
                               average_rating_labels, likert, Protocol, load_protocol, protocol_dict, smoke_protocol,
                               hypothesis_tests, confirmatory_summary)
from pd_align.data import aggregate

PROTOCOL_FILE = Path(__file__).parents[1] / 'nbs' / 'results' / 'text_toy_protocol.json'

def test_heldout_topics_are_disjoint_and_vary():
    for s in range(100, 105):
        tr, ev = split_topics(s)
        assert len(ev) == 3 and not set(tr) & set(ev) and set(tr) | set(ev) == set(TOPICS)
        assert {topic_of(p) for p in topic_prompts(ev)} == set(ev)
    assert len({split_topics(s)[1] for s in range(100, 105)}) > 1
    with pytest.raises(ValueError, match='n_eval'): split_topics(0, 0)

def _pool(n_prompts=40, seed=0):
    rng = random.Random(seed)
    g = Grammar()
    prompts, responses = [], []
    for _ in range(n_prompts):
        t = rng.choice(TOPICS)
        prompts.append(make_prompt(t, rng))
        responses.append([g.response(t, rng) for _ in range(4)])
    return labelled_pool(prompts, responses, seed=seed)

def test_conflict_mixing_is_exact_and_nested():
    pool = _pool()
    for r in pool[:300]: # the conflict flag is the gold reward's verdict on the label
        assert r['conflict'] == bool(gold_reward([r['prompt']], [r['chosen']]) < gold_reward([r['prompt']], [r['rejected']]))
    d = {s: aggregate(mix_conflicts(pool, 20, s, seed=3)) for s in (0.0, 0.1, 0.3)}
    for s, ds in d.items():
        assert len(ds) == 80 and subset_conflict(ds) == pytest.approx(round(s * 20) / 20)
        assert sorted(set(ds["aspect"])) == sorted(ASPECTS)
    key = lambda ds: {(r['aspect'], r['prompt'], r['chosen'], r['rejected']) for r in ds.to_list()}
    assert len(key(d[0.1]) & key(d[0.3])) == 4 * (14 + 2) # 30% keeps the first 14 agreeing and first 6 conflicting pairs
    with pytest.raises(ValueError, match='pool has'): mix_conflicts(pool, 10_000, 0.3)
    with pytest.raises(ValueError, match='share'): mix_conflicts(pool, 10, 1.5)

def test_relabelling_annotators():
    ds = aggregate(mix_conflicts(_pool(), 20, 0.3, seed=0))
    assert subset_conflict(relabel(ds, holistic_labels(ds, temperature=1e-9))) == 0.0 # noise-free holistic annotator
    assert 0 < subset_conflict(relabel(ds, holistic_labels(ds, temperature=0.1))) < subset_conflict(ds)
    assert subset_conflict(relabel(ds, average_rating_labels(ds))) < subset_conflict(ds)
    assert likert(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [1.0, 3.0, 5.0]
    swapped = relabel(ds, [False] * len(ds))
    assert swapped['chosen'] == ds['rejected'] and swapped['rejected'] == ds['chosen']
    with pytest.raises(ValueError, match='keep'): relabel(ds, [True])

def test_protocol_file_is_the_code_default():
    p = load_protocol(PROTOCOL_FILE)
    assert p.text_config() == Protocol().text_config()
    assert {k: v for k, v in vars(p).items() if k != 'config'} == {k: v for k, v in vars(Protocol()).items() if k != 'config'}
    assert len(p.seeds) >= 5 and not set(p.seeds) & {0, 1, 2} and p.text_config().rpo_alpha == 1.0
    doc = json.loads(PROTOCOL_FILE.read_text())
    assert {'hypotheses_text', 'primary_metric', 'decision_rule'} <= set(doc)

def test_protocol_validation(tmp_path):
    with pytest.raises(ValueError, match='primary_share'): Protocol(shares=(0.1,), primary_share=0.3)
    with pytest.raises(ValueError, match='methods'): Protocol(methods=('full', 'dpo'))
    with pytest.raises(ValueError, match='hypothesis'): Protocol(methods=('full', 'random'), sweep_methods=('full',))
    with pytest.raises(ValueError, match='unknown'): Protocol(config=dict(n_promts=3))
    with pytest.raises(ValueError, match='seeds'): Protocol(seeds=(1, 1))
    f = tmp_path / 'p.json'
    f.write_text(json.dumps(protocol_dict(smoke_protocol(), note='x')))
    assert load_protocol(f) == Protocol(**{**vars(smoke_protocol()), 'config': vars(smoke_protocol().text_config())})
    f.write_text(json.dumps({'design': {'seedz': [1]}}))
    with pytest.raises(ValueError, match='seedz'): load_protocol(f)

def _fake_runs(effect):
    rows = []
    for s, noise in zip(range(5), (0.01, -0.02, 0.015, -0.005, 0.0)):
        for m, g in (('sft', 0.0), ('full', 0.1), ('random', 0.05), ('pd', 0.1 + effect + noise), ('pd_high', 0.1 - 0.2 + noise)):
            rows.append(dict(seed=s, share=0.3, method=m, gold=g + 0.3 * s, kl=0.1, implicit_acc=0.6, n_train=10, ratio=0.3,
                             **{a: 0.0 for a in ASPECTS}, grammatical=1.0, train_conflict=0.1, steps=5))
    return pandas.DataFrame(rows)

@pytest.mark.parametrize('effect,first', [(0.1, 'pd better'), (-0.1, 'pd worse'), (0.0, 'not resolved')])
def test_hypothesis_decisions(effect, first):
    p = Protocol(shares=(0.3,), methods=('full', 'random', 'pd', 'pd_high'), sweep_methods=('full',))
    h = hypothesis_tests(confirmatory_summary(_fake_runs(effect), p), p)
    assert list(h['hypothesis']) == ['pd vs full', 'pd vs random', 'pd_high vs full']
    assert h.loc[0, 'decision'].startswith(first) and h.loc[2, 'decision'] == 'pd_high worse'
    assert (h['n_seeds'] == 5).all() and h.loc[0, 'difference'] == pytest.approx(effect + 0.0)

def test_cli_text_toy_quick(tmp_path, capsys):
    "`--quick` runs protocol 2's smoke shape: the gate first, every share's table, the hypotheses or the gate's refusal."
    from pd_align.cli import main
    assert main(['text-toy', '--quick', '--out', str(tmp_path / 'o')]) == 0
    out = capsys.readouterr().out
    assert out.startswith('Learning gate') and 'conflict share 0%' in out and 'conflict share 30%' in out
    assert ('pd vs full' in out) != ('not read, the learning gate failed' in out)
    res = json.loads((tmp_path / 'o' / 'results.json').read_text())
    assert res['seeds'] == [0, 1] and {r['method'] for r in res['runs']} >= {'sft', 'full', 'random_epochs', 'pd_high'}
    assert all(r['kl'] >= -1e-9 and 0 <= r['identical'] <= 1 for r in res['runs'])
    steps = {(r['seed'], r['share'], r['method']): r['steps'] for r in res['runs']}
    assert steps[(0, 0.3, 'random')] == steps[(0, 0.3, 'full')] == steps[(0, 0.0, 'full')] == 6 # equal steps
    assert steps[(1, 0.3, 'random_epochs')] == 2 and (0, 0.3, 'random_epochs') not in steps # descriptive: last seed
    for f in ('gate.csv', 'data.csv', 'table.txt', 'runs.csv'): assert (tmp_path / 'o' / f).stat().st_size > 0
    assert main(['text-toy', '--quick', '--protocol', str(PROTOCOL_FILE)]) == 2 # one or the other
    assert main(['text-toy']) == 2
    assert main(['text-toy', '--quick', '--workers', '0']) == 2
    assert main(['text-toy', '--protocol', str(tmp_path / 'missing.json')]) == 2

# ---- protocol 2 (issue 25): strict loader, producible held-out count, the learning gate that blocks the hypotheses
from dataclasses import asdict
from pd_align.text_toy2 import (Protocol2, load_protocol2, protocol2_dict, smoke_protocol2, PROSE_KEYS, is_protocol2,
                                heldout_capacity, learning_gate, hypothesis_tests2, CONFIRM2_METHODS, hypotheses_or_none, UninformativeRun,
                                summary2, write_protocol2_results, read_protocol2_results, paired_test, split_prompts)
from pd_align.experiments import Results
from pd_align.io import ConfigError

PROTOCOL2_FILE = Path(__file__).parents[1] / 'nbs' / 'results' / 'text_toy_protocol2.json'

def _protocol2_file(tmp_path, p=None, edit=None):
    doc = protocol2_dict(p or smoke_protocol2(), **{k: 'x' for k in PROSE_KEYS})
    if edit: edit(doc)
    f = tmp_path / 'p2.json'
    f.write_text(json.dumps(doc))
    return f

def test_protocol2_loader_round_trip_and_version(tmp_path):
    f = _protocol2_file(tmp_path)
    p = load_protocol2(f)
    assert p.text_config() == smoke_protocol2().text_config() and p.seeds == (0, 1) and p.shares == (0.0, 0.1, 0.3)
    assert is_protocol2(f) and not is_protocol2(PROTOCOL_FILE)
    assert load_protocol(PROTOCOL_FILE).seeds == (100, 101, 102, 103, 104) # protocol 1 still loads, as registered

@pytest.mark.parametrize('edit,match', [
    (lambda d: d.pop('decision_rule'), r"missing key\(s\) \['decision_rule'\]"),
    (lambda d: d.update(notes='x'), r"unknown key\(s\) \['notes'\]"),
    (lambda d: d['design'].pop('sesoi'), r"missing key 'design.sesoi'"),
    (lambda d: d['design'].update(seedz=[1]), r"unknown key 'design.seedz'"),
    (lambda d: d['design']['config'].pop('dpo_lr'), r"missing key 'design.config.dpo_lr'"),
    (lambda d: d['design']['config'].update(dpo_lr2=1.0), r"unknown key 'design.config.dpo_lr2'"),
    (lambda d: d['design']['gate'].pop('min_gain'), r"missing key\(s\) \['design.gate.min_gain'\]"),
    (lambda d: d['design'].update(seeds=[3, 3]), 'seeds must be'),
    (lambda d: d['design']['methods'].update({'0.3': ['full', 'dpo']}), 'unknown method'),
])
def test_protocol2_loader_is_strict(tmp_path, edit, match):
    f = _protocol2_file(tmp_path, edit=edit)
    with pytest.raises(ConfigError, match=match) as e: load_protocol2(f)
    assert str(e.value).startswith(str(f)) and '\n' not in str(e.value) # one line, naming the file

def test_protocol2_refuses_a_heldout_count_the_design_cannot_produce(tmp_path):
    p = smoke_protocol2()
    cap = heldout_capacity(p)
    assert set(cap) == {0, 1} and min(cap.values()) > p.heldout_pairs
    ok = Protocol2(**{**asdict(p), 'heldout_pairs': min(cap.values())})
    assert load_protocol2(_protocol2_file(tmp_path, ok)).heldout_pairs == min(cap.values()) # the most there are
    too_many = Protocol2(**{**asdict(p), 'heldout_pairs': min(cap.values()) + 1})
    with pytest.raises(ConfigError, match=f'heldout_pairs={min(cap.values()) + 1}.*give only {min(cap.values())}'):
        load_protocol2(_protocol2_file(tmp_path, too_many))

def test_prompt_split_is_disjoint_and_covers_every_prompt():
    for seed in range(20):
        sp = split_prompts(seed)
        assert (len(sp['train']), len(sp['heldout']), len(sp['topic'])) == (14, 7, 3)
        assert len(set(sp['train']) | set(sp['heldout']) | set(sp['topic'])) == 24
    assert len({split_prompts(s)['topic'][0] for s in range(20)}) > 3

def _fake_runs2(gain, acc=0.8, effect=0.0):
    "Per-seed rows like `run_protocol2`'s: ALL gains `gain` over SFT at 0%, pd differs from full by `effect`."
    rows, noise = [], (0.01, -0.02, 0.015, -0.005, 0.0, 0.004, -0.004, 0.012, -0.01, 0.0)
    for s, e in enumerate(noise):
        base = dict(seed=s, kl=0.5, kl_topic=0.5, gold_topic=0.0, identical=0.1, grammatical=0.9, train_conflict=0.1,
                    steps=300, loss=0.5, n_train=10, ratio=0.3, **{a: 0.0 for a in ASPECTS})
        rows += [dict(base, share=0.0, method='sft', gold=0.1 * s, implicit_acc=float('nan')),
                 dict(base, share=0.0, method='full', gold=0.1 * s + gain + e, implicit_acc=acc)]
        for share in (0.1, 0.3):
            for m, g in (('sft', 0.0), ('full', 0.2), ('random', 0.25), ('pd', 0.2 + effect + e), ('pd_high', 0.0 + e)):
                rows.append(dict(base, share=share, method=m, gold=g + 0.1 * s, implicit_acc=acc))
    return pandas.DataFrame(rows)

P2 = Protocol2(seeds=tuple(range(10)), methods={'0.0': ['full'], '0.1': ['full', 'random', 'pd', 'pd_high'],
                                                '0.3': ['full', 'random', 'pd', 'pd_high']}, sesoi=0.03)

@pytest.mark.parametrize('gain,acc,passed', [(0.15, 0.8, True), (0.05, 0.8, False), (0.15, 0.6, False),
                                              (0.099, 0.9, False)])
def test_learning_gate_thresholds(gain, acc, passed):
    g = learning_gate(_fake_runs2(gain, acc), P2)
    assert g['passed'] is passed and g['n_seeds'] == 10
    assert g['gain'] == pytest.approx(gain + 0.0002) and g['implicit_acc'] == pytest.approx(acc)

def test_failed_gate_blocks_the_hypothesis_table(tmp_path):
    runs = _fake_runs2(0.05)
    with pytest.raises(UninformativeRun, match='uninformative'): hypothesis_tests2(runs, P2)
    assert hypotheses_or_none(runs, P2) is None
    res = Results(runs, summary2(runs, P2), dict(protocol=asdict(P2)), {}, {})
    write_protocol2_results(res, P2, tmp_path / 'fail')
    assert not (tmp_path / 'fail' / 'hypotheses.csv').exists() and (tmp_path / 'fail' / 'gate.csv').exists()
    text = (tmp_path / 'fail' / 'table.txt').read_text()
    assert text.startswith('Learning gate FAILED') and 'hypotheses: not read' in text and 'pd vs full' not in text
    back = read_protocol2_results(tmp_path / 'fail') # the gate is recomputed from the results file
    assert back['gate']['passed'] is False and back['hypotheses'] is None
    runs = _fake_runs2(0.15, effect=0.05)
    res = Results(runs, summary2(runs, P2), dict(protocol=asdict(P2)), {}, {})
    write_protocol2_results(res, P2, tmp_path / 'pass')
    back = read_protocol2_results(tmp_path / 'pass')
    h = back['hypotheses']
    assert back['gate']['passed'] and list(h['share']) == [0.1] * 3 + [0.3] * 3
    assert list(h['decision']) == ['higher', 'equivalent within +-0.03 (TOST)', 'lower'] * 2
    assert h['n_seeds'].eq(10).all() and h.loc[0, 'difference'] == pytest.approx(0.05 + 0.0002)
    assert (tmp_path / 'pass' / 'hypotheses.csv').exists()
    from pd_align.text_toy2 import hypothesis_sentence
    words = [hypothesis_sentence(r, P2.sesoi) for _, r in h.iterrows()]
    assert '`pd` scored higher than `full`' in words[0] and 'equivalent within ±0.03 by TOST' in words[1]
    assert '`pd_high` scored lower than `full`' in words[2] and all('n = 10 seeds' in w for w in words)
    unresolved = dict(h.iloc[0], decision='not resolved')
    assert 'not resolved' in hypothesis_sentence(unresolved, 0.03) and 'neither a difference nor' in hypothesis_sentence(unresolved, 0.03)

def test_paired_test_decisions():
    d = [0.01, -0.01, 0.005, -0.005, 0.0, 0.002, -0.002, 0.001, -0.001, 0.0]
    assert paired_test(d, 0.03)['decision'].startswith('equivalent') and paired_test(d, 0.03)['p_tost'] < 1e-6
    assert paired_test([x + 0.1 for x in d], 0.03)['decision'] == 'higher'
    assert paired_test([x * 10 for x in d], 0.03)['decision'] == 'not resolved'
    with pytest.raises(ValueError, match='>= 2'): paired_test([0.1], 0.03)

def test_finished_seeds_are_resumed_only_under_their_protocol(tmp_path):
    from pd_align.text_toy2 import read_parts, part_path, run_text_toy2
    from pd_align.io import atomic_write_json
    p = smoke_protocol2()
    assert read_parts(tmp_path, p) == {} and read_parts(None, p) == {}
    rows = [dict(seed=0, share=0.0, method='sft', gold=0.1)]
    atomic_write_json(part_path(tmp_path / 'seeds', 0), dict(protocol=asdict(p), rows=rows, data=[], samples={}))
    assert read_parts(tmp_path / 'seeds', p) == {0: (rows, [], {})}
    other = Protocol2(**{**asdict(p), 'dpo_steps': 7})
    with pytest.raises(ConfigError, match='another protocol'): read_parts(tmp_path / 'seeds', other)
    with pytest.raises(ValueError, match='resume'): run_text_toy2(p, out=tmp_path, progress=False)

def test_protocol2_file_is_the_registered_design():
    p = load_protocol2(PROTOCOL2_FILE)
    used = {0, 1, 2, 800} | set(range(100, 105)) | set(range(900, 904)) # exploratory, run 1, pilot
    assert len(p.seeds) >= 10 and not set(p.seeds) & used
    assert p.dpo_steps >= 300 and p.n_per_aspect >= 500 and 0 <= p.text_config().rpo_alpha <= 0.2
    assert p.gate == dict(share=0.0, method='full', min_gain=0.10, min_implicit_acc=0.65)
    assert p.hypotheses == (('pd', 'full'), ('pd', 'random'), ('pd_high', 'full')) and p.hypothesis_shares == (0.1, 0.3)
    assert set(p.all_methods()) == set(CONFIRM2_METHODS) and 'random_epochs' in p.methods_at(0.3, p.seeds[-1]) and 'random_epochs' not in p.methods_at(0.3, p.seeds[0])
    assert p.descriptive_seeds >= 3
    assert min(heldout_capacity(p).values()) >= p.heldout_pairs

