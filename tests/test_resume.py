"""Interrupted runs lose nothing: a subprocess is SIGKILLed mid-run (right after its first shard / checkpoint is on
disk, found by polling the folder) and the work is resumed; the final outputs equal an uninterrupted run's, with no
row lost or duplicated. Also: an atomic writer killed mid-write leaves the old file intact. Tiny models only."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
from pd_align.synthetic import SYNTHETIC_ASPECTS, synthetic_pairs, DEMO

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore',
       'TOKENIZERS_PARALLELISM': 'false'}
STARTUP_S = 300  # child start-up (torch + transformers imports) can take a while on a loaded 2-core box

def spawn(code:str, *args, cwd) -> subprocess.Popen:
    "Start `python -c code args...` with its output in files (no pipe to fill up)."
    log = Path(cwd) / 'child.log'
    proc = subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), *map(str, args)], cwd=cwd, env=ENV,
                            stdout=open(log, 'w'), stderr=subprocess.STDOUT)
    proc.log = log
    return proc

def kill_when(proc:subprocess.Popen, ready, timeout:float=STARTUP_S, what:str='') -> float:
    "Poll `ready()` every 20 ms; SIGKILL `proc` the moment it holds. Fails if the child exits or the time runs out."
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f'the child exited (code {proc.returncode}) before {what}:\n' + proc.log.read_text()[-3000:])
        if time.time() - t0 > timeout:
            proc.kill(); proc.wait(); pytest.fail(f'timed out waiting for {what}')
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return time.time() - t0

# ----------------------------------------------------------------------------- atomic writer killed mid-write
WRITER = '''
import sys, time
from pd_align.io import write_jsonl_atomic
def rows():
    for i in range(10_000):
        if i == 50: print('HALFWAY', flush=True)
        if i >= 50: time.sleep(0.05)
        yield {'i': i, 'pad': 'x' * 1000}
write_jsonl_atomic(sys.argv[1], rows())
'''

def test_writer_killed_mid_write_keeps_old_file(tmp_path):
    """SIGKILL while write_jsonl_atomic streams rows (some already flushed to its temp file): the target keeps its
    complete old content. The temp file may stay behind (nothing can clean up after SIGKILL): it is a hidden
    `.<name>.*.tmp` sibling that readers never pick up."""
    from pd_align.io import write_jsonl_atomic, read_jsonl
    target = tmp_path / 'out.jsonl'
    old = [{'old': i} for i in range(3)]
    write_jsonl_atomic(target, old)
    proc = spawn(WRITER, target, cwd=tmp_path)
    tmps = lambda: [p for p in tmp_path.iterdir() if p.name.startswith('.out.jsonl.') and p.name.endswith('.tmp')]
    kill_when(proc, lambda: 'HALFWAY' in (tmp_path / 'child.log').read_text() and tmps() and tmps()[0].stat().st_size > 0,
              what='the temp file to fill')
    assert read_jsonl(target) == old
    assert {p.name for p in tmp_path.iterdir()} <= {'out.jsonl', 'child.log', *[p.name for p in tmps()]}
    write_jsonl_atomic(target, [{'new': 1}])  # a later write still works
    assert read_jsonl(target) == [{'new': 1}]

# ----------------------------------------------------------------------------- scoring: pd_align.reward.score_dataset
SHARD, BATCH = 8, 8

SCORER = '''
import sys, time
from datasets import load_from_disk
import pd_align.reward as R
model_dir, data_dir, out_dir, delay = sys.argv[1:5]
model, tok = R.load_reward_model(model_dir)
ds = load_from_disk(data_dir)
real = R.score_texts
def slow(*a, **k):  # the test's brake, so that the kill lands mid-run; the library is untouched
    time.sleep(float(delay)); return real(*a, **k)
R.score_texts = slow
R.score_dataset(model, tok, ds, out_dir=out_dir, shard_size=%d, batch_size=%d, progress=False)
print('DONE', flush=True)
''' % (SHARD, BATCH)

@pytest.fixture(scope='module')
def reward_setup(tmp_path_factory):
    "A tiny 3-aspect reward model (saved with its tokenizer) and 48 synthetic pairs (saved): 6 shards of 8."
    R = pytest.importorskip('pd_align.reward')
    d = tmp_path_factory.mktemp('rm')
    ds = synthetic_pairs(n_per_aspect=16, seed=0, n_prompts=10)
    model, tok = R.tiny_reward_model(SYNTHETIC_ASPECTS, R.pair_texts(ds), vocab_size=256, hidden_size=32, max_positions=128)
    model.save_pretrained(d / 'rm', tokenizer=tok)
    ds.save_to_disk(str(d / 'data'))
    return R, d, ds

def test_score_dataset_resumes_after_kill(reward_setup, tmp_path):
    """Kill the scorer right after its first shard file appears; resuming reuses exactly the finished shards, scores
    only the rest, and gives the uninterrupted run's scores and PD for every pair, in order, none lost or duplicated."""
    R, d, ds = reward_setup
    out = tmp_path / 'shards'
    n_shards = -(-len(ds) // SHARD)
    proc = spawn(SCORER, d / 'rm', d / 'data', out, 0.5, cwd=tmp_path)
    kill_when(proc, lambda: (out / 'shard_00000.json').exists(), what='the first shard')
    done = sorted(p.name for p in out.glob('shard_*.json'))
    assert 1 <= len(done) < n_shards, f'the kill did not land mid-run: {done}'
    for p in out.glob('shard_*.json'): json.loads(p.read_text())  # every visible shard is complete (atomic)

    model, tok = R.load_reward_model(d / 'rm')
    stats = {}
    resumed = R.score_dataset(model, tok, ds, out_dir=out, shard_size=SHARD, batch_size=BATCH, progress=False, stats=stats)
    assert stats['reused_shards'] == len(done), (stats, done)  # the killed run's shards are used, not redone
    assert stats['scored_texts'] <= 2 * SHARD * (n_shards - len(done))
    ref = R.score_dataset(model, tok, ds, out_dir=None, shard_size=SHARD, batch_size=BATCH, progress=False)

    assert resumed['id'] == ref['id'] == ds['id'] and len(set(resumed['id'])) == len(ds)
    torch.testing.assert_close(torch.tensor(resumed['pd']), torch.tensor(ref['pd']), rtol=1e-6, atol=1e-7)
    for col in ('chosen_scores', 'rejected_scores'):
        for a in SYNTHETIC_ASPECTS:
            torch.testing.assert_close(torch.tensor([r[a] for r in resumed[col]]), torch.tensor([r[a] for r in ref[col]]),
                                       rtol=1e-6, atol=1e-7)
    shards = [json.loads((out / f'shard_{s:05d}.json').read_text()) for s in range(n_shards)]
    assert [(s['start'], s['end']) for s in shards] == [(i * SHARD, min(len(ds), (i + 1) * SHARD)) for i in range(n_shards)]
    assert sum(len(s['chosen']) for s in shards) == len(ds)

    again = {}
    R.score_dataset(model, tok, ds, out_dir=out, shard_size=SHARD, batch_size=BATCH, progress=False, stats=again)
    assert again['reused_shards'] == n_shards and again['scored_texts'] == 0

def test_score_dataset_ignores_corrupt_or_foreign_shards(reward_setup, tmp_path):
    """A half-written shard (as a non-atomic writer would leave), a shard of other rows and one of another model are
    rescored, never trusted."""
    R, d, ds = reward_setup
    out = tmp_path / 'shards'
    model, tok = R.load_reward_model(d / 'rm')
    ref = R.score_dataset(model, tok, ds, out_dir=out, shard_size=SHARD, batch_size=BATCH, progress=False)
    (out / 'shard_00000.json').write_text((out / 'shard_00000.json').read_text()[:50])       # truncated
    s1 = json.loads((out / 'shard_00001.json').read_text()); s1['start'] += 1                  # other rows
    (out / 'shard_00001.json').write_text(json.dumps(s1))
    s2 = json.loads((out / 'shard_00002.json').read_text()); s2['fingerprint'] = 'x' + s2['fingerprint'][1:]
    s2['chosen'] = [[99.0] * len(SYNTHETIC_ASPECTS)] * len(s2['chosen'])                     # another model's
    (out / 'shard_00002.json').write_text(json.dumps(s2))
    stats = {}
    again = R.score_dataset(model, tok, ds, out_dir=out, shard_size=SHARD, batch_size=BATCH, progress=False, stats=stats)
    assert stats['reused_shards'] == -(-len(ds) // SHARD) - 3
    assert again['pd'] == ref['pd']

# ----------------------------------------------------------------------------- training: pd_align.train.train_dpo
TRAIN_CFG = dict(max_steps=8, batch_size=4, save_steps=1, lr=1e-3, seed=0, logging_steps=1, lora_r=4, lora_alpha=8,
                 max_length=64, max_prompt_length=32)

TRAINER = '''
import sys, time
from pd_align.train import train_dpo, DPOConfig
from pd_align.synthetic import synthetic_pairs, DEMO
cfg = DPOConfig(**%r, output_dir=sys.argv[1])
train_dpo('tiny', synthetic_pairs(16, seed=0, **DEMO), cfg, callback=lambda step, entry: time.sleep(float(sys.argv[2])))
print('DONE', flush=True)
''' % TRAIN_CFG

def _ckpts(out:Path) -> list[str]: return sorted(p.name for p in out.glob('checkpoint-*') if p.is_dir())

def _train_log(history) -> list[dict]:
    "Train entries without the wall-clock field."
    return [{k: v for k, v in h.items() if k != 'step_time'} for h in history if 'loss' in h]

def test_train_dpo_resumes_after_kill(tmp_path):
    """Kill the trainer right after its first checkpoint folder appears; `resume_from_checkpoint=True` continues from
    the latest checkpoint and ends with the uninterrupted run's LoRA weights and per-step log (every step exactly once,
    none repeated or skipped)."""
    T = pytest.importorskip('pd_align.train')
    from peft import get_peft_model_state_dict
    out = tmp_path / 'run'
    proc = spawn(TRAINER, out, 0.5, cwd=tmp_path)
    kill_when(proc, lambda: bool(_ckpts(out)), what='the first checkpoint')
    at_kill = _ckpts(out)
    steps_done = max(int(c.split('-')[1]) for c in at_kill)
    assert 1 <= steps_done < TRAIN_CFG['max_steps'] and not (out / 'final').exists(), at_kill

    cfg = T.DPOConfig(**TRAIN_CFG, output_dir=str(out))
    seen = []
    resumed = T.train_dpo('tiny', synthetic_pairs(16, seed=0, **DEMO), cfg, resume_from_checkpoint=True, callback=lambda s, e: seen.append(s))
    assert seen == list(range(steps_done + 1, TRAIN_CFG['max_steps'] + 1)), (steps_done, seen)  # only the missing steps run
    ref = T.train_dpo('tiny', synthetic_pairs(16, seed=0, **DEMO), T.DPOConfig(**TRAIN_CFG, output_dir=str(tmp_path / 'ref')))

    got, want = _train_log(resumed.history), _train_log(ref.history)
    assert [h['step'] for h in got] == list(range(1, TRAIN_CFG['max_steps'] + 1))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float): assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (g['step'], k, g[k], w[k])
            else: assert g[k] == w[k], (g['step'], k)
    a, b = get_peft_model_state_dict(resumed.model), get_peft_model_state_dict(ref.model)
    assert a.keys() == b.keys() and a
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert (out / 'final').is_dir() and json.loads((out / 'log_history.json').read_text())[-1]['step'] == TRAIN_CFG['max_steps']
    assert _ckpts(out) == sorted(f'checkpoint-{s}' for s in range(1, TRAIN_CFG['max_steps'] + 1))
