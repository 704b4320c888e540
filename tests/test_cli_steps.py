"""The file-writing steps behind `pd-align reward`, `score`, `train` and `eval` (`pd_align.cli`), called from Python:
the reward model saved with its training summary, score.json with one place for the PD settings and resumable shards,
the train -> score -> select path on the real-schema fixtures, and a run trained from JSONL that evaluates like the
model in memory. Tiny models only."""
import json, math
from pathlib import Path
import numpy as np
import pytest
from datasets import load_from_disk

from conftest import FIXTURES
from pd_align.cli import train_reward_cli, score_cli, train_cli, eval_cli
from pd_align.data import from_ultrafeedback, from_helpsteer2, get_aspects, load_local
from pd_align.io import write_jsonl_atomic
from pd_align.reward import score_dataset, load_reward_model
from pd_align.selection import select, pd_settings
from pd_align.train import evaluate_dpo, load_run

TINY = dict(hidden_size=32, vocab_size=400)


def _fixture(name):
    if name == 'ultrafeedback': return from_ultrafeedback(FIXTURES / 'ultrafeedback.jsonl', pairing='all_pairs')
    return from_helpsteer2(FIXTURES / 'helpsteer2.jsonl')


@pytest.mark.parametrize('name', ['ultrafeedback', 'helpsteer2'])
def test_train_score_select_on_fixtures(name, tmp_path):
    data = _fixture(name)
    rep = train_reward_cli(data, None, tmp_path / 'rm', epochs=2, batch_size=4, heldout=0.2, tiny=TINY, progress=False)
    labelled = list(dict.fromkeys(data['aspect']))
    assert rep['aspects'] == [a for a in get_aspects(data) if a in labelled]
    cfg = json.loads((tmp_path / 'rm' / 'reward_config.json').read_text())
    assert cfg['extra']['train_report']['heldout_accuracy'] == rep['heldout_accuracy']
    out = score_cli(data, tmp_path / 'rm', tmp_path / 'scored', batch_size=8, shard_size=8, progress=False)
    scored = load_from_disk(str(out / 'dataset'))
    assert len(scored) == len(data) and np.isfinite(scored['pd']).all()
    assert get_aspects(scored) == rep['aspects']
    assert scored['orig_chosen_scores'] == data['chosen_scores']       # the ratings are kept
    summary = json.loads((out / 'score.json').read_text())
    assert summary['n'] == len(data) and summary['reused_shards'] == 0
    rescored = score_dataset(*load_reward_model(tmp_path / 'rm'), scored, progress=False)   # scoring a scored set
    assert rescored['orig_chosen_scores'] == data['chosen_scores']
    np.testing.assert_allclose(rescored['pd'], scored['pd'], atol=1e-6)   # other batch sizes: float noise only
    again = score_cli(data, tmp_path / 'rm', tmp_path / 'scored', batch_size=8, shard_size=8, progress=False)
    assert json.loads((again / 'score.json').read_text())['reused_shards'] == math.ceil(len(data) / 8)
    sub = select(scored, method='pd', ratio=0.3)
    sub.save_to_disk(str(tmp_path / 'subset'))
    loaded = load_from_disk(str(tmp_path / 'subset'))
    assert {'prompt', 'chosen', 'rejected'} <= set(loaded.column_names)
    assert len(loaded) == math.ceil(0.3 * len(data))
    assert max(loaded['pd']) <= np.quantile(scored['pd'], 0.3 + 1 / len(data)) + 1e-12


def test_score_json_has_one_place_for_pd_settings(tmp_path):
    """Issue 16 item 15: score.json records the PD settings once, as used (the model's defaults with the overrides
    applied), under `pd_settings`; they are the settings stored with the scored dataset."""
    data = _fixture('ultrafeedback')
    train_reward_cli(data, None, tmp_path / 'rm', epochs=1, batch_size=8, tiny=TINY, fit_length=False, progress=False)
    out = score_cli(data, tmp_path / 'rm', tmp_path / 'scored', gamma=0.8, weights=[1, 1, 1, 2], progress=False)
    summary = json.loads((out / 'score.json').read_text())
    assert not {'scaling', 'gamma', 'weights'} & set(summary), sorted(summary)
    st = summary['pd_settings']
    assert st['gamma'] == 0.8 and st['scaling'] == 'quantile' and st['weights'] == pytest.approx([0.2, 0.2, 0.2, 0.4])
    assert st == pd_settings(load_from_disk(str(out / 'dataset')))


def test_train_cli_jsonl_tiny(tmp_path):
    uf = load_local(FIXTURES / 'ultrafeedback.jsonl') # 9 pairs
    rows = [{k: r[k] for k in ('prompt', 'chosen', 'rejected', 'aspect')} for r in uf]
    write_jsonl_atomic(tmp_path / 'pairs.jsonl', rows)
    (tmp_path / 'cfg.yaml').write_text('batch_size: 4\nlr: 1e-3\nlora_r: 4\n')
    res = train_cli(tmp_path / 'pairs.jsonl', 'tiny', config_path=tmp_path / 'cfg.yaml', out=tmp_path / 'run',
                    overrides={'max_steps': '2', 'beta': '0.2'})
    assert res.config.max_steps == 2 and res.config.beta == 0.2 and res.config.lora_r == 4
    assert {'final', 'dpo_config.json', 'log_history.json'} <= {p.name for p in (tmp_path / 'run').iterdir()}
    assert (tmp_path / 'run' / 'final' / 'adapter_model.safetensors').exists()
    assert (tmp_path / 'run' / 'final' / 'tokenizer.json').exists()
    assert len(res.train_log) == 2
    # pd-align eval: the run folder loads back and evaluates like the in-memory model
    m = eval_cli(tmp_path / 'run', tmp_path / 'pairs.jsonl')
    want = evaluate_dpo(res.model, res.tokenizer, rows, res.config)
    assert abs(m['loss'] - want['loss']) < 1e-5 and m['accuracy'] == want['accuracy']
    assert json.loads((tmp_path / 'run' / 'eval.json').read_text())['n'] == len(rows)
    # a full fine-tune: the reference is the saved starting model
    full = train_cli(tmp_path / 'pairs.jsonl', 'tiny', out=tmp_path / 'full',
                     overrides={'max_steps': 2, 'batch_size': 4, 'lora_r': 'null', 'lr': '1e-3'})
    policy, tok, ref, cfg = load_run(tmp_path / 'full')
    assert cfg.lora_r is None and ref is not None
    m = eval_cli(tmp_path / 'full', tmp_path / 'pairs.jsonl')
    want = evaluate_dpo(full.model, full.tokenizer, rows, full.config, ref_model=full.ref_model)
    assert abs(m['loss'] - want['loss']) < 1e-5
