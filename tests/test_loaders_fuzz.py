"""Fuzzed loader inputs for pd_align.data: every bad record gives a ValueError naming the record and the field, or is
counted under on_error='skip'; good records survive exactly (unicode included). Hypothesis generates the malformed
records, rows and truncated files; `FUZZ` holds the example counts (read by tests/test_reliability.py)."""
import collections, gzip, json, math, os
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from pd_align import data as D
from pd_align.data import (RecordError, from_records, validate, from_ultrafeedback, from_helpsteer2, from_trl, from_hh,
                           load_local, ULTRAFEEDBACK_ASPECTS, HELPSTEER_ASPECTS)
from pd_align.io import read_jsonl, write_jsonl_atomic, atomic_write_json, save_dataset_atomic

FUZZ = dict(records=120, unicode_roundtrip=40, truncated_jsonl=80, truncated_gz=30, ultrafeedback=80, helpsteer=60, trl=60,
            hh=40, writer_failure=30, truncation=80)

def fuzz(name):
    return settings(max_examples=FUZZ[name], deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])

ASPECTS = ['helpfulness', 'honesty', 'style']
# any UTF-8 encodable text (no lone surrogates), with something that is not whitespace
text = st.text(st.characters(codec='utf-8'), min_size=1, max_size=12).filter(lambda s: s.strip())
blank = st.sampled_from(['', ' ', '\t\n', '\u3000', '\u00a0 ', '\r\n'])
not_str = st.integers() | st.floats(allow_nan=False) | st.booleans() | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)

def assert_names(err:Exception, index:int, field:str, reason:str|None=None):
    "The message names the record (index) and the field (and the reason, when given)."
    msg = str(err)
    assert isinstance(err, ValueError), (type(err), msg)
    assert f'record {index} ' in msg and f"field '{field}'" in msg, (index, field, msg)
    if reason: assert f'[{reason}]' in msg, (reason, msg)
    assert '\n' not in msg.strip(), msg

# ----------------------------------------------------------------------------- fine-grained records
@st.composite
def valid_record(draw, i:int):
    "A valid fine-grained record (unicode texts and ids, scores on about half of them)."
    aspect = draw(st.sampled_from(ASPECTS))
    chosen = draw(text)
    rec = dict(id=draw(text) + f'#{i}', prompt=draw(text), chosen=chosen,
               rejected=draw(text.filter(lambda s: s.strip() != chosen.strip())), aspect=aspect)
    if draw(st.booleans()):
        c = {a: draw(st.floats(-5, 5)) for a in ASPECTS}
        r = {a: draw(st.floats(-5, 5)) for a in ASPECTS}
        c[aspect] = r[aspect] + draw(st.floats(0.01, 3))
        rec.update(chosen_scores=c, rejected_scores=r)
    if draw(st.booleans()): rec['source'] = draw(text)
    return rec

def _scored(rec): return 'chosen_scores' in rec

# each corruption: (draw, record, earlier valid ids) -> (record, field named, reason), or None when it does not apply
def _missing(draw, r, ids):
    f = draw(st.sampled_from(['prompt', 'chosen', 'rejected', 'aspect']))
    if draw(st.booleans()): del r[f]
    else: r[f] = None
    return r, f, 'missing_field'
def _wrong_type(draw, r, ids):
    f = draw(st.sampled_from(['prompt', 'chosen', 'rejected', 'aspect']))
    r[f] = draw(not_str); return r, f, 'wrong_type'
def _empty(draw, r, ids):
    f = draw(st.sampled_from(['prompt', 'chosen', 'rejected', 'aspect']))
    r[f] = draw(blank); return r, f, 'empty_text'
def _surrogate(draw, r, ids):  # half an emoji escape, as json.loads('"\\ud83d"') gives
    f = draw(st.sampled_from(['prompt', 'chosen', 'rejected', 'id', 'source']))
    r[f] = str(r.get(f) or 'x') + draw(st.sampled_from(['\ud83d', '\udc00', '\ud800x']))
    return r, f, 'bad_unicode'
def _same(draw, r, ids): r['rejected'] = f" {r['chosen']}\n"; return r, 'chosen', 'chosen_equals_rejected'
def _unknown_aspect(draw, r, ids): r['aspect'] = 'verbosity'; return r, 'aspect', 'unknown_aspect'
def _bad_id(draw, r, ids): r['id'] = draw(st.floats() | st.booleans() | st.lists(st.integers(), max_size=1)); return r, 'id', 'wrong_type'
def _bad_source(draw, r, ids): r['source'] = draw(st.integers() | st.booleans()); return r, 'source', 'wrong_type'
def _not_mapping(draw, r, ids): return draw(st.sampled_from([None, 'text', 3, ['a', 'b']])), '<record>', 'wrong_type'
def _duplicate(draw, r, ids):
    if not ids: return None
    r['id'] = draw(st.sampled_from(ids)); return r, 'id', 'duplicate_id'
def _score_value(draw, r, ids):
    if not _scored(r): return None
    side, a = draw(st.sampled_from(['chosen_scores', 'rejected_scores'])), draw(st.sampled_from(ASPECTS))
    v, reason = draw(st.sampled_from([('N/A', 'wrong_type'), ('3', 'wrong_type'), (True, 'wrong_type'), ([1], 'wrong_type'),
                                      (float('nan'), 'nan_score'), (math.inf, 'nan_score'), (-math.inf, 'nan_score')]))
    r[side] = {**r[side], a: v}; return r, f'{side}.{a}', reason
def _score_key(draw, r, ids):
    if not _scored(r): return None
    r['chosen_scores'] = {**r['chosen_scores'], 'verbosity': 1.0}; return r, 'chosen_scores.verbosity', 'unknown_aspect'
def _scores_shape(draw, r, ids):
    if not _scored(r): return None
    if draw(st.booleans()): del r['rejected_scores']; return r, 'rejected_scores', 'missing_field'
    r['chosen_scores'] = list(r['chosen_scores'].values()); return r, 'chosen_scores', 'wrong_type'
def _strict(draw, r, ids):
    if not _scored(r): return None
    a, c, j = r['aspect'], dict(r['chosen_scores']), draw(st.integers(0, 2))
    if j == 0: c[a] = None; reason = 'missing_score'
    elif j == 1: c[a] = r['rejected_scores'][a]; reason = 'tie'
    else: c[a] = r['rejected_scores'][a] - 1; reason = 'score_order'
    r['chosen_scores'] = c; return r, f'chosen_scores.{a}', reason

CORRUPTIONS = [_missing, _wrong_type, _empty, _surrogate, _same, _unknown_aspect, _bad_id, _bad_source, _not_mapping, _duplicate,
               _score_value, _score_key, _scores_shape, _strict]

@st.composite
def corrupted_batch(draw):
    "Records, and {index: (field, reason)} of the corrupted ones."
    n = draw(st.integers(1, 8))
    recs, bad, ids = [], {}, []
    for i in range(n):
        r = draw(valid_record(i))
        if draw(st.integers(0, 2)) == 0:
            for fn in draw(st.permutations(CORRUPTIONS)):
                out = fn(draw, dict(r), ids)
                if out is not None: break
            r, field, reason = out
            bad[i] = (field, reason)
        else: ids.append(r['id'])
        recs.append(r)
    return recs, bad

@fuzz('records')
@given(corrupted_batch())
def test_bad_records_named_or_counted(batch):
    """from_records/validate on a batch with random corruptions (missing, None, wrong-typed, blank or unicode-blank
    fields, lone surrogates, identical responses, unknown aspects, bad ids/sources, non-mappings, duplicate ids,
    'N/A'/'3'/bool/NaN/inf scores, unknown score keys, one-sided or list scores, missing/tied/reversed own-aspect scores): raising names
    the first bad record and its field; skipping keeps exactly the good records, in order, and counts each bad one."""
    recs, bad = batch
    good = [i for i in range(len(recs)) if i not in bad]
    if bad:
        first = min(bad)
        with pytest.raises(ValueError) as e: from_records(recs, aspects=ASPECTS)
        assert_names(e.value, first, *bad[first])
        assert isinstance(e.value, RecordError) and e.value.index == first and e.value.reason == bad[first][1]
    skipped = collections.Counter()
    ds = from_records(recs, aspects=ASPECTS, on_error='skip', skipped=skipped)
    assert skipped == collections.Counter(reason for _, reason in bad.values())
    assert ds['id'] == [str(recs[i]['id']) for i in good]
    for c in ('prompt', 'chosen', 'rejected', 'aspect'): assert ds[c] == [recs[i][c] for i in good]
    assert validate(recs, aspects=ASPECTS, on_error='skip') == good

@fuzz('unicode_roundtrip')
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True).flatmap(
    lambda ks: st.tuples(*[valid_record(k) for k in ks])), st.booleans())
def test_unicode_records_roundtrip(tmp_path_factory, recs, gz):
    """Arbitrary unicode (emoji, RTL, combining marks, NUL, line/paragraph separators) in ids and texts survives
    from_records -> write_jsonl_atomic -> read_jsonl -> load_local, and save_dataset_atomic -> load_from_disk, unchanged."""
    recs = list(recs)
    d = tmp_path_factory.mktemp('uni')
    ds = from_records(recs, aspects=ASPECTS)
    path = d / ('r.jsonl.gz' if gz else 'r.jsonl')
    write_jsonl_atomic(path, ds)
    back = read_jsonl(path)
    assert back == ds.to_list()
    for c in ('id', 'prompt', 'chosen', 'rejected'): assert load_local(path)[c] == [r[c] for r in recs]
    save_dataset_atomic(ds, d / 'ds')
    assert load_local(d / 'ds').to_list() == ds.to_list()

def test_non_finite_scores_are_rejected():
    """+-inf scores are bad input like NaN (they make PD inf or NaN downstream): named error, or counted when skipping.
    Regression test for reliability bug B1 (`_check_record` rejected only NaN; fixed in 6e1252f)."""
    base = dict(id='a', prompt='p', chosen='x', rejected='y', aspect='helpfulness',
                chosen_scores={'helpfulness': 2.0, 'honesty': 1.0}, rejected_scores={'helpfulness': 1.0, 'honesty': 0.0})
    for side, a, v in [('chosen_scores', 'honesty', math.inf), ('rejected_scores', 'honesty', -math.inf), ('chosen_scores', 'helpfulness', math.inf)]:
        r = {**base, side: {**base[side], a: v}}
        with pytest.raises(ValueError) as e: from_records([base | {'id': 'ok'}, r])
        assert_names(e.value, 1, f'{side}.{a}')
        skipped = collections.Counter()
        assert len(from_records([r], on_error='skip', skipped=skipped)) == 0 and sum(skipped.values()) == 1

def test_lone_surrogates_are_a_named_record_error():
    """A JSON escape of half an emoji ("\\ud83d", common in truncated scraped text) parses to a str that Arrow cannot
    encode: it must be a named, skippable record error, not a bare UnicodeEncodeError from Arrow for the whole set.
    Regression test for reliability bug B2 (fixed in 6e1252f)."""
    good = dict(id='ok', prompt='p', chosen='x', rejected='y', aspect='helpfulness')
    bad = json.loads('{"id": "b", "prompt": "a \\ud83d", "chosen": "x", "rejected": "y", "aspect": "helpfulness"}')
    with pytest.raises(ValueError) as e: from_records([good, bad])
    assert_names(e.value, 1, 'prompt')
    skipped = collections.Counter()
    assert from_records([good, bad], on_error='skip', skipped=skipped)['id'] == ['ok'] and sum(skipped.values()) == 1

def test_missing_other_aspect_scores_name_the_row_in_pd():
    """Records whose score struct lacks aspects get None (unknown); computing PD from them names the row, and
    `on_missing='zero'`/'renormalize' are the explicit ways out (select passes the policy through)."""
    from pd_align.selection import select
    recs = [dict(id='a', prompt='p', chosen='x', rejected='y', aspect='helpfulness', chosen_scores={'helpfulness': 2., 'honesty': 1.},
                 rejected_scores={'helpfulness': 1., 'honesty': 0.}),
            dict(id='b', prompt='p', chosen='x', rejected='y', aspect='helpfulness', chosen_scores={'helpfulness': 2.},
                 rejected_scores={'helpfulness': 1.})]
    ds = from_records(recs)
    assert ds[1]['chosen_scores'] == {'helpfulness': 2.0, 'honesty': None}
    with pytest.raises(ValueError, match=r'row 1 .*unknown score for aspect 1'): select(ds, 'pd', 0.5)
    assert select(ds, 'pd', 0.5, on_missing='zero')['id'] == ['a']

# ----------------------------------------------------------------------------- truncated / malformed files
@st.composite
def jsonl_bytes(draw):
    recs = draw(st.lists(st.fixed_dictionaries({'id': text, 'prompt': text, 'n': st.integers(-10**6, 10**6)}), min_size=1, max_size=6))
    lines = [json.dumps(r, ensure_ascii=draw(st.booleans())).encode('utf-8') + b'\n' for r in recs]
    return recs, lines

@fuzz('truncated_jsonl')
@given(jsonl_bytes(), st.data())
def test_truncated_jsonl(tmp_path_factory, case, data):
    """A JSONL file cut at any byte: read_jsonl returns exactly the complete leading records, or a ValueError naming the
    file and the (1-based) line that was cut (mid-JSON or mid-UTF-8 character), never a wrong or partial record."""
    recs, lines = case
    raw = b''.join(lines)
    k = data.draw(st.integers(0, len(raw)))
    path = tmp_path_factory.mktemp('trunc') / 'part.jsonl'
    path.write_bytes(raw[:k])
    ends = [sum(map(len, lines[:i + 1])) for i in range(len(lines))]
    full = sum(e <= k for e in ends)  # complete lines (newline included)
    tail = raw[ends[full - 1] if full else 0:k]
    try: got = read_jsonl(path)
    except ValueError as e:
        msg = str(e)
        assert str(path) in msg and f'line {full + 1}:' in msg, (k, full, msg)
        assert tail.strip() and tail != lines[full].rstrip(b'\n'), (k, msg)  # only a really cut line may fail
        return
    want = full + (1 if tail and tail == lines[full].rstrip(b'\n') else 0)  # the last line lost only its newline
    assert got == recs[:want], (k, got)

@fuzz('truncated_gz')
@given(jsonl_bytes(), st.data())
def test_truncated_gzip(tmp_path_factory, case, data):
    "A .jsonl.gz cut anywhere inside (1 <= k < size): ValueError naming the file (no partial list); uncut: all records."
    recs, lines = case
    gz = gzip.compress(b''.join(lines))
    k = data.draw(st.integers(0, len(gz)))
    path = tmp_path_factory.mktemp('gz') / 'part.jsonl.gz'
    path.write_bytes(gz[:k])
    if k == len(gz): assert read_jsonl(path) == recs; return
    if k == 0: assert read_jsonl(path) == []; return  # like an empty .jsonl (load_local then says 'no records')
    with pytest.raises(ValueError) as e: read_jsonl(path)
    assert str(path) in str(e.value) and 'line ' in str(e.value)

def test_invalid_utf8_names_its_line(tmp_path):
    """A bad byte in the middle of a file is reported at its own line, not at the first line of the decoder's chunk.
    Regression test for reliability bug B3: decoding in text mode gave the line number of the last line read before
    the failing 8 KB chunk ('line 1' for a bad byte on line 6); fixed in 6e1252f (per-line decoding)."""
    lines = [json.dumps({'id': f'r{i}', 'prompt': 'é' * 3}, ensure_ascii=False).encode() + b'\n' for i in range(10)]
    lines[5] = lines[5].replace(b'r5', b'r\xff5')
    (tmp_path / 'x.jsonl').write_bytes(b''.join(lines))
    with pytest.raises(ValueError, match=r'line 6:'): read_jsonl(tmp_path / 'x.jsonl')

def test_malformed_lines_named(tmp_path):
    "Non-object JSON, garbage and a BOM-less control are each named by file and line; blank lines are skipped."
    good = json.dumps({'a': 1})
    for bad, line in [('[1, 2]', 2), ('"text"', 2), ('{"a": }', 2), ('{"a": 1}{"b": 2}', 2), ('nul\x00l', 2)]:
        p = tmp_path / 'f.jsonl'
        p.write_text(f'{good}\n{bad}\n\n{good}\n', encoding='utf-8')
        with pytest.raises(ValueError) as e: read_jsonl(p)
        assert f'{p}: line {line}:' in str(e.value), (bad, str(e.value))
    p.write_text(f'\n{good}\n   \n{good}', encoding='utf-8')
    assert read_jsonl(p) == [{'a': 1}, {'a': 1}]

# ----------------------------------------------------------------------------- converters
RATING_OK = st.sampled_from(['1', '2', '3', '4', '5', ' 4 ', 3, 4.0, 2.5, 'N/A', 'n/a', 'NA', '', None, 'missing'])
RATING_BAD = st.sampled_from(['abc', '4 stars', True, [], {}, float('nan')])

@st.composite
def uf_rows(draw):
    "UltraFeedback rows; returns (rows, {row index: field named}, N/A counts per aspect over good rows)."
    rows, bad = [], {}
    for i in range(draw(st.integers(1, 5))):
        comps = []
        for j in range(draw(st.integers(0, 4))):
            ann = {}
            for a in ULTRAFEEDBACK_ASPECTS:
                v = draw(RATING_OK)
                if v != 'missing': ann[a] = {'Rating': v, 'Rationale': 'r'} if draw(st.booleans()) else [{'Rating': v}]
            comps.append({'response': draw(text), 'annotations': ann, 'model': 'm'})
        row = {'instruction': draw(text), 'completions': comps, 'source': 'fuzz'}
        kind = draw(st.integers(0, 5))
        if kind == 0 and comps:
            j, a = draw(st.integers(0, len(comps) - 1)), draw(st.sampled_from(ULTRAFEEDBACK_ASPECTS))
            comps[j]['annotations'][a] = {'Rating': draw(RATING_BAD)}
            bad[i] = f'completions[{j}].annotations.{a}.Rating'
        elif kind == 1:
            f, v = draw(st.sampled_from([('instruction', None), ('instruction', 3), ('completions', 'x'), ('completions', None)]))
            row[f] = v; bad[i] = f
        elif kind == 2 and comps:
            j = draw(st.integers(0, len(comps) - 1))
            what = draw(st.sampled_from(['response', 'annotations', 'whole']))
            if what == 'whole': comps[j] = 'text'; bad[i] = f'completions[{j}]'
            else: comps[j][what] = draw(st.sampled_from([None, 5])); bad[i] = f'completions[{j}].{what}'
        rows.append(row)
    return rows, bad

def _rating(v):
    v = v[0] if isinstance(v, list) else v
    if not isinstance(v, dict): return None
    x = v.get('Rating')
    return None if x is None or (isinstance(x, str) and x.strip().upper() in ('N/A', 'NA', '')) else float(x)

@fuzz('ultrafeedback')
@given(uf_rows(), st.sampled_from(['best_vs_random', 'all_pairs']))
def test_ultrafeedback_fuzz(rows, pairing):
    """UltraFeedback rows with 'N/A'/''/None/missing ratings, one-element-list annotations, and bad ratings or
    structure: bad rows are named (row index and the field path) or counted; every built pair strictly prefers
    `chosen` on its own aspect, never uses an unrated completion, and keeps all four ratings as scores."""
    rows, bad = rows
    if bad:
        first = min(bad)
        with pytest.raises(ValueError) as e: from_ultrafeedback(rows, pairing=pairing)
        assert_names(e.value, first, bad[first])
    skipped, stats = collections.Counter(), collections.Counter()
    ds = from_ultrafeedback(rows, pairing=pairing, on_error='skip', skipped=skipped, stats=stats)
    assert sum(skipped.values()) == len(bad)
    na = collections.Counter()
    for i, row in enumerate(rows):
        if i in bad: continue
        for c in row['completions']:
            for a in ULTRAFEEDBACK_ASPECTS:
                if _rating(c['annotations'].get(a)) is None: na[a] += 1
    for a in ULTRAFEEDBACK_ASPECTS: assert stats[f'na:{a}'] == na[a], (a, stats)
    for r in ds:
        a = r['aspect']
        assert r['chosen_scores'][a] is not None and r['rejected_scores'][a] is not None
        assert r['chosen_scores'][a] > r['rejected_scores'][a] and r['chosen'].strip() != r['rejected'].strip()
        assert set(r['chosen_scores']) == set(ULTRAFEEDBACK_ASPECTS)
    assert len(set(ds['id'])) == len(ds)

def test_ultrafeedback_nonfinite_rating_strings():
    """'nan', 'inf', '1e999' ratings: either unknown (like 'N/A', counted) or a named error; never silently a float
    that breaks pairing ('nan' compares false everywhere: pairs silently vanish as 'ties') or an infinite score.
    Regression test for reliability bug B4 (`_uf_rating` turned these strings into float nan/inf; fixed in 6e1252f)."""
    for v in ['nan', 'inf', '-inf', '1e999']:
        ann = lambda r: {a: {'Rating': r} for a in ULTRAFEEDBACK_ASPECTS}
        row = {'instruction': 'q', 'completions': [{'response': 'A', 'annotations': ann(v)}, {'response': 'B', 'annotations': ann('2')},
                                                   {'response': 'C', 'annotations': ann('1')}]}
        stats = collections.Counter()
        try: ds = from_ultrafeedback([row], stats=stats)
        except ValueError as e: assert_names(e, 0, 'completions[0].annotations.helpfulness.Rating'); continue
        assert all(math.isfinite(x) for r in ds for s in ('chosen_scores', 'rejected_scores') for x in r[s].values() if x is not None), v
        assert stats['na:helpfulness'] == 1, (v, stats)

HS_OK = st.integers(0, 4) | st.floats(0, 4)
HS_BAD = st.sampled_from(['3', None, float('nan'), True, [1]])

@fuzz('helpsteer')
@given(st.lists(st.tuples(st.sampled_from(['p1', 'p2', 'ü']), text, st.tuples(*[HS_OK] * 5), st.integers(0, 6), HS_BAD), min_size=1, max_size=8))
def test_helpsteer_fuzz(spec):
    """HelpSteer rows with string/None/NaN/bool ratings or missing prompt/response: named (row, attribute) or counted;
    the pairs of the good rows strictly prefer `chosen` on their attribute."""
    rows, bad = [], {}
    for i, (prompt, resp, ratings, kind, badv) in enumerate(spec):
        row = dict(prompt=prompt, response=resp, **dict(zip(HELPSTEER_ASPECTS, ratings)))
        if kind < len(HELPSTEER_ASPECTS):
            a = HELPSTEER_ASPECTS[kind]
            if kind == 0 and badv is None: del row[a]
            else: row[a] = badv
            bad[i] = a
        elif kind == 5: row[['prompt', 'response'][i % 2]] = None; bad[i] = ['prompt', 'response'][i % 2]
        rows.append(row)
    if bad:
        with pytest.raises(ValueError) as e: from_helpsteer2(rows)
        assert_names(e.value, min(bad), bad[min(bad)])
    skipped = collections.Counter()
    ds = from_helpsteer2(rows, on_error='skip', skipped=skipped)
    assert sum(skipped.values()) == len(bad)
    for r in ds: assert r['chosen_scores'][r['aspect']] > r['rejected_scores'][r['aspect']]

@fuzz('trl')
@given(st.lists(st.tuples(text, text, text, st.integers(0, 8), st.booleans()), min_size=1, max_size=6))
def test_trl_fuzz(spec):
    """TRL rows, plain and conversational, with missing fields, non-message lists, broken messages, responses not
    starting with an assistant turn: named (row and field) or counted; good rows convert."""
    rows, bad = [], {}
    for i, (p, c, r, kind, conv) in enumerate(spec):
        if c.strip() == r.strip(): r = r + ' (other)'
        if conv: row = dict(prompt=[{'role': 'user', 'content': p}], chosen=[{'role': 'assistant', 'content': c}],
                            rejected=[{'role': 'assistant', 'content': r}], aspect='helpfulness')
        else: row = dict(prompt=p, chosen=c, rejected=r, aspect='helpfulness')
        if kind == 0: del row['chosen']; bad[i] = 'chosen'
        elif kind == 1: row['aspect'] = None; bad[i] = 'aspect'
        elif kind == 2 and conv: row['chosen'] = [{'role': 'user', 'content': c}]; bad[i] = 'chosen[0].role'
        elif kind == 3 and conv: row['rejected'] = [{'role': 'assistant', 'content': 7}]; bad[i] = 'rejected[0]'
        elif kind == 4 and conv: row['prompt'] = []; bad[i] = 'prompt'
        elif kind == 5: row['rejected'] = 3; bad[i] = 'rejected'
        rows.append(row)
    if bad:  # message and type problems are found in two passes (from_trl, then from_records): any bad row may come first
        with pytest.raises(ValueError) as e: from_trl(rows)
        assert e.value.index in bad, str(e.value)
        assert_names(e.value, e.value.index, bad[e.value.index])
    skipped = collections.Counter()
    ds = from_trl(rows, on_error='skip', skipped=skipped)
    assert sum(skipped.values()) == len(bad) and len(ds) == len(rows) - len(bad)

@fuzz('hh')
@given(st.lists(st.tuples(text, text, text, st.integers(0, 4)), min_size=1, max_size=6))
def test_hh_fuzz(spec):
    "HH transcripts without an Assistant turn, with wrong types or missing sides: named (row, field) or counted."
    rows, bad = [], {}
    for i, (p, c, r, kind) in enumerate(spec):
        if c.strip() == r.strip(): r = r + ' (other)'
        row = dict(chosen=f'\n\nHuman: {p}\n\nAssistant: {c}', rejected=f'\n\nHuman: {p}\n\nAssistant: {r}')
        if kind == 0: row['chosen'] = p.replace('Assistant:', ''); bad[i] = 'chosen'
        elif kind == 1: row['rejected'] = None; bad[i] = 'rejected'
        elif kind == 2: row['chosen'] = ['x']; bad[i] = 'chosen'
        rows.append(row)
    if bad:
        with pytest.raises(ValueError) as e: from_hh(rows, 'helpful')
        assert_names(e.value, min(bad), bad[min(bad)])
    skipped = collections.Counter()
    ds = from_hh(rows, 'helpful', on_error='skip', skipped=skipped)
    assert sum(skipped.values()) == len(bad) and len(ds) == len(rows) - len(bad)

# ----------------------------------------------------------------------------- long prompts: pd_align.train's truncation policy
WORDS = ['cats', 'tea', 'rain', 'are', 'lovely', 'boring', 'thank', 'you', 'go', 'away', 'é', '🙂', 'tell', 'me']
words = lambda lo, hi: st.lists(st.sampled_from(WORDS), min_size=lo, max_size=hi).map(' '.join)

@pytest.fixture(scope='module')
def tokenizer():
    from pd_align.tiny import train_tokenizer
    return train_tokenizer([' '.join(WORDS)] * 20 + ['Q: tell me about cats.\nA: cats are lovely'], vocab_size=300)

def _find(seq, sub, end):
    "Whether `sub` occurs in `seq` ending exactly at `end`."
    return end >= len(sub) and seq[end - len(sub):end] == sub

@fuzz('truncation')
@given(words(0, 120), words(0, 40), words(0, 40), st.integers(2, 64), st.data())
def test_long_prompts_truncation_policy(tokenizer, prompt, chosen, rejected, max_length, data):
    """Prompts (up to 120 words) and responses longer than `max_length`: `tokenize_pairs` keeps the prompt's *end*
    (at most max_prompt_length tokens, shared by both sides), then the *start* of each response (with its end-of-text
    token when it fits), so prompt + response <= max_length; nothing is cut when everything fits; responses never
    come out empty."""
    T = pytest.importorskip('pd_align.train')
    mpl = data.draw(st.integers(1, max_length - 1))
    cfg = T.DPOConfig(max_length=max_length, max_prompt_length=mpl)
    ex, = T.tokenize_pairs([dict(id='long-0', prompt=prompt, chosen=chosen, rejected=rejected)], tokenizer, cfg)
    p, eos = ex['prompt_ids'], tokenizer.eos_token_id
    assert len(p) <= mpl
    full_p = tokenizer(prompt, add_special_tokens=True)['input_ids']
    for side, text in (('chosen', chosen), ('rejected', rejected)):
        r = ex[f'{side}_ids']
        full = tokenizer(prompt + text + tokenizer.eos_token, add_special_tokens=True)['input_ids']
        assert 1 <= len(r) and len(p) + len(r) <= max_length, (side, len(p), len(r))
        # the kept prompt ends where the response starts (its end is kept), the response is a prefix
        n = next((k for k in range(len(full) + 1) if _find(full, p, k) and full[k:k + len(r)] == r), None)
        assert n is not None, (side, p, r, full)
        assert n >= len(full_p) - 2, 'the prompt lost its end, not its start'
        if len(full) <= max_length and len(full_p) <= mpl: assert p + r == full, 'cut although everything fits'
        if len(p) + len(full) - n <= max_length: assert r[-1] == eos, 'the end-of-text token was dropped although it fits'

# ----------------------------------------------------------------------------- atomic writers
@fuzz('writer_failure')
@given(st.integers(0, 30), st.integers(1, 30), st.booleans(), st.booleans())
def test_writer_failing_midway_leaves_old_file(tmp_path_factory, fail_after, n, gz, existing):
    """write_jsonl_atomic whose row source raises after `fail_after` rows (any point, plain or gzip, big rows that force
    real writes): no partial file, no temp file, and an existing file keeps its old content."""
    d = tmp_path_factory.mktemp('atomic')
    path = d / ('out.jsonl.gz' if gz else 'out.jsonl')
    old = [{'old': True}]
    if existing: write_jsonl_atomic(path, old)
    def rows():
        for i in range(n):
            if i == fail_after: raise RuntimeError('source died')
            yield {'i': i, 'pad': 'x' * 20_000}
    if fail_after < n:
        with pytest.raises(RuntimeError): write_jsonl_atomic(path, rows())
        assert sorted(os.listdir(d)) == (['out.jsonl.gz' if gz else 'out.jsonl'] if existing else [])
        if existing: assert read_jsonl(path) == old
    else:
        write_jsonl_atomic(path, rows())
        assert [r['i'] for r in read_jsonl(path)] == list(range(n)) and os.listdir(d) == [path.name]

def test_json_and_dataset_writers_keep_old_on_failure(tmp_path, monkeypatch):
    "atomic_write_json failing on the last key and save_dataset_atomic failing mid-save keep the old outputs intact."
    atomic_write_json(tmp_path / 's.json', {'v': 1})
    with pytest.raises(TypeError): atomic_write_json(tmp_path / 's.json', {'v': 2, 'big': 'x' * 100_000, 'z': object()})
    assert json.loads((tmp_path / 's.json').read_text()) == {'v': 1}
    ds = from_records([dict(id='a', prompt='p', chosen='x', rejected='y', aspect='h')])
    save_dataset_atomic(ds, tmp_path / 'ds')
    from datasets import Dataset
    real = Dataset.save_to_disk
    def half(self, path, **kw):
        real(self, path, **kw); (os.remove(os.path.join(path, 'state.json'))); raise OSError('killed while saving')
    monkeypatch.setattr(Dataset, 'save_to_disk', half)
    with pytest.raises(OSError): save_dataset_atomic(ds.add_column('x', [1]), tmp_path / 'ds')
    monkeypatch.undo()
    assert load_local(tmp_path / 'ds').column_names == ds.column_names
    assert sorted(os.listdir(tmp_path)) == ['ds', 's.json']
