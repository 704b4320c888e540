"""End to end through the command line: reward -> score -> select -> train -> eval, on the UltraFeedback fixture and on
the real HH-RLHF helpful/harmless rows in ../shared/data (the paper's two-aspect setting), with tiny models."""
import json
import pytest
from datasets import load_from_disk
from conftest import ROOT, FIXTURES
from pd_align.cli import main

SHARED = ROOT.parent / 'shared' / 'data'

def run(*args):
    assert main([str(a) for a in args]) == 0, args

def test_fixture_pipeline(tmp_path):
    uf = FIXTURES / 'ultrafeedback.jsonl'
    run('reward', '--data', uf, '--out', tmp_path/'rm', '--epochs', 2)
    cfg = json.loads((tmp_path/'rm'/'reward_config.json').read_text())
    assert cfg['aspects'] == ['helpfulness', 'honesty', 'instruction_following', 'truthfulness']
    assert (tmp_path/'rm'/'model.safetensors').exists()
    run('score', '--data', uf, '--reward-model', tmp_path/'rm', '--out', tmp_path/'scored')
    scored = load_from_disk(str(tmp_path/'scored'/'dataset'))
    assert {'chosen_scores', 'rejected_scores', 'pd'} <= set(scored.column_names)
    run('select', '--scored', tmp_path/'scored', '--ratio', 0.5, '--out', tmp_path/'subset')
    sub = load_from_disk(str(tmp_path/'subset'/'dataset'))
    assert len(sub) == -(-len(scored) // 2)
    # the kept pairs are exactly the most negative PDs of the scored set
    assert max(sub['pd']) <= min(p for i, p in enumerate(scored['pd']) if i not in set(sub['orig_index']))
    rows = [json.loads(l) for l in (tmp_path/'subset'/'train.jsonl').read_text().splitlines()]
    assert len(rows) == len(sub) and all({'prompt', 'chosen', 'rejected', 'pd', 'id'} <= r.keys() for r in rows)
    selection = json.loads((tmp_path/'subset'/'selection.json').read_text())
    assert selection['n_selected'] == len(sub)
    from pd_align.selection import pd_settings # the PD settings travel with the subset: its folder and selection.json
    assert selection['pd_settings'] == pd_settings(scored) == pd_settings(sub) and selection['pd_settings']['aspects']
    run('train', '--data', tmp_path/'subset', '--out', tmp_path/'run', '--set', 'max_steps=2', '--set', 'batch_size=2')
    run('eval', '--run', tmp_path/'run', '--out', tmp_path/'eval.json') # default: the scored pairs the selection left out
    metrics = json.loads((tmp_path/'eval.json').read_text())
    assert metrics['n'] == len(scored) - len(sub) and 0 <= metrics['accuracy'] <= 1 and metrics['n_train_overlap'] == 0
    assert main(['eval', '--run', str(tmp_path/'run'), '--data', str(tmp_path/'subset')]) == 2 # training pairs: refused

def test_score_resume_reuses_shards(tmp_path):
    uf = FIXTURES / 'ultrafeedback.jsonl'
    run('reward', '--data', uf, '--out', tmp_path/'rm')
    run('score', '--data', uf, '--reward-model', tmp_path/'rm', '--out', tmp_path/'s')
    first = load_from_disk(str(tmp_path/'s'/'dataset'))['pd']
    assert main(['score', '--data', str(uf), '--reward-model', str(tmp_path/'rm'), '--out', str(tmp_path/'s')]) == 2 # not empty
    run('score', '--data', uf, '--reward-model', tmp_path/'rm', '--out', tmp_path/'s', '--resume')
    assert load_from_disk(str(tmp_path/'s'/'dataset'))['pd'] == first

@pytest.mark.skipif(not SHARED.exists(), reason=f'{SHARED} is absent (real HH rows ship only beside the project)')
def test_hh_helpful_vs_harmless_from_the_command_line(tmp_path):
    data = ['--data', f'helpful={SHARED}/hh_helpful_base_test.jsonl.gz', '--data', f'harmless={SHARED}/hh_harmless_base_test.jsonl.gz',
            '--limit', 24, '--on-error', 'skip']
    run('reward', *data, '--out', tmp_path/'rm', '--max-length', 256)
    run('score', *data, '--reward-model', tmp_path/'rm', '--out', tmp_path/'scored')
    scored = load_from_disk(str(tmp_path/'scored'/'dataset'))
    assert len(scored) == 48 and set(scored['aspect']) == {'helpful', 'harmless'}
    assert all(p.endswith('\n\nAssistant:') for p in scored['prompt'])
    run('select', '--scored', tmp_path/'scored', '--ratio', 0.3, '--per-aspect', '--out', tmp_path/'subset')
    sub = load_from_disk(str(tmp_path/'subset'/'dataset'))
    counts = sorted([list(sub['aspect']).count('helpful'), list(sub['aspect']).count('harmless')])
    assert counts == [7, 8]   # the global budget ceil(0.3 * 48) = 15, split by largest remainder (7.2 + 7.2)
