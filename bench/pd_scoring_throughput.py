"""Benchmark 3: PD-scoring throughput of one shared backbone with K reward heads vs K separate single-head scorers.

Scoring every pair on all K aspects is what PD needs (the paper's pipeline, arXiv 2508.07638). `pd_align.reward.AspectRewardModel`
with K heads reads each text once; the alternative is K reward models with one head each, each reading
every text. Both sides use `pd_align.reward.score_texts` (batched, inference mode, length-sorted batches)
with the same backbone size, tokenizer, texts and batch size. Also measured: the effect of length-sorted
batching, i.e. `score_texts` against the same forward passes over batches in the data's own order
(padding share reported), and the end-to-end `score_dataset` rate (tokenizing, length columns, PD).
Runs are interleaved (shared, separate, unsorted, ...) within one process; median and IQR over repeats.
Target: speed-up >= 0.8*K for K = 4 and 5.

    python bench/pd_scoring_throughput.py            # default size, ~2 min on 2 cores
    python bench/pd_scoring_throughput.py --quick
"""
from __future__ import annotations
import os, sys, time
from tqdm.auto import tqdm
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SIZES = dict(
    default=dict(hidden=128, layers=4, heads=4, vocab=1024, n_pairs=192, batch=32, prompt_words=16, response_words=40,
                 jitter=0.9, repeats=5, Ks=[4, 5]),
    quick=dict(hidden=32, layers=1, heads=2, vocab=512, n_pairs=24, batch=8, prompt_words=6, response_words=10,
               jitter=0.9, repeats=1, Ks=[4, 5]),
)
ASPECTS = ['helpfulness', 'correctness', 'coherence', 'complexity', 'verbosity']

def _backbone(tok, s, seed):
    from pd_align.tiny import tiny_causal_lm
    return tiny_causal_lm(len(tok), hidden_size=s['hidden'], n_layers=s['layers'], n_heads=s['heads'], max_positions=512,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=seed)

def unsorted_scores(model, tok, texts, batch_size):
    "The same forward passes as `score_texts`, over batches in the given order (no length sorting): the baseline."
    import torch
    from pd_align.reward import encode, collate
    ids = encode(texts, tok, model.max_length)
    pad = tok.pad_token_id
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(ids), batch_size):
            out.append(model(**collate(ids[i:i + batch_size], pad, tok.padding_side)).float())
    return torch.cat(out)

def padding_share(lengths, batch_size, sort: bool) -> float:
    "Share of padded positions in the batches."
    ls = sorted(lengths, reverse=True) if sort else list(lengths)
    real = pad = 0
    for i in range(0, len(ls), batch_size):
        b = ls[i:i + batch_size]
        real += sum(b); pad += max(b) * len(b) - sum(b)
    return pad / (real + pad)

def main():
    p = C.parser(__doc__.splitlines()[0])
    a = p.parse_args()
    size = 'quick' if a.quick else 'default'
    s = SIZES[size]
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from pd_align.reward import AspectRewardModel, score_texts, format_text, encode, score_dataset
    from pd_align.data import from_records
    info = C.machine()
    recs = C.sized_pairs(s['n_pairs'], s['prompt_words'], s['response_words'], jitter=s['jitter'], aspects=ASPECTS, seed=0)
    tok = C.tokenizer_for(recs, s['vocab'])
    texts = [format_text(r['prompt'], r[k], tok) for r in recs for k in ('chosen', 'rejected')]
    lengths = [len(x) for x in encode(texts, tok, 512)]
    print(f"PD scoring: hidden {s['hidden']}, {s['layers']} layers, vocab {s['vocab']}, {s['n_pairs']} pairs = {len(texts)} texts "
          f"({min(lengths)}-{max(lengths)} tokens, mean {sum(lengths) / len(lengths):.0f}), batch {s['batch']}, {s['repeats']} repeats, "
          f"threads {torch.get_num_threads()}; load {info['loadavg_start']}")
    results, rows, targets = {}, [], []
    for K in s['Ks']:
        aspects = ASPECTS[:K]
        shared = AspectRewardModel(_backbone(tok, s, 0), aspects, seed=0)
        singles = [AspectRewardModel(_backbone(tok, s, 1 + j), [asp], seed=1 + j) for j, asp in enumerate(aspects)]
        for m in [shared, *singles]: m.max_length = 512
        for m in [shared, *singles]: score_texts(m, tok, texts[:2 * s['batch']], s['batch'], progress=False)  # warm-up (allocator, kernels)
        ds = from_records([{**r, 'aspect': aspects[i % K]} for i, r in enumerate(recs)], aspects=aspects)
        times = {k: [] for k in ('shared', 'separate', 'shared_unsorted', 'score_dataset')}
        for _ in tqdm(range(s['repeats']), desc=f'K={K}', leave=False):
            t = time.perf_counter(); score_texts(shared, tok, texts, s['batch'], progress=False)
            times['shared'].append(time.perf_counter() - t)
            t = time.perf_counter()
            for m in singles: score_texts(m, tok, texts, s['batch'], progress=False)
            times['separate'].append(time.perf_counter() - t)
            t = time.perf_counter(); unsorted_scores(shared, tok, texts, s['batch'])
            times['shared_unsorted'].append(time.perf_counter() - t)
            t = time.perf_counter(); score_dataset(shared, tok, ds, batch_size=s['batch'], progress=False)
            times['score_dataset'].append(time.perf_counter() - t)
        st = {k: C.summary(v) for k, v in times.items()}
        rate = {k: s['n_pairs'] / v['median'] for k, v in st.items()}
        # ratios within each repeat (the two timings of a ratio are seconds apart, so load drift cancels), then their median
        paired = C.summary([b / a for a, b in zip(times['shared'], times['separate'])])
        paired_sort = C.summary([b / a for a, b in zip(times['shared'], times['shared_unsorted'])])
        speedup, sort_gain = paired['median'], paired_sort['median']
        results[K] = dict(times=times, stats=st, pairs_per_s=rate, speedup=speedup, speedup_stats=paired, sorting_speedup=sort_gain,
                          sorting_stats=paired_sort, loadavg=C.loadavg())
        for k, label in (('shared', f'1 backbone, {K} heads (sorted batches)'), ('separate', f'{K} single-head scorers (sorted)'),
                         ('shared_unsorted', f'1 backbone, {K} heads, batches in data order'),
                         ('score_dataset', f'score_dataset end to end, {K} heads')):
            rows.append({'K': K, 'scorer': label, 'seconds, median [IQR]': C.fmt(st[k], '', 1, 2), 'pairs/s': f"{rate[k]:.0f}"})
        print(f"  K={K}: shared {rate['shared']:.0f} pairs/s, separate {rate['separate']:.0f} pairs/s -> speed-up {C.fmt(paired, 'x', 1, 2)}; "
              f"length sorting {C.fmt(paired_sort, 'x', 1, 2)} (paired medians [IQR]; load {results[K]['loadavg'][0]})", flush=True)
    pads = dict(sorted=padding_share(lengths, s['batch'], True), data_order=padding_share(lengths, s['batch'], False))
    print(C.table(rows))
    print(f"padded positions: {pads['sorted']:.1%} with length-sorted batches, {pads['data_order']:.1%} in data order")
    for K in s['Ks']:
        targets.append(C.target_line(f'K={K} speed-up shared / separate (>= 0.8*K = {0.8 * K:g})', results[K]['speedup'], '>=', 0.8 * K))
    C.save('pd_scoring_throughput', dict(benchmark='pd_scoring_throughput', size=size, settings={**s, 'threads': torch.get_num_threads()},
                                          n_params_backbone=C.n_params(shared.backbone), text_tokens=dict(min=min(lengths), max=max(lengths),
                                          mean=sum(lengths) / len(lengths)), padding_share=pads, machine=info, results=results,
                                          targets=targets, table=rows), a.out)

if __name__ == '__main__':
    main()
