"""Benchmark: feature-cache throughput (responses/s) of `pd_align.features.build_features` at each `precision`.

Same backbone (SmolLM2-135M-Instruct, layers 4/8/12/16, pools last/mean/prompt, 256 tokens, batch 16), same texts: the
first `--pairs` HH pairs (chosen and rejected of each) of notebook 10's seeded shuffle of helpful-base + harmless-base
test. Each run fills a fresh cache folder; the precisions alternate (float32, medium, bf16, float32, ...) so that a
change of machine load hits all of them; median and quartiles over repeats, and the speed-up of each repeat against the
float32 run of the same repeat. Features are compared with the float32 ones: the largest difference relative to
max(1, |x|) (SmolLM2's hidden states reach ~100) and the smallest cosine; float32 against itself with batches of 3
instead of 16 gives the rounding floor. Target: speed-up >= 2 over float32 (today's path) with the features equal to
float rounding.

The first version of this benchmark measured running a shared prompt once with its key/value cache against every
text in full: 0.74x (`results/feature_cache_throughput_prompt_reuse.json`, RESULTS.md section 7); that path was removed.

    python bench/feature_cache_throughput.py                 # 64 responses, 3 repeats
    python bench/feature_cache_throughput.py --quick         # 16 responses, 1 repeat
The data: `PD_ALIGN_DATA_MIRROR` (a folder holding hh_helpful_base_test.jsonl.gz and hh_harmless_base_test.jsonl.gz),
else the hub (Anthropic/hh-rlhf).
"""
from __future__ import annotations
import argparse, json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

def hh_sample(n_pairs:int, seed:int=0):
    "The first `n_pairs` pairs of the seeded shuffle of both HH aspects (as notebook 10 orders them)."
    import numpy as np
    from pd_align.data import load_hub
    hh = load_hub('hh', split='test', on_error='skip')
    return hh.select(np.random.default_rng(seed).permutation(len(hh))[:n_pairs])

def run(model, tok, items, settings, precision:str) -> tuple[float, dict]:
    "Seconds of one build into a fresh folder, and its features."
    from pd_align.features import build_features
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        out = build_features(model, tok, items, Path(d)/'c', precision=precision, progress=False, **settings)
        return time.perf_counter() - t, out['feats']

def distance(feats:dict, ref:dict) -> dict:
    "Largest difference relative to max(1, |x|), smallest cosine (over non-zero rows) and the zero rows per feature set."
    import torch
    rel = max(((feats[k] - ref[k]).abs() / ref[k].abs().clamp(min=1)).max().item() for k in ref)
    rows = {k: ref[k].norm(dim=1) > 0 for k in ref}   # a window without prompt tokens pools to a zero 'prompt' row
    cos = min(torch.nn.functional.cosine_similarity(feats[k][m], ref[k][m]).min().item() for k, m in rows.items())
    return dict(max_rel_diff=rel, min_cosine=cos, zero_rows={k: int((~m).sum()) for k, m in rows.items() if (~m).any()})

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--pairs', type=int, default=32)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--quick', action='store_true')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default, one per core)')
    p.add_argument('--out', default=str(C.RESULTS/'feature_cache_throughput.json'))
    a = p.parse_args()
    if a.quick:
        a.pairs, a.repeats = 8, 1
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from pd_align.features import load_backbone, pair_items, _blocks, default_layers, PRECISIONS
    items = pair_items(hh_sample(a.pairs))
    model, tok = load_backbone('smollm2')
    settings = dict(layers=default_layers(len(_blocks(model))), pools=('last', 'mean', 'prompt'), max_length=256,
                    batch_size=16)
    run(model, tok, items[:16], settings, 'float32')   # warm-up: first-call allocations and kernel choices
    times, feats, load = {p: [] for p in PRECISIONS}, {}, []
    for r in range(a.repeats):
        for prec in PRECISIONS:
            s, feats[prec] = run(model, tok, items, settings, prec)
            times[prec].append(s)
            load.append(C.loadavg()[0])
            print(f"repeat {r}: {prec:8s} {len(items) / s:.2f} responses/s ({s:.1f} s)", flush=True)
    _, floor_feats = run(model, tok, items, {**settings, 'batch_size': 3}, 'float32')
    floor = distance(floor_feats, feats['float32'])['max_rel_diff']
    res = dict(benchmark='feature_cache_throughput', texts=len(items), pairs=a.pairs, repeats=a.repeats, settings=settings,
               torch_threads=torch.get_num_threads(), rounding_floor_rel=floor, target_speedup=2.0, loadavg_during=load,
               machine={**C.machine(), 'cpu': cpu_name(), 'bf16_units': bf16_units()}, precisions={})
    for prec in PRECISIONS:
        rate = C.summary([len(items) / s for s in times[prec]])
        speedup = C.summary([f / s for f, s in zip(times['float32'], times[prec])])
        res['precisions'][prec] = dict(rate=rate, speedup=speedup, **distance(feats[prec], feats['float32']))
        d = res['precisions'][prec]
        print(f"{prec:8s} {C.fmt(rate, ' responses/s', digits=2)}  x{C.fmt(speedup, digits=2)} vs float32  "
              f"max rel diff {d['max_rel_diff']:.1e} (floor {floor:.1e})  min cosine {d['min_cosine']:.7f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str) + '\n')
    print(f"(n={a.repeats} repeats of {len(items)} texts, {torch.get_num_threads()} threads, load average {load})")

def cpu_name() -> str:
    "The CPU model (Linux), or the platform's processor string."
    import platform
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()

def bf16_units() -> bool|None:
    "Whether oneDNN reports native bfloat16 support on this CPU (None: unknown)."
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return None

if __name__ == '__main__':
    main()
