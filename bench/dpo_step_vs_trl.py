"""Benchmark 1: one LoRA DPO optimizer step of `pd_align.train.train_dpo` vs `trl.DPOTrainer`.

Same tiny Llama (built from a config), same tokenizer, same pairs, batch, sequence lengths, LoRA config,
optimizer (AdamW), clipping and fp32 precision; both use the adapter-disabled model as the reference.
Each configuration runs in its own fresh process (peak RSS is that configuration's), in ABAB order.
Step time = wall time between the ends of consecutive optimizer steps (a callback in both trainers),
warm-up steps dropped. Target: ours <= 0.8x TRL's median step time.

    python bench/dpo_step_vs_trl.py            # default size, ~3-4 min on 2 cores
    python bench/dpo_step_vs_trl.py --size tiny   # overhead-dominated tiny model
    python bench/dpo_step_vs_trl.py --quick       # smoke run
"""
from __future__ import annotations
import sys, time, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SIZES = dict(
    default=dict(hidden=256, layers=4, heads=4, vocab=1024, n_pairs=256, batch=8, prompt_words=24, response_words=48,
                 steps=12, warmup=3, rounds=3),
    # overhead-dominated: the size of STACK.md's "22 ms/step" tiny GPT-2 figure
    tiny=dict(hidden=64, layers=2, heads=2, vocab=512, n_pairs=256, batch=8, prompt_words=8, response_words=16,
              steps=30, warmup=5, rounds=3),
    quick=dict(hidden=64, layers=2, heads=2, vocab=512, n_pairs=64, batch=4, prompt_words=8, response_words=12,
               steps=6, warmup=2, rounds=1),
)
# LoRA dropout 0: TRL's `disable_dropout=True` zeroes every dropout module, LoRA's included, while pd_align keeps
# LoRA's own dropout; with 0 both run exactly the same computation.
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules=['q_proj', 'v_proj'])

def _setup(s: dict):
    "Pairs, tokenizer and model, identical in every process (seeded)."
    import torch
    from pd_align.tiny import tiny_causal_lm
    recs = C.sized_pairs(s['n_pairs'], s['prompt_words'], s['response_words'], seed=0)
    tok = C.tokenizer_for(recs, s['vocab'])
    # model_vocab > len(tok): a wider LM head than the tokenizer needs (unused rows), to emulate a real LM's
    # vocabulary (SmolLM2: 49152) without a hub download
    model = tiny_causal_lm(max(len(tok), s.get('model_vocab') or 0), hidden_size=s['hidden'], n_layers=s['layers'], n_heads=s['heads'], max_positions=512,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=0)
    torch.manual_seed(0)
    return recs, tok, model

def _tokens(recs, tok) -> float:
    "Mean tokens per sequence (prompt + response + eos), as both trainers see them."
    n = [len(tok(r['prompt'] + r[k] + tok.eos_token)['input_ids']) for r in recs for k in ('chosen', 'rejected')]
    return sum(n) / len(n)

def _profiled(fn, profile: bool, top: int = 18):
    "Run fn(); with `profile`, under cProfile, returning the `top` functions by own time as text too."
    if not profile: return fn(), None
    import cProfile, io, pstats
    pr = cProfile.Profile()
    out = pr.runcall(fn)
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats('tottime').print_stats(top)
    return out, buf.getvalue()

def _size(size: str, model_vocab, steps, warmup) -> dict:
    return {**SIZES[size], 'model_vocab': model_vocab, **({'steps': steps} if steps else {}), **({'warmup': warmup} if warmup else {})}

def worker_ours(size: str, precompute: bool = False, profile: bool = False, model_vocab: int | None = None,
                full_logits: bool = False, steps: int | None = None, warmup: int | None = None) -> dict:
    "pd_align.train.train_dpo; `full_logits`: the [2B, T, V] logits path of before issue 18 (lean head switched off)."
    import warnings
    from pd_align import dpo_data
    from pd_align.train import DPOConfig, train_dpo
    if full_logits:
        dpo_data._lean_site = lambda model, batch: 'full logits (benchmark baseline)'
        warnings.filterwarnings('ignore', message='pair_logps')
    s = _size(size, model_vocab, steps, warmup)
    recs, tok, model = _setup(s)
    rss0 = C.rss_mb()
    stamps = []
    cfg = DPOConfig(max_steps=s['steps'], batch_size=s['batch'], lr=1e-4, beta=0.1, lora_r=LORA['r'], lora_alpha=LORA['alpha'],
                    lora_dropout=LORA['dropout'], target_modules=LORA['target_modules'], max_length=512, max_prompt_length=256,
                    max_grad_norm=1.0, lr_scheduler='linear', precompute_ref_logps=precompute, seed=0)
    t0 = time.perf_counter()
    res, prof = _profiled(lambda: train_dpo(model, recs, cfg, tokenizer=tok, callback=lambda step, entry: stamps.append(time.perf_counter())),
                          profile)
    total = time.perf_counter() - t0
    return dict(profile=prof, step_times=[b - a for a, b in zip(stamps, stamps[1:])][s['warmup'] - 1:], total_s=total, rss_before_mb=rss0,
                final_loss=res.final_loss, tokens_per_seq=_tokens(recs, tok), n_params=C.n_params(model))

def worker_trl(size: str, trl_defaults: bool = False, precompute: bool = False, profile: bool = False,
               model_vocab: int | None = None, steps: int | None = None, warmup: int | None = None) -> dict:
    "trl.DPOTrainer; `trl_defaults`: keep TRL's own defaults (bf16 autocast, gradient checkpointing) instead of matching ours."
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    s = _size(size, model_vocab, steps, warmup)
    recs, tok, model = _setup(s)
    rss0 = C.rss_mb()
    stamps = []
    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw): stamps.append(time.perf_counter())
    match = {} if trl_defaults else dict(bf16=False, gradient_checkpointing=False)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=s['batch'], max_steps=s['steps'], learning_rate=1e-4, beta=0.1,
                         max_length=512, max_grad_norm=1.0, lr_scheduler_type='linear', warmup_steps=0, report_to='none',
                         use_cpu=C.device() == 'cpu', save_strategy='no', logging_steps=1, disable_tqdm=True, seed=0,
                         dataloader_num_workers=0, precompute_ref_log_probs=precompute, **match)
        peft = LoraConfig(r=LORA['r'], lora_alpha=LORA['alpha'], lora_dropout=LORA['dropout'],
                          target_modules=LORA['target_modules'], task_type='CAUSAL_LM')
        ds = Dataset.from_list([dict(prompt=r['prompt'], chosen=r['chosen'], rejected=r['rejected']) for r in recs])
        tr = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft, callbacks=[Stamp()])
        assert len(tr.train_dataset) == len(ds), f'TRL dropped {len(ds) - len(tr.train_dataset)} rows (prompt >= max_length)'
        t0 = time.perf_counter()
        _, prof = _profiled(tr.train, profile)
        total = time.perf_counter() - t0
    losses = [h['loss'] for h in tr.state.log_history if 'loss' in h]
    return dict(profile=prof, step_times=[b - a for a, b in zip(stamps, stamps[1:])][s['warmup'] - 1:], total_s=total, rss_before_mb=rss0,
                final_loss=losses[-1] if losses else None, tokens_per_seq=_tokens(recs, tok), n_params=C.n_params(model))

WORKERS = dict(ours=worker_ours, trl=worker_trl)

def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument('--size', choices=['default', 'tiny'], default='default', help="'tiny': a model so small that per-step "
                   "framework overhead dominates (the regime of STACK.md's numbers)")
    p.add_argument('--rounds', type=int, default=None, help='ABAB rounds (default by size)')
    p.add_argument('--extra', action='store_true', help='also time TRL with its own defaults (bf16, gradient checkpointing) '
                   'and both trainers with precomputed reference log-probs (one no-grad pass before training, not in the step time)')
    p.add_argument('--model-vocab', type=int, default=None, help='LM-head width of the model (e.g. 49152, SmolLM2\'s), '
                   'wider than the tokenizer: shows the cost of materialising full logits')
    p.add_argument('--steps', type=int, default=None, help='optimizer steps per run (default by size)')
    p.add_argument('--warmup', type=int, default=None, help='first steps dropped from the step times (default by size)')
    p.add_argument('--no-full', action='store_true', help="with --model-vocab: leave out pd_align's full-logits path "
                   "(the step before issue 18's lean head), which is otherwise run as a third configuration")
    p.add_argument('--profile', action='store_true', help='one extra cProfile run of each trainer (not timed): top functions by own time')
    a = p.parse_args()
    size = 'quick' if a.quick else a.size
    s = _size(size, a.model_vocab, a.steps, a.warmup)
    rounds = a.rounds or s['rounds']
    common = dict(size=size, model_vocab=a.model_vocab, steps=a.steps, warmup=a.warmup)
    configs = [('pd_align', 'ours', common), ('trl', 'trl', common)]
    if a.model_vocab and not a.no_full: configs.append(('pd_align full logits (before #18)', 'ours', {**common, 'full_logits': True}))
    if a.extra:
        configs += [('trl (its defaults: bf16, grad. ckpt)', 'trl', dict(size=size, trl_defaults=True)),
                    ('pd_align (precomputed ref)', 'ours', dict(size=size, precompute=True)),
                    ('trl (precomputed ref)', 'trl', dict(size=size, precompute=True))]
    info = C.machine()
    print(f"DPO step: hidden {s['hidden']}, {s['layers']} layers, vocab {s['vocab']} (model head {a.model_vocab or s['vocab']}), batch {s['batch']} pairs, "
          f"LoRA {LORA}; {rounds} interleaved rounds x {s['steps']} steps; load {info['loadavg_start']}")
    runs = {name: [] for name, _, _ in configs}
    for r, (name, worker, kw) in C.interleaved(configs, rounds):
        res = C.run_isolated(__file__, worker, kw, threads=a.threads)
        res['loadavg'] = C.loadavg()
        runs[name].append(res)
        print(f"  round {r + 1}: {name:40s} median step {C.summary(res['step_times'])['median'] * 1e3:8.1f} ms   "
              f"peak RSS {res['peak_rss_mb']:7.0f} MiB   load {res['loadavg'][0]}", flush=True)
    rows, stats = [], {}
    for name, _, _ in configs:
        rs = runs[name]
        st = C.summary([t for r in rs for t in r['step_times']])
        peak = C.summary([r['peak_rss_mb'] for r in rs])
        delta = C.summary([r['peak_rss_mb'] - r['rss_before_mb'] for r in rs])
        stats[name] = dict(step=st, peak_rss=peak, peak_over_setup=delta, run_medians=[C.summary(r['step_times'])['median'] for r in rs],
                           cuda_peak_mb=[r['cuda_peak_mb'] for r in rs], final_loss=[r['final_loss'] for r in rs],
                           total_s=[r['total_s'] for r in rs])
        rows.append({'trainer': name, 'step ms, median [IQR]': C.fmt(st, '', 1e3), 'steps': st['n'],
                     'peak RSS MiB': f"{peak['median']:.0f}", 'peak - setup RSS MiB': f"{delta['median']:.0f}",
                     'final loss': f"{rs[-1]['final_loss']:.4f}" if rs[-1]['final_loss'] is not None else ''})
    print(C.table(rows))
    ratio = stats['pd_align']['step']['median'] / stats['trl']['step']['median']
    mem_ratio = stats['pd_align']['peak_rss']['median'] / stats['trl']['peak_rss']['median']
    ratios = dict(step_time=ratio, peak_rss=mem_ratio,
                  peak_over_setup=stats['pd_align']['peak_over_setup']['median'] / stats['trl']['peak_over_setup']['median'])
    print(f"peak-memory ratio pd_align / trl: {mem_ratio:.3f} (process peak RSS), {ratios['peak_over_setup']:.3f} (peak - setup RSS)")
    target = C.target_line('step time pd_align / trl', ratio, '<=', 0.8 if not a.model_vocab else 1.0)
    targets = [target]
    if a.model_vocab:
        mem_target = 0.6 if a.model_vocab >= 151_936 else 0.7
        targets.append(C.target_line('peak RSS pd_align / trl', mem_ratio, '<=', mem_target))
        full = 'pd_align full logits (before #18)'
        if full in stats:
            ratios['peak_rss_vs_full'] = stats['pd_align']['peak_rss']['median'] / stats[full]['peak_rss']['median']
            ratios['peak_over_setup_vs_full'] = stats['pd_align']['peak_over_setup']['median'] / stats[full]['peak_over_setup']['median']
            ratios['step_time_vs_full'] = stats['pd_align']['step']['median'] / stats[full]['step']['median']
            print(f"pd_align lean / full logits: peak RSS {ratios['peak_rss_vs_full']:.3f}, peak - setup {ratios['peak_over_setup_vs_full']:.3f}, "
                  f"step time {ratios['step_time_vs_full']:.3f}")
            if a.model_vocab >= 151_936: targets.append(C.target_line('peak RSS pd_align lean / full logits', ratios['peak_rss_vs_full'], '<=', 0.5))
    profiles = {}
    if a.profile:
        for name, worker, kw in configs[:2]:
            prof = C.run_isolated(__file__, worker, {**kw, 'profile': True}, threads=a.threads)['profile']
            profiles[name] = prof
            print(f"--- cProfile, {name} ({s['steps']} steps + setup), top functions by own time ---")
            print('\n'.join(prof.splitlines()[:40]))
    first = runs['pd_align'][0]
    C.save('dpo_step_vs_trl' + ('' if size == 'default' else f'_{size}') + (f'_vocab{a.model_vocab}' if a.model_vocab else ''),
           dict(benchmark='dpo_step_vs_trl', size=size, settings={**s, 'rounds': rounds, 'lora': LORA, 'threads': a.threads,
                                                                 'model_vocab': a.model_vocab},
                                    n_params=first['n_params'], tokens_per_seq=first['tokens_per_seq'], machine=info,
                                    stats=stats, ratio=ratio, memory_ratio=mem_ratio, ratios=ratios, target=target, targets=targets, runs=runs, table=rows, profiles=profiles), a.out)

if __name__ == '__main__':
    if not C.worker_main(WORKERS): main()
