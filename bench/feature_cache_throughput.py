"""Benchmark: feature-cache throughput (responses/s) of `pd_align.features.build_features`, today's path vs the new one.

Same backbone (SmolLM2-135M-Instruct, layers 4/8/12/16, pools last/mean/prompt, 256 tokens), same texts: the first
`--pairs` HH pairs (chosen and rejected of each, so every prompt has two responses) of the notebook's seeded shuffle of
helpful-base + harmless-base test. Both paths sort a shard's texts by length into batches; the old one
(`reuse_prompt=False`) runs every text in full, the new one runs each shared prompt window once and feeds its
keys/values to all of its responses (texts cut at `max_length` fall back to the full path). Runs alternate
(old, new, old, new, ...) into fresh cache folders; median and IQR over repeats; the features of the two paths must
agree to 1e-5 relative to max(1, |feature|) (float32 hidden states reach ~100). Target: speed-up >= 2.

    python bench/feature_cache_throughput.py                 # 64 responses, 3 repeats
    python bench/feature_cache_throughput.py --quick         # 16 responses, 1 repeat
The data: `PD_ALIGN_DATA_MIRROR` (a folder holding hh_helpful_base_test.jsonl.gz and hh_harmless_base_test.jsonl.gz),
else the hub (Anthropic/hh-rlhf).
"""
from __future__ import annotations
import argparse, json, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

def hh_sample(n_pairs:int, seed:int=0):
    "The first `n_pairs` pairs of the seeded shuffle of both HH aspects (as notebook 10 orders them)."
    import numpy as np
    from pd_align.data import load_hub
    hh = load_hub('hh', split='test', on_error='skip')
    return hh.select(np.random.default_rng(seed).permutation(len(hh))[:n_pairs])

def run(model, tok, items, settings, reuse:bool) -> tuple[float, dict]:
    "Seconds of one build into a fresh folder, and its features."
    from pd_align.features import build_features
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        out = build_features(model, tok, items, Path(d)/'c', reuse_prompt=reuse, progress=False, **settings)
        return time.perf_counter() - t, out

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--pairs', type=int, default=32)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--quick', action='store_true')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads for both paths (1: fastest when other processes share the cores)')
    p.add_argument('--out', default=str(C.RESULTS/'feature_cache_throughput.json'))
    a = p.parse_args()
    if a.quick:
        a.pairs, a.repeats = 8, 1
    import torch
    torch.set_num_threads(a.threads)
    from pd_align.features import load_backbone, pair_items, _blocks, default_layers
    ds = hh_sample(a.pairs)
    items = pair_items(ds)
    model, tok = load_backbone('smollm2')
    settings = dict(layers=default_layers(len(_blocks(model))), pools=('last', 'mean', 'prompt'), max_length=256,
                    batch_size=16)
    times, feats, load = {False: [], True: []}, {}, []
    for r in range(a.repeats):
        for reuse in (False, True):
            s, out = run(model, tok, items, settings, reuse)
            times[reuse].append(s)
            feats[reuse] = out['feats']
            load.append(C.loadavg()[0])
            print(f"repeat {r}: {'new' if reuse else 'old'} {len(items) / s:.2f} responses/s ({s:.1f} s)", flush=True)
    diff = max((feats[True][k] - feats[False][k]).abs().max().item() for k in feats[False])
    rel = max(((feats[True][k] - feats[False][k]).abs() / feats[False][k].abs().clamp(min=1)).max().item()
              for k in feats[False])   # hidden states reach |x| ~ 100: float32 rounding is relative
    # the rounding floor: today's path against itself with another batch composition (batches of 3 instead of 16)
    _, floor_out = run(model, tok, items, {**settings, 'batch_size': 3}, False)
    floor = max(((floor_out['feats'][k] - feats[False][k]).abs() / feats[False][k].abs().clamp(min=1)).max().item()
                for k in feats[False])
    rate = {k: C.summary([len(items) / s for s in v]) for k, v in times.items()}
    speedup = C.summary([o / n for o, n in zip(times[False], times[True])])
    res = dict(benchmark='feature_cache_throughput', texts=len(items), pairs=a.pairs, repeats=a.repeats, settings=settings,
               torch_threads=torch.get_num_threads(), old=rate[False], new=rate[True], speedup=speedup,
               max_abs_feature_diff=diff, max_rel_feature_diff=rel, rounding_floor_rel=floor,
               features_equal_1e5=rel <= 1e-5, target_speedup=2.0,
               loadavg_during=load, machine=C.machine())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str) + '\n')
    print(f"old {C.fmt(rate[False], ' responses/s', digits=2)}; new {C.fmt(rate[True], ' responses/s', digits=2)}; "
          f"speed-up {C.fmt(speedup, 'x', digits=2)} (n={a.repeats} repeats of {len(items)} texts); max |diff| {diff:.1e}, "
          f"relative to max(1, |x|) {rel:.1e} (today's path vs itself at batch 3: {floor:.1e}); "
          f"load average {load}")
    print(f"target speed-up >= 2: {'met' if speedup['median'] >= 2 else 'NOT met'}; features equal to 1e-5 (relative): "
          f"{'yes' if rel <= 1e-5 else 'NO'}")

if __name__ == '__main__':
    main()
