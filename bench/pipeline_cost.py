"""Benchmark 4: cost of the PD pipeline (score every pair, keep the 30% most negative PD, DPO on them) vs DPO on all pairs.

Arm `full`: `train_dpo` for one epoch on all N pairs. Arm `pd30`: `score_dataset` with a K-head proxy
reward model (smaller than the policy, as in the paper), `select(method='pd', ratio=0.3)`, then `train_dpo`
for one epoch on the kept pairs. Same policy model, LoRA config, batch and tokenizer in both arms. The proxy's
own training (`train_reward_models`, a fixed number of steps) is timed too and reported beside the target,
which counts scoring + selection + training as the issue asks. Each arm runs in a fresh process, ABAB.
Target: (scoring + training on 30%) / (training on 100%) <= 0.5.

    python bench/pipeline_cost.py            # default size, ~3 min on 2 cores
    python bench/pipeline_cost.py --quick
"""
from __future__ import annotations
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SIZES = dict(
    default=dict(hidden=256, layers=4, heads=4, vocab=1024, n_pairs=240, batch=8, prompt_words=24, response_words=48,
                 rm_hidden=128, rm_layers=2, rm_heads=2, rm_steps=20, ratio=0.3, rounds=2),
    quick=dict(hidden=64, layers=2, heads=2, vocab=512, n_pairs=40, batch=4, prompt_words=8, response_words=12,
               rm_hidden=32, rm_layers=1, rm_heads=2, rm_steps=2, ratio=0.3, rounds=1),
)
ASPECTS = ['helpfulness', 'honesty', 'instruction_following', 'truthfulness']
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules=['q_proj', 'v_proj'])

def worker(size: str, arm: str) -> dict:
    import torch
    from pd_align.data import from_records
    from pd_align.tiny import tiny_causal_lm
    from pd_align.train import DPOConfig, train_dpo
    from pd_align.reward import tiny_reward_model, pair_texts, train_reward_models, score_dataset
    from pd_align.selection import select
    s = SIZES[size]
    ds = from_records(C.sized_pairs(s['n_pairs'], s['prompt_words'], s['response_words'], aspects=ASPECTS, seed=0), aspects=ASPECTS)
    tok = C.tokenizer_for(ds.to_list(), s['vocab'])
    policy = tiny_causal_lm(len(tok), hidden_size=s['hidden'], n_layers=s['layers'], n_heads=s['heads'], max_positions=512,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=0)
    cfg = DPOConfig(epochs=1, batch_size=s['batch'], lr=1e-4, lora_r=LORA['r'], lora_alpha=LORA['alpha'], lora_dropout=LORA['dropout'],
                    target_modules=LORA['target_modules'], max_length=512, max_prompt_length=256, seed=0)
    phases, extra = {}, {}
    def timed(name, fn, *args, **kw):
        t = time.perf_counter(); out = fn(*args, **kw); phases[name] = time.perf_counter() - t
        return out
    train_set = ds
    if arm == 'pd30':
        rm, rm_tok = timed('rm_build', tiny_reward_model, ASPECTS, pair_texts(ds), hidden_size=s['rm_hidden'], n_layers=s['rm_layers'],
                           n_heads=s['rm_heads'], max_positions=512, seed=0)
        timed('rm_train', train_reward_models, rm, rm_tok, ds, max_steps=s['rm_steps'], batch_size=8, lr=3e-3, progress=False)
        scored = timed('scoring', score_dataset, rm, rm_tok, ds, progress=False)
        train_set = timed('selection', select, scored, method='pd', ratio=s['ratio'])
        extra['n_params_rm'] = C.n_params(rm)
    res = timed('dpo', train_dpo, policy, train_set, cfg, tokenizer=tok)
    return dict(phases=phases, n_train=len(train_set), dpo_steps=res.train_log[-1]['step'], n_params_policy=C.n_params(policy), **extra)

WORKERS = dict(run=worker)

def main():
    p = C.parser(__doc__.splitlines()[0])
    a = p.parse_args()
    size = 'quick' if a.quick else 'default'
    s = SIZES[size]
    info = C.machine()
    print(f"pipeline cost: policy hidden {s['hidden']} x {s['layers']} layers, proxy RM hidden {s['rm_hidden']} x {s['rm_layers']}, "
          f"{s['n_pairs']} pairs, batch {s['batch']}, keep {s['ratio']:.0%}; {s['rounds']} interleaved rounds; load {info['loadavg_start']}")
    arms = [('full', dict(size=size, arm='full')), ('pd30', dict(size=size, arm='pd30'))]
    runs = {n: [] for n, _ in arms}
    for r, (name, kw) in C.interleaved(arms, s['rounds']):
        res = C.run_isolated(__file__, 'run', kw, threads=a.threads)
        res['loadavg'] = C.loadavg()
        runs[name].append(res)
        ph = ', '.join(f"{k} {v:.1f}s" for k, v in res['phases'].items())
        print(f"  round {r + 1}: {name:5s} {res['n_train']} pairs, {res['dpo_steps']} DPO steps: {ph} (load {res['loadavg'][0]})", flush=True)
    med = lambda name, key: C.summary([r['phases'].get(key, 0.0) for r in runs[name]])
    full = med('full', 'dpo')
    parts = {k: med('pd30', k) for k in ('rm_build', 'rm_train', 'scoring', 'selection', 'dpo')}
    pipe = C.summary([sum(r['phases'][k] for k in ('scoring', 'selection', 'dpo')) for r in runs['pd30']])
    pipe_all = C.summary([sum(r['phases'].values()) for r in runs['pd30']])
    rows = [{'arm': 'DPO on 100%', 'pairs': runs['full'][0]['n_train'], 'seconds, median [IQR]': C.fmt(full, '', 1, 1), 'vs 100%': '1.000'}]
    for k in ('rm_build', 'rm_train', 'scoring', 'selection', 'dpo'):
        rows.append({'arm': f'  pd30: {k}', 'pairs': runs['pd30'][0]['n_train'] if k == 'dpo' else s['n_pairs'],
                     'seconds, median [IQR]': C.fmt(parts[k], '', 1, 2), 'vs 100%': f"{parts[k]['median'] / full['median']:.3f}"})
    rows.append({'arm': 'pd30: scoring + selection + DPO on 30%', 'pairs': '', 'seconds, median [IQR]': C.fmt(pipe, '', 1, 1),
                 'vs 100%': f"{pipe['median'] / full['median']:.3f}"})
    rows.append({'arm': 'pd30: + proxy RM build and training', 'pairs': '', 'seconds, median [IQR]': C.fmt(pipe_all, '', 1, 1),
                 'vs 100%': f"{pipe_all['median'] / full['median']:.3f}"})
    print(C.table(rows))
    ratio, ratio_all = pipe['median'] / full['median'], pipe_all['median'] / full['median']
    target = C.target_line('(scoring + training on 30%) / (training on 100%)', ratio, '<=', 0.5)
    print(f"with the proxy reward model's build and training included: {ratio_all:.3f}")
    C.save('pipeline_cost', dict(benchmark='pipeline_cost', size=size, settings={**s, 'lora': LORA, 'threads': a.threads}, machine=info,
                                  n_params_policy=runs['full'][0]['n_params_policy'], n_params_rm=runs['pd30'][0].get('n_params_rm'),
                                  full=full, parts=parts, pipeline=pipe, pipeline_with_rm_training=pipe_all, ratio=ratio,
                                  ratio_with_rm_training=ratio_all, target=target, runs=runs, table=rows), a.out)

if __name__ == '__main__':
    if not C.worker_main(WORKERS): main()
