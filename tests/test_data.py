"pd_align.data on the fixtures in tests/fixtures (hand-written rows in the real public schemas)."
import collections, gzip, json, logging, math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from conftest import FIXTURES
import pd_align.data as D
from pd_align.data import (COLUMNS, HELPSTEER_ASPECTS, ULTRAFEEDBACK_ASPECTS, add_lengths, aggregate, aspect_index,
                           detect_format, from_helpsteer2, from_hh, from_records, from_trl, from_ultrafeedback, get_aspects,
                           load_hub, load_local, messages_to_text, scores_matrix, split_hh, validate)
from pd_align.io import save_dataset_atomic

def rows(name): return [json.loads(l) for l in (FIXTURES/name).read_text().splitlines() if l.strip()]
def by_id(ds): return {r['id']: r for r in ds}
def rec(**kw): return {'prompt': 'p', 'chosen': 'x', 'rejected': 'y', 'aspect': 'a', **kw}

# ---------------------------------------------------------------- schema, from_records, get_aspects
def test_from_records_schema_and_defaults():
    ds = from_records([rec(), rec(id='k', chosen='z', source='s')])
    assert ds.column_names == [c for c in COLUMNS if c not in D.SCORE_FIELDS]
    assert ds['id'] == ['rec-0', 'k'] and ds['source'] == ['', 's']
    assert get_aspects(ds) == ['a']

def test_scores_struct_has_same_keys_everywhere():
    ds = from_records([rec(aspect='b', chosen_scores={'b': 2, 'c': 1}, rejected_scores={'b': 1}),
                       rec(id='2', aspect='a'), rec(id='3', aspect='c', chosen_scores={'c': 1}, rejected_scores={'c': 0})])
    assert get_aspects(ds) == ['b', 'c', 'a']
    assert list(ds.features['chosen_scores']) == ['b', 'c', 'a']
    assert ds[0]['rejected_scores'] == {'b': 1.0, 'c': None, 'a': None}
    assert ds[1]['chosen_scores'] == {'b': None, 'c': None, 'a': None}
    assert ds.features['chosen_scores']['b'].dtype == 'float64'

def test_explicit_aspects_fix_struct_order():
    ds = from_records([rec(aspect='b', chosen_scores={'b': 2}, rejected_scores={'b': 1})], aspects=['z', 'b'])
    assert get_aspects(ds) == ['z', 'b']
    c, r = scores_matrix(ds)
    assert math.isnan(c[0, 0]) and c[0, 1] == 2 and r[0, 1] == 1

def test_extra_columns_kept():
    ds = from_records([rec(pd=0.5), rec(id='x2', chosen='q', pd=-1.0)])
    assert ds['pd'] == [0.5, -1.0]
    ds2 = from_records(ds)
    assert ds2['pd'] == [0.5, -1.0] and ds2['id'] == ds['id']

def test_unicode_is_fine():
    ds = from_records([rec(prompt='Qu’est-ce que c’est ? 日本語', chosen='🙂 oui', rejected='non')])
    assert ds[0]['chosen'] == '🙂 oui'

def test_empty_records():
    ds = from_records([])
    assert len(ds) == 0 and get_aspects(ds) == []

# ---------------------------------------------------------------- validation error paths
BAD_EXPECT = {  # line in bad_records.jsonl -> (reason, field named in the message)
    1: ('missing_field', 'prompt'), 2: ('wrong_type', 'chosen'), 3: ('empty_text', 'rejected'),
    4: ('chosen_equals_rejected', 'chosen'), 5: ('unknown_aspect', 'aspect'), 6: ('nan_score', 'chosen_scores.helpfulness'),
    7: ('missing_score', 'chosen_scores.helpfulness'), 8: ('tie', 'chosen_scores.helpfulness'),
    9: ('score_order', 'chosen_scores.helpfulness'), 10: ('duplicate_id', 'id')}

@pytest.mark.parametrize('line', sorted(BAD_EXPECT))
def test_each_bad_record_raises_naming_record_and_field(line):
    bad = rows('bad_records.jsonl')
    reason, field = BAD_EXPECT[line]
    recs = [bad[0], bad[line]]
    with pytest.raises(ValueError) as e:
        from_records(recs, aspects=['helpfulness'])
    msg = str(e.value)
    assert f"record 1 (id='{bad[line]['id']}')" in msg, msg
    assert f"field '{field}'" in msg and f'[{reason}]' in msg, msg
    assert isinstance(e.value, D.RecordError) and e.value.reason == reason and e.value.index == 1

def test_duplicate_id_names_both_records():
    with pytest.raises(ValueError, match=r"records 0 and 10 both have id 'bad-0'"):
        validate([r if i in (0, 10) else rec(id=f'ok{i}', chosen=f'c{i}') for i, r in enumerate(rows('bad_records.jsonl'))])

def test_skip_counts_every_reason(caplog):
    skipped = collections.Counter({'earlier': 2})
    with caplog.at_level(logging.WARNING, logger='pd_align.data'):
        ds = from_records(rows('bad_records.jsonl'), aspects=['helpfulness'], on_error='skip', skipped=skipped)
    assert ds['id'] == ['bad-0']
    assert skipped == collections.Counter({r: 1 for r, _ in BAD_EXPECT.values()}) + collections.Counter({'earlier': 2})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and 'skipped 10 of 11' in lines[0] and 'nan_score=1' in lines[0]

def test_validate_returns_indices_and_checks_datasets():
    assert validate(rows('bad_records.jsonl'), aspects=['helpfulness'], on_error='skip') == [0]
    ds = from_records(rows('fine_grained.jsonl'))
    assert validate(ds) == [0, 1]
    with pytest.raises(ValueError, match=r"record 0 \(id='fg-0'\): field 'aspect'"):
        validate(ds, aspects=['harmlessness'])

def test_more_type_errors():
    cases = [(['not a dict'], "field '<record>'", 'wrong_type'),
             ([rec(chosen_scores={'a': 1})], "field 'rejected_scores'", 'missing_field'),
             ([rec(chosen_scores=[1], rejected_scores={'a': 0})], "field 'chosen_scores'", 'wrong_type'),
             ([rec(chosen_scores={'a': '3'}, rejected_scores={'a': 0})], "field 'chosen_scores.a'", 'wrong_type'),
             ([rec(chosen_scores={'a': True}, rejected_scores={'a': 0})], "field 'chosen_scores.a'", 'wrong_type'),
             ([rec(aspect='')], "field 'aspect'", 'empty_text'),
             ([rec(aspect=None)], "field 'aspect'", 'missing_field'),
             ([rec(id=1.5)], "field 'id'", 'wrong_type'),
             ([rec(source=3)], "field 'source'", 'wrong_type')]
    for recs, field, reason in cases:
        with pytest.raises(ValueError) as e: from_records(recs)
        assert field in str(e.value) and f'[{reason}]' in str(e.value) and 'record 0' in str(e.value), (recs, str(e.value))

def test_strict_false_allows_model_scores_that_disagree():
    r = rec(chosen_scores={'a': 0.1}, rejected_scores={'a': 0.9})
    with pytest.raises(ValueError, match='score_order'): from_records([r])
    assert len(from_records([r], strict=False)) == 1
    assert len(from_records([rec(chosen_scores={'a': None}, rejected_scores={'a': None})])) == 1  # no known score: nothing to check

def test_bad_on_error_value():
    with pytest.raises(ValueError, match='on_error'): from_records([rec()], on_error='ignore')

# ---------------------------------------------------------------- tensors
def test_scores_matrix_and_aspect_index():
    ds = from_records(rows('fine_grained.jsonl'))
    c, r = scores_matrix(ds)
    assert c.dtype == torch.float32 and c.shape == (2, 2)
    assert c[0].tolist() == [4.0, 2.0] and r[0].tolist() == [1.0, 3.0]
    assert math.isnan(c[1, 0]) and c[1, 1] == 5
    c2, _ = scores_matrix(ds, ['harmlessness'])
    assert c2[:, 0].tolist() == [2.0, 5.0]
    assert aspect_index(ds).tolist() == [0, 1] and aspect_index(ds, ['harmlessness', 'helpfulness']).tolist() == [1, 0]
    # after a select (indices mapping) the rows follow
    sub = ds.select([1, 0])
    assert scores_matrix(sub)[0][1].tolist() == [4.0, 2.0] and aspect_index(sub).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"record 1 \(id='fg-1'\): field 'aspect'"): aspect_index(ds, ['helpfulness'])
    with pytest.raises(ValueError, match='nope'): scores_matrix(ds, ['nope'])

def test_scores_matrix_without_scores_is_nan():
    ds = from_trl(rows('trl_plain.jsonl'))
    c, r = scores_matrix(ds)
    assert c.shape == (3, 3) and torch.isnan(c).all() and torch.isnan(r).all()
    assert aspect_index(ds).tolist() == [0, 1, 2]

# ---------------------------------------------------------------- aggregate
def test_aggregate_unions_relabels_and_prefixes():
    hh = from_hh(rows('hh.jsonl'), 'x')
    hs = from_helpsteer2(rows('helpsteer2.jsonl'), aspects=['helpfulness'])
    agg = aggregate({'harmless': hh, 'helpfulness': hs})
    assert len(agg) == len(hh) + len(hs)
    assert agg['aspect'] == ['harmless'] * len(hh) + ['helpfulness'] * len(hs)
    assert agg['id'][0] == 'harmless/hh-0' and agg['id'][-1] == f"helpfulness/{hs['id'][-1]}"
    assert get_aspects(agg) == ['harmless'] + HELPSTEER_ASPECTS  # first appearance over the dict
    assert agg[0]['chosen_scores'] == {a: None for a in ['harmless'] + HELPSTEER_ASPECTS}
    assert agg[len(hh)]['chosen_scores']['helpfulness'] == hs[0]['chosen_scores']['helpfulness']
    assert aspect_index(agg).tolist() == [0] * len(hh) + [1] * len(hs)

def test_aggregate_same_source_twice_gets_unique_ids():
    hh = from_hh(rows('hh.jsonl'), 'x')
    agg = aggregate({'helpful': hh, 'harmless': hh})
    assert len(set(agg['id'])) == 2 * len(hh)
    assert get_aspects(agg) == ['helpful', 'harmless']

def test_aggregate_errors_on_remaining_duplicates():
    a = from_records([rec(id='b/c')])
    b = from_records([rec(id='c')])
    with pytest.raises(ValueError, match=r"records 0 and 1 both have id 'a/b/c'"):
        aggregate({'a': a, 'a/b': b})
    with pytest.raises(ValueError, match='no sub-datasets'): aggregate({})
    with pytest.raises(ValueError, match='must be a datasets.Dataset'): aggregate({'a': [rec()]})

# ---------------------------------------------------------------- UltraFeedback
def test_ultrafeedback_best_vs_random_exact():
    st, raw = collections.Counter(), rows('ultrafeedback.jsonl')
    ds = from_ultrafeedback(FIXTURES/'ultrafeedback.jsonl', stats=st)
    assert len(ds) == 9 and get_aspects(ds) == ULTRAFEEDBACK_ASPECTS
    ids = ds['id']
    # row 0: the best is completion 1 on every aspect (first of the tied 5s on honesty/truthfulness)
    assert [i.rsplit('-', 2)[1] for i in ids if i.startswith('uf-0-')] == ['1'] * 4
    # row 1: deterministic pairs (one strictly lower candidate), helpfulness random among {0, 2, 3}
    assert {'uf-1-honesty-1-3', 'uf-1-instruction_following-1-0', 'uf-1-truthfulness-1-0'} <= set(ids)
    # row 2: only instruction_following differs
    assert [i for i in ids if i.startswith('uf-2-')] == ['uf-2-instruction_following-0-2']
    assert st['tie:helpfulness'] == st['tie:honesty'] == st['tie:truthfulness'] == 1 and st['tie:instruction_following'] == 0
    assert st['na:honesty'] == 2 and sum(st[f'pairs:{a}'] for a in ULTRAFEEDBACK_ASPECTS) == 9
    for r in ds:  # texts and all four ratings come from the right completions, chosen strictly better on its aspect
        _, i, a, cj, rj = r['id'].split('-')
        row = raw[int(i)]
        cc, rc = row['completions'][int(cj)], row['completions'][int(rj)]
        assert (r['prompt'], r['chosen'], r['rejected']) == (row['instruction'], cc['response'], rc['response'])
        want = lambda c: {k: None if c['annotations'][k]['Rating'] == 'N/A' else float(c['annotations'][k]['Rating']) for k in ULTRAFEEDBACK_ASPECTS}
        assert r['chosen_scores'] == want(cc) and r['rejected_scores'] == want(rc)
        assert r['chosen_scores'][a] > r['rejected_scores'][a] and r['chosen_scores'][a] == max(
            want(c)[a] for c in row['completions'] if want(c)[a] is not None)
    assert ds[[i for i, x in enumerate(ids) if x == 'uf-1-honesty-1-3'][0]]['chosen_scores']['honesty'] == 5.0

def test_ultrafeedback_seeded():
    a = from_ultrafeedback(rows('ultrafeedback.jsonl'), seed=0)['id']
    assert a == from_ultrafeedback(rows('ultrafeedback.jsonl'), seed=0)['id']
    seen = {tuple(from_ultrafeedback(rows('ultrafeedback.jsonl'), seed=s)['id']) for s in range(8)}
    assert len(seen) > 1  # the random lower completion does depend on the seed
    # a subset of aspects yields the same pairs for those aspects
    sub = from_ultrafeedback(rows('ultrafeedback.jsonl'), aspects=['helpfulness'], seed=0)['id']
    assert sub == [i for i in a if '-helpfulness-' in i] and len(sub) == 2

def test_ultrafeedback_all_pairs_exact():
    st = collections.Counter()
    ds = from_ultrafeedback(rows('ultrafeedback.jsonl'), pairing='all_pairs', stats=st)
    assert len(ds) == 36
    per = collections.Counter(ds['aspect'])
    assert per == {'helpfulness': 6 + 5 + 0, 'honesty': 4 + 1 + 0, 'instruction_following': 6 + 3 + 3, 'truthfulness': 5 + 3 + 0}
    assert (st['tie:helpfulness'], st['tie:honesty'], st['tie:instruction_following'], st['tie:truthfulness']) == (7, 8, 6, 10)

def test_ultrafeedback_bad_rows_and_options():
    raw = rows('ultrafeedback.jsonl')
    broken = [dict(raw[0]), {k: v for k, v in raw[1].items() if k != 'instruction'}, dict(raw[2], completions='x')]
    with pytest.raises(ValueError, match=r"record 1 .*field 'instruction'.*missing_field"): from_ultrafeedback(broken)
    sk = collections.Counter()
    assert len(from_ultrafeedback(broken, on_error='skip', skipped=sk)) == 4 and sk == {'missing_field': 1, 'wrong_type': 1}
    bad_rating = json.loads(json.dumps(raw[0])); bad_rating['completions'][2]['annotations']['honesty']['Rating'] = 'great'
    with pytest.raises(ValueError, match=r"field 'completions\[2\].annotations.honesty.Rating'"): from_ultrafeedback([bad_rating])
    no_ann = json.loads(json.dumps(raw[0])); del no_ann['completions'][1]['annotations']['truthfulness']
    st = collections.Counter(); ds = from_ultrafeedback([no_ann], stats=st)
    assert st['missing_rating:truthfulness'] == 1 and ds[0]['chosen_scores']['truthfulness'] is None
    listy = json.loads(json.dumps(raw[0]))  # the raw GitHub release wraps each annotation in a list
    for c in listy['completions']: c['annotations'] = {k: [v] for k, v in c['annotations'].items()}
    assert from_ultrafeedback([listy])['id'] == from_ultrafeedback([raw[0]])['id']
    with pytest.raises(ValueError, match='pairing'): from_ultrafeedback(raw, pairing='best')
    with pytest.raises(ValueError, match='aspects'): from_ultrafeedback(raw, aspects=['style'])

def test_ultrafeedback_same_text_never_paired():
    raw = json.loads(json.dumps(rows('ultrafeedback.jsonl')[0]))
    raw['completions'][0]['response'] = raw['completions'][1]['response'] + ' '
    st = collections.Counter()
    ds = from_ultrafeedback([raw], pairing='all_pairs', stats=st)
    assert st['same_response'] == 4 and all(not i.endswith('-0-1') and not i.endswith('-1-0') for i in ds['id'])

# ---------------------------------------------------------------- HelpSteer2
def test_helpsteer2_exact_pairs():
    st = collections.Counter()
    ds = from_helpsteer2(FIXTURES/'helpsteer2.jsonl', stats=st)
    assert len(ds) == 9 and get_aspects(ds) == HELPSTEER_ASPECTS
    assert ds['id'] == ['helpsteer2-0-1-helpfulness', 'helpsteer2-0-1-correctness', 'helpsteer2-0-1-coherence', 'helpsteer2-0-1-verbosity',
                        'helpsteer2-2-3-helpfulness', 'helpsteer2-2-3-correctness', 'helpsteer2-2-3-complexity', 'helpsteer2-2-3-verbosity',
                        'helpsteer2-4-5-verbosity']
    raw = rows('helpsteer2.jsonl')
    d = by_id(ds)
    assert d['helpsteer2-0-1-verbosity']['chosen'] == raw[1]['response']  # the more verbose one wins on verbosity
    assert d['helpsteer2-0-1-helpfulness']['chosen'] == raw[0]['response']
    assert d['helpsteer2-2-3-complexity']['chosen_scores'] == {a: float(raw[3][a]) for a in HELPSTEER_ASPECTS}
    assert {k: st[f'tie:{k}'] for k in HELPSTEER_ASPECTS} == {'helpfulness': 1, 'correctness': 1, 'coherence': 2, 'complexity': 2, 'verbosity': 0}
    assert st['prompts'] == 3 and st['single_response_prompts'] == 0

def test_helpsteer_groups_non_adjacent_rows_and_counts_singletons():
    raw = rows('helpsteer2.jsonl')
    shuffled = [raw[0], raw[2], raw[4], raw[1], raw[3], dict(raw[5], prompt='lonely')]
    st = collections.Counter()
    ds = from_helpsteer2(shuffled, stats=st)
    assert len(ds) == 8 and st['single_response_prompts'] == 2 and st['prompts'] == 4
    assert 'helpsteer2-0-3-verbosity' in ds['id']

def test_helpsteer_bad_rows():
    raw = rows('helpsteer2.jsonl')
    cases = [({k: v for k, v in raw[1].items() if k != 'verbosity'}, 'verbosity', 'missing_score'),
             (dict(raw[1], coherence='4'), 'coherence', 'wrong_type'),
             (dict(raw[1], coherence=float('nan')), 'coherence', 'nan_score'),
             (dict(raw[1], response=None), 'response', 'missing_field')]
    for row, field, reason in cases:
        with pytest.raises(ValueError) as e: from_helpsteer2([raw[0], row])
        assert f"record 1 " in str(e.value) and f"field '{field}'" in str(e.value) and reason in str(e.value)
        sk = collections.Counter()
        assert len(from_helpsteer2([raw[0], row], on_error='skip', skipped=sk)) == 0 and sk == {reason: 1}

def test_helpsteer_same_text_is_not_a_pair():
    raw = rows('helpsteer2.jsonl')
    st = collections.Counter()
    ds = from_helpsteer2([raw[0], dict(raw[1], response=raw[0]['response'])], stats=st)
    assert len(ds) == 0 and st['same_response_pairs'] == 1 and st['tie:helpfulness'] == 0

# ---------------------------------------------------------------- TRL
def test_trl_plain():
    st = collections.Counter()
    ds = from_trl(FIXTURES/'trl_plain.jsonl', stats=st)
    raw = rows('trl_plain.jsonl')
    assert [(r['prompt'], r['chosen'], r['rejected'], r['aspect']) for r in ds] == [(r['prompt'], r['chosen'], r['rejected'], r['aspect']) for r in raw]
    assert ds['id'] == ['trl-0', 'trl-1', 'trl-2'] and st['plain'] == 3
    assert from_trl(raw, aspect='overall')['aspect'] == ['overall'] * 3  # the constant wins over the column
    assert from_trl([dict(r, label=r.pop('aspect')) for r in rows('trl_plain.jsonl')], aspect_column='label')['aspect'] == [r['aspect'] for r in raw]

def test_trl_conversational_exact():
    st = collections.Counter()
    ds = from_trl(FIXTURES/'trl_conversational.jsonl', aspect='helpfulness', stats=st)
    assert st['conversational'] == 4
    assert [(r['prompt'], r['chosen'], r['rejected']) for r in ds] == [
        ('\n\nHuman: What is 7 times 6?\n\nAssistant:', ' 42.', ' 36.'),
        ('\n\nSystem: Be concise.\n\nHuman: Name a colour.\n\nAssistant: Blue.\n\nHuman: Another one?\n\nAssistant:', ' Green.', ' Blue again.'),
        ('\n\nHuman: Is water wet?\n\nAssistant:', ' Water makes other things wet.', ' Yes, obviously, everyone knows that.'),
        ('\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant:', ' Goodbye, take care.', ' k')]
    # the template is the HH one: prompt + chosen is the rendered chosen conversation, and from_hh splits it back
    raw = rows('trl_conversational.jsonl')
    full = [messages_to_text(r.get('prompt', []) + r['chosen']) for r in raw]
    assert [r['prompt'] + r['chosen'] for r in ds] == full
    hh = from_hh([{'chosen': messages_to_text(r.get('prompt', []) + r['chosen']), 'rejected': messages_to_text(r.get('prompt', []) + r['rejected'])} for r in raw], 'h')
    assert [(r['prompt'], r['chosen'], r['rejected']) for r in hh] == [(r['prompt'], r['chosen'], r['rejected']) for r in ds]

def test_trl_errors():
    raw = rows('trl_conversational.jsonl')
    with pytest.raises(ValueError, match=r"record 0 \(id='trl-0'\): field 'aspect'.*missing_field"): from_trl(raw)
    bad = dict(raw[0], chosen=[{'role': 'user', 'content': 'x'}])
    with pytest.raises(ValueError, match=r"field 'chosen\[0\].role'"): from_trl([bad], aspect='a')
    bad = dict(raw[0], rejected=[{'role': 'assistant'}])
    with pytest.raises(ValueError, match=r"field 'rejected\[0\]'.*wrong_type"): from_trl([bad], aspect='a')
    with pytest.raises(ValueError, match=r"field 'prompt'"): from_trl([{'chosen': 'a', 'rejected': 'b'}], aspect='a')
    no_shared = {'chosen': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}],
                 'rejected': [{'role': 'user', 'content': 'c'}, {'role': 'assistant', 'content': 'd'}]}
    with pytest.raises(ValueError, match=r"field 'prompt'.*no shared"): from_trl([no_shared], aspect='a')
    with pytest.raises(ValueError, match=r"record 1 \(id='trl-1'\): field 'chosen'.*chosen_equals_rejected"):
        from_trl([raw[0], dict(raw[1], chosen=raw[1]['rejected'])], aspect='a')
    sk = collections.Counter()
    assert len(from_trl(raw + [bad, no_shared], on_error='skip', skipped=sk)) == 0
    assert sk == {'missing_field': 5, 'wrong_type': 1}

def test_trl_keeps_scores_and_ids():
    r = {'id': 7, 'prompt': 'p', 'chosen': 'a', 'rejected': 'b', 'aspect': 'h', 'chosen_scores': {'h': 2}, 'rejected_scores': {'h': 1}}
    ds = from_trl([r])
    assert ds['id'] == ['7'] and ds[0]['chosen_scores'] == {'h': 2.0}

# ---------------------------------------------------------------- HH
def test_hh_exact_split():
    st = collections.Counter()
    ds = from_hh(FIXTURES/'hh.jsonl', 'helpful', stats=st)
    raw = rows('hh.jsonl')
    assert ds['id'] == ['hh-0', 'hh-1', 'hh-2', 'hh-3'] and set(ds['aspect']) == {'helpful'}
    assert ds[0]['prompt'] == '\n\nHuman: What is a good name for a goldfish?\n\nAssistant:'
    assert ds[0]['chosen'] == ' How about "Bubbles" or "Goldie"?'
    assert ds[1]['prompt'].endswith('\n\nHuman: Crêpes.\n\nAssistant:') and ds[1]['rejected'] == ' Crêpes are French.'
    # row 2: the transcripts differ before the last Assistant turn -> common-prefix policy, counted
    assert st['hh_prefix_mismatch'] == 1
    assert ds[2]['prompt'] == '\n\nHuman: Tell me a fact.\n\nAssistant:'
    assert ds[2]['chosen'] == '  Honey never spoils.'
    assert ds[2]['rejected'] == ' The moon is made of cheese.\n\nHuman: Really?\n\nAssistant: No, sorry, that was a joke.'
    for r, x in zip(ds, raw):
        assert r['prompt'] + r['chosen'] == x['chosen'] and r['prompt'] + r['rejected'] == x['rejected']
        assert r['prompt'].endswith('\n\nAssistant:')

def test_hh_mismatch_error_policy_and_bad_rows():
    raw = rows('hh.jsonl')
    with pytest.raises(ValueError, match=r"record 2 \(id='hh-2'\).*hh_prefix_mismatch"): from_hh(raw, 'h', mismatch='error')
    sk = collections.Counter()
    assert from_hh(raw, 'h', mismatch='error', on_error='skip', skipped=sk)['id'] == ['hh-0', 'hh-1', 'hh-3'] and sk == {'hh_prefix_mismatch': 1}
    cases = [({'chosen': 'no turns here', 'rejected': raw[0]['rejected']}, 'chosen', 'hh_split'),
             ({'chosen': '\n\nHuman: a\n\nAssistant: b', 'rejected': '\n\nHuman: c\n\nAssistant: d'}, 'chosen', 'hh_split'),
             ({'chosen': raw[0]['chosen']}, 'rejected', 'missing_field'),
             ({'chosen': raw[0]['chosen'], 'rejected': raw[0]['chosen']}, 'chosen', 'chosen_equals_rejected'),
             ({'chosen': raw[0]['chosen'], 'rejected': raw[0]['rejected'].rsplit(':', 1)[0] + ': '}, 'rejected', 'empty_text')]
    for row, field, reason in cases:
        with pytest.raises(ValueError) as e: from_hh([raw[0], row], 'h')
        assert "record 1 (id='hh-1')" in str(e.value) and f"field '{field}'" in str(e.value) and reason in str(e.value), str(e.value)
    with pytest.raises(ValueError, match='aspect'): from_hh(raw, '')
    with pytest.raises(ValueError, match='mismatch'): from_hh(raw, 'h', mismatch='drop')

def test_split_hh_direct():
    assert split_hh('\n\nHuman: a\n\nAssistant: b', '\n\nHuman: a\n\nAssistant: c') == ('\n\nHuman: a\n\nAssistant:', ' b', ' c', False)
    with pytest.raises(ValueError): split_hh('x', 'y')

# ---------------------------------------------------------------- files: load_local, load_hub (reading lines: test_io.py)
@pytest.mark.parametrize('name,fmt', [('ultrafeedback.jsonl', 'ultrafeedback'), ('helpsteer2.jsonl', 'helpsteer'), ('hh.jsonl', 'hh'),
                                      ('trl_plain.jsonl', 'trl'), ('trl_conversational.jsonl', 'trl'), ('fine_grained.jsonl', 'fine-grained')])
def test_detect_format(name, fmt):
    assert detect_format(rows(name)[0]) == fmt

def test_detect_format_unknown():
    with pytest.raises(ValueError, match='cannot detect'): detect_format({'text': 'x'})

def test_load_local_every_format(tmp_path):
    assert load_local(FIXTURES/'ultrafeedback.jsonl')['id'] == from_ultrafeedback(rows('ultrafeedback.jsonl'))['id']
    assert load_local(FIXTURES/'helpsteer2.jsonl')['id'] == from_helpsteer2(rows('helpsteer2.jsonl'))['id']
    assert load_local(FIXTURES/'trl_plain.jsonl')['aspect'] == ['correctness', 'helpfulness', 'harmlessness']
    assert len(load_local(FIXTURES/'trl_conversational.jsonl', aspect='helpfulness')) == 4
    st = collections.Counter()
    assert load_local(FIXTURES/'hh.jsonl', aspect='harmless', stats=st)['aspect'] == ['harmless'] * 4 and st['hh_prefix_mismatch'] == 1
    with pytest.raises(ValueError, match='pass aspect='): load_local(FIXTURES/'hh.jsonl')
    fg = load_local(FIXTURES/'fine_grained.jsonl')
    assert get_aspects(fg) == ['helpfulness', 'harmlessness'] and fg['id'] == ['fg-0', 'fg-1']
    # converter options pass through, and format can be forced
    assert len(load_local(FIXTURES/'ultrafeedback.jsonl', pairing='all_pairs')) == 36
    assert len(load_local(FIXTURES/'trl_plain.jsonl', format='fine-grained')) == 3
    # .jsonl.gz, .json (list), save_to_disk folder with extra columns
    g = tmp_path/'hs.jsonl.gz'; g.write_bytes(gzip.compress((FIXTURES/'helpsteer2.jsonl').read_bytes()))
    assert len(load_local(g)) == 9
    j = tmp_path/'plain.json'; j.write_text(json.dumps(rows('trl_plain.jsonl')))
    assert len(load_local(j)) == 3
    saved = add_lengths(fg)
    save_dataset_atomic(saved, tmp_path/'ds')
    back = load_local(tmp_path/'ds')
    assert back.to_list() == saved.to_list() and back.features == saved.features
    with pytest.raises(FileNotFoundError): load_local(tmp_path/'missing.jsonl')
    (tmp_path/'empty.jsonl').write_text('\n')
    with pytest.raises(ValueError, match='no records'): load_local(tmp_path/'empty.jsonl')
    with pytest.raises(ValueError, match='format'): load_local(FIXTURES/'hh.jsonl', format='csv', aspect='h')

def test_load_local_keeps_a_scored_dataset(tmp_path):
    "A dataset saved after scoring: estimated scores that disagree with the label, original ratings in extra struct columns."
    hs = from_helpsteer2(rows('helpsteer2.jsonl'))
    flipped = [{**r, 'orig_chosen_scores': r['chosen_scores'], 'orig_rejected_scores': r['rejected_scores'],
                'chosen_scores': r['rejected_scores'], 'rejected_scores': r['chosen_scores'], 'pd': 0.25} for r in hs]
    scored = from_records(flipped, aspects=HELPSTEER_ASPECTS, strict=False)
    save_dataset_atomic(scored, tmp_path/'scored')
    back = load_local(tmp_path/'scored')
    assert back.to_list() == scored.to_list() and back.column_names[-3:] == ['orig_chosen_scores', 'orig_rejected_scores', 'pd']
    with pytest.raises(ValueError, match='score_order'): load_local(tmp_path/'scored', strict=True)

def test_load_local_skip_counts():
    sk = collections.Counter()
    ds = load_local(FIXTURES/'bad_records.jsonl', on_error='skip', skipped=sk, aspects=['helpfulness'], strict=True)
    assert ds['id'] == ['bad-0'] and sum(sk.values()) == 10

def test_load_hub_wiring_without_network(monkeypatch):
    import datasets
    monkeypatch.delenv('PD_ALIGN_DATA_MIRROR', raising=False)   # the hub path itself, not the local mirror
    calls = []
    def fake(repo, split=None, **kw):
        calls.append((repo, split, kw))
        name = {'openbmb/UltraFeedback': 'ultrafeedback.jsonl', 'nvidia/HelpSteer2': 'helpsteer2.jsonl', 'Anthropic/hh-rlhf': 'hh.jsonl'}[repo]
        return Dataset.from_list(rows(name))
    monkeypatch.setattr(datasets, 'load_dataset', fake)
    assert len(load_hub('ultrafeedback', pairing='all_pairs')) == 36
    assert load_hub('helpsteer2', split='validation')['source'][0] == 'helpsteer2'
    agg = load_hub('hh', split='test')
    assert calls[-2:] == [('Anthropic/hh-rlhf', 'test', {'data_dir': 'helpful-base'}), ('Anthropic/hh-rlhf', 'test', {'data_dir': 'harmless-base'})]
    assert calls[1][:2] == ('nvidia/HelpSteer2', 'validation')
    assert get_aspects(agg) == ['helpful', 'harmless'] and len(agg) == 8 and agg['id'][0] == 'helpful/hh-helpful-0'
    with pytest.raises(ValueError, match='name must be one of'): load_hub('nope')

# ---------------------------------------------------------------- lengths
def test_add_lengths_chars_and_tokens():
    ds = from_trl(rows('trl_plain.jsonl'))
    l = add_lengths(ds)
    assert l['chosen_len'] == [len(x) for x in ds['chosen']] and l['rejected_len'] == [len(x) for x in ds['rejected']]
    assert l.features['chosen_len'].dtype == 'int64'
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({'[UNK]': 0, 'Thank': 1}, unk_token='[UNK]'))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token='[UNK]')
    t = add_lengths(l, tok)  # replaces the character columns
    assert t.column_names.count('chosen_len') == 1
    assert t['chosen_len'] == [len(tok(x, add_special_tokens=False)['input_ids']) for x in ds['chosen']]
    assert t['chosen_len'][0] == 3  # "Thank", "you", "."
