"""A newcomer's path through `pd-align` (issue 16): numbers with n and an interval, held-out evaluation by default,
a warning when training did not learn, type-checked `--set`, bad JSON lines skipped and counted, no empty `--out`
folder left behind by any failed command, `--limit` that stops reading, run folders without a copy of the base model
but with a model card, and quiet output (`--quiet`, `progress=False`, no deprecated transformers API)."""
import contextlib, io, json, math, re, warnings
from pathlib import Path

import pytest

import pd_align.io
from conftest import FIXTURES, run_cli
from pd_align.cli import main
from pd_align.data import load_local, from_records
from pd_align.io import save_dataset_atomic, write_jsonl_atomic
from pd_align.train import load_run, learning_detected
from pd_align.synthetic import synthetic_pairs, DEMO

UF = FIXTURES / 'ultrafeedback.jsonl'
BAR = re.compile(r'\d+%\|') # what a tqdm bar draws


cli = run_cli

def ok(*args):
    rc, out, err = cli(*args)
    assert rc == 0, (args, err)
    return out, err

def one_line_error(rc, err, *words):
    lines = [l for l in err.splitlines() if l.strip() and not BAR.search(l)]
    assert rc == 2 and 'Traceback' not in err and len(lines) == 1, (rc, err)
    for w in words: assert w in lines[0], (w, lines[0])


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
    "reward -> score -> select (half) -> train, on the UltraFeedback fixture; the folders and the reward command's stdout."
    d = tmp_path_factory.mktemp('pipe')
    reward_out, _ = ok('reward', '--data', UF, '--out', d / 'rm', '--epochs', 2)
    ok('score', '--data', UF, '--reward-model', d / 'rm', '--out', d / 'scored')
    ok('select', '--scored', d / 'scored', '--ratio', 0.5, '--out', d / 'subset')
    _, train_err = ok('train', '--data', d / 'subset', '--out', d / 'run', '--set', 'max_steps=2', '--set', 'batch_size=2')
    return dict(dir=d, reward_out=reward_out, train_err=train_err)


# item 5 ------------------------------------------------------------------------------------------------------------
def test_reward_prints_n_and_a_95_interval_per_aspect(pipeline):
    lines = [l.strip() for l in pipeline['reward_out'].splitlines() if l.startswith('  ')]
    aspects = json.loads((pipeline['dir'] / 'rm' / 'reward_config.json').read_text())['aspects']
    assert [l.split(':')[0] for l in lines] == aspects
    for l in lines:
        m = re.fullmatch(r'\S+: (\d\.\d{3}) \(95% CI (\d\.\d{3})-(\d\.\d{3}), n=(\d+); chance 0\.5 (inside|outside) the interval\)', l)
        assert m, l
        p, lo, hi, n = float(m[1]), float(m[2]), float(m[3]), int(m[4])
        assert n >= 1 and lo <= p <= hi and (m[5] == 'inside') == (lo <= 0.5 <= hi)


# item 6 ------------------------------------------------------------------------------------------------------------
def test_eval_uses_held_out_pairs_by_default(pipeline):
    d = pipeline['dir']
    out, err = ok('eval', '--run', d / 'run', '--out', d / 'eval.json')
    m = json.loads((d / 'eval.json').read_text())
    n_scored, n_train = len(load_local(d / 'scored' / 'dataset')), len(load_local(d / 'subset' / 'dataset'))
    assert m['n'] == n_scored - n_train > 0 and m['n_train_overlap'] == 0 and not m['in_sample']
    lo, hi = m['accuracy_ci']
    assert lo <= m['accuracy'] <= hi
    assert f"n={m['n']}" in out and '95% CI' in out and 'training pairs' in out

def test_eval_refuses_or_flags_training_pairs(pipeline):
    d = pipeline['dir']
    rc, _, err = cli('eval', '--run', d / 'run', '--data', d / 'subset', '--out', d / 'e1.json')
    one_line_error(rc, err, 'were used to train this run')
    assert not (d / 'e1.json').exists()
    # the scored set mixes both: training pairs are left out with a loud warning
    out, err = ok('eval', '--run', d / 'run', '--data', d / 'scored', '--out', d / 'e2.json')
    m = json.loads((d / 'e2.json').read_text())
    n_train = len(load_local(d / 'subset' / 'dataset'))
    assert 'WARNING' in err and f'{n_train} of the' in err and m['n_train_overlap'] == n_train
    assert m['n'] == len(load_local(d / 'scored' / 'dataset')) - n_train
    # --include-train-pairs keeps them, and says the numbers are in-sample
    out, err = ok('eval', '--run', d / 'run', '--data', d / 'subset', '--include-train-pairs', '--out', d / 'e3.json')
    assert json.loads((d / 'e3.json').read_text())['in_sample'] and 'IN-SAMPLE' in out

def test_eval_reward_model_win_rate(pipeline):
    d = pipeline['dir']
    out, _ = ok('eval', '--run', d / 'run', '--reward-model', d / 'rm', '--n-prompts', 3, '--max-new-tokens', 4,
                '--out', d / 'e4.json')
    w = json.loads((d / 'e4.json').read_text())['reward_win']
    assert w['n'] == 3 and 0 <= w['win_rate'] <= 1 and w['win_rate_ci'][0] <= w['win_rate'] <= w['win_rate_ci'][1]
    assert w['aspects'] == json.loads((d / 'rm' / 'reward_config.json').read_text())['aspects']
    assert 'proxy-reward win rate' in out and 'n=3' in out


# item 7 ------------------------------------------------------------------------------------------------------------
def test_train_says_when_no_learning_was_detected(pipeline, tmp_path):
    # 2 steps at the default learning rate leave loss at log 2 and margin at 0: the command says so
    assert 'no learning detected' in pipeline['train_err']
    hist = json.loads((pipeline['dir'] / 'run' / 'log_history.json').read_text())
    assert abs(hist[-1]['loss'] - math.log(2)) < 0.005 and abs(hist[-1]['margin']) < 0.01
    # a run that learns: no such warning
    write_jsonl_atomic(tmp_path / 'pairs.jsonl', synthetic_pairs(8, seed=1, **DEMO))
    _, err = ok('train', '--data', tmp_path / 'pairs.jsonl', '--out', tmp_path / 'run', '--set', 'max_steps=6',
                '--set', 'batch_size=8', '--set', 'lr=5e-2', '--set', 'beta=0.5')
    hist = json.loads((tmp_path / 'run' / 'log_history.json').read_text())
    assert learning_detected(hist)[0] and abs(hist[-1]['margin']) >= 0.01, hist[-1]
    assert 'no learning detected' not in err


# item 9 ------------------------------------------------------------------------------------------------------------
def test_set_is_type_checked_at_parse_time(tmp_path, monkeypatch):
    write_jsonl_atomic(tmp_path / 'pairs.jsonl', synthetic_pairs(4, **DEMO))
    import pd_align.train
    def no_model(*a, **k): raise AssertionError('the model must not be built')
    monkeypatch.setattr(pd_align.train, 'load_policy', no_model)
    for item, words in [('max_steps=abc', ['--set max_steps=abc', 'max_steps must be int']),
                        ('lr=fast', ['--set lr=fast', 'lr must be float']),
                        ('betta=0.1', ["unknown DPOConfig field 'betta'"]),
                        ('batch_size=100', ['8 pairs are fewer than one optimizer step', 'batch_size 100'])]:
        rc, _, err = cli('train', '--data', tmp_path / 'pairs.jsonl', '--out', tmp_path / 'run', '--set', item)
        one_line_error(rc, err, *words)
        assert not (tmp_path / 'run').exists()


# item 10 -----------------------------------------------------------------------------------------------------------
def test_on_error_skip_skips_and_counts_a_malformed_json_line(tmp_path):
    rows = [json.dumps(r) for r in synthetic_pairs(6, **DEMO)]
    rows.insert(3, '{"prompt": "cut off')
    (tmp_path / 'pairs.jsonl').write_text('\n'.join(rows) + '\n')
    rc, _, err = cli('reward', '--data', 'polite=' + str(tmp_path / 'pairs.jsonl'), '--out', tmp_path / 'rm')
    one_line_error(rc, err, 'line 4: invalid JSON')
    _, err = ok('reward', '--data', tmp_path / 'pairs.jsonl', '--on-error', 'skip', '--out', tmp_path / 'rm', '--quiet')
    assert 'skipped 1 bad records (invalid_json: 1)' in err


# item 12 -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def unscored(tmp_path_factory):
    "A datasets folder without a `pd` column (select --method pd fails on it) and a small TRL-style JSONL."
    d = tmp_path_factory.mktemp('unscored')
    nopd = from_records(synthetic_pairs(4, **DEMO), strict=False)
    save_dataset_atomic(nopd.remove_columns(['pd', 'chosen_scores', 'rejected_scores']), d / 'nopd' / 'dataset')
    write_jsonl_atomic(d / 'pairs.jsonl', synthetic_pairs(4, **DEMO))
    return d

FAILING = { # each command, made to fail after it created its --out folder
    'toy': lambda d, out: ['toy', '--seeds', 1, '--shares', 'bogus', '--out', out],
    'reward': lambda d, out: ['reward', '--data', UF, '--base', d / 'no-such-model', '--out', out],
    'score': lambda d, out: ['score', '--data', UF, '--reward-model', d / 'no-such-rm', '--out', out],
    'select': lambda d, out: ['select', '--scored', d / 'nopd', '--method', 'pd', '--out', out],
    'train': lambda d, out: ['train', '--data', d / 'pairs.jsonl', '--model', d / 'no-such-model', '--out', out],
    'eval': lambda d, out: ['eval', '--run', d / 'no-such-run', '--out', Path(out) / 'eval.json'],
    'text-toy': lambda d, out: ['text-toy', '--quick', '--protocol', d / 'no-such-protocol.json', '--out', out],
    'text-world': lambda d, out: ['text-world', '--seeds', 1, '--shares', 'bogus', '--out', out],
}

@pytest.mark.parametrize('command', sorted(FAILING))
def test_failed_command_leaves_no_out_folder_and_keeps_existing_ones(command, unscored, tmp_path):
    new = tmp_path / 'new' / 'out' # two levels created by the command
    rc, _, err = cli(*FAILING[command](unscored, new))
    assert rc == 2, err
    assert not (tmp_path / 'new').exists(), f'{command} left {sorted(p.name for p in tmp_path.rglob("*"))}'
    mine = tmp_path / 'mine'
    mine.mkdir()
    rc, _, err = cli(*FAILING[command](unscored, mine))
    assert rc == 2 and mine.is_dir(), err # a folder that existed before is never removed

def test_every_subcommand_is_covered_by_the_leftover_test():
    from pd_align.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == 'command')
    missing = set(sub.choices) - set(FAILING)
    assert not missing, f'add a failing case for {missing} to FAILING'


# item 14 -----------------------------------------------------------------------------------------------------------
def test_limit_stops_reading(tmp_path, monkeypatch):
    rows = [json.dumps(r) for r in synthetic_pairs(100, **DEMO)]
    rows.insert(150, '{broken') # never reached with --limit 20
    (tmp_path / 'pairs.jsonl').write_text('\n'.join(rows) + '\n')
    parsed = []
    parse = pd_align.io._parse_line
    monkeypatch.setattr(pd_align.io, '_parse_line', lambda raw, *a: parsed.append(1) or parse(raw, *a))
    ds = load_local(tmp_path / 'pairs.jsonl', limit=20)
    assert len(ds) == 20 and len(parsed) == 20 # 20 lines parsed of 201
    parsed.clear()
    assert len(load_local(FIXTURES / 'ultrafeedback.jsonl', limit=2)) == 2 and len(parsed) <= 2 # a row gives up to 4 pairs
    _, err = ok('reward', '--data', tmp_path / 'pairs.jsonl', '--limit', 20, '--out', tmp_path / 'rm', '--quiet')
    assert 'invalid JSON' not in err


# item 13 -----------------------------------------------------------------------------------------------------------
def test_run_folder_keeps_no_base_copy_and_has_a_model_card(pipeline):
    run = pipeline['dir'] / 'run'
    assert not (run / 'base').exists() and (run / 'final' / 'adapter_model.safetensors').exists()
    assert not list((run / 'final').glob('model*.safetensors')) # only the adapter
    info = json.loads((run / 'run_info.json').read_text())
    assert info['base_model'] == 'tiny' and len(info['base_fingerprint']) == 64
    card = (run / 'final' / 'README.md').read_text()
    for want in ['**Base model**: `tiny`', str(pipeline['dir'] / 'subset'), 'method `pd`, ratio 0.5', 'Final training metrics',
                 '| max_steps | `2` |', 'load_run']:
        assert want in card, want
    assert '[More Information Needed]' not in card # not peft's blank template
    policy, tok, ref, cfg = load_run(run)
    assert cfg.max_steps == 2 and ref is None

def test_named_base_is_loaded_by_path_and_checked(tmp_path):
    from pd_align.tiny import tiny_causal_lm, train_tokenizer
    from pd_align.cli import train_cli
    rows = synthetic_pairs(4, **DEMO)
    tok = train_tokenizer([r[k] for r in rows for k in ('prompt', 'chosen', 'rejected')], vocab_size=300)
    tiny_causal_lm(len(tok), seed=1).save_pretrained(tmp_path / 'base'); tok.save_pretrained(tmp_path / 'base')
    write_jsonl_atomic(tmp_path / 'pairs.jsonl', rows)
    for lora in ('16', 'null'): # LoRA: only the adapter is kept; full fine-tune: only the tuned weights
        run = tmp_path / f'run-{lora}'
        train_cli(tmp_path / 'pairs.jsonl', str(tmp_path / 'base'), out=run, overrides={'max_steps': 1, 'batch_size': 4, 'lora_r': lora})
        assert json.loads((run / 'run_info.json').read_text())['base_model'] == str((tmp_path / 'base').resolve())
        assert not (run / 'base').exists()
        policy, _, ref, _ = load_run(run)
        assert (ref is None) == (lora == '16')
    tiny_causal_lm(len(tok), seed=2).save_pretrained(tmp_path / 'base') # the base changes under the runs' feet
    with pytest.raises(ValueError, match='is not the one this run started from'): load_run(tmp_path / 'run-16')


# item 16 -----------------------------------------------------------------------------------------------------------
def test_quiet_and_progress_false_draw_no_bars(pipeline, tmp_path):
    d = pipeline['dir']
    _, err = ok('eval', '--run', d / 'run', '--data', d / 'scored', '--batch-size', 1, '--out', tmp_path / 'e.json')
    assert 'eval' in err and BAR.search(err) # pd-align eval shows its progress
    _, err = ok('--quiet', 'eval', '--run', d / 'run', '--data', d / 'scored', '--batch-size', 1, '--out', tmp_path / 'e.json')
    assert not BAR.search(err), err
    _, err = ok('select', '--scored', d / 'scored', '--ratio', 0.5, '--out', tmp_path / 's', '--quiet')
    assert not BAR.search(err), err
    from pd_align.cli import train_reward_cli, score_cli
    ds = load_local(UF)
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        train_reward_cli(ds, None, tmp_path / 'rm', progress=False)
        score_cli(ds, tmp_path / 'rm', tmp_path / 'scored', progress=False)
    assert not BAR.search(buf.getvalue()), buf.getvalue()

def test_no_deprecated_gradient_checkpointing_property(tmp_path):
    "peft reads `is_gradient_checkpointing` when it wraps a model; our wrappers answer through the current API."
    from pd_align.cli import train_cli, eval_cli, train_reward_cli
    write_jsonl_atomic(tmp_path / 'pairs.jsonl', synthetic_pairs(4, **DEMO))
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*is_gradient_checkpointing.*')
        train_cli(tmp_path / 'pairs.jsonl', 'tiny', out=tmp_path / 'run', overrides={'max_steps': 1, 'batch_size': 4})
        eval_cli(tmp_path / 'run', tmp_path / 'pairs.jsonl')
        train_reward_cli(load_local(UF), None, tmp_path / 'rm', lora=True, progress=False)
