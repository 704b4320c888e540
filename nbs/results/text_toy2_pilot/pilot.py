"""PILOT for protocol 2 (not confirmatory): seeds 900-903, never to be used as confirmatory seeds.
Settings chosen on exploratory seed 800 (scratch/explore.py). Rule fixed before the pilot: SESOI = one fifth of ALL's mean
held-out gain over SFT at 30% conflict in the pilot, rounded to 0.005; seeds = fewest >= 10 giving 80% power for the
SESOI at the largest pilot SD of the six hypothesis differences (capped at 16 by the compute budget, power then reported)."""
import sys, time, torch
import pd_align.text_toy as TT
from pd_align.text_toy import _LM_FIELDS, make_config
from pd_align.text_toy2 import Protocol2, run_protocol2, write_protocol2_results
CONFIG = dict(n_prompts=320, rm_epochs=2.0, rm_batch=16, dpo_lr=2e-4, dpo_batch=8, rpo_alpha=0.2)
p = Protocol2(seeds=(900, 901, 902, 903), methods={'0.0': ['full'], '0.1': ['full', 'random', 'pd', 'pd_high'],
              '0.3': ['full', 'random', 'pd', 'pd_high']}, sesoi=0.03, config=CONFIG)
c = p.text_config()
TT._LM_CACHE[tuple(getattr(c, f) for f in _LM_FIELDS)] = torch.load('scratch/lm1200.pt', weights_only=False)
t0 = time.time()
res = run_protocol2(p, progress=True, workers=2)
res.config['note'] = 'PILOT (seeds 900-903, not confirmatory); the SFT LM was loaded from a cache of the same config'
write_protocol2_results(res, p, 'nbs/results/text_toy2_pilot')
print('pilot seconds', time.time() - t0)
