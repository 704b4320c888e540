"""Converters on every real row in ../shared/data (HH helpful/harmless test splits, 500 HelpSteer rows).

Expected counts are computed here independently of pd_align (plain string operations and loops), then compared.
"""
import collections, gzip, itertools, json, os

import pytest

from conftest import ROOT
from pd_align.data import HELPSTEER_ASPECTS, aggregate, aspect_index, from_helpsteer2, from_hh, get_aspects, load_local, scores_matrix

DATA = ROOT.parent/'shared'/'data'
HH_FILES = {'helpful': 'hh_helpful_base_test.jsonl.gz', 'harmless': 'hh_harmless_base_test.jsonl.gz'}
HS_FILE = 'helpsteer_train_sample500.jsonl.gz'
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f'real data folder {DATA} is absent (it is not part of the repository)')
A = '\n\nAssistant:'

def raw(name): return [json.loads(l) for l in gzip.open(DATA/name, 'rt', encoding='utf-8')]

def hh_expectation(rows):
    "Independent reference: per row, the naive split (each transcript at its own last Assistant turn) and why it is bad, if it is."
    out = []
    for r in rows:
        c, j = r['chosen'], r['rejected']
        pc, pj = c[:c.rindex(A) + len(A)], j[:j.rindex(A) + len(A)]
        rc, rj = c[len(pc):], j[len(pj):]
        bad = None
        if not rc.strip() or not rj.strip(): bad = 'empty_text'
        elif rc.strip() == rj.strip(): bad = 'chosen_equals_rejected'
        out.append(dict(mismatch=pc != pj, prompt=pc, bad=bad))
    return out

@pytest.fixture(scope='module')
def hh_sets():
    res = {}
    for aspect, f in HH_FILES.items():
        rows = raw(f)
        sk, st = collections.Counter(), collections.Counter()
        ds = from_hh(DATA/f, aspect, on_error='skip', skipped=sk, stats=st, source=f'hh-{aspect}')
        res[aspect] = (rows, ds, sk, st)
    return res

@pytest.mark.parametrize('aspect', list(HH_FILES))
def test_hh_every_row(hh_sets, aspect):
    rows, ds, sk, st = hh_sets[aspect]
    exp = hh_expectation(rows)
    assert len(rows) == {'helpful': 2354, 'harmless': 2312}[aspect]
    # exactly the rows our reference calls bad are skipped, counted per reason; every other row converts
    want_bad = collections.Counter(e['bad'] for e in exp if e['bad'])
    assert sk == want_bad and sum(want_bad.values()) in (6, 4)
    kept = [int(i.rsplit('-', 1)[1]) for i in ds['id']]
    assert kept == [i for i, e in enumerate(exp) if not e['bad']]
    assert st['hh_prefix_mismatch'] == sum(e['mismatch'] for e in exp if not e['bad'])
    assert st['hh_prefix_mismatch'] == {'helpful': 9, 'harmless': 5}[aspect]
    for i, r in zip(kept, ds):
        x, e = rows[i], exp[i]
        assert r['prompt'] + r['chosen'] == x['chosen'] and r['prompt'] + r['rejected'] == x['rejected']
        assert r['prompt'].endswith(A) and r['aspect'] == aspect
        if not e['mismatch']: assert r['prompt'] == e['prompt']  # the shared prefix up to the last Assistant turn
        else:  # documented policy: longest common prefix cut back to its last Assistant turn
            common = os.path.commonprefix([x['chosen'], x['rejected']])
            assert r['prompt'] == common[:common.rindex(A) + len(A)]
            assert r['prompt'] != e['prompt'] or A in r['rejected']

def test_hh_raise_mode_names_first_bad_row():
    rows = raw(HH_FILES['helpful'])
    first = next(i for i, e in enumerate(hh_expectation(rows)) if e['bad'])
    with pytest.raises(ValueError, match=rf"id='hh-{first}'"):
        from_hh(rows, 'helpful')

def test_hh_aggregated_two_aspects(hh_sets):
    agg = aggregate({a: hh_sets[a][1] for a in HH_FILES})
    assert get_aspects(agg) == ['helpful', 'harmless'] and len(agg) == 2348 + 2308
    assert len(set(agg['id'])) == len(agg)
    idx = aspect_index(agg)
    assert (idx == 0).sum() == 2348 and (idx == 1).sum() == 2308

def hs_expectation(rows):
    "Independent reference: within-prompt pairs per attribute, ties and identical-text pairs counted."
    groups = collections.defaultdict(list)
    for i, r in enumerate(rows): groups[r['prompt']].append(i)
    pairs, ties, same = collections.Counter(), collections.Counter(), 0
    ids = set()
    for idx in groups.values():
        for a, b in itertools.combinations(idx, 2):
            if rows[a]['response'].strip() == rows[b]['response'].strip(): same += 1; continue
            for k in HELPSTEER_ASPECTS:
                if rows[a][k] == rows[b][k]: ties[k] += 1
                else: pairs[k] += 1; ids.add(f'helpsteer-{a}-{b}-{k}')
    return groups, pairs, ties, same, ids

def test_helpsteer_all_rows():
    rows = raw(HS_FILE)
    assert len(rows) == 500
    groups, pairs, ties, same, ids = hs_expectation(rows)
    assert len(groups) == 139 and sum(len(g) == 4 for g in groups.values()) == 105
    st = collections.Counter()
    ds = from_helpsteer2(DATA/HS_FILE, stats=st, source='helpsteer')  # on_error='raise': no valid row may fail
    assert set(ds['id']) == ids and len(ds) == sum(pairs.values())
    assert collections.Counter(ds['aspect']) == pairs
    assert {k: st[f'tie:{k}'] for k in HELPSTEER_ASPECTS} == dict(ties)
    assert {k: st[f'pairs:{k}'] for k in HELPSTEER_ASPECTS} == dict(pairs)
    assert st['same_response_pairs'] == same == 50 and st['prompts'] == 139
    assert sum(pairs.values()) + sum(ties.values()) == 5 * (sum(len(g) * (len(g) - 1) // 2 for g in groups.values()) - same)
    # every record: chosen has the strictly higher rating on its attribute, scores are the rows' ratings
    for r in ds:
        _, a, b, k = r['id'].split('-')
        ra, rb = rows[int(a)], rows[int(b)]
        hi, lo = (ra, rb) if ra[k] > rb[k] else (rb, ra)
        assert (r['prompt'], r['chosen'], r['rejected']) == (ra['prompt'], hi['response'], lo['response'])
        assert r['chosen_scores'] == {x: float(hi[x]) for x in HELPSTEER_ASPECTS}
        assert r['rejected_scores'] == {x: float(lo[x]) for x in HELPSTEER_ASPECTS}
    c, rj = scores_matrix(ds)
    assert (c.gather(1, aspect_index(ds)[:, None]) > rj.gather(1, aspect_index(ds)[:, None])).all()

def test_load_local_reads_the_real_files():
    assert len(load_local(DATA/HS_FILE)) == 1633
    sk = collections.Counter()
    assert len(load_local(DATA/HH_FILES['harmless'], aspect='harmless', on_error='skip', skipped=sk)) == 2308 and sk == {'empty_text': 4}
