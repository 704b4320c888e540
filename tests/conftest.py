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
