"Write nbs/results/text_toy_protocol2.json from the pilot, by the rule fixed before the pilot (see pilot.py)."
import json, numpy as np, pandas
from pd_align.io import atomic_write_json
from pd_align.text_toy2 import (Protocol2, protocol2_dict, read_protocol2_results, seeds_for_power, power_paired,
                                CONFIRM2_METHODS, load_protocol2)
pilot = read_protocol2_results('nbs/results/text_toy2_pilot')
pp, pr = pilot['protocol'], pilot['runs']
sds = {}
for s in pp.hypothesis_shares:
    g = pr[np.isclose(pr['share'], s)].pivot(index='seed', columns='method', values='gold')
    for t, b in pp.hypotheses: sds[f'{t} vs {b} at {s:.0%}'] = float((g[t] - g[b]).std(ddof=1))
at30 = pr[np.isclose(pr['share'], 0.3)].pivot(index='seed', columns='method', values='gold')
gain30 = float((at30['full'] - at30['sft']).mean())
sesoi = round(round(gain30 / 5 / 0.005) * 0.005, 3)
sd_max = max(sds.values())
n = min(seeds_for_power(sd_max, sesoi, at_most=10_000), 16)
pw = power_paired(sd_max, sesoi, n)
gate = pilot['gate']
seeds = tuple(range(3000, 3000 + n))
print(dict(gain30=gain30, sesoi=sesoi, sd_max=sd_max, n=n, power=pw, sds=sds, gate=gate))
CONFIG = dict(n_prompts=320, rm_epochs=2.0, rm_batch=16, dpo_lr=2e-4, dpo_batch=8, rpo_alpha=0.2)
from dataclasses import asdict
from pd_align.text_toy import make_config
p = Protocol2(seeds=seeds, sesoi=sesoi, config=asdict(make_config('default', **CONFIG)))
sd_txt = ', '.join(f'{k} {v:.4f}' for k, v in sds.items())
text = dict(
    title='Text toy: protocol 2, pre-registered confirmatory run (issue 25)',
    fixed='2026-12-03, after the exploratory tuning (seed 800) and the pilot (seeds 900-903), before any run with the '
          'seeds below; committed on its own, with a commit message saying it is the pre-registration',
    hypotheses_text=['H1: PD-30% (pd: the 30% with the most negative PD estimated by the K-head proxy reward model with '
                     'length mitigation, i.e. length-balanced reward-model training and a fitted length penalty) differs '
                     'from ALL (full) in held-out expected gold',
                     'H2: PD-30% (pd) differs from RAND-30% (random: a uniform 30%, the same 300 optimizer steps)',
                     'H3: PD(high)-30% (pd_high: the 30% with the highest estimated PD) differs from ALL (full)',
                     'each at conflict share 10% and 30% (six tests); PD(rati.) = pd_oracle (true aspect scores), '
                     'PD(nl) = pd_nl (no length mitigation), RAND at equal epochs = random_epochs, OVA, AVG, DFPO (est.), '
                     'RAF are separately named descriptive rows at 30%, run on the last descriptive_seeds=3 seeds '
                     'only (compute budget); they decide nothing'],
    primary_metric='per seed, the exact expected gold reward of the policy restricted to a fixed candidate set: for '
                   'each of the 7 held-out prompts of split_prompts(seed) (one unseen template of every training topic), '
                   'n_candidates=48 distinct grammar responses drawn by candidate_set(prompt, 48, seed); the policy\'s '
                   'summed sequence log-probs (response + end token) softmaxed over the candidates times their gold '
                   'rewards, averaged over the prompts. The same candidates for every policy of a seed',
    decision_rule='per hypothesis and share, the paired difference per seed (same data, prompts and candidates); '
                  'decided as higher/lower when the two-sided 95% Student-t interval over the seeds excludes 0; '
                  'equivalent when two one-sided t-tests at alpha=0.05 against +-SESOI both reject (the 90% interval '
                  'lies inside +-SESOI); both: higher/lower by less than the SESOI; otherwise not resolved. No '
                  'adjustment for the six tests. Read only if the learning gate passed',
    gate_text='read first, from the results file: at conflict share 0% ALL (full) must raise held-out expected gold over '
              'SFT by >= 0.10 in mean with the 95% t-interval over the seeds excluding 0, AND reach mean held-out '
              'implicit-reward accuracy >= 0.65 (heldout_pairs=2000 gold-ordered candidate pairs per seed, implicit '
              'reward log pi/pi_ref). If it fails the run is reported as uninformative and no hypothesis is read',
    sesoi_text=f'SESOI = one fifth of ALL\'s mean held-out gain over SFT at 30% conflict in the pilot, rounded to 0.005 '
               f'(rule fixed before the pilot): pilot gain {gain30:+.4f}, so SESOI = {sesoi}. Reason: a selection method '
               f'that moves held-out gold by less than a fifth of what preference training on all the data buys is not '
               f'worth choosing for. Seeds: the fewest >= 10 with 80% power (two-sided paired t, alpha 0.05) for the '
               f'SESOI at the largest pilot SD ({sd_max:.4f}), capped at 16 by the compute budget: {n} seeds, power '
               f'{pw:.3f}',
    training_text='every policy: a full fine-tune of a copy of the SFT model (no LoRA: the config\'s lora_r and '
                  'lora_alpha are unused, they belong to protocol 1), DPO with beta 0.1, 300 optimizer steps for every '
                  'method, batch 8, AdamW lr 2e-4 constant after a linear warm-up over 10% of the steps, reference '
                  'log-probs precomputed from the SFT model, rpo_alpha = 0.2 (an NLL term on the chosen responses; '
                  'reason: on exploratory seed 800 plain DPO kept only 36% of sampled held-out responses in the grammar '
                  'at this learning rate, against 71% with 0.2 and 96% for SFT, while ALL still gained +0.155). '
                  'random_epochs: the random 30% for round(300 * n_subset / n_full) steps (the epochs of ALL). 500 '
                  'pairs per aspect (2000 per seed and share) from a pool of SFT samples of the 14 training prompts '
                  '(320 prompt draws x 4 responses); reward models (pd, pd_nl, raf): 2 epochs, batch 16',
    seeds_note=f'{seeds[0]}-{seeds[-1]}: never used before (used: exploratory 0-2 and 800, run 1 100-104, pilot '
               f'900-903)',
    pilot=f'seeds 900-903 (not confirmatory), methods of the hypotheses at 10% and 30% and ALL at 0%, the settings '
          f'below; results in nbs/results/text_toy2_pilot. Per-seed SD of the paired differences: {sd_txt}. Pilot '
          f'gate: ALL gain at 0% {gate["gain"]:+.4f} [{gate["gain_low"]:+.4f}, {gate["gain_high"]:+.4f}], '
          f'implicit-reward accuracy {gate["implicit_acc"]:.4f}',
    exploratory_note='training settings tuned on seed 800 only (ALL at 0% conflict, six settings; '
                     'nbs/results/text_toy2_exploratory); nothing was tuned on the pilot or confirmatory seeds',
    run_command='pd-align text-toy --protocol nbs/results/text_toy_protocol2.json --out '
                'nbs/results/text_toy_confirmatory2 --workers 2')
atomic_write_json('nbs/results/text_toy_protocol2.json', protocol2_dict(p, **text))
q = load_protocol2('nbs/results/text_toy_protocol2.json')
assert q == p, 'round trip'
print('written', q.seeds, q.sesoi)
