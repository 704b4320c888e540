"pd_align.io: JSON lines read with errors naming the file and line; atomic writers that leave no partial output."
import collections, gzip, json, os
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk

from conftest import FIXTURES
from pd_align.io import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_on_error, iter_jsonl, read_jsonl,
                         save_dataset_atomic, write_jsonl_atomic)

def rows(name): return [json.loads(line) for line in (FIXTURES/name).read_text().splitlines() if line.strip()]

# ---------------------------------------------------------------- reading
def test_read_jsonl_errors_name_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r'bad_line.jsonl: line 3: invalid JSON'):
        read_jsonl(FIXTURES/'bad_line.jsonl')
    with pytest.raises(ValueError, match=r'truncated.jsonl.gz: line \d+: unreadable or truncated'):
        read_jsonl(FIXTURES/'truncated.jsonl.gz')
    p = tmp_path/'list.jsonl'
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r'list.jsonl: line 2: expected a JSON object'):
        read_jsonl(p)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path/'nope.jsonl')
    g = tmp_path/'ok.jsonl.gz'
    g.write_bytes(gzip.compress((FIXTURES/'hh.jsonl').read_bytes()))
    assert read_jsonl(g) == rows('hh.jsonl')

def test_skip_counts_bad_lines_per_reason(tmp_path):
    p = tmp_path/'mixed.jsonl'
    p.write_bytes(b'{"a": 1}\n{"a": \n"text"\n{"a": "\xff"}\n\n{"a": 2}\n')
    bad = collections.Counter()
    assert read_jsonl(p, on_error='skip', skipped=bad) == [{'a': 1}, {'a': 2}]
    assert bad == {'invalid_json': 1, 'not_object': 1, 'not_utf8': 1}
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        read_jsonl(p, on_error='ignore')
    with pytest.raises(ValueError, match='mixed.jsonl: line 2: invalid JSON'):
        read_jsonl(p)

def test_iter_jsonl_reads_lazily(tmp_path):
    p = tmp_path/'big.jsonl'
    p.write_text('{"i": 0}\n{"i": 1}\n{broken\n')
    it = iter_jsonl(p)
    assert next(it) == {'i': 0} and next(it) == {'i': 1} # the broken line 3 is not read yet
    with pytest.raises(ValueError, match='line 3'):
        next(it)
    assert read_jsonl(p, limit=2) == [{'i': 0}, {'i': 1}]

def test_check_on_error():
    check_on_error('raise')
    check_on_error('skip')
    with pytest.raises(ValueError, match="got 'drop'"):
        check_on_error('drop')

# ---------------------------------------------------------------- atomic writers
def test_atomic_writers_roundtrip(tmp_path):
    p = atomic_write_text(tmp_path/'a'/'b'/'t.txt', 'héllo\n')
    assert p.read_text(encoding='utf-8') == 'héllo\n'
    atomic_write_json(tmp_path/'r.json', {'t': torch.tensor([1, 2]), 'p': Path('x'), 's': {2, 1}})
    assert json.loads((tmp_path/'r.json').read_text()) == {'t': [1, 2], 'p': 'x', 's': [1, 2]}
    ds = Dataset.from_list(rows('hh.jsonl'))
    write_jsonl_atomic(tmp_path/'o.jsonl.gz', ds)
    assert read_jsonl(tmp_path/'o.jsonl.gz') == ds.to_list()
    write_jsonl_atomic(tmp_path/'o.jsonl', [{'a': 'ü'}])
    assert (tmp_path/'o.jsonl').read_text(encoding='utf-8') == '{"a": "ü"}\n'
    atomic_write_bytes(tmp_path/'b.bin', b'\x00\xff')
    assert (tmp_path/'b.bin').read_bytes() == b'\x00\xff'
    atomic_write_text(tmp_path/'t.txt.gz', 'zipped')
    assert gzip.decompress((tmp_path/'t.txt.gz').read_bytes()) == b'zipped'
    assert sorted(os.listdir(tmp_path)) == ['a', 'b.bin', 'o.jsonl', 'o.jsonl.gz', 'r.json', 't.txt.gz']

def test_atomic_writers_leave_nothing_on_failure(tmp_path):
    atomic_write_text(tmp_path/'keep.json', 'old')
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path/'keep.json', {'x': object()})
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path/'keep.json', b'bytes')
    def rows_then_crash():
        yield {'a': 1}
        yield {'a': 2}
        raise RuntimeError('disk on fire')
    with pytest.raises(RuntimeError):
        write_jsonl_atomic(tmp_path/'keep.json', rows_then_crash())
    with pytest.raises(RuntimeError):
        write_jsonl_atomic(tmp_path/'new.jsonl', rows_then_crash())
    assert (tmp_path/'keep.json').read_text() == 'old'
    assert os.listdir(tmp_path) == ['keep.json']  # no partial file, no temp file

def test_save_dataset_atomic(tmp_path, monkeypatch):
    a, b = Dataset.from_list(rows('hh.jsonl')), Dataset.from_list(rows('trl_plain.jsonl'))
    save_dataset_atomic(a, tmp_path/'ds')
    save_dataset_atomic(b, tmp_path/'ds')  # replaces
    assert load_from_disk(str(tmp_path/'ds')).to_list() == b.to_list() and os.listdir(tmp_path) == ['ds']
    def broken(self, path, **kw):
        Path(path).mkdir()
        (Path(path)/'half.arrow').write_text('x')
        raise OSError('no space left')
    monkeypatch.setattr(Dataset, 'save_to_disk', broken)
    with pytest.raises(OSError):
        save_dataset_atomic(a, tmp_path/'ds')
    with pytest.raises(OSError):
        save_dataset_atomic(a, tmp_path/'other')
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['ds'] and load_from_disk(str(tmp_path/'ds')).to_list() == b.to_list()  # old intact
