"""Benchmark, pre-registered (this file was committed before its first run): does the backbone's `precision` change the
PD estimators built on its features?

`pd_align.features.build_features(precision=...)` computes the frozen backbone's forward in float32 (the reference),
at PyTorch's 'medium' float32 matmul precision, or under bfloat16 autocast. Faster features are only worth having if
the heads built on them are as good. This script fills one feature cache per precision (SmolLM2-135M-Instruct, layers
4/8/12/16, 256 tokens) for the same texts as notebook 10 and compares, against float32, paired on the same pairs:

* HelpSteer (`train[:500]`, within-prompt pairs per attribute): Spearman and sign agreement of the cross-fitted PD with
  the rating PD;
* HH-RLHF helpful-base + harmless-base test (every pair, or `--hh-pairs`): each head's cross-fitted accuracy on its own
  aspect;

for the default estimator `mean16` and for `stack`, PD with length kept (`pd-align score`'s default), 5 folds by
prompt, seed 0, prompt-clustered paired bootstrap (1,000 resamples).

Decision rule (fixed before the run). Smallest effect of interest (SESOI): 0.02 for Spearman and for sign agreement
(a fifth of the +0.10 improvement over length-only that a better estimator was asked for), 0.01 for an accuracy (one
point). For each precision p in (medium, bf16), estimator and metric, the difference p - float32 is
*equivalent* when its 90% interval lies inside (-SESOI, +SESOI) (two one-sided tests at alpha = 0.05), *different*
when its 95% interval excludes 0 and it is not equivalent, *inconclusive* otherwise. `DEFAULT_PRECISION` becomes the
faster of float32 and medium (by `bench/feature_cache_throughput.py` on this machine) among those equivalent to float32
on every metric; bf16 is never the default (on CPUs without bfloat16 units it is slower than float32) but is reported.

    PD_ALIGN_DATA_MIRROR=FOLDER python bench/feature_precision_quality.py            # every HH pair (~9,300 texts)
    python bench/feature_precision_quality.py --hh-pairs 200 --hs-prompts 20          # a quick look (not the record)
Caches: `--cache-root` (default `$PD_ALIGN_CACHE`, else ~/.cache/pd_align), one folder per precision; a cache filled
earlier is read, not recomputed.
"""
from __future__ import annotations
import argparse, json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from feature_cache_throughput import distance

SESOI = dict(spearman=0.02, sign_agreement=0.02, accuracy=0.01)
ESTIMATORS = ('mean16', 'stack')

def decide(diff_ci90, diff_ci95, sesoi:float) -> str:
    "'equivalent', 'different' or 'inconclusive' by the rule in the docstring."
    if -sesoi < diff_ci90[0] and diff_ci90[1] < sesoi:
        return 'equivalent'
    return 'different' if diff_ci95[0] > 0 or diff_ci95[1] < 0 else 'inconclusive'

def load_data(hh_pairs, hs_prompts, seed:int=0):
    "HelpSteer's first 500 rows and the seeded shuffle of both HH aspects, as notebook 10 loads them."
    import numpy as np
    from pd_align.data import load_hub, aggregate
    hs = load_hub('helpsteer', 'train[:500]')
    if hs_prompts:
        keep = set(list(dict.fromkeys(hs['prompt']))[:hs_prompts])
        hs = hs.filter(lambda p: p in keep, input_columns='prompt')
    hh = aggregate({a: load_hub(f'hh-{a}', 'test', on_error='skip') for a in ('helpful', 'harmless')})
    hh = hh.select(np.random.default_rng(seed).permutation(len(hh)))
    return hs, hh.select(range(min(len(hh), hh_pairs))) if hh_pairs else hh

def accuracy_diffs(hits:dict, aspect, aspects, prompts, B:int, seed:int) -> dict:
    "Per aspect and precision: accuracy, its difference to float32 with prompt-clustered 90% and 95% intervals."
    import numpy as np
    out, rng = {}, np.random.default_rng(seed)
    for j, a in enumerate(aspects):
        m = (aspect == j).numpy()
        _, inv = np.unique(np.asarray(prompts)[m], return_inverse=True)
        counts = np.bincount(inv)
        sums = {p: np.bincount(inv, h[m]) for p, h in hits.items()}
        draws = [rng.integers(0, len(counts), len(counts)) for _ in range(B)]
        for p in hits:
            d = np.array([(sums[p][s].sum() - sums['float32'][s].sum()) / counts[s].sum() for s in draws])
            out.setdefault(a, {})[p] = dict(accuracy=float(hits[p][m].mean()), n=int(m.sum()),
                                            diff=float(hits[p][m].mean() - hits['float32'][m].mean()),
                                            diff_ci90=np.quantile(d, [0.05, 0.95]).tolist(),
                                            diff_ci95=np.quantile(d, [0.025, 0.975]).tolist())
    return out

def cache_fill(cache:Path) -> dict:
    "Texts in a cache and the seconds their forward passes took when it was filled (from its shards, whenever filled)."
    import torch
    shards = [torch.load(p, weights_only=True) for p in sorted(cache.glob('shard-*.pt'))]
    texts, secs = sum(len(s['keys']) for s in shards), sum(s['seconds'] for s in shards)
    return dict(texts=texts, forward_seconds=round(secs, 1), responses_per_second=round(texts / secs, 2) if secs else None)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--hh-pairs', type=int, default=0, help='HH pairs of the shuffle (0: all)')
    p.add_argument('--hs-prompts', type=int, default=0, help='HelpSteer prompts (0: all)')
    p.add_argument('--cache-root', default=None)
    p.add_argument('--boot', type=int, default=1000)
    p.add_argument('--out', default=str(C.RESULTS/'feature_precision_quality.json'))
    a = p.parse_args()
    import os
    if a.cache_root:
        os.environ['PD_ALIGN_CACHE'] = a.cache_root
    from pd_align.data import aspect_index, get_aspects
    from pd_align.reward import rating_pd
    from pd_align.features import (load_backbone, build_features, pair_items, pair_deltas, crossfit_margins,
                                   pd_from_margins, paired_bootstrap, resolve_feature, default_cache, default_layers,
                                   own_aspect_hits, _blocks, PRECISIONS)
    hs, hh = load_data(a.hh_pairs, a.hs_prompts)
    model, tok = load_backbone('smollm2')
    layers = default_layers(len(_blocks(model)))
    feats, seconds = {}, {}
    for prec in PRECISIONS:
        t = time.time()
        kw = dict(layers=layers, max_length=256, shard_size=128, precision=prec)
        feats[prec] = {name: build_features(model, tok, pair_items(ds), default_cache('smollm2', prec), **kw)
                       for name, ds in (('helpsteer', hs), ('hh', hh))}
        seconds[prec] = round(time.time() - t, 1)
        print(f"{prec}: features in {seconds[prec]} s "
              f"({ {n: f['stats']['computed'] for n, f in feats[prec].items()} } computed)", flush=True)
    hs_aspects, hh_aspects = get_aspects(hs), get_aspects(hh)
    hs_k, hh_k = aspect_index(hs, hs_aspects), aspect_index(hh, hh_aspects)
    true_pd = rating_pd(hs, hs_aspects, prefix='').double()
    res = dict(benchmark='feature_precision_quality', sesoi=SESOI, estimators=list(ESTIMATORS), layers=layers,
               helpsteer=dict(n_pairs=len(hs), n_prompts=len(set(hs['prompt'])), rows={}),
               hh=dict(n_pairs=len(hh), n_prompts=len(set(hh['prompt'])), accuracy={}), feature_distance={},
               feature_seconds=seconds, cache_fill={p: cache_fill(default_cache('smollm2', p)) for p in PRECISIONS},
               boot=a.boot, seed=0, machine=C.machine())
    for prec in PRECISIONS[1:]:
        res['feature_distance'][prec] = distance(feats[prec]['hh']['feats'], feats['float32']['hh']['feats'])
    decisions = []
    for est in ESTIMATORS:
        feature, fit = resolve_feature(est, layers)
        hs_pd, hh_hits = {}, {}
        for prec in PRECISIONS:
            dx, dlen = pair_deltas(feats[prec]['helpsteer'], feature)
            cf = crossfit_margins(dx, dlen, hs_k, len(hs_aspects), list(hs['prompt']), k=5, seed=0, **fit)
            hs_pd[prec] = pd_from_margins(cf['margins'], hs_k)
            dx, dlen = pair_deltas(feats[prec]['hh'], feature)
            cf = crossfit_margins(dx, dlen, hh_k, len(hh_aspects), list(hh['prompt']), k=5, seed=0, **fit)
            hh_hits[prec] = own_aspect_hits(cf['margins'], hh_k)
        rows = {lvl: {r['estimate']: r for r in paired_bootstrap(hs_pd, true_pd, list(hs['prompt']), baseline='float32',
                                                                 B=a.boot, seed=0, level=lvl)} for lvl in (0.90, 0.95)}
        for prec in PRECISIONS:
            r90, r95 = rows[0.90][prec], rows[0.95][prec]
            row = dict(spearman=r95['spearman'], spearman_ci=r95['spearman_ci'],
                       sign_agreement=r95['sign_agreement'], sign_agreement_ci=r95['sign_agreement_ci'])
            if prec != 'float32':
                for m in ('spearman', 'sign_agreement'):
                    row.update({f'{m}_diff': r95[f'{m}_diff'], f'{m}_diff_ci90': r90[f'{m}_diff_ci'],
                                f'{m}_diff_ci95': r95[f'{m}_diff_ci']})
                    row[f'{m}_decision'] = decide(r90[f'{m}_diff_ci'], r95[f'{m}_diff_ci'], SESOI[m])
                    decisions.append((prec, est, f'HelpSteer {m}', row[f'{m}_decision']))
            res['helpsteer']['rows'][f'{est} {prec}'] = row
        acc = accuracy_diffs(hh_hits, hh_k, hh_aspects, list(hh['prompt']), a.boot, 0)
        for asp, per in acc.items():
            for prec, v in per.items():
                if prec != 'float32':
                    v['decision'] = decide(v['diff_ci90'], v['diff_ci95'], SESOI['accuracy'])
                    decisions.append((prec, est, f'HH {asp} accuracy', v['decision']))
            res['hh']['accuracy'][f'{est} {asp}'] = per
    res['decisions'] = [dict(precision=p, estimator=e, metric=m, decision=d) for p, e, m, d in decisions]
    equivalent = {prec: all(d == 'equivalent' for p, _, _, d in decisions if p == prec) for prec in PRECISIONS[1:]}
    res['equivalent_on_every_metric'] = equivalent
    res['verdict'] = ('bench/feature_precision_quality.py (pre-registered; SESOI Spearman and sign agreement '
                      f"{SESOI['spearman']}, accuracy {SESOI['accuracy']}; HelpSteer {len(hs)} pairs of "
                      f"{res['helpsteer']['n_prompts']} prompts, HH {len(hh)} pairs): "
                      + '; '.join(f"{p} {'equivalent to float32 on every metric' if ok else 'NOT equivalent on every metric'}"
                                  f" ({sum(d == 'equivalent' for q, _, _, d in decisions if q == p)} of "
                                  f"{sum(q == p for q, _, _, _ in decisions)} equivalent)" for p, ok in equivalent.items()))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str) + '\n')
    for d in res['decisions']:
        print(d)
    print(res['verdict'])

if __name__ == '__main__':
    main()
