"""Summary of the reliability work of issue 8: what is tried, how often, and what each property is shown to catch.

Property-based tests (tests/test_properties.py; hypothesis, derandomised, no example database, `EXAMPLES` below):

| property (`EXAMPLES` key, generated cases)                      | mutation of the library it catches (test_property_catches_mutation)          |
|-----------------------------------------------------------------|------------------------------------------------------------------------------|
| PD antisymmetry (`pd_antisymmetry`, 200)                        | `delta = c - r` -> `delta = c` (rejected scores dropped)                     |
| PD ignores the labelling aspect (`pd_ignores_own_aspect`, 200)  | drop `other[..., a] = False` (PD becomes minus the holistic margin)          |
| PD shift invariance per aspect (`pd_shift_invariance`, 200)     | `delta = c - r` -> `log1p|c| - log1p|r|`                                     |
| PD weight-scale invariance (`pd_weight_scale`, 200)             | `normalise_weights`: `return w / w.sum()` -> `return w` (not normalised)     |
| PD sign: consensus < 0 (`pd_sign`, 200)                         | `pd = -(known` -> `pd = (known` (sign convention flipped)                    |
| losses finite, fp32/bf16, 1e4 (`loss_finite`, 150)              | `neg_logsigmoid(x)` -> `-torch.log(torch.sigmoid(x))` in dpo_loss, dfpo_loss |
| sequence_logps finite, <= 0 (`seq_logps_finite`, 100)           | `torch.logsumexp(z, -1)` -> `z.exp().sum(-1).log()`                          |
| DFPO == DPO at pd=0, w=1 (`dfpo_reduces_to_dpo`, 200)           | `t = beta * margin` -> `t = margin`                                          |
| DPO loss decreasing in margin (`dpo_decreasing`, 200)           | `neg_logsigmoid(beta * margin)` -> `neg_logsigmoid(-beta * margin)`          |
| DFPO loss decreasing in PD (`dfpo_decreasing_in_pd`, 200)       | `t = t + pd` -> `t = t - pd`                                                 |
| exact count ceil(p/q N) (`select_count`, 200)                   | `math.ceil(` -> `math.floor(`; the Fraction guard -> `math.ceil(ratio * n)`  |
| deterministic (`select_deterministic`, 100)                     | `select_random` ignores its seed (`g = None`)                                |
| ties, seed=None: lowest index first (`select_ties`, 200)        | `_ranked` breaks ties by the highest index                                   |
| ties, seeded: order from the seed only (`select_tie_seed`, 150) | `_top` ignores the seed (`tie = None`)                                       |
| never duplicates (`select_no_duplicates`, 200)                  | `select_random` samples with replacement (`torch.randint`)                   |
| select_by_pd max <= min of rest (`select_by_pd_split`, 200)     | `largest=False` -> `largest=True`                                            |
| `select` on a Dataset (`select_dataset`, 25)                    | `return sub[k.numpy()]` -> one pair lost per group                           |
| exact budget, global and per aspect (`select_budget`, 40)       | `per_aspect_budget` rounds up in every group                                 |
| theory bounds lower<=exact<=upper (`loss_bounds`, 200)          | `q.mean(-1)` -> `(1 - q).mean(-1)` in `loss_bounds`                          |

Fuzzing (tests/test_loaders_fuzz.py, `FUZZ` below): fine-grained records with 14 kinds of corruption (missing or None
fields, wrong types, blank and unicode-blank texts, lone surrogates, identical responses, unknown aspects, bad ids/sources,
non-mappings, duplicate ids, 'N/A'/'3'/bool/NaN/inf scores, unknown score keys, one-sided or list scores, missing/tied/
reversed own-aspect scores), unicode round trips through JSONL (plain and gzip) and save_to_disk, JSONL and gzip
files cut at every kind of byte offset, malformed lines, UltraFeedback rows ('N/A', '', None, missing annotations,
one-element lists, bad ratings and structure, both pairings), HelpSteer rows, TRL rows (plain and conversational),
HH transcripts, atomic writers failing at any row; plus one test per bug found (non-finite scores, lone surrogates,
invalid UTF-8 line numbers, 'nan'/'inf' UltraFeedback ratings) and the truncation policy of pd_align.train.

CLI (tests/test_cli.py): unknown method, 11 bad ratios, missing/garbage/wrong inputs, non-empty or file --out (refused
unless --overwrite), unknown command, missing --scored; all one stderr line, exit 2, no traceback, via the script and
`main`; happy paths of `select` (all methods, per aspect) and `toy`.

Interrupted runs (tests/test_resume.py): SIGKILL of an atomic writer mid-write, of `score_dataset` after its first
shard, and of `train_dpo` after its first checkpoint; resumed outputs equal the uninterrupted run's.
"""
import ast, re
from pathlib import Path

import pytest

import test_properties as P
import test_loaders_fuzz as Z

HERE = Path(__file__).parent
OWN = ['test_properties.py', 'test_loaders_fuzz.py', 'test_cli.py', 'test_resume.py', 'test_reliability.py']

def hyp_settings(test):
    "The hypothesis settings a test runs with."
    s = getattr(test, '_hypothesis_internal_use_settings', None)
    assert s is not None, f'{test.__name__} is not a hypothesis test with explicit settings'
    return s

def property_tests():
    return {n: t for n, t in vars(P).items() if n.startswith('test_') and hasattr(t, 'prop_name')}

def test_every_property_is_bounded_and_documented():
    "Each property runs exactly EXAMPLES[name] cases (no deadline, no database) and names its mutation in its docstring."
    tests = property_tests()
    assert set(t.prop_name for t in tests.values()) == set(P.EXAMPLES), 'EXAMPLES and the property tests disagree'
    for name, t in tests.items():
        s = hyp_settings(t)
        assert s.max_examples == P.EXAMPLES[t.prop_name] and s.deadline is None and s.database is None, name
        assert 'Mutation' in (t.__doc__ or ''), f'{name}: the docstring must name a mutation that makes it fail'
    total = sum(P.EXAMPLES.values())
    assert 2000 <= total <= 5000, total  # enough to mean something, bounded for CI (< 2 min on 2 cores)

def test_every_property_has_a_mutation_that_is_run():
    "Each property appears in MUTATIONS, whose entries test_property_catches_mutation applies one by one."
    covered = {m[0].__name__ for m in P.MUTATIONS}
    assert covered == set(property_tests()), set(property_tests()) ^ covered
    for test, module, name, old, new in P.MUTATIONS:
        assert old != new and hasattr(module, name), (test.__name__, name)
        P.mutate(module, name, old, new)  # the snippet is still in the source, and the mutant compiles

def test_fuzz_budgets_and_cases():
    "Each fuzz test runs FUZZ[name] generated cases; the record corruptions cover the listed kinds."
    fuzz_tests = {n: t for n, t in vars(Z).items() if n.startswith('test_') and hasattr(t, 'hypothesis')}
    assert len(fuzz_tests) == len(Z.FUZZ), (sorted(fuzz_tests), sorted(Z.FUZZ))
    assert sorted(hyp_settings(t).max_examples for t in fuzz_tests.values()) == sorted(Z.FUZZ.values())
    assert len(Z.CORRUPTIONS) >= 14
    assert sum(Z.FUZZ.values()) <= 1000

def test_own_files_exist_and_cover_the_issue():
    "The five files exist; the resume file kills both the scorer and the trainer; the CLI file runs the real script."
    for f in OWN: assert (HERE / f).exists(), f
    resume = (HERE / 'test_resume.py').read_text()
    assert 'SIGKILL' in resume and 'score_dataset' in resume and 'train_dpo' in resume
    cli = (HERE / 'test_cli.py').read_text()
    assert "'pd-align'" in cli and 'Traceback' in cli

def test_summary_table_matches_the_code():
    "Every property of `EXAMPLES` has a row in this module's docstring, with the number of cases it really runs."
    rows = dict(re.findall(r'\(`(\w+)`, (\d+)\)', __doc__))
    assert {k: int(v) for k, v in rows.items()} == P.EXAMPLES, 'the summary table and EXAMPLES disagree'


# ---------------------------------------------------------------------------------------------------------------------
# Issue 29: strict settings files (protocols and configs): unknown keys, missing keys, not JSON, wrong shape.

import json
from conftest import run_cli
from pd_align.text_toy import Protocol, TextToyConfig, protocol_dict, smoke_protocol

def one_line_error(res, *needles):
    "A CLI result that is one stderr line (exit 2, no traceback) containing every needle."
    rc, out, err = res
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and 'Traceback' not in err, (rc, err)
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]

def _protocol_doc() -> dict:
    return json.loads(json.dumps(protocol_dict(smoke_protocol(), title='t')))

@pytest.mark.parametrize('edit, needles', [
    (lambda d: 'not json', ['not valid JSON']),
    (lambda d: [1, 2], ['expected an object at the top level, got an array']),
    (lambda d: {'title': 'no design'}, ["missing key 'design'"]),
    (lambda d: {**d, 'design': [1]}, ['expected an object for design, got an array']),
    (lambda d: {**d, 'design': {**d['design'], 'bogus': 1}}, ["unknown key 'design.bogus'"]),
    (lambda d: {'design': {'seeds': [1, 2]}, 'bogus': 1},
     ["missing keys 'design.shares'", 'every field must be given']),
    (lambda d: {**d, 'design': {k: v for k, v in d['design'].items() if k != 'ratio'}}, ["missing key 'design.ratio'"]),
    (lambda d: {**d, 'design': {**d['design'], 'config': {**d['design']['config'], 'n_promts': 3}}},
     ["unknown key 'design.config.n_promts'"]),
    (lambda d: {**d, 'design': {**d['design'], 'config': {k: v for k, v in d['design']['config'].items()
                                                          if k != 'beta'}}}, ["missing key 'design.config.beta'"]),
    (lambda d: {**d, 'design': {**d['design'], 'primary_share': 0.9}}, ['primary_share 0.9 is not in shares']),
])
def test_protocol_is_strict(tmp_path, edit, needles):
    "A protocol file runs exactly as written or not at all: one line naming the file and the key (issue 29)."
    doc = edit(_protocol_doc())
    p = tmp_path / 'p.json'
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    one_line_error(run_cli('text-toy', '--protocol', p), f'pd-align text-toy: error: {p}: ', *needles)

def test_protocol_round_trip_is_accepted(tmp_path):
    "The file `protocol_dict` writes is read back to the same design (the strict reader refuses nothing it writes)."
    from pd_align.text_toy import load_protocol
    p = tmp_path / 'p.json'
    p.write_text(json.dumps(_protocol_doc()))
    assert load_protocol(p) == Protocol(**{**vars(smoke_protocol()), 'config': vars(smoke_protocol().text_config())})

@pytest.mark.parametrize('name, content, needles', [
    ('c.json', '{"lr": 1e-3, "lerning_rate": 2}', ["unknown DPOConfig field 'lerning_rate'"]),
    ('c.json', '{"lr": ', ['not valid JSON']),
    ('c.json', '[1]', ['expected an object at the top level']),
    ('c.json', '', ['empty']),
    ('c.yaml', 'lr: [1e-3\n', ['not valid YAML']),
    ('c.yaml', '- 1\n', ['expected a mapping at the top level']),
    ('c.json', '{"beta": -1}', ['beta must be > 0']),
    ('c.toml', 'lr = 1', ['must be .json, .yaml or .yml']),
])
def test_dpo_config_file_is_strict(tmp_path, name, content, needles):
    "`pd-align train --config`: a bad settings file is one line naming the file, before any data or model is read."
    p = tmp_path / name
    p.write_text(content)
    one_line_error(run_cli('train', '--data', tmp_path / 'absent', '--config', p, '--out', tmp_path / 'run'),
                   str(p), *needles)
    assert not (tmp_path / 'run').exists()

def test_set_override_keys_are_strict(tmp_path):
    "`--set` names an unknown field and a value of the wrong type, in one line."
    one_line_error(run_cli('train', '--data', tmp_path, '--set', 'lerning_rate=1', '--out', tmp_path / 'r'),
                   "--set lerning_rate=1: unknown DPOConfig field 'lerning_rate'")
    one_line_error(run_cli('train', '--data', tmp_path, '--set', 'max_steps=abc', '--out', tmp_path / 'r'),
                   "max_steps must be int or None, got 'abc'")
