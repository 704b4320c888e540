"""`load_hub` over tens of thousands of hub rows: one bad row is skipped and counted, not fatal, and the counts are printed
(`datasets.load_dataset` is replaced by the fixture rows in the real schema: no network)."""
import collections, logging
import pytest
import datasets
from conftest import FIXTURES
from pd_align.data import load_hub, RecordError
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
    assert any('ultrafeedback (train): 5 rows' in r.getMessage() and '2 records skipped' in r.getMessage()
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
