"""`pd-align` as a user meets it: bad arguments and bad inputs give one line on stderr, a non-zero exit code and no
traceback (checked both as a subprocess and in-process through `pd_align.cli.main`); the happy paths write what
they promise."""
import contextlib, io, json, math, os, subprocess, sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from conftest import run_cli
from pd_align.cli import main
from pd_align.data import from_records
from pd_align.io import save_dataset_atomic, read_jsonl

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore'}
N = 20

def pd_values(n=N): return [round(math.sin(3 * i) * 2, 4) for i in range(n)]  # distinct, unsorted

@pytest.fixture(scope='module')
def scored(tmp_path_factory):
    "A scored fine-grained dataset: `<folder>/dataset` (save_to_disk) with a `pd` column, as `pd-align score` writes it."
    folder = tmp_path_factory.mktemp('scored')
    recs = [dict(id=f'pair-{i}', prompt=f'prompt {i} ✓', chosen=f'good answer {i}', rejected=f'bad answer {i}',
                 aspect=['helpfulness', 'honesty'][i % 2], chosen_scores={'helpfulness': 2.0 + i, 'honesty': 1.0},
                 rejected_scores={'helpfulness': 1.0 + i, 'honesty': 0.0}, source='test') for i in range(N)]
    ds = from_records(recs, strict=False).add_column('pd', pd_values())
    save_dataset_atomic(ds, folder / 'dataset')
    return folder

def cli(*args, cwd):
    "Run `pd-align` as a subprocess: (exit code, stdout, stderr)."
    r = subprocess.run(['pd-align', *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)
    return r.returncode, r.stdout, r.stderr

cli_inproc = run_cli

def assert_one_line_error(rc, stderr, *words):
    "Non-zero exit, exactly one non-empty stderr line, no traceback, the line mentions `words`."
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert rc not in (0, None), (rc, stderr)
    assert 'Traceback' not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith('pd-align'), lines
    for w in words: assert w in lines[0], (w, lines[0])

# ----------------------------------------------------------------------------- errors, as a subprocess
def test_errors_subprocess(scored, tmp_path):
    "The main user mistakes, each through the real `pd-align` script."
    (tmp_path / 'full').mkdir(); (tmp_path / 'full' / 'keep.txt').write_text('mine')
    cases = [
        (['select', '--scored', scored, '--out', tmp_path / 'o', '--method', 'bogus'], ['invalid choice', 'bogus']),
        (['select', '--scored', scored, '--out', tmp_path / 'o', '--ratio', '0'], ['ratio', '(0, 1]']),
        (['select', '--scored', scored, '--out', tmp_path / 'o', '--ratio', '1.5'], ['ratio', '1.5']),
        (['select', '--scored', tmp_path / 'nope', '--out', tmp_path / 'o'], ['nope', 'no such file']),
        (['select', '--scored', scored, '--out', tmp_path / 'full'], ['full', 'not empty', '--overwrite']),
        (['frobnicate'], ['invalid choice']),
        (['select', '--out', tmp_path / 'o'], ['--scored']),
    ]
    for args, words in cases:
        rc, out, err = cli(*args, cwd=tmp_path)
        assert_one_line_error(rc, err, *words)
    assert (tmp_path / 'full' / 'keep.txt').read_text() == 'mine' and os.listdir(tmp_path / 'full') == ['keep.txt']
    assert not (tmp_path / 'o').exists() or not os.listdir(tmp_path / 'o')

# ----------------------------------------------------------------------------- errors, in-process
@pytest.mark.parametrize('ratio', ['0', '-0.1', '1.0000001', '2', 'nan', 'inf', '-inf', '1e-400', 'abc', '', '0x1'])
def test_bad_ratio(scored, tmp_path, ratio):
    "Every ratio outside (0, 1] (or not a number) is refused before anything is read or written."
    rc, out, err = cli_inproc('select', '--scored', scored, '--out', tmp_path / 'o', '--ratio', ratio)
    assert_one_line_error(rc, err, 'ratio')
    assert not (tmp_path / 'o').exists()

@pytest.mark.parametrize('method', ['PD', 'pd ', 'dfpo', 'oracle', ''])
def test_unknown_method(scored, tmp_path, method):
    rc, out, err = cli_inproc('select', '--scored', scored, '--out', tmp_path / 'o', '--method', method)
    assert_one_line_error(rc, err, 'invalid choice')

def test_bad_inputs_in_process(scored, tmp_path):
    "Missing files, unreadable or wrong inputs, a file where the output folder should be: one line each."
    (tmp_path / 'garbage.jsonl').write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe')
    (tmp_path / 'nopd.jsonl').write_text(json.dumps(dict(id='a', prompt='p', chosen='x', rejected='y', aspect='h')) + '\n')
    (tmp_path / 'emptydir' / 'dataset').mkdir(parents=True)
    (tmp_path / 'afile').write_text('x')
    (tmp_path / 'full').mkdir(); (tmp_path / 'full' / 'x').write_text('x')
    cases = [
        (['select', '--scored', tmp_path / 'missing', '--out', tmp_path / 'o'], ['missing']),
        (['select', '--scored', tmp_path / 'garbage.jsonl', '--out', tmp_path / 'o'], ['garbage.jsonl']),
        (['select', '--scored', tmp_path / 'nopd.jsonl', '--out', tmp_path / 'o'], ['pd']),
        (['select', '--scored', tmp_path / 'emptydir', '--out', tmp_path / 'o'], []),
        (['select', '--scored', scored, '--out', tmp_path / 'afile'], ['afile', 'not a folder']),
        (['select', '--scored', scored, '--out', tmp_path / 'full'], ['not empty']),
        (['toy', '--out', tmp_path / 'full'], ['not empty']),
        (['toy', '--ratio', '0'], ['ratio']),
        (['toy', '--seeds', 'two'], ['--seeds']),
        (['toy', '--shares', 'low'], ['shares']),
        (['toy', '--policy', 'lm'], ['--policy']),
    ]
    for args, words in cases:
        rc, out, err = cli_inproc(*args)
        assert_one_line_error(rc, err, *words)

@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    "Small inputs for the pipeline commands' error paths."
    d = tmp_path_factory.mktemp('inputs')
    (d / 'pairs.jsonl').write_text(''.join(json.dumps(dict(id=f'r{i}', prompt=f'p{i}', chosen=f'c{i}', rejected=f'x{i}', aspect='h',
                                                          pd=0.1 * i)) + '\n' for i in range(8)))
    (d / 'bad.yaml').write_text('beta: -1\n'); (d / 'list.yaml').write_text('- 1\n- 2\n')
    (d / 'typo.json').write_text('{"betta": 0.1}'); (d / 'cfg.txt').write_text('x')
    return d

PIPELINE_ERRORS = [  # (argv with {d} = inputs folder, {t} = a fresh folder; words the one line must contain)
    ('train --data {d}/nope.jsonl --out {t}/o', ['nope.jsonl', 'no such file']),
    ('train --data {d}/pairs.jsonl --out {t}/o --set beta', ['--set beta', 'field=value']),
    ('train --data {d}/pairs.jsonl --out {t}/o --set betta=1', ['betta']),
    ('train --data {d}/pairs.jsonl --out {t}/o --set beta=abc', ['beta', 'abc']),
    ('train --data {d}/pairs.jsonl --out {t}/o --set max_steps=0', ['max_steps']),
    ('train --data {d}/pairs.jsonl --out {t}/o --config {d}/missing.yaml', ['missing.yaml']),
    ('train --data {d}/pairs.jsonl --out {t}/o --config {d}/bad.yaml', ['beta']),
    ('train --data {d}/pairs.jsonl --out {t}/o --config {d}/list.yaml', ['mapping']),
    ('train --data {d}/pairs.jsonl --out {t}/o --config {d}/typo.json', ['betta']),
    ('train --data {d}/pairs.jsonl --out {t}/o --config {d}/cfg.txt', ['.yaml']),
    ('train --data {d} --out {d}', ['overlaps']),
    ('score --data {d}/pairs.jsonl --out {t}/o --reward-model {d}', ['reward model']),
    ('reward --data {d}/nope.jsonl --out {t}/o', ['no such file']),
    ('reward --data {d}/pairs.jsonl --data {d}/pairs.jsonl --out {t}/o', ['distinct aspect names']),
    ('reward --data {d}/pairs.jsonl --out {t}/o --on-error ignore', ['invalid choice']),
    ('reward --data {d}/pairs.jsonl --out {t}/o --limit x', ['--limit']),
    ('eval --run {d}/nope --data {d}/pairs.jsonl', ['no such folder']),
    ('eval --run {d} --data {d}/pairs.jsonl', ['run_info.json']),
]

@pytest.mark.parametrize('argv,words', PIPELINE_ERRORS, ids=[a.split(' --out')[0].replace('{d}/', '')[:40] for a, _ in PIPELINE_ERRORS])
def test_pipeline_command_errors(inputs, tmp_path, argv, words):
    "reward/score/train/eval: missing files, bad --set/--config values, overlapping --out, bad choices: one line each."
    rc, out, err = cli_inproc(*argv.format(d=inputs, t=tmp_path).split())
    assert_one_line_error(rc, err, *words)
    assert sorted(p.name for p in inputs.iterdir()) == ['bad.yaml', 'cfg.txt', 'list.yaml', 'pairs.jsonl', 'typo.json']

def test_out_below_a_file_is_a_one_line_error(scored, tmp_path):
    """`--out somefile/sub` (or an unwritable place) is a user mistake too.
    Regression test for reliability bug B5 (`prepare_out`'s mkdir raised NotADirectoryError with a traceback; fixed in 392998c)."""
    (tmp_path / 'afile').write_text('x')
    try: rc, out, err = cli_inproc('select', '--scored', scored, '--out', tmp_path / 'afile' / 'sub')
    except OSError as e: pytest.fail(f'uncaught {type(e).__name__}: {e}')
    assert_one_line_error(rc, err, 'afile')

def test_out_equal_to_scored_never_destroys_the_input(scored, tmp_path):
    """`--out` = the `--scored` folder with `--overwrite`: the scored dataset must not be replaced by the selection.
    Regression test for reliability bug B6 (`cmd_select` wrote `<out>/dataset` = the input dataset; fixed in 392998c)."""
    import shutil
    src = tmp_path / 'run'
    shutil.copytree(scored, src)
    rc, out, err = cli_inproc('select', '--scored', src, '--out', src, '--overwrite', '--ratio', '0.5')
    assert len(load_from_disk(str(src / 'dataset'))) == N, 'the scored input was overwritten by the selection'
    if rc: assert_one_line_error(rc, err, '--out')

# ----------------------------------------------------------------------------- happy paths
def test_select_happy_path_subprocess(scored, tmp_path):
    "`pd-align select` writes dataset/, train.jsonl (TRL columns + pd + id) and selection.json; load_from_disk reads it."
    rc, out, err = cli('select', '--scored', scored, '--out', tmp_path / 'sel', '--ratio', '0.25', cwd=tmp_path)
    assert rc == 0, err
    assert 'Traceback' not in err and 'selected 5 of 20' in out
    sel = tmp_path / 'sel'
    assert sorted(os.listdir(sel)) == ['dataset', 'selection.json', 'train.jsonl']
    ds = load_from_disk(str(sel / 'dataset'))
    pd = pd_values()
    want = sorted(range(N), key=lambda i: pd[i])[:5]  # ceil(0.25 * 20) most negative PD
    assert sorted(ds['orig_index']) == sorted(want) and ds['id'] == [f'pair-{i}' for i in sorted(want)]
    assert ds['pd'] == [pd[i] for i in sorted(want)]
    rows = read_jsonl(sel / 'train.jsonl')
    assert len(rows) == 5 and all({'prompt', 'chosen', 'rejected', 'pd', 'id'} <= set(r) for r in rows)
    assert [r['id'] for r in rows] == ds['id'] and rows[0]['prompt'].endswith('✓')
    assert rows[0]['chosen'].startswith('good') and rows[0]['rejected'].startswith('bad')
    summary = json.loads((sel / 'selection.json').read_text())
    assert summary['n_selected'] == 5 and summary['n_scored'] == N and summary['method'] == 'pd'
    assert math.isclose(summary['mean_pd_selected'], sum(pd[i] for i in want) / 5)
    # the folder is now non-empty: refused without --overwrite (outputs untouched), accepted with it
    before = (sel / 'train.jsonl').read_bytes()
    rc, out, err = cli_inproc('select', '--scored', scored, '--out', sel, '--ratio', '0.5')
    assert_one_line_error(rc, err, 'not empty')
    assert (sel / 'train.jsonl').read_bytes() == before
    rc, out, err = cli_inproc('select', '--scored', scored, '--out', sel, '--ratio', '0.5', '--overwrite', '--method', 'random')
    assert rc == 0 and len(load_from_disk(str(sel / 'dataset'))) == 10 and len(read_jsonl(sel / 'train.jsonl')) == 10
    assert sorted(p for p in os.listdir(sel)) == ['dataset', 'selection.json', 'train.jsonl']  # no temp leftovers

@pytest.mark.parametrize('method,ratio,n', [('full', '0.3', N), ('pd_high', '0.1', 2), ('pd', '1', N)])
def test_select_other_methods(scored, tmp_path, method, ratio, n):
    rc, out, err = cli_inproc('select', '--scored', scored, '--out', tmp_path / 's', '--method', method, '--ratio', ratio)
    assert rc == 0, err
    assert len(load_from_disk(str(tmp_path / 's' / 'dataset'))) == n

def test_select_per_aspect(scored, tmp_path):
    rc, out, err = cli_inproc('select', '--scored', scored, '--out', tmp_path / 's', '--ratio', '0.25', '--per-aspect')
    assert rc == 0, err
    ds = load_from_disk(str(tmp_path / 's' / 'dataset'))
    counts = sorted([list(ds['aspect']).count('helpfulness'), list(ds['aspect']).count('honesty')])
    assert counts == [2, 3]  # the global budget ceil(0.25 * 20) = 5, split by largest remainder (2.5 + 2.5)

def test_toy_subprocess(tmp_path):
    "`pd-align toy` with a small setting writes results.json, results.csv and the PNG plots."
    rc, out, err = cli('toy', '--quick', '--seeds', '2', '--out', tmp_path / 'toy', cwd=tmp_path)
    assert rc == 0, err
    files = set(os.listdir(tmp_path / 'toy'))
    assert {'results.json', 'results.csv'} <= files and any(f.endswith('.png') for f in files), files
    res = json.loads((tmp_path / 'toy' / 'results.json').read_text())
    assert res, 'empty results.json'
    import pandas as pd
    table = pd.read_csv(tmp_path / 'toy' / 'results.csv')
    assert len(table) and {'method', 'gold'} <= set(table.columns)
    assert 'pd' in set(table['method']) and sorted(table['share'].unique()) == [0.1, 0.3]
    assert 'key: full = ALL' in out and ' ± ' in out and ' 800 ' in out and '800.0' not in out  # counts are integers
    assert not [f for f in files if f.startswith('.')], files  # no temp files left
    assert set(table['policy']) == {'tabular', 'shared'}  # default --policy both: the two policies on the same data
    assert 'held-out prompts' in out and {'conflict_share_shared.png', 'curve_ends.png', 'curves.csv'} <= files, files


def test_toy_policy_shared(tmp_path):
    "`pd-align toy --policy shared`: only the log-linear policy, every run converged by the stopping rule."
    rc, out, err = cli_inproc('toy', '--quick', '--seeds', '2', '--shares', '0.2', '--policy', 'shared',
                              '--out', tmp_path / 'toy')
    assert rc == 0, err
    import pandas as pd
    table = pd.read_csv(tmp_path / 'toy' / 'results.csv')
    assert set(table['policy']) == {'shared'} and (table['converged'] == 1.0).all() and (table['n_seeds'] == 2).all()
