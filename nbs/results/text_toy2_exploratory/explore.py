# EXPLORATORY (seed 800): does ALL learn at 0% conflict with these settings? timing of the pieces.
import sys, time, json, random, torch, numpy as np
sys.path.insert(0, 'scratch')
from t2 import *
from pd_align.text_toy import *
from pd_align.train import DPOConfig, train_dpo
from pd_align.data import aggregate
torch.set_num_threads(1)
args = dict(a.split('=') for a in sys.argv[1:])
steps = int(args.get('steps', 300)); lr = float(args.get('lr', 1e-3)); batch = int(args.get('batch', 16))
pre = int(args.get('pre', 1200)); npa = int(args.get('npa', 500)); share = float(args.get('share', 0.0))
lora = args.get('lora', 'none'); beta = float(args.get('beta', 0.1))
c = make_config('default', pretrain_steps=pre, n_prompts=int(args.get('np', 256)))
import os, pd_align.text_toy as TT
from pd_align.text_toy import _LM_FIELDS
key = tuple(getattr(c, f) for f in _LM_FIELDS)
if os.path.exists(f'scratch/lm{pre}.pt'): TT._LM_CACHE[key] = torch.load(f'scratch/lm{pre}.pt', weights_only=False)
t0 = time.time(); model, tok, losses = pretrained_lm(c, progress=False)
if not os.path.exists(f'scratch/lm{pre}.pt'): torch.save((model, tok, losses), f'scratch/lm{pre}.pt'); print('pretrain', time.time() - t0, np.mean(losses[-50:]), flush=True)
seed = 800
sp = split_prompts(seed)
rng = random.Random(seed)
prompts = [rng.choice(sp['train']) for _ in range(c.n_prompts)]
t0 = time.time()
pool = labelled_pool(prompts, sample_n(model, tok, prompts, c.n_responses, seed, c.max_new_tokens), seed, c.label_temperature)
print('pool', len(pool), np.mean([r['conflict'] for r in pool]), time.time() - t0, flush=True)
for a in ASPECTS: print(a, sum(r['aspect']==a for r in pool), sum(r['aspect']==a and r['conflict'] for r in pool))
ds = aggregate(mix_conflicts(pool, npa, share, seed))
hp = sp['heldout']
cands = [candidate_set(p, 48, seed) for p in hp]
gold = [score_matrix([p]*len(cs), cs) @ gold_weights() for p, cs in zip(hp, cands)]
print('pairs available', gold_pairs(hp, cands, gold))
t0 = time.time(); ref = candidate_logps(model, tok, hp, cands); print('cand logps', time.time() - t0)
g_sft = exact_gold(ref, gold); print('sft gold', g_sft.mean().item(), 'uniform', torch.stack([g.mean() for g in gold]).mean().item(), 'max', torch.stack([g.max() for g in gold]).mean().item())
kw = dict(lora_r=None, precompute_ref_logps=True) if lora == 'none' else dict(lora_r=int(lora), lora_alpha=2*int(lora), target_modules=['q_proj','k_proj','v_proj','o_proj','gate_proj','up_proj','down_proj','lm_head'])
cfg = DPOConfig(lr=lr, max_steps=steps, batch_size=batch, beta=beta, lr_scheduler='constant', warmup_ratio=0.1, lora_dropout=0.0, max_length=96, max_prompt_length=16, rpo_alpha=float(args.get('rpo', 0.0)), seed=seed, logging_steps=50, **kw)
t0 = time.time(); res = train_dpo(copy.deepcopy(model), ds, cfg, tokenizer=tok); tt = time.time() - t0
print('train', tt, [round(h['loss'], 3) for h in res.train_log], [round(h['accuracy'], 2) for h in res.train_log])
lp = candidate_logps(res.model, tok, hp, cands)
g = exact_gold(lp, gold)
d = (g - g_sft)
print('ALL gold', g.mean().item(), 'gain', d.mean().item(), d.tolist())
print('kl', candidate_kl(lp, ref).mean().item(), 'impl acc', implicit_accuracy(lp, ref, gold, 2000, seed))
s1 = sample_n(res.model, tok, hp, 4, 5, 40); s0 = sample_n(model, tok, hp, 4, 5, 40)
print('sft gramm', np.mean([is_grammatical(r) for x in s0 for r in x])); same = np.mean([a == b for x, y in zip(s1, s0) for a, b in zip(x, y)]); print('identical', same, 'gramm', np.mean([is_grammatical(r) for x in s1 for r in x]))
for x, y in list(zip(s0, s1))[:2]: print(x[:2], '\n   ->', y[:2])
