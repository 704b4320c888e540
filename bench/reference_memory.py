"""Benchmark 2: peak memory of LoRA DPO with the adapter-disabled model as reference vs a separate frozen reference copy.

Both arms run `pd_align.train.train_dpo` with the same LoRA config, batch and pairs; arm B passes
`ref_model=copy.deepcopy(base model)`, which is what a trainer without adapter switching must hold.
Each arm runs in its own fresh process (ABAB order). Memory on CPU:
- `model peak`: peak RSS minus the RSS right after the imports, i.e. what the model, the reference, the
  optimizer and the activations add (the CPU analogue of torch.cuda.max_memory_allocated, which ignores
  the CUDA context and the loaded libraries); the target is checked on this one;
- `process peak`: the whole process's RSS high-water mark (ru_maxrss), which also carries the ~0.5 GiB of
  torch/transformers/peft code and is the same in both arms.
On a GPU, torch.cuda.max_memory_allocated is reported as well. Target: A <= 0.6x B.

    python bench/reference_memory.py            # default size (92M-parameter model, small micro-batch), ~3 min on 2 cores
    python bench/reference_memory.py --quick
"""
from __future__ import annotations
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SIZES = dict(
    default=dict(hidden=1024, layers=8, heads=16, vocab=8192, n_pairs=16, batch=2, prompt_words=8, response_words=12, steps=3, rounds=2),
    quick=dict(hidden=128, layers=2, heads=2, vocab=1024, n_pairs=8, batch=2, prompt_words=6, response_words=8, steps=2, rounds=1),
)
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules=['q_proj', 'v_proj'])

def worker(size: str, separate_reference: bool, overrides: dict) -> dict:
    import copy, torch
    from pd_align.tiny import tiny_causal_lm
    from pd_align.train import DPOConfig, train_dpo
    import peft, accelerate  # noqa: F401  (imported before the baseline so both arms count the same code)
    s = {**SIZES[size], **overrides}
    recs = C.sized_pairs(s['n_pairs'], s['prompt_words'], s['response_words'], seed=0)
    # a large vocabulary needs enough text to learn it: the tokenizer reads extra pseudo-text, the pairs stay short
    tok = C.tokenizer_for(recs + C.sized_pairs(2000, 40, 40, seed=1), s['vocab'])
    rss_base = C.rss_mb()
    model = tiny_causal_lm(len(tok), hidden_size=s['hidden'], n_layers=s['layers'], n_heads=s['heads'], max_positions=512,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=0)
    ref = copy.deepcopy(model) if separate_reference else None
    rss_models = C.rss_mb()
    cfg = DPOConfig(max_steps=s['steps'], batch_size=s['batch'], lr=1e-4, lora_r=LORA['r'], lora_alpha=LORA['alpha'],
                    lora_dropout=LORA['dropout'], target_modules=LORA['target_modules'], max_length=256, max_prompt_length=128, seed=0,
                    gradient_checkpointing=s.get('gradient_checkpointing', False))
    t0 = time.perf_counter()
    res = train_dpo(model, recs, cfg, tokenizer=tok, ref_model=ref)
    return dict(rss_base_mb=rss_base, rss_after_models_mb=rss_models, peak_rss_mb=C.peak_rss_mb(), cuda_peak_mb=C.cuda_peak_mb(),
                model_peak_mb=C.peak_rss_mb() - rss_base, weights_mb=sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
                n_params=C.n_params(model), train_s=time.perf_counter() - t0, final_loss=res.final_loss)

WORKERS = dict(run=worker)

def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument('--batch', type=int, default=None, help='pairs per step (more activations: the ratio moves towards 1)')
    p.add_argument('--response-words', type=int, default=None, help='mean words per response')
    p.add_argument('--gradient-checkpointing', action='store_true', help='both arms recompute activations in the backward pass')
    a = p.parse_args()
    size = 'quick' if a.quick else 'default'
    s = dict(SIZES[size])
    for k in ('batch', 'response_words'):
        if getattr(a, k) is not None: s[k] = getattr(a, k)
    info = C.machine()
    over = dict(batch=s['batch'], response_words=s['response_words'], gradient_checkpointing=a.gradient_checkpointing)
    arms = [('A: LoRA, adapter-disabled reference', dict(size=size, separate_reference=False, overrides=over)),
            ('B: LoRA + separate frozen reference copy', dict(size=size, separate_reference=True, overrides=over))]
    print(f"reference memory: hidden {s['hidden']}, {s['layers']} layers, vocab {s['vocab']}, batch {s['batch']}, "
          f"{s['steps']} steps, {s['rounds']} interleaved rounds; load {info['loadavg_start']}")
    runs = {name: [] for name, _ in arms}
    for r, (name, kw) in C.interleaved(arms, s['rounds']):
        res = C.run_isolated(__file__, 'run', kw, threads=a.threads)
        res['loadavg'] = C.loadavg()
        runs[name].append(res)
        print(f"  round {r + 1}: {name:42s} model peak {res['model_peak_mb']:7.0f} MiB  process peak {res['peak_rss_mb']:7.0f} MiB"
              f"  ({res['train_s']:.0f} s, load {res['loadavg'][0]})", flush=True)
    rows, stats = [], {}
    for name, _ in arms:
        rs = runs[name]
        st = {k: C.summary([r[k] for r in rs]) for k in ('model_peak_mb', 'peak_rss_mb', 'rss_base_mb', 'train_s')}
        cuda = [r['cuda_peak_mb'] for r in rs if r['cuda_peak_mb'] is not None]
        st['cuda_peak_mb'] = C.summary(cuda) if cuda else None
        stats[name] = st
        rows.append({'arm': name, 'model peak MiB': f"{st['model_peak_mb']['median']:.0f}",
                     'process peak MiB': f"{st['peak_rss_mb']['median']:.0f}", 'after imports MiB': f"{st['rss_base_mb']['median']:.0f}",
                     'CUDA max alloc MiB': f"{st['cuda_peak_mb']['median']:.0f}" if cuda else 'n/a (CPU)',
                     'train s': f"{st['train_s']['median']:.1f}"})
    print(f"model: {rs[0]['n_params'] / 1e6:.1f}M parameters, {rs[0]['weights_mb']:.0f} MiB of fp32 weights")
    print(C.table(rows))
    (na, _), (nb, _) = arms
    ratio = stats[na]['model_peak_mb']['median'] / stats[nb]['model_peak_mb']['median']
    process_ratio = stats[na]['peak_rss_mb']['median'] / stats[nb]['peak_rss_mb']['median']
    cuda_ratio = stats[na]['cuda_peak_mb']['median'] / stats[nb]['cuda_peak_mb']['median'] if stats[na]['cuda_peak_mb'] else None
    W = rs[0]['weights_mb']
    other = stats[na]['model_peak_mb']['median'] - W
    print(f"arm A = weights {W:.0f} MiB + {other:.0f} MiB of activations, LoRA, optimizer and allocator slack (E); "
          f"(W + E) / (2W + E) <= 0.6 exactly when E <= W/2: here E/W = {other / W:.2f}")
    print(f"process-peak ratio A/B (includes the ~{stats[na]['rss_base_mb']['median']:.0f} MiB of loaded libraries): {process_ratio:.3f}")
    target = C.target_line('model peak memory A / B', cuda_ratio if cuda_ratio is not None else ratio, '<=', 0.6)
    tag = ''.join(f'_{k}{s[k]}' for k in ('batch', 'response_words') if s[k] != SIZES[size][k] and size != 'quick')
    tag += '_gc' if a.gradient_checkpointing else ''
    C.save('reference_memory' + tag, dict(benchmark='reference_memory', size=size, settings={**s, 'lora': LORA, 'threads': a.threads},
                                     n_params=rs[0]['n_params'], weights_mb=rs[0]['weights_mb'], machine=info, stats=stats,
                                     ratio=ratio, process_ratio=process_ratio, extra_over_weights=other / W, cuda_ratio=cuda_ratio, target=target, runs=runs,
                                     table=rows), a.out)

if __name__ == '__main__':
    if not C.worker_main(WORKERS): main()
