import os
from pathlib import Path
import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / 'fixtures'

@pytest.fixture
def fixtures(): return FIXTURES

@pytest.fixture(autouse=True, scope='session')
def one_thread():
    "Tiny models run as fast on one thread, and far faster when the cores are shared (CI runs notebooks beside the tests)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def run_cli(*args):
    "Run `pd_align.cli.main` in-process: (exit code, stdout, stderr); argparse's SystemExit becomes the code."
    import contextlib, io
    from pd_align.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()
