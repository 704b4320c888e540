"""`load_hub` over tens of thousands of hub rows: one bad row is skipped and counted, not fatal, and the counts are printed
(`datasets.load_dataset` is replaced by the fixture rows in the real schema: no network)."""
import collections, logging, shutil, time
from pathlib import Path
import pytest
import datasets
from conftest import FIXTURES
from pd_align.data import (load_hub, load_local, RecordError, DataUnavailable, MIRROR_ENV, mirror_file, from_ultrafeedback,
                           from_helpsteer2)
from pd_align.io import read_jsonl


@pytest.fixture
def hub(monkeypatch):
    "Serve fixture rows (plus two broken ones) as if from the hub; returns the calls made."
    calls = []
    def fake(repo, split='train', **kw):
        calls.append((repo, split, kw))
        if repo == 'openbmb/UltraFeedback':
            rows = read_jsonl(FIXTURES / 'ultrafeedback.jsonl')
            return rows + [{**rows[0], 'completions': 'not a list'}, {'instruction': 'no completions'}]
        return read_jsonl(FIXTURES / 'helpsteer2.jsonl')
    monkeypatch.setattr(datasets, 'load_dataset', fake)
    return calls


def test_bad_rows_are_skipped_counted_and_logged(hub, caplog, capsys):
    "A library function prints nothing: the counts go to the `pd_align.data` log (a warning says what was skipped)."
    skipped = collections.Counter()
    with caplog.at_level(logging.INFO, logger='pd_align.data'):
        ds = load_hub('ultrafeedback', skipped=skipped)
    clean = load_hub('ultrafeedback', on_error='skip')           # the same good rows give the same pairs
    assert len(ds) == len(clean) > 0 and skipped == {'wrong_type': 1, 'missing_field': 1}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('skipped 2 of 5: missing_field=1, wrong_type=1' in m for m in warned), warned
    assert any('ultrafeedback (train, openbmb/UltraFeedback): 5 rows' in r.getMessage() and '2 records skipped' in r.getMessage()
               for r in caplog.records)
    assert capsys.readouterr().out == ''
    assert hub[0][0] == 'openbmb/UltraFeedback'


def test_raise_is_still_available(hub):
    with pytest.raises(RecordError): load_hub('ultrafeedback', on_error='raise')


def test_clean_load_says_nothing_was_skipped(hub, caplog):
    with caplog.at_level(logging.INFO, logger='pd_align.data'):
        ds = load_hub('helpsteer2')
    assert len(ds) > 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any('0 records skipped' in r.getMessage() for r in caplog.records)


# ---- the local mirror: the hub's files in a folder, read through `datasets`' own json loader (no network) ----------

SHARED = Path(__file__).resolve().parent.parent.parent / 'shared' / 'data'


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    "A mirror folder holding the UltraFeedback and HelpSteer2 fixtures under their mirror names."
    for src, name in (('ultrafeedback.jsonl', 'ultrafeedback_train.jsonl'), ('helpsteer2.jsonl', 'helpsteer2_validation.jsonl')):
        shutil.copy(FIXTURES / src, tmp_path / name)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    return tmp_path


def test_mirror_is_read_through_datasets_json_loader(mirror, monkeypatch):
    "The mirror's file goes through `datasets.load_dataset('json', ...)` and the same converter as the hub rows."
    real, calls = datasets.load_dataset, []
    def spy(path, *a, **kw):
        calls.append(path)
        return real(path, *a, **kw)
    monkeypatch.setattr(datasets, 'load_dataset', spy)
    ds = load_hub('ultrafeedback', on_error='skip')
    assert calls == ['json']
    assert ds.to_list() == from_ultrafeedback(read_jsonl(FIXTURES / 'ultrafeedback.jsonl'), on_error='skip').to_list()
    hs = load_hub('helpsteer2', split='validation')
    assert len(hs) == len(from_helpsteer2(read_jsonl(FIXTURES / 'helpsteer2.jsonl'))) > 0
    assert mirror_file('helpsteer2', 'train') is None   # another split is not there


def test_limit_streams_only_the_rows_it_needs(mirror, caplog):
    full = load_hub('ultrafeedback', on_error='skip')
    with caplog.at_level(logging.INFO, logger='pd_align.data'):
        first = load_hub('ultrafeedback', on_error='skip', limit=2)
    assert first.to_list() == full.select(range(2)).to_list()
    rows_read = [r.getMessage() for r in caplog.records if 'rows ->' in r.getMessage()]
    assert len(rows_read) == 1 and ': 2 rows -> 2 pairs' in rows_read[0], rows_read


def test_no_mirror_and_no_network_fails_at_once_in_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    t = time.time()
    with pytest.raises(DataUnavailable) as e:
        load_hub('hh-helpful', split='test')
    msg = str(e.value)
    assert time.time() - t < 10 and '\n' not in msg
    assert 'Anthropic/hh-rlhf' in msg and MIRROR_ENV in msg and 'hh_helpful_base_test.jsonl.gz' in msg
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / 'absent'))
    with pytest.raises(DataUnavailable, match='no such folder'):
        load_hub('ultrafeedback')


@pytest.mark.skipif(not SHARED.is_dir(), reason='needs the shared data folder (the real HH rows)')
def test_cli_data_hub_names_with_the_mirror_split_limit_and_skip_counts(monkeypatch, capsys):
    from pd_align.cli import load_data
    monkeypatch.setenv(MIRROR_ENV, str(SHARED))
    ds = load_data(['helpful=hub:hh-helpful', 'harmless=hub:hh-harmless'], limit=6, split='test', on_error='skip')
    assert len(ds) == 12 and sorted(set(ds['aspect'])) == ['harmless', 'helpful']
    local = load_local(SHARED / 'hh_helpful_base_test.jsonl.gz', aspect='helpful', limit=6)
    texts = lambda rows: [(r['prompt'], r['chosen'], r['rejected']) for r in rows]
    assert texts(r for r in ds.to_list() if r['aspect'] == 'helpful') == texts(local.to_list())
    full = load_data(['hub:hh-helpful'], split='test', on_error='skip')
    assert len(full) == 2348   # 2,354 rows, 6 unusable
    assert 'skipped 6 bad records (chosen_equals_rejected: 2, empty_text: 4)' in capsys.readouterr().err
    hs = load_data(['hub:helpsteer'], split='train', limit=10)
    assert len(hs) == 10 and set(hs['source']) == {'helpsteer'}


def test_cli_hub_errors_are_one_line(monkeypatch):
    from conftest import run_cli
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    rc, out, err = run_cli('reward', '--data', 'hub:nope', '--out', 'y')   # (score checks --reward-model first)
    assert rc == 2 and "unknown hub dataset 'nope'" in err and len(err.strip().splitlines()) == 1
    rc, out, err = run_cli('reward', '--data', 'helpful=hub:hh-helpful', '--data', 'harmless=hub:hh-harmless',
                           '--split', 'test', '--limit', 5, '--out', 'never-written')
    assert rc == 2 and len(err.strip().splitlines()) == 1 and MIRROR_ENV in err and 'hub:hh-helpful' in err
    assert not Path('never-written').exists()
    rc, out, err = run_cli('reward', '--data', '../nowhere/hh.jsonl.gz', '--out', 'never-written')
    assert rc == 2 and 'hub:NAME' in err and MIRROR_ENV in err and len(err.strip().splitlines()) == 1


# ---- the README's pipeline: hub names, so it runs from a clone with internet, or offline with the mirror -------------

def readme_pipeline() -> list[list[str]]:
    "The `pd-align` commands of the README's pipeline block, split like a shell (comments dropped)."
    import shlex
    text = (Path(__file__).resolve().parent.parent / 'README.md').read_text()
    block = text.split('## The pipeline from the command line')[1].split('```sh')[1].split('```')[0]
    return [shlex.split(l, comments=True) for l in block.splitlines() if l.startswith('pd-align ')]


def test_readme_pipeline_without_data_fails_at_once_in_one_line(tmp_path, monkeypatch):
    from conftest import run_cli
    cmds = readme_pipeline()
    assert len(cmds) == 5 and all('hub:' in ' '.join(c) for c in cmds[:2]) and '../shared' not in str(cmds)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    t = time.time()
    rc, out, err = run_cli(*cmds[0][1:])
    assert rc == 2 and time.time() - t < 20 and len(err.strip().splitlines()) == 1, err
    assert MIRROR_ENV in err and 'hub:hh-helpful' in err and not (tmp_path / 'runs' / 'rm').exists()


@pytest.mark.skipif(not SHARED.is_dir(), reason='needs the shared data folder as the mirror (the real HH rows)')
def test_readme_pipeline_runs_as_written_with_the_mirror(tmp_path, monkeypatch):
    from conftest import run_cli
    monkeypatch.setenv(MIRROR_ENV, str(SHARED))
    monkeypatch.chdir(tmp_path)
    for argv in readme_pipeline():
        rc, out, err = run_cli(*argv[1:])
        assert rc == 0, (argv, err[-2000:])
    scored = datasets.load_from_disk(str(tmp_path / 'runs' / 'scored' / 'dataset'))
    assert len(scored) == 400 and set(scored['aspect']) == {'helpful', 'harmless'}   # --limit 200 per aspect
    rows = (tmp_path / 'runs' / 'subset' / 'train.jsonl').read_text().splitlines()
    assert len(rows) == 120                                                          # 30% of 400
