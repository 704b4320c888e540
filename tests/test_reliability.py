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

Damaged files (issue 29; `test_fault_matrix` runs every cell of this table and `MATRIX` is parsed from it, so it cannot
drift). Each artefact the project writes and reads back is damaged six ways and read back by the command that uses it:
cut in half (`truncated`), bytes that are not the format (`garbage`), valid JSON / torch / safetensors of the wrong
shape (`wrong_shape`), deleted (`missing`), a file of another version, model or run (`other_version`), and a write
stopped before its final rename (`interrupted`: the temp sibling left, the file absent or old). Outcomes: `healed` =
exit 0, the same result as from the undamaged file, and a line naming the file says what was repaired; `error` = exit
2 and one line naming the file, what is wrong and (for files a command writes) `fix:` the command; `ok` = exit 0, the
same result, nothing to say (the atomic writer kept the old file, or resumable work not yet done is simply done).
Never a traceback, never a different result, and a failed read deletes nothing.

| artefact (`ARTEFACTS` key), read by                       | truncated | garbage | wrong_shape | missing | other_version | interrupted |
|------------------------------------------------------------|-----------|---------|-------------|---------|---------------|-------------|
| `cache_meta` feature cache meta.json, `score` (heads)      | healed    | healed  | healed      | healed  | error         | healed      |
| `cache_shard` feature cache shard-N.pt, `score` (heads)    | healed    | healed  | healed      | ok      | healed        | healed      |
| `reward_config` reward_config.json, `score`                | error     | error   | error       | error   | error         | error       |
| `reward_weights` model.safetensors, `score`                | error     | error   | error       | error   | error         | ok          |
| `head_report` feature_heads.json, `score`                  | error     | error   | error       | error   | error         | error       |
| `head_weights` heads.pt, `score`                           | error     | error   | error       | error   | error         | error       |
| `score_shard` score shards/shard_N.json, `score --resume`  | healed    | healed  | healed      | ok      | healed        | ok          |
| `scored_dataset` score's dataset/, `select`                | error     | error   | error       | error   | error         | error       |
| `selection_json` selection.json, `train`                   | error     | error   | error       | ok      | error         | ok          |
| `train_jsonl` select's train.jsonl, `train`                | error     | error   | error       | error   | error         | error       |
| `checkpoint` newest checkpoint-N/, `train --resume`        | healed    | healed  | healed      | healed  | error         | ok          |
| `ref_cache` a run's ref_logps.pt, `train` into its folder  | healed    | healed  | healed      | ok      | healed        | ok          |
| `run_info` run_info.json, `eval`                           | error     | error   | error       | error   | error         | error       |
| `protocol` protocol file, `text-toy --protocol`            | error     | error   | error       | error   | error         | error       |
| `dpo_config` DPOConfig file, `train --config`              | error     | error   | error       | error   | error         | error       |
| `results` results.json, `read_results`                     | error     | error   | error       | error   | error         | error       |

Concurrency (`test_two_processes_fill_one_cache`, `test_score_refuses_a_folder_another_score_writes`,
`test_train_refuses_a_folder_another_train_writes`): a lock file (O_CREAT|O_EXCL, with the owner's pid) makes a second
process filling the same feature cache wait, then read what the first computed; a second `score` or `train` into the
same --out refuses in one line; a lock left by a killed process is removed.
"""
import ast, os, re
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


# ---------------------------------------------------------------------------------------------------------------------
# Issue 29: the fault-injection matrix. Every artefact the project writes and reads back, damaged six ways, read back by
# the command (or function) that uses it. `MATRIX` below is the table of the module docstring, parsed; each cell is run.

import shutil
import numpy as np
import torch
from datasets import load_from_disk
from pd_align.io import ArtefactError, save_dataset_atomic
from pd_align.synthetic import synthetic_pairs
from pd_align.tiny import tiny_model_and_tokenizer

FAULTS = ('truncated', 'garbage', 'wrong_shape', 'missing', 'other_version', 'interrupted')
OUTCOMES = {'healed': 'exit 0, the same result as from the undamaged file, and a line naming the file says what was '
                      'repaired (recomputed, rewritten, an earlier checkpoint used)',
            'error': 'exit 2, one stderr line naming the file (or its folder), what is wrong and `fix:` the command',
            'ok': 'exit 0, the same result, nothing to say (the atomic writer kept the old file, or resumable work '
                  'not yet done is simply done)'}
GARBAGE = bytes(range(256)) * 4

def parse_matrix(doc:str) -> dict:
    "{(artefact, fault): outcome} from the rows '| `key` ... | o1 | ... | o6 |' of the docstring's matrix."
    rows = re.findall(r'^\| `(\w+)`[^|]*\|(.*)\|\s*$', doc, re.M)
    out = {}
    for key, cells in rows:
        vals = [c.strip() for c in cells.split('|')]
        if len(vals) == len(FAULTS) and set(vals) <= set(OUTCOMES):
            out.update({(key, f): v for f, v in zip(FAULTS, vals)})
    return out

def ok(res):
    rc, out, err = res
    assert rc == 0, err
    return out

@pytest.fixture(scope='module')
def made(tmp_path_factory):
    "Every artefact once, undamaged, from tiny models: feature cache and heads, reward model, score, select, train."
    root = tmp_path_factory.mktemp('made')
    world = synthetic_pairs(n_per_aspect=8, seed=0)
    save_dataset_atomic(world, root/'data')
    lm, tok = tiny_model_and_tokenizer(list(world['prompt']) + list(world['chosen']) + list(world['rejected']),
                                       vocab_size=300)
    lm.save_pretrained(root/'lm')
    tok.save_pretrained(root/'lm')
    ok(run_cli('reward', '--heads', 'features', '--base', root/'lm', '--data', root/'data', '--features-cache',
               root/'cache', '--folds', 2, '--out', root/'heads'))
    ok(run_cli('score', '--reward-model', root/'heads', '--data', root/'data', '--out', root/'fscored'))
    ok(run_cli('reward', '--data', root/'data', '--out', root/'rm', '--max-length', 128))
    ok(run_cli('score', '--reward-model', root/'rm', '--data', root/'data', '--out', root/'scored'))
    ok(run_cli('select', '--scored', root/'scored', '--ratio', 0.5, '--out', root/'sel'))
    ok(run_cli('train', '--data', root/'sel', '--out', root/'run', *TRAIN_SETS))
    ok(run_cli('eval', '--run', root/'run', '--out', root/'eval.json'))
    ok(run_cli('train', '--data', root/'sel', '--out', root/'runp', *TRAIN_SETS, '--set', 'precompute_ref_logps=true'))
    (root/'p.json').write_text(json.dumps(_protocol_doc()))
    (root/'c.json').write_text(json.dumps({'lr': 1e-3, 'max_steps': 1, 'batch_size': 2}))
    from pd_align.experiments import Results, write_results
    import pandas
    runs = pandas.DataFrame([dict(seed=s, method=m, gold=g) for s in (0, 1) for m, g in (('pd', 1.0), ('full', 0.5))])
    write_results(Results(runs, runs.groupby('method', as_index=False)['gold'].mean(), {'seeds': 2}), root/'res')
    return root

TRAIN_SETS = ('--set', 'max_steps=2', '--set', 'batch_size=2', '--set', 'save_steps=1', '--set', 'lr=1e-3')

def pd_of(folder:Path) -> list: return load_from_disk(str(folder/'dataset'))['pd']

def same_pd(a:Path, b:Path) -> bool: return np.allclose(pd_of(a), pd_of(b), atol=1e-6)

def heads_copy(made, t:Path) -> Path:
    "The feature heads and their cache copied to `t`, the report pointing at the copied cache."
    shutil.copytree(made/'cache', t/'cache')
    shutil.copytree(made/'heads', t/'heads')
    rep = json.loads((t/'heads'/'feature_heads.json').read_text())
    (t/'heads'/'feature_heads.json').write_text(json.dumps({**rep, 'cache': str(t/'cache')}))
    return t/'heads'

def score_heads(made, t): return run_cli('score', '--reward-model', t/'heads', '--data', made/'data', '--out', t/'o')
def score_rm(made, t): return run_cli('score', '--reward-model', t/'rm', '--data', made/'data', '--out', t/'o')

def _adapter_state(path:Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))

class Artefact:
    "How to make a copy of an artefact in `t`, which file in it to damage, how to read it back, what result is right."
    fix_needed = True # the error must give the command that fixes it (not for files a user writes: protocols, configs)
    def setup(self, made, t): ...
    def target(self, t) -> Path: ...
    def read(self, made, t): ...
    def same(self, made, t) -> bool: return True
    def wrong_shape(self, p:Path): p.write_text('[1, 2, 3]')
    def other_version(self, made, t, p:Path): ...
    def interrupted(self, made, t, p:Path):
        "A write stopped before its final rename: the temp sibling is there, the file is not."
        (p.parent / f'.{p.name}.k1ll3d.tmp').write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])
        p.unlink()

def _json_edit(p:Path, **changes):
    p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))

class CacheMeta(Artefact):
    def setup(self, made, t): heads_copy(made, t)
    def target(self, t): return t/'cache'/'meta.json'
    def read(self, made, t): return score_heads(made, t)
    def same(self, made, t): return same_pd(t/'o', made/'fscored')
    def other_version(self, made, t, p): _json_edit(p, version=0, fingerprint='0123456789abcdef')

class CacheShard(CacheMeta):
    def target(self, t): return sorted((t/'cache').glob('shard-*.pt'))[0]
    def wrong_shape(self, p): torch.save([1, 2, 3], p)
    def other_version(self, made, t, p):
        s = torch.load(p, weights_only=True)
        torch.save({**s, 'fingerprint': 'another0model00'}, p)

class RewardConfig(Artefact):
    def setup(self, made, t): shutil.copytree(made/'rm', t/'rm')
    def target(self, t): return t/'rm'/'reward_config.json'
    def read(self, made, t): return score_rm(made, t)
    def same(self, made, t): return same_pd(t/'o', made/'scored')
    def other_version(self, made, t, p): _json_edit(p, version=2)
    def interrupted(self, made, t, p):
        "`save_pretrained` swaps a complete temp folder in: stopped before, only the temp folder is there."
        os.replace(t/'rm', t/'.rm.tmp-k1ll3d')

class RewardWeights(RewardConfig):
    def target(self, t): return t/'rm'/'model.safetensors'
    def wrong_shape(self, p):
        from safetensors.torch import save_file
        save_file({'x': torch.zeros(2)}, str(p))
    def other_version(self, made, t, p):
        from safetensors.torch import save_file
        save_file({k: torch.zeros(*[d + 1 for d in v.shape]) for k, v in _adapter_state(p).items()}, str(p))
    def interrupted(self, made, t, p):
        "A second `reward --overwrite` stopped mid-write: its temp folder is left, the old model is intact."
        shutil.copytree(t/'rm', t/'.rm.tmp-k1ll3d')
        (t/'.rm.tmp-k1ll3d'/'model.safetensors').write_bytes(p.read_bytes()[:100])

class HeadReport(Artefact):
    def setup(self, made, t): heads_copy(made, t)
    def target(self, t): return t/'heads'/'feature_heads.json'
    def read(self, made, t): return score_heads(made, t)
    def same(self, made, t): return same_pd(t/'o', made/'fscored')
    def other_version(self, made, t, p): _json_edit(p, kind='reward_model')

class HeadWeights(HeadReport):
    def target(self, t): return t/'heads'/'heads.pt'
    def wrong_shape(self, p): torch.save([1, 2, 3], p)
    def other_version(self, made, t, p):
        h = torch.load(p, weights_only=True)
        torch.save({**h, 'w': torch.cat([h['w'], h['w'][:1]])}, p) # one head more: another run's aspects

class ScoreShard(Artefact):
    def setup(self, made, t):
        shutil.copytree(made/'rm', t/'rm')
        shutil.copytree(made/'scored', t/'o')
    def target(self, t): return t/'o'/'shards'/'shard_00000.json'
    def read(self, made, t):
        return run_cli('score', '--reward-model', t/'rm', '--data', made/'data', '--out', t/'o', '--resume')
    def same(self, made, t): return same_pd(t/'o', made/'scored')
    def other_version(self, made, t, p): _json_edit(p, fingerprint='another-model-or-settings')

class ScoredDataset(Artefact):
    def setup(self, made, t): shutil.copytree(made/'scored', t/'s')
    def target(self, t): return t/'s'/'dataset'
    def read(self, made, t): return run_cli('select', '--scored', t/'s', '--ratio', 0.5, '--out', t/'sel')
    def same(self, made, t):
        return load_from_disk(str(t/'sel'/'dataset'))['id'] == load_from_disk(str(made/'sel'/'dataset'))['id']
    def arrow(self, p): return sorted(p.glob('*.arrow'))[0]
    def truncate(self, p):
        a = self.arrow(p)
        a.write_bytes(a.read_bytes()[:len(a.read_bytes()) // 2])
    def garble(self, p): self.arrow(p).write_bytes(GARBAGE)
    def wrong_shape(self, p): (p/'state.json').write_text('[1, 2, 3]')
    def other_version(self, made, t, p):
        d = load_from_disk(str(made/'scored'/'dataset'))
        shutil.rmtree(p)
        d.select(range(len(d) // 2)).save_to_disk(str(p)) # the dataset of another (smaller) scoring run
    def interrupted(self, made, t, p): os.replace(p, p.parent/'.dataset.tmp-k1ll3d')

class SelectionJson(Artefact):
    def setup(self, made, t): shutil.copytree(made/'sel', t/'sel')
    def target(self, t): return t/'sel'/'selection.json'
    def read(self, made, t): return run_cli('train', '--data', t/'sel', '--out', t/'r', *TRAIN_SETS)
    def same(self, made, t):
        a, b = (_adapter_state(r/'final'/'adapter_model.safetensors') for r in (t/'r', made/'run'))
        return all(torch.equal(a[k], b[k]) for k in a)
    def other_version(self, made, t, p): _json_edit(p, n_selected=json.loads(p.read_text())['n_selected'] + 3)

class TrainJsonl(SelectionJson):
    def target(self, t): return t/'sel'/'train.jsonl'
    def read(self, made, t): return run_cli('train', '--data', t/'sel'/'train.jsonl', '--out', t/'r', *TRAIN_SETS)
    def wrong_shape(self, p): p.write_text('[1, 2, 3]\n')
    def other_version(self, made, t, p): p.write_text(''.join(p.read_text().splitlines(True)[:-2]))
    def same(self, made, t): return (t/'r'/'final').is_dir()

class Checkpoint(SelectionJson):
    "The newest checkpoint of a run, read by `train --resume`; the resumed run must equal the uninterrupted one."
    def setup(self, made, t):
        shutil.copytree(made/'sel', t/'sel')
        shutil.copytree(made/'run', t/'r')
    def target(self, t): return t/'r'/'checkpoint-2'/'adapter_model.safetensors'
    def read(self, made, t): return run_cli('train', '--data', t/'sel', '--out', t/'r', '--resume', *TRAIN_SETS)
    def wrong_shape(self, p): (p.parent/'trainer_state.json').write_text('[1, 2, 3]')
    def other_version(self, made, t, p):
        from safetensors.torch import save_file
        save_file({k: torch.zeros(v.shape[0] * 2, *v.shape[1:]) for k, v in _adapter_state(p).items()}, str(p))
    def interrupted(self, made, t, p): os.replace(p.parent, p.parent.parent/'.checkpoint-2.tmp')

class RefCache(SelectionJson):
    "The reference log-prob cache of a run (`precompute_ref_logps`), read when training into the folder again."
    def setup(self, made, t):
        shutil.copytree(made/'sel', t/'sel')
        (t/'r').mkdir()
        shutil.copy(made/'runp'/'ref_logps.pt', t/'r'/'ref_logps.pt')
    def target(self, t): return t/'r'/'ref_logps.pt'
    def read(self, made, t):
        return run_cli('train', '--data', t/'sel', '--out', t/'r', '--overwrite', *TRAIN_SETS, '--set',
                       'precompute_ref_logps=true')
    def same(self, made, t):
        a, b = (_adapter_state(r/'final'/'adapter_model.safetensors') for r in (t/'r', made/'runp'))
        return all(torch.equal(a[k], b[k]) for k in a)
    def wrong_shape(self, p): torch.save([1, 2, 3], p)
    def other_version(self, made, t, p): # the cache of other pairs
        torch.save({'fingerprint': 'other-pairs', 'logps': torch.zeros(3, 2)}, p)

class RunInfo(Artefact):
    def setup(self, made, t): shutil.copytree(made/'run', t/'r')
    def target(self, t): return t/'r'/'run_info.json'
    def read(self, made, t): return run_cli('eval', '--run', t/'r', '--out', t/'eval.json')
    def same(self, made, t):
        return json.loads((t/'eval.json').read_text())['accuracy'] == json.loads((made/'eval.json').read_text())[
            'accuracy']
    def other_version(self, made, t, p): _json_edit(p, base_fingerprint='0' * 64)

class ProtocolFile(Artefact):
    fix_needed = False # a file the user writes: the line names the key to change
    def setup(self, made, t): shutil.copy(made/'p.json', t/'p.json')
    def target(self, t): return t/'p.json'
    def read(self, made, t): return run_cli('text-toy', '--protocol', t/'p.json')
    def other_version(self, made, t, p): # written before a field existed
        doc = json.loads(p.read_text())
        del doc['design']['heldout_pairs']
        p.write_text(json.dumps(doc))
    def interrupted(self, made, t, p): p.write_text('')

class DPOConfigFile(ProtocolFile):
    def setup(self, made, t):
        shutil.copy(made/'c.json', t/'c.json')
        shutil.copytree(made/'sel', t/'sel')
    def target(self, t): return t/'c.json'
    def read(self, made, t): return run_cli('train', '--data', t/'sel', '--config', t/'c.json', '--out', t/'r')
    def other_version(self, made, t, p): _json_edit(p, max_completion_length=64) # a TRL field we do not have

class ResultsFile(Artefact):
    "Read by `read_results` (a notebook renders its prose numbers from it): not a command, so called directly."
    def setup(self, made, t): shutil.copytree(made/'res', t/'res')
    def target(self, t): return t/'res'/'results.json'
    def read(self, made, t):
        from pd_align.experiments import read_results
        try:
            read_results(t/'res')
        except ArtefactError as e:
            return 2, '', f'read_results: error: {e}\n'
        return 0, '', ''
    def other_version(self, made, t, p): # an older layout: no per-seed runs
        doc = json.loads(p.read_text())
        del doc['runs']
        p.write_text(json.dumps(doc))

ARTEFACTS = dict(cache_meta=CacheMeta(), cache_shard=CacheShard(), reward_config=RewardConfig(),
                 reward_weights=RewardWeights(), head_report=HeadReport(), head_weights=HeadWeights(),
                 score_shard=ScoreShard(), scored_dataset=ScoredDataset(), selection_json=SelectionJson(),
                 train_jsonl=TrainJsonl(), checkpoint=Checkpoint(), ref_cache=RefCache(), run_info=RunInfo(),
                 protocol=ProtocolFile(),
                 dpo_config=DPOConfigFile(), results=ResultsFile())

def inject(a:Artefact, fault:str, made, t:Path, p:Path):
    "Damage `p` (the artefact's file, or folder) in one of the six ways."
    if fault == 'truncated':
        if hasattr(a, 'truncate'): return a.truncate(p)
        b = p.read_bytes()
        return p.write_bytes(b[:len(b) // 2])
    if fault == 'garbage':
        return a.garble(p) if hasattr(a, 'garble') else p.write_bytes(GARBAGE)
    if fault == 'wrong_shape':
        return a.wrong_shape(p)
    if fault == 'missing':
        return shutil.rmtree(p) if p.is_dir() else p.unlink()
    if fault == 'other_version':
        return a.other_version(made, t, p)
    return a.interrupted(made, t, p)

def observe(a:Artefact, res, made, t:Path, p:Path) -> str:
    "The outcome of reading a damaged artefact: 'healed', 'error', 'ok', or what went wrong instead."
    rc, out, err = res
    lines = [l for l in err.splitlines() if l.strip() and not re.search(r'\d+%\|', l)] # progress bars aside
    if 'Traceback' in err + out:
        return 'traceback: ' + err[-500:]
    named = lambda l: str(p) in l or str(p.parent) in l
    if rc == 2:
        if len(lines) != 1 or not named(lines[0]) or (a.fix_needed and 'fix:' not in lines[0]):
            return f'a bad error: {lines}'
        return 'error'
    if rc != 0:
        return f'exit {rc}: {err[-500:]}'
    if not a.same(made, t):
        return 'a silently wrong result'
    return 'healed' if any(named(l) for l in lines) else 'ok'

MATRIX = parse_matrix(__doc__)

@pytest.mark.parametrize('artefact, fault', sorted(MATRIX), ids=[f'{a}-{f}' for a, f in sorted(MATRIX)])
def test_fault_matrix(made, tmp_path, artefact, fault):
    "Each cell of the docstring's matrix, run: damage the artefact, read it back, and compare with the cell."
    a = ARTEFACTS[artefact]
    a.setup(made, tmp_path)
    p = a.target(tmp_path)
    assert p.exists(), p
    inject(a, fault, made, tmp_path, p)
    damaged = sorted(q for q in tmp_path.rglob('*') if q.is_file())
    res = a.read(made, tmp_path)
    got = observe(a, res, made, tmp_path, p)
    if os.environ.get('PD_ALIGN_MATRIX_LOG'): # the lines each cell printed, for the issue's note
        with open(os.environ['PD_ALIGN_MATRIX_LOG'], 'a') as f:
            f.write(json.dumps(dict(cell=f'{artefact}-{fault}', got=got, err=res[2])) + '\n')
    assert got == MATRIX[artefact, fault], (got, res[2])
    if got == 'error': # nothing the user has is deleted by a failed read
        assert all(q.exists() for q in damaged), [q for q in damaged if not q.exists()]

def test_matrix_covers_every_artefact_and_fault():
    "The table has one row per artefact and one column per fault: a new artefact cannot go untested."
    assert {a for a, _ in MATRIX} == set(ARTEFACTS)
    assert len(MATRIX) == len(ARTEFACTS) * len(FAULTS)
    assert {o for o in MATRIX.values()} <= set(OUTCOMES)


# ---------------------------------------------------------------------------------------------------------------------
# Issue 29: concurrent use, with two real processes.

import signal, time
from test_resume import spawn

FILL = '''
import json, os, sys, time
import torch
from pd_align import features as F
from datasets import load_from_disk
lm, tok = F.load_backbone(sys.argv[1])
world = load_from_disk(sys.argv[2])
compute = F._compute_shard
def slow(*a, **k): # holds the lock until the test creates the file argv[4] ('-': no wait)
    print('COMPUTING', flush=True)
    t0 = time.time()
    while sys.argv[4] != '-' and not os.path.exists(sys.argv[4]) and time.time() - t0 < 300:
        time.sleep(0.05)
    return compute(*a, **k)
F._compute_shard = slow
f = F.build_features(lm, tok, F.pair_items(world), sys.argv[3], layers=[1], progress=False)
print('STATS ' + json.dumps(f['stats']), flush=True)
torch.save(f['feats'], sys.argv[5])
'''

def wait_for(ready, proc, what, timeout=300):
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f'the child exited before {what}: ' + proc.log.read_text()[-2000:]
        assert time.time() - t0 < timeout, f'timed out waiting for {what}'
        time.sleep(0.05)

def stats_of(log:Path) -> dict: return json.loads(log.read_text().split('STATS ')[1].splitlines()[0])

def test_two_processes_fill_one_cache(made, tmp_path):
    "The second process waits for the lock, then reads the first one's shards: every text computed once, same features."
    cache = tmp_path/'cache'
    (tmp_path/'a').mkdir()
    (tmp_path/'b').mkdir()
    a = spawn(FILL, made/'lm', made/'data', cache, tmp_path/'go', tmp_path/'a.pt', cwd=tmp_path/'a')
    wait_for(lambda: 'COMPUTING' in a.log.read_text() and (cache/'.lock').exists(), a, 'the first process to compute')
    b = spawn(FILL, made/'lm', made/'data', cache, '-', tmp_path/'b.pt', cwd=tmp_path/'b')
    wait_for(lambda: 'waiting' in b.log.read_text(), b, 'the second process to wait for the lock')
    (tmp_path/'go').touch()
    assert a.wait(300) == 0 and b.wait(300) == 0, (a.log.read_text()[-2000:], b.log.read_text()[-2000:])
    sa, sb = stats_of(a.log), stats_of(b.log)
    assert sa['computed'] == sa['unique'] > 0 and sb['computed'] == 0 and sb['from_cache'] == sa['unique']
    assert f'feature cache {cache} is in use by process {a.pid}: waiting' in b.log.read_text()
    fa, fb = torch.load(tmp_path/'a.pt'), torch.load(tmp_path/'b.pt')
    assert all(torch.equal(fa[k], fb[k]) for k in fa) and not (cache/'.lock').exists()

SCORE = '''
import sys, time
import pd_align.cli as C
def slow(*a, **k):
    print('SCORING', flush=True)
    time.sleep(600)
C.score_cli = slow
C.main(sys.argv[1:])
'''

def test_score_refuses_a_folder_another_score_writes(made, tmp_path):
    "`score --resume` into a folder another `score` writes: one line naming the lock; after a kill, the stale lock goes."
    out = tmp_path/'o'
    args = ['score', '--reward-model', made/'rm', '--data', made/'data', '--out', out]
    a = spawn(SCORE, *args, cwd=tmp_path)
    wait_for(lambda: 'SCORING' in a.log.read_text(), a, 'the first score to start')
    line = one_line_error(run_cli(*args, '--resume'), f'{out/".lock"}: --out {out}', f'in use by process {a.pid}',
                          'fix: wait for it to finish')
    assert a.poll() is None and (out/'.lock').exists() and 'pd-align score: error:' in line
    a.send_signal(signal.SIGKILL)
    a.wait()
    rc, _, err = run_cli(*args, '--resume')
    assert rc == 0 and f'a stale lock (process {a.pid} no longer runs) was removed' in err, err
    assert same_pd(out, made/'scored') and not (out/'.lock').exists()


def test_train_refuses_a_folder_another_train_writes(made, tmp_path):
    "`train --resume` into a folder another process holds: one line naming the lock; once it is gone, the run goes on."
    import json, socket, subprocess
    out = tmp_path/'run'
    shutil.copytree(made/'run', out)   # a finished run with its checkpoints: --resume continues it
    holder = subprocess.Popen(['sleep', '60'])
    (out/'.lock').write_text(json.dumps(dict(pid=holder.pid, host=socket.gethostname(), created=time.time())))
    args = ['train', '--data', made/'sel', '--out', out, *TRAIN_SETS, '--resume']
    try:
        line = one_line_error(run_cli(*args), f'{out/".lock"}: --out {out}', f'in use by process {holder.pid}')
        assert 'another pd-align train writes it' in line
    finally:
        holder.kill()
        holder.wait()
    rc, _, err = run_cli(*args)
    assert rc == 0 and f'a stale lock (process {holder.pid} no longer runs) was removed' in err, err
    assert not (out/'.lock').exists() and (out/'log_history.json').exists()


def test_the_three_cases_of_the_issue(made, tmp_path):
    "Issue 29's Why, as a new user met it: each now ends in a healed cache or one line naming the file."
    heads_copy(made, tmp_path)
    shard = sorted((tmp_path/'cache').glob('shard-*.pt'))[0]
    shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2]) # cut (the issue: a 1 MB cut of a larger one)
    rc, out, err = score_heads(made, tmp_path)
    assert rc == 0 and f'pd-align score: feature cache shard {shard}: damaged or not a feature shard' in err, err
    assert 'removed, its texts are recomputed' in err and same_pd(tmp_path/'o', made/'fscored')
    assert f"features: {json.loads((tmp_path/'o'/'score.json').read_text())['features']['computed']} computed" in out
    (tmp_path/'cache'/'meta.json').write_text('{broken')
    shutil.rmtree(tmp_path/'o')
    rc, out, err = score_heads(made, tmp_path)
    assert rc == 0 and 'features: 0 computed' in out and same_pd(tmp_path/'o', made/'fscored') # the shard is kept
    assert (f"pd-align score: feature cache {tmp_path/'cache'/'meta.json'}: not valid JSON (Expecting property name "
            "enclosed in double quotes at line 1 column 2); rewritten (each shard is kept only if its own fingerprint "
            "matches)\n") in err, err
    p = tmp_path/'p.json'
    p.write_text('pre-registered: seeds 1 and 2\n')
    one_line_error(run_cli('text-toy', '--protocol', p),
                   f'pd-align text-toy: error: {p}: not valid JSON (Expecting value at line 1 column 1)')
    p.write_text('{"design": {"seeds": [1, 2]}, "bogus": 1}')
    one_line_error(run_cli('text-toy', '--protocol', p), f"pd-align text-toy: error: {p}: missing keys 'design.shares'")
