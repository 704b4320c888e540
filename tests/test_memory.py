"""pd_align.memory: the predicted peak of a DPO step against a peak measured on CPU (fresh process), and the model's
behaviour (components, lean vs full logits, checkpointing, cards)."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from pd_align.memory import (CARDS, PRESETS, ModelDims, dpo_step_peak, fits, lora_params, max_batch, dtype_bytes)

ROOT = Path(__file__).resolve().parents[1]
TOL = 0.25   # stated tolerance of the step increment at this tiny size (bench/memory_model.py: 20% at three larger sizes)


def _measure(lean: bool) -> dict:
    args = dict(name='test', hidden=128, layers=2, heads=2, vocab=32_000, batch=2, seq_len=128, lean=lean)
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536', 'OMP_NUM_THREADS': '1', 'BENCH_THREADS': '1',
           'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    p = subprocess.run([sys.executable, str(ROOT / 'bench' / 'memory_model.py'), '--_worker', 'worker', json.dumps(args)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads([l for l in p.stdout.splitlines() if l.startswith('@@BENCH_RESULT ')][-1][len('@@BENCH_RESULT '):])


@pytest.mark.skipif(not Path('/proc/self/clear_refs').exists(), reason='needs Linux /proc to measure peak RSS')
def test_predicted_step_peak_matches_measured_cpu_peak():
    "Mutations caught: a dropped logits copy or chunk term, logits counted for prompt positions, lean/full swapped."
    lean, full = _measure(True), _measure(False)
    for r in (lean, full):
        assert abs(r['predicted'] - r['measured']) <= TOL * r['measured'], (r['predicted'] / 2**20, r['measured'] / 2**20)
    assert full['measured'] > 1.5 * lean['measured']          # the lean head really saves memory


def test_components_and_orderings():
    q = PRESETS['qwen2.5-0.5b']
    base = dict(config_or_dims=q, batch=8, seq_len=512, dtype='bf16')
    p = dpo_step_peak(**base)
    assert p['weights'] == q.n_params() * 2
    assert p['trainable_states'] == lora_params(q, 16) * 16 == 24 * 16 * (896 + 896 + 896 + 128) * 16
    static = p['weights'] + p['trainable_states'] + p['reference_copy'] + p['reward_model']
    assert p['peak'] == static + max(p['activations'] + p['logits'], p['reference_pass'])
    full = dpo_step_peak(**base, lean_logits=False)
    assert full['logits'] >= 16 * 512 * 151_936 * (2 + 4 + 12) and full['peak'] > 2 * p['peak']
    assert dpo_step_peak(**base, grad_ckpt=True)['activations'] < p['activations'] / 4
    assert dpo_step_peak(**base, reward_model='qwen2.5-0.5b')['peak'] > p['peak']
    assert dpo_step_peak(**base, reference='precomputed')['reference_pass'] == 0
    assert dpo_step_peak(**{**base, 'batch': 16})['activations'] == pytest.approx(2 * p['activations'], rel=0.01)
    with pytest.raises(ValueError, match='reference'): dpo_step_peak(**base, lora_r=None)
    with pytest.raises(ValueError, match='dtype'): dtype_bytes('int8')


def test_from_transformers_config_and_cards():
    from transformers import Qwen2Config
    cfg = Qwen2Config(hidden_size=896, num_hidden_layers=24, vocab_size=151936, num_attention_heads=14, num_key_value_heads=2,
                      intermediate_size=4864, tie_word_embeddings=True)
    assert ModelDims.from_config(cfg) == PRESETS['qwen2.5-0.5b']
    t4 = fits('T4', config_or_dims='qwen2.5-0.5b', batch=2, seq_len=512, dtype='fp16')
    assert set(t4) >= {'fits', 'peak', 'usable', 'headroom', 'share', 'parts'} and t4['usable'] < CARDS['T4']
    b = max_batch('T4', 512, config_or_dims='qwen2.5-0.5b', dtype='fp16')
    assert b >= 1 and fits('T4', config_or_dims='qwen2.5-0.5b', batch=b, seq_len=512, dtype='fp16')['fits']
    assert not fits('T4', config_or_dims='qwen2.5-0.5b', batch=b + 1, seq_len=512, dtype='fp16')['fits']
    assert max_batch('A100-40GB', 512, config_or_dims='qwen2.5-0.5b', dtype='bf16') > b
