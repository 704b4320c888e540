"""The feature cache (one forward per unique response, resume after a killed run, fingerprint mismatch) and cross-fitting
(no pair is scored by heads trained on its prompt), plus `pd-align reward --heads features` / `score` end to end on a
tiny model saved to a folder."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pd_align.cli import main
from pd_align.io import save_dataset_atomic
from pd_align.features import (FeatureCacheMismatch, build_features, crossfit_margins, pair_deltas, pair_items, prompt_folds,
                               head_margins, fit_heads, resolve_feature, ESTIMATORS, STACK_L2_GRID, forward_features,
                               DEFAULT_KEEP_LENGTH)
from pd_align.reward import CallCounter
from pd_align.synthetic import synthetic_pairs
from pd_align.tiny import tiny_model_and_tokenizer

@pytest.fixture(scope='module')
def world():
    return synthetic_pairs(n_per_aspect=20, seed=0)

@pytest.fixture(scope='module')
def lm_tok(world):
    lm, tok = tiny_model_and_tokenizer(list(world['prompt']) + list(world['chosen']) + list(world['rejected']), vocab_size=300)
    return lm.eval(), tok

def forwards(lm):
    "Count the sequences the backbone reads (at the embedding: the feature forward stops after the deepest layer)."
    return CallCounter(lm.get_input_embeddings())

def test_one_forward_per_unique_response(world, lm_tok, tmp_path):
    lm, tok = lm_tok
    items = pair_items(world) + pair_items(world)[:10]          # duplicates on purpose
    n_unique = len(set(items))
    assert n_unique < len(items)
    c = forwards(lm)
    f = build_features(lm, tok, items, tmp_path/'c', layers=[1, 2], shard_size=16, progress=False)
    assert c.rows == n_unique and f['stats']['computed'] == n_unique
    assert f['feats']['mean2'].shape == (len(items), lm.config.hidden_size) and bool(f['found'].all())
    g = build_features(lm, tok, items, tmp_path/'c', layers=[1, 2], shard_size=16, progress=False)
    assert c.rows == n_unique and g['stats']['from_cache'] == n_unique    # second run: no forward at all
    assert torch.equal(f['feats']['last1'], g['feats']['last1'])
    # duplicates get the same row
    assert torch.equal(f['feats']['mean2'][len(items) - 10:], f['feats']['mean2'][:10])
    c.remove()

def test_resume_after_killed_run(world, lm_tok, tmp_path):
    lm, tok = lm_tok
    items = pair_items(world)
    n_unique = len(set(items))
    full = build_features(lm, tok, items, tmp_path/'ref', layers=[2], progress=False)
    c = forwards(lm)
    part = build_features(lm, tok, items, tmp_path/'c', layers=[2], shard_size=16, max_shards=2, progress=False)  # "killed"
    assert part['stats']['computed'] == 32 and part['stats']['missing'] == n_unique - 32
    assert int(part['found'].sum()) < len(items)
    (tmp_path/'c'/'shard-99999.tmp').write_bytes(b'half-written')   # a shard interrupted mid-write is ignored
    rest = build_features(lm, tok, items, tmp_path/'c', layers=[2], shard_size=16, progress=False)
    assert rest['stats']['from_cache'] == 32 and rest['stats']['computed'] == n_unique - 32
    assert c.rows == n_unique                                    # nothing computed twice
    assert torch.allclose(rest['feats']['mean2'], full['feats']['mean2'], atol=1e-5)
    c.remove()

def test_fingerprint_mismatch(world, lm_tok, tmp_path):
    lm, tok = lm_tok
    items = pair_items(world)[:8]
    build_features(lm, tok, items, tmp_path/'c', layers=[2], progress=False)
    with pytest.raises(FeatureCacheMismatch, match='rebuild=True'):
        build_features(lm, tok, items, tmp_path/'c', layers=[1], progress=False)      # other settings
    other, _ = tiny_model_and_tokenizer(list(world['prompt']), vocab_size=300, seed=1)
    with pytest.raises(FeatureCacheMismatch, match='fingerprint'):
        build_features(other, tok, items, tmp_path/'c', layers=[2], progress=False)   # other weights
    f = build_features(lm, tok, items, tmp_path/'c', layers=[1], rebuild=True, progress=False)
    assert f['stats']['computed'] == len(set(items)) and sorted(f['feats']) == ['last1', 'mean1', 'prompt1']

def test_no_pair_scored_by_a_head_trained_on_its_prompt():
    rng = np.random.default_rng(0)
    N, d, K = 300, 8, 3
    prompts = [f'p{rng.integers(0, 60)}' for _ in range(N)]
    dx, dlen = torch.tensor(rng.normal(size=(N, d))), torch.tensor(rng.normal(size=N))
    aspect = torch.tensor(rng.integers(0, K, N))
    cf = crossfit_margins(dx, dlen, aspect, K, prompts, k=4)
    fold = cf['fold']
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3] and not torch.isnan(cf['margins']).any()
    for f, heads in zip(cf['folds'], cf['heads']):
        scored = {p for p, x in zip(prompts, fold) if x == f['fold']}
        trained = {p for p, x in zip(prompts, fold) if x in f['trained_on']}
        assert scored and not scored & trained and f['n_train'] == sum(x != f['fold'] for x in fold)
        # the heads stored for fold f are exactly the ones whose margins fold f got
        m = fold == f['fold']
        assert torch.allclose(cf['margins'][m], head_margins(heads, dx[m], dlen[m]))
    # one prompt -> one fold
    by_prompt = {}
    for p, x in zip(prompts, prompt_folds(prompts, 4)): by_prompt.setdefault(p, set()).add(x)
    assert all(len(v) == 1 for v in by_prompt.values())

def test_length_removed_is_uncorrelated_with_length():
    rng = np.random.default_rng(1)
    N, d = 400, 6
    dx = torch.tensor(rng.normal(size=(N, d)))
    dlen = dx[:, 0] + torch.tensor(rng.normal(size=N))              # features carry length
    aspect = torch.zeros(N, dtype=torch.long)
    h = fit_heads(dx, dlen, aspect, 1, np.array([f'p{i}' for i in range(N)]))
    m, m_nl = head_margins(h, dx, dlen), head_margins(h, dx, dlen, remove_length=True)
    assert abs(float((m[:, 0] * dlen).sum())) > 1
    assert abs(float((m_nl[:, 0] * dlen).sum())) < 1e-6

def test_cli_feature_heads_end_to_end(world, lm_tok, tmp_path, capsys):
    lm, tok = lm_tok
    lm.save_pretrained(tmp_path/'lm')
    tok.save_pretrained(tmp_path/'lm')
    save_dataset_atomic(world, tmp_path/'data')
    cache = tmp_path/'cache'
    assert main(['reward', '--heads', 'features', '--base', str(tmp_path/'lm'), '--data', str(tmp_path/'data'),
                 '--features-cache', str(cache), '--folds', '3', '--out', str(tmp_path/'rm')]) == 0
    out = capsys.readouterr().out
    assert 'held-out accuracy (3 folds by prompt)' in out and 'n=' in out
    assert main(['score', '--reward-model', str(tmp_path/'rm'), '--data', str(tmp_path/'data'), '--out', str(tmp_path/'s')]) == 0
    info = json.loads((tmp_path/'s'/'score.json').read_text())
    assert info['crossfit']['n_pairs'] == len(world) and info['features']['computed'] == 0   # read from the cache
    assert [f['trained_on'] for f in info['crossfit']['folds']] == [[1, 2], [0, 2], [0, 1]]
    assert main(['select', '--scored', str(tmp_path/'s'), '--ratio', '0.3', '--out', str(tmp_path/'sel')]) == 0
    assert main(['reward', '--heads', 'features', '--data', str(tmp_path/'data'), '--out', str(tmp_path/'rm2')]) == 2
    assert '--heads features needs --base' in capsys.readouterr().err


def test_precisions_give_close_features_in_separate_caches(world, lm_tok, tmp_path):
    lm, tok = lm_tok
    items = pair_items(world)[:12]
    kw = dict(layers=[1, 2], batch_size=4, progress=False)
    ref = build_features(lm, tok, items, tmp_path/'f32', precision='float32', **kw)
    for prec in ('medium', 'bf16'):
        f = build_features(lm, tok, items, tmp_path/prec, precision=prec, **kw)
        assert f['fingerprint'] != ref['fingerprint']
        for name, v in f['feats'].items():
            assert v.dtype == torch.float32
            assert torch.nn.functional.cosine_similarity(v, ref['feats'][name]).min() > 0.999, (prec, name)
    with pytest.raises(FeatureCacheMismatch, match="'precision': 'bf16'"):   # another precision is another cache
        build_features(lm, tok, items, tmp_path/'f32', precision='bf16', **kw)
    with pytest.raises(ValueError, match="precision: 'fp8' is not one of float32, medium, bf16"):
        build_features(lm, tok, items, tmp_path/'x', precision='fp8', **kw)
    assert torch.get_float32_matmul_precision() == 'highest'   # the global setting is restored

def test_a_float32_cache_keeps_its_fingerprint(world, lm_tok, tmp_path):
    "Caches written before `precision` existed (float32, no precision key) are still read without a rebuild."
    lm, tok = lm_tok
    items = pair_items(world)[:6]
    build_features(lm, tok, items, tmp_path/'c', layers=[2], precision='float32', progress=False)
    meta = json.loads((tmp_path/'c'/'meta.json').read_text())
    assert 'precision' not in meta['settings']
    again = build_features(lm, tok, items, tmp_path/'c', layers=[2], precision='float32', progress=False)
    assert again['stats']['from_cache'] == len(set(items))

def test_cli_precisions_match_the_library():
    from pd_align.cli import FEATURE_PRECISIONS
    from pd_align.features import PRECISIONS, DEFAULT_PRECISION, default_cache
    assert FEATURE_PRECISIONS == PRECISIONS and DEFAULT_PRECISION in PRECISIONS
    assert default_cache('smollm2', 'float32').name == 'smollm2' and default_cache('a/b', 'bf16').name == 'a_b-bf16'

def test_prompt_pooling_is_the_mean_over_the_prompt_tokens(lm_tok):
    lm, tok = lm_tok
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out = forward_features(lm, ids, mask, torch.tensor([2, 1]), [1], ['prompt', 'mean', 'last'])
    h = lm.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
    assert torch.allclose(out['prompt1'][0], h[0, :4].mean(0), atol=1e-5)
    assert torch.allclose(out['prompt1'][1], h[1, :3].mean(0), atol=1e-5)
    assert torch.allclose(out['mean1'][0], h[0, 4:].mean(0), atol=1e-5)
    assert torch.allclose(out['last1'][1], h[1, 3], atol=1e-5)

def test_stack_estimator_is_fixed_and_nested():
    name, fit = resolve_feature('stack', [4, 8, 12, 16])
    assert name == 'mean4+mean8+mean12+mean16+last16+cos4+cos8+cos12+cos16'
    assert fit == dict(l2_grid=STACK_L2_GRID, inner_folds=3) == ESTIMATORS['stack']
    assert resolve_feature('mean8+last16', [8, 16]) == ('mean8+last16', {})
    rng = np.random.default_rng(0)
    N, d = 300, 40
    dx = torch.tensor(rng.normal(size=(N, d)))
    w = torch.zeros(d, dtype=torch.float64)
    w[0] = 3.0
    sign = torch.where(torch.rand(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
                       < torch.sigmoid(dx @ w), 1.0, -1.0)
    dx, dlen = dx * sign[:, None], torch.tensor(rng.normal(size=N)) * sign
    groups = np.array([f'p{i // 3}' for i in range(N)])
    h = fit_heads(dx, dlen, torch.zeros(N, dtype=torch.long), 1, groups, **fit)
    assert h['l2'][0] in STACK_L2_GRID
    acc = float((head_margins(h, dx, dlen)[:, 0] > 0).double().mean())
    assert acc > 0.8

def test_score_uses_the_default_pd_mode_and_prints_the_heads_quality(world, lm_tok, tmp_path, capsys):
    lm, tok = lm_tok
    lm.save_pretrained(tmp_path/'lm')
    tok.save_pretrained(tmp_path/'lm')
    save_dataset_atomic(world, tmp_path/'data')
    base = ['--data', str(tmp_path/'data'), '--features-cache', str(tmp_path/'cache')]
    assert main(['reward', '--heads', 'features', '--base', str(tmp_path/'lm'), *base, '--folds', '3',
                 '--feature', 'mean1', '--out', str(tmp_path/'rm')]) == 0
    capsys.readouterr()
    runs = {}
    for flag in ([], ['--keep-length'], ['--remove-length']):
        out = tmp_path/('s' + ''.join(flag))
        assert main(['score', '--reward-model', str(tmp_path/'rm'), '--data', str(tmp_path/'data'), *flag,
                     '--out', str(out)]) == 0
        runs[tuple(flag)] = (json.loads((out/'score.json').read_text()), capsys.readouterr().out)
    assert runs[()][0]['keep_length'] is DEFAULT_KEEP_LENGTH is True
    assert runs[('--keep-length',)][0]['keep_length'] and not runs[('--remove-length',)][0]['keep_length']
    text = runs[()][1]
    assert 'estimator mean1 (3-fold cross-fitted by prompt' in text and 'PD with length kept' in text
    assert text.count('held-out accuracy') == len(set(world['aspect'])) and 'n=' in text and '; other mode' in text
    assert 'PD with length removed' in runs[('--remove-length',)][1]
    with pytest.raises(SystemExit) as e:   # the two modes exclude each other: a one-line usage error
        main(['score', '--reward-model', str(tmp_path/'rm'), '--data', str(tmp_path/'data'), '--keep-length',
              '--remove-length', '--out', str(tmp_path/'x')])
    assert e.value.code == 2 and 'not allowed with argument --keep-length' in capsys.readouterr().err
