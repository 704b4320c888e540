"""The text toy's second protocol: training that learns, exact expected gold over candidate sets, a learning gate, TOST."""

from __future__ import annotations
import copy, json, math, os, random, time
from dataclasses import dataclass, asdict, field, fields
from pathlib import Path
import numpy as np
import pandas
import torch
from torch import Tensor
from tqdm.auto import tqdm
from pd_align.data import aggregate
from pd_align.divergence import spearman
from pd_align.selection import select_random
from pd_align.train import DPOConfig, train_dpo, tokenize_pairs, collate_pairs, pair_logps, _eval_mode
from pd_align.experiments import Results, check_methods, method_key, summarize, format_table, write_results, torch_threads, mean_ci
from pd_align.text_toy import (TOPICS, PROMPT_TEMPLATES, ASPECTS, Grammar, TextToyConfig, make_config, make_prompt, sample_n,
                       pretrained_lm, score_matrix, gold_weights, is_grammatical, labelled_pool, mix_conflicts,
                       subset_conflict, true_pd, estimated_pd, unified_margin, needed_scores, method_data)

# %% split
def split_prompts(seed:int, # the experiment seed
                 ) -> dict: # train, heldout (primary: unseen topic-template pairs), topic (secondary: a held-out topic)
    "One seed's prompt split: one topic held out whole, and one template of every other topic held out."
    rng = random.Random(f'split-{seed}')
    topic = rng.choice(TOPICS)
    train, held = [], []
    for t in TOPICS:
        if t == topic: continue
        k = rng.randrange(len(PROMPT_TEMPLATES))
        for i in range(len(PROMPT_TEMPLATES)): (held if i == k else train).append(make_prompt(t, i))
    return dict(train=train, heldout=held, topic=[make_prompt(topic, i) for i in range(len(PROMPT_TEMPLATES))])

# %% candidates
def candidate_set(prompt:str, # a prompt of the language
                  n:int, # distinct candidates wanted
                  seed:int, # the experiment seed (the set is fixed per seed and prompt)
                  grammar:Grammar|None=None,
                 ) -> list[str]: # n distinct grammar responses about the prompt's topic
    "A fixed set of distinct grammar responses for `prompt`: the support of the exact expected gold."
    from pd_align.text_toy import topic_of
    g, rng, out = grammar or Grammar(), random.Random(f'cand-{seed}-{prompt}'), {}
    for _ in range(200 * n):
        out.setdefault(g.response(topic_of(prompt), rng), None)
        if len(out) == n: return list(out)
    raise ValueError(f"the grammar gave only {len(out)} distinct responses for {prompt!r}; {n} wanted")

def gold_pairs(prompts:list[str], cands:list[list[str]], gold:list[Tensor]) -> int:
    "How many candidate pairs with different gold rewards the prompts have (the most implicit-reward pairs there are)."
    n = 0
    for g in gold:
        d = g[:, None] != g[None, :]
        n += int(d.triu(1).sum())
    return n

@torch.no_grad()
def candidate_logps(model, tokenizer, prompts:list[str], cands:list[list[str]],
                    batch_size:int=256) -> list[Tensor]: # per prompt [n] summed log-probs of each candidate (+ end)
    "Sequence log-probabilities of every candidate response under `model`."
    flat = [dict(prompt=p, chosen=c, rejected=c) for p, cs in zip(prompts, cands) for c in cs]
    cfg = DPOConfig(max_length=96, max_prompt_length=16, lora_r=None)
    ex = tokenize_pairs(flat, tokenizer, cfg)
    out = []
    with _eval_mode(model):
        for i in range(0, len(ex), batch_size):
            b = collate_pairs(ex[i:i + batch_size], tokenizer.pad_token_id)
            out.append(pair_logps(model, b)[0].double())
    lp, k, res = torch.cat(out), 0, []
    for cs in cands:
        res.append(lp[k:k + len(cs)])
        k += len(cs)
    return res

def exact_gold(logps:list[Tensor], gold:list[Tensor]) -> Tensor: # [prompts] expected gold under the policy on C
    "Per prompt: sum over candidates of softmax(log-probs) x gold."
    return torch.stack([(lp.softmax(0) * g).sum() for lp, g in zip(logps, gold)])

def candidate_kl(logps:list[Tensor], ref:list[Tensor]) -> Tensor: # [prompts]
    "Per prompt: KL(policy || reference), both renormalised over the candidate set."
    out = []
    for lp, lq in zip(logps, ref):
        p, q = lp.log_softmax(0), lq.log_softmax(0)
        out.append((p.exp() * (p - q)).sum())
    return torch.stack(out)

def implicit_accuracy(logps:list[Tensor], ref:list[Tensor], gold:list[Tensor], n_pairs:int, seed:int) -> float:
    "Share of `n_pairs` gold-ordered candidate pairs (a seeded draw) whose implicit reward log(pi/ref) orders them so."
    pairs = [(k, i, j) for k, g in enumerate(gold) for i in range(len(g)) for j in range(i + 1, len(g)) if g[i] != g[j]]
    if n_pairs > len(pairs):
        raise ValueError(f"{n_pairs} held-out pairs asked; the candidates give {len(pairs)}")
    pairs = random.Random(f'pairs-{seed}').sample(pairs, n_pairs)
    r = [lp - lq for lp, lq in zip(logps, ref)]
    ok = [(r[k][i] - r[k][j]) * (gold[k][i] - gold[k][j]) > 0 for k, i, j in pairs]
    return float(np.mean(ok))

# %% protocol
GATE_KEYS = ('share', 'method', 'min_gain', 'min_implicit_acc')
CONFIRM2_METHODS = ('full', 'ova', 'avg', 'dfpo_est', 'random', 'random_epochs', 'raf', 'pd_oracle', 'pd', 'pd_high',
                    'pd_nl')

@dataclass
class Protocol2:
    "The second confirmatory design: every field is fixed by the committed protocol file (`load_protocol2`)."
    version:int=2
    seeds:tuple=(2000, 2001) # fresh confirmatory seeds
    methods:dict=field(default_factory=lambda: {'0.0': ['full'], '0.1': ['full', 'random', 'pd', 'pd_high'],
                                                '0.3': list(CONFIRM2_METHODS)}) # {conflict share: methods}
    ratio:float=0.3 # budget of the subset methods
    n_per_aspect:int=500 # pairs in each aspect's sub-dataset
    dpo_steps:int=300 # optimizer steps of every method ('random_epochs': the epochs of 'full' instead)
    warmup_ratio:float=0.1 # linear warm-up, then a constant learning rate
    n_candidates:int=48 # fixed candidate responses per held-out prompt (exact expected gold)
    heldout_pairs:int=2000 # gold-ordered candidate pairs per seed for the implicit-reward accuracy
    diag_samples:int=4 # sampled responses per held-out prompt (identical-to-SFT share, well-formed share)
    gate:dict=field(default_factory=lambda: dict(share=0.0, method='full', min_gain=0.10, min_implicit_acc=0.65))
    hypotheses:tuple=(('pd', 'full'), ('pd', 'random'), ('pd_high', 'full')) # (treatment, control)
    hypothesis_shares:tuple=(0.1, 0.3)
    sesoi:float=0.03 # smallest effect size of interest, in held-out expected gold
    alpha:float=0.05 # two-sided CI level 1 - alpha; TOST at alpha (90% CI inside +- sesoi)
    config:dict=field(default_factory=dict) # every `TextToyConfig` field

    def __post_init__(self):
        self.seeds, self.hypothesis_shares = tuple(self.seeds), tuple(float(s) for s in self.hypothesis_shares)
        self.hypotheses = tuple(tuple(h) for h in self.hypotheses)
        self.methods = {f'{float(k):.1f}' if False else str(float(k)): list(v) for k, v in self.methods.items()}
        if self.version != 2: raise ValueError(f"version must be 2, got {self.version}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be at least 2 distinct seeds, got {self.seeds}")
        for k, ms in self.methods.items(): check_methods(ms, CONFIRM2_METHODS, f'methods[{k}]')
        if sorted(self.gate) != sorted(GATE_KEYS):
            raise ValueError(f"gate must have exactly the keys {GATE_KEYS}, got {sorted(self.gate)}")
        if self.gate['method'] not in self.methods.get(str(float(self.gate['share'])), []):
            raise ValueError(f"the gate's method {self.gate['method']!r} does not run at share {self.gate['share']}")
        for s in self.hypothesis_shares:
            for t, b in self.hypotheses:
                if t not in self.methods.get(str(s), []) or b not in self.methods.get(str(s), []):
                    raise ValueError(f"hypothesis {t} vs {b} at share {s}: both must be in methods[{s}]")
        for name in ('dpo_steps', 'n_candidates', 'heldout_pairs', 'diag_samples', 'n_per_aspect'):
            if getattr(self, name) < 1: raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.sesoi: raise ValueError(f"sesoi must be > 0, got {self.sesoi}")
        make_config('default', **self.config) # unknown fields raise here

    @property
    def shares(self) -> tuple: return tuple(sorted(float(k) for k in self.methods))
    def methods_at(self, share:float) -> list: return self.methods[str(float(share))]
    def text_config(self) -> TextToyConfig: return make_config('default', **self.config)

_PROSE_KEYS = ('title', 'fixed', 'hypotheses_text', 'primary_metric', 'decision_rule', 'gate_text', 'sesoi_text',
               'training_text', 'seeds_note', 'pilot', 'run_command', 'exploratory_note')

def protocol2_dict(p:Protocol2, **text) -> dict:
    "The protocol file's content: every prose key of `_PROSE_KEYS`, and the design with the full `TextToyConfig`."
    missing = sorted(set(_PROSE_KEYS) - set(text))
    extra = sorted(set(text) - set(_PROSE_KEYS))
    if missing or extra: raise ValueError(f"protocol prose: missing keys {missing}, unknown keys {extra}")
    d = asdict(p)
    d['config'] = asdict(p.text_config())
    return dict(text, design=d)

def _exact_keys(got, want, where:str, path):
    "A ValueError naming the file, where, and every missing and unknown key."
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing: raise ValueError(f"protocol file {path}: {where} is missing the key(s) {missing}")
    if extra: raise ValueError(f"protocol file {path}: {where} has unknown key(s) {extra}; known: {sorted(want)}")

def heldout_capacity(p:Protocol2) -> dict: # {seed: gold-ordered candidate pairs the design gives on held-out prompts}
    "How many implicit-reward pairs each seed's held-out prompts and candidate sets can give (no model needed)."
    out = {}
    for s in p.seeds:
        hp = split_prompts(s)['heldout']
        cands = [candidate_set(q, p.n_candidates, s) for q in hp]
        out[s] = gold_pairs(hp, cands, [score_matrix([q] * len(c), c) @ gold_weights() for q, c in zip(hp, cands)])
    return out

def check_producible(p:Protocol2, path='<protocol>'):
    "Refuse a protocol whose held-out pair count or sub-dataset sizes the design cannot produce."
    cap = heldout_capacity(p)
    short = {s: n for s, n in cap.items() if n < p.heldout_pairs}
    if short:
        raise ValueError(f"protocol file {path}: heldout_pairs={p.heldout_pairs} but the held-out candidates of "
                         f"seed(s) {sorted(short)} give only {min(short.values())} gold-ordered pairs")

def load_protocol2(path:str|Path) -> Protocol2:
    "Protocol 2 from its file, strictly: every prose, design and config key present, none unknown, counts producible."
    doc = json.loads(Path(path).read_text())
    _exact_keys(doc, _PROSE_KEYS + ('design',), 'the top level', path)
    _exact_keys(doc['design'], [f.name for f in fields(Protocol2)], "'design'", path)
    _exact_keys(doc['design']['config'], [f.name for f in fields(TextToyConfig)], "'design.config'", path)
    _exact_keys(doc['design']['gate'], GATE_KEYS, "'design.gate'", path)
    try: p = Protocol2(**doc['design'])
    except (TypeError, ValueError) as e: raise ValueError(f"protocol file {path}: {e}") from None
    check_producible(p, path)
    return p

# %% run
def train_config(c:TextToyConfig, p:Protocol2, seed:int) -> DPOConfig:
    "Every method's DPO settings: full fine-tune, `p.dpo_steps` steps, constant lr after warm-up."
    return DPOConfig(lr=c.dpo_lr, max_steps=p.dpo_steps, batch_size=c.dpo_batch, beta=c.beta, lr_scheduler='constant',
                     warmup_ratio=p.warmup_ratio, lora_r=None, max_length=96, max_prompt_length=16,
                     rpo_alpha=c.rpo_alpha, seed=seed, logging_steps=25)

def epochs_steps(n_pairs:int, n_full:int, p:Protocol2, c:TextToyConfig) -> int:
    "'random_epochs': the steps that give `n_pairs` as many epochs as `p.dpo_steps` give the full data."
    return max(1, round(p.dpo_steps * n_pairs / n_full))

def seed_setup2(model, tok, c:TextToyConfig, p:Protocol2, seed:int) -> dict:
    "One seed: the prompt split, the labelled pool, the candidate sets, the SFT model's candidate log-probs and samples."
    sp = split_prompts(seed)
    rng = random.Random(seed)
    prompts = [rng.choice(sp['train']) for _ in range(c.n_prompts)]
    pool = labelled_pool(prompts, sample_n(model, tok, prompts, c.n_responses, seed, c.max_new_tokens), seed,
                         c.label_temperature)
    ev = {}
    for split in ('heldout', 'topic'):
        qs = sp[split]
        cands = [candidate_set(q, p.n_candidates, seed) for q in qs]
        gold = [score_matrix([q] * len(cs), cs) @ gold_weights() for q, cs in zip(qs, cands)]
        ev[split] = dict(prompts=qs, cands=cands, gold=gold, ref=candidate_logps(model, tok, qs, cands))
    samples = sample_n(model, tok, sp['heldout'], p.diag_samples, 30_000 + seed, c.max_new_tokens)
    return dict(split=sp, pool=pool, ev=ev, samples=samples)

def evaluate2(model, tok, setup:dict, p:Protocol2, c:TextToyConfig, seed:int, trained:bool=True) -> dict:
    "Exact expected gold (held-out prompts, held-out topic), KL on the candidates, implicit-reward accuracy, samples."
    out = {}
    for split, e in setup['ev'].items():
        lp = candidate_logps(model, tok, e['prompts'], e['cands']) if trained else e['ref']
        key = '' if split == 'heldout' else '_topic'
        out['gold' + key] = exact_gold(lp, e['gold']).mean().item()
        out['kl' + key] = candidate_kl(lp, e['ref']).mean().item()
        if split == 'heldout':
            out['implicit_acc'] = implicit_accuracy(lp, e['ref'], e['gold'], p.heldout_pairs, seed) if trained else float('nan')
            w = [l.softmax(0) for l in lp]
            S = [score_matrix([q] * len(cs), cs) for q, cs in zip(e['prompts'], e['cands'])]
            for k, a in enumerate(ASPECTS): out[a] = float(np.mean([(wi * s[:, k]).sum().item() for wi, s in zip(w, S)]))
    s = sample_n(model, tok, setup['split']['heldout'], p.diag_samples, 30_000 + seed, c.max_new_tokens) if trained \
        else setup['samples']
    flat, ref = [r for o in s for r in o], [r for o in setup['samples'] for r in o]
    out.update(identical=float(np.mean([a == b for a, b in zip(flat, ref)])),
               grammatical=float(np.mean([is_grammatical(r) for r in flat])), responses=flat)
    return out

def share_scores(ds, model, tok, c:TextToyConfig, seed:int, methods) -> tuple[dict, dict]:
    "The PD / margin scores the methods need, and facts about the reward models."
    scores, info, t0 = dict(true=true_pd(ds)), {}, time.time()
    need = needed_scores(methods)
    if 'pd' in need:
        scores['pd'], rep = estimated_pd(ds, model, tok, c, seed, length=True)
        info.update(pd_spearman=spearman(scores['pd'], scores['true']),
                    **{f'rm_acc_{a}': v for a, v in rep['heldout_accuracy'].items()})
    if 'nl' in need:
        scores['nl'], rep = estimated_pd(ds, model, tok, c, seed, length=False)
        info['nl_spearman'] = spearman(scores['nl'], scores['true'])
    if 'raf' in need:
        scores['raf'], rep = unified_margin(ds, model, tok, c, seed)
        info['raf_acc'] = rep['heldout_accuracy'].get('unified', float('nan'))
    info['rm_seconds'] = time.time() - t0
    return scores, info

def _row2(seed, share, method, n_train, steps, ev, **extra) -> dict:
    keep = ('gold', 'gold_topic', 'kl', 'kl_topic', 'implicit_acc', *ASPECTS, 'identical', 'grammatical')
    return dict(seed=seed, share=share, method=method, n_train=n_train, steps=steps, **{k: ev[k] for k in keep}, **extra)

def run_share2(model, tok, c:TextToyConfig, p:Protocol2, seed:int, share:float, setup:dict,
              ) -> tuple[list, dict, dict]: # (rows, data row, {method: sampled responses})
    "One seed and conflict share: the sub-datasets, the scores the methods need, one DPO policy per method."
    methods = p.methods_at(share)
    ds = aggregate(mix_conflicts(setup['pool'], p.n_per_aspect, share, seed))
    scores, info = share_scores(ds, model, tok, c, seed, methods)
    info.update(n_pairs=len(ds), realised_share=subset_conflict(ds))
    rows, samples = [], {}
    for m in methods:
        tm = time.time()
        name = 'random' if m == 'random_epochs' else m
        train, extra = method_data(name, ds, p.ratio, seed, scores, c)
        cfg = train_config(c, p, seed).replace(**{k: v for k, v in extra.items() if k != 'max_steps'})
        if m == 'random_epochs': cfg = cfg.replace(max_steps=epochs_steps(len(train), len(ds), p, c))
        res = train_dpo(copy.deepcopy(model), train, cfg, tokenizer=tok)
        ev = evaluate2(res.model, tok, setup, p, c, seed)
        rows.append(_row2(seed, share, m, len(train), cfg.max_steps, ev, ratio=len(train) / len(ds),
                          train_conflict=subset_conflict(train), loss=res.final_loss,
                          train_acc=res.train_log[-1]['accuracy'], seconds=time.time() - tm))
        samples[m] = ev['responses']
    return rows, info, samples

_SHARED2 = {}

def confirm_seed2(seed:int) -> tuple[list, list, dict]:
    "Every share and method of one seed, from the SFT model in `_SHARED2` (set by `run_protocol2`)."
    model, tok, c, p = _SHARED2['args']
    with torch_threads(1):
        ts, rows, data = time.time(), [], []
        setup = seed_setup2(model, tok, c, p, seed)
        sft = evaluate2(model, tok, setup, p, c, seed, trained=False)
        samples = dict(prompts=[q for q in setup['split']['heldout'] for _ in range(p.diag_samples)], sft=sft['responses'])
        for share in p.shares:
            r, info, s = run_share2(model, tok, c, p, seed, share, setup)
            rows += [_row2(seed, share, 'sft', 0, 0, sft, ratio=0.0)] + r
            data.append(dict(seed=seed, share=share, heldout=' | '.join(q.strip() for q in setup['split']['heldout']),
                             topic=setup['split']['topic'][0].strip(), pool=len(setup['pool']),
                             pool_conflict=float(np.mean([x['conflict'] for x in setup['pool']])), **info,
                             seconds=time.time() - ts))
            samples[f'{share}'] = s
    return rows, data, samples

def run_protocol2(p:Protocol2, progress:bool=True, workers:int=1) -> Results:
    "The second confirmatory run: per seed and share, every method's policy, evaluated exactly on held-out prompts."
    if workers < 1: raise ValueError(f"workers must be >= 1, got {workers}")
    c, t0 = p.text_config(), time.time()
    with torch_threads(1):
        model, tok, losses = pretrained_lm(c, progress)
    t_pre = time.time() - t0
    _SHARED2['args'] = (model, tok, c, p)
    if workers > 1:
        import multiprocessing
        os.environ['TOKENIZERS_PARALLELISM'] = 'false'
        with multiprocessing.get_context('fork').Pool(min(workers, len(p.seeds))) as pool:
            parts = list(tqdm(pool.imap(confirm_seed2, p.seeds), total=len(p.seeds), desc='seeds', disable=not progress))
    else: parts = [confirm_seed2(s) for s in tqdm(p.seeds, desc='seeds', leave=False, disable=not progress)]
    runs = pandas.DataFrame([r for part in parts for r in part[0]])
    data = pandas.DataFrame([d for part in parts for d in part[1]])
    config = dict(protocol=asdict(p), text_config=asdict(c), seconds=round(time.time() - t0, 1),
                  pretrain_seconds=round(t_pre, 1), pretrain_final_loss=float(np.mean(losses[-50:])), workers=workers)
    return Results(runs, summary2(runs, p), config, dict(data=data), dict(samples=parts[0][2]))

# %% tost
def t_cdf(x:float, df:int) -> float:
    "Student's t distribution function (Simpson's rule on the density; accurate to ~1e-7 for df >= 1)."
    if df < 1: raise ValueError(f"df must be >= 1, got {df}")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda t: c * (1 + t * t / df) ** (-(df + 1) / 2)
    a, n = abs(x), 2000
    h = a / n
    s = pdf(0) + pdf(a) + sum((4 if k % 2 else 2) * pdf(k * h) for k in range(1, n))
    half = s * h / 3
    return 0.5 + half if x >= 0 else 0.5 - half

def t_ppf(q:float, df:int) -> float:
    "Quantile of Student's t (bisection on `t_cdf`)."
    if not 0 < q < 1: raise ValueError(f"q must be in (0, 1), got {q}")
    lo, hi = -200.0, 200.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2

def paired_test(d, # per-seed paired differences
                sesoi:float, # equivalence margin
                alpha:float=0.05,
               ) -> dict: # mean, sd, n, 95% CI, 90% CI, TOST p, decision
    "Two-sided (1-alpha) t-interval of the mean difference, and two one-sided tests (TOST) against +- sesoi."
    d = np.asarray(d, dtype=float)
    n, m = len(d), float(d.mean())
    if n < 2: raise ValueError(f"a paired test needs >= 2 differences, got {n}")
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t2, t1 = t_ppf(1 - alpha / 2, n - 1), t_ppf(1 - alpha, n - 1)
    p_tost = max(1 - t_cdf((m + sesoi) / se, n - 1), t_cdf((m - sesoi) / se, n - 1)) if se > 0 else float(abs(m) >= sesoi)
    lo, hi = m - t2 * se, m + t2 * se
    differs, equivalent = lo > 0 or hi < 0, p_tost < alpha
    if differs and equivalent: decision = f"{'higher' if lo > 0 else 'lower'}, by less than the SESOI"
    elif differs: decision = 'higher' if lo > 0 else 'lower'
    elif equivalent: decision = f'equivalent within +-{sesoi:g} (TOST)'
    else: decision = 'not resolved'
    return dict(difference=m, sd=sd, n_seeds=n, ci_low=lo, ci_high=hi, ci90_low=m - t1 * se, ci90_high=m + t1 * se,
                p_tost=p_tost, decision=decision)

def power_paired(sd:float, effect:float, n:int, alpha:float=0.05) -> float:
    "Power of the two-sided paired t-test at `n` seeds for a true mean difference `effect` (normal-shift approximation)."
    if n < 2: return 0.0
    t2 = t_ppf(1 - alpha / 2, n - 1)
    shift = abs(effect) * math.sqrt(n) / sd
    return (1 - t_cdf(t2 - shift, n - 1)) + t_cdf(-t2 - shift, n - 1)

def seeds_for_power(sd:float, effect:float, power:float=0.8, alpha:float=0.05, at_least:int=10, at_most:int=200) -> int:
    "The fewest seeds (>= `at_least`) whose paired t-test has `power` for `effect` given the per-seed `sd`."
    for n in range(max(2, at_least), at_most + 1):
        if power_paired(sd, effect, n, alpha) >= power: return n
    raise ValueError(f"more than {at_most} seeds needed for effect {effect} at sd {sd}")

# %% gate and hypotheses
def learning_gate(runs:pandas.DataFrame, p:Protocol2) -> dict:
    "The pre-registered gate, from the per-seed rows: the gate method's gold gain over SFT and implicit-reward accuracy."
    g = p.gate
    at = runs[np.isclose(runs['share'], g['share'])]
    by = lambda m, k: at[at['method'] == m].set_index('seed')[k]
    d = (by(g['method'], 'gold') - by('sft', 'gold')).dropna()
    gain, half = mean_ci(d)
    acc, acc_half = mean_ci(by(g['method'], 'implicit_acc').dropna())
    ok_gain = gain >= g['min_gain'] and gain - half > 0
    ok_acc = acc >= g['min_implicit_acc']
    return dict(method=g['method'], share=g['share'], n_seeds=len(d), gain=gain, gain_low=gain - half,
                gain_high=gain + half, implicit_acc=acc, acc_low=acc - acc_half, acc_high=acc + acc_half,
                min_gain=g['min_gain'], min_implicit_acc=g['min_implicit_acc'], passed=bool(ok_gain and ok_acc))

class UninformativeRun(ValueError):
    "The learning gate failed: the run is uninformative and no hypothesis is read."

def hypothesis_tests2(runs:pandas.DataFrame, p:Protocol2) -> pandas.DataFrame:
    "The pre-registered hypotheses (each share): paired CI and TOST; raises `UninformativeRun` when the gate failed."
    gate = learning_gate(runs, p)
    if not gate['passed']:
        raise UninformativeRun(f"the learning gate failed ({gate['method']} at share {gate['share']}: gain "
                               f"{gate['gain']:+.3f} [{gate['gain_low']:+.3f}, {gate['gain_high']:+.3f}] vs >= "
                               f"{gate['min_gain']}, implicit-reward accuracy {gate['implicit_acc']:.3f} vs >= "
                               f"{gate['min_implicit_acc']}): the run is uninformative; no hypothesis is read")
    rows = []
    for s in p.hypothesis_shares:
        at = runs[np.isclose(runs['share'], s)]
        for t, b in p.hypotheses:
            d = (at[at['method'] == t].set_index('seed')['gold'] - at[at['method'] == b].set_index('seed')['gold'])
            rows.append(dict(share=s, hypothesis=f'{t} vs {b}', **paired_test(d.dropna(), p.sesoi, p.alpha)))
    return pandas.DataFrame(rows)

def summary2(runs:pandas.DataFrame, p:Protocol2) -> pandas.DataFrame:
    "Per share and method: held-out gold, KL, implicit-reward accuracy (mean, 95% CI), paired gold vs sft/full/random."
    order = ('sft',) + tuple(dict.fromkeys(m for s in p.shares for m in p.methods_at(s)))
    return summarize(runs, metrics=('gold', 'kl', 'implicit_acc', 'identical', 'gold_topic'),
                     baselines=('sft', 'full', 'random'), by=('share',), methods=order,
                     means=ASPECTS + ('grammatical', 'train_conflict', 'steps', 'loss'))

# %% write and read
def smoke_protocol2() -> Protocol2:
    "Protocol 2's shape at smoke size (CI, `--quick`): two seeds, tiny data and LM, few steps, few candidates."
    c = asdict(make_config('smoke', n_prompts=48))
    return Protocol2(seeds=(0, 1), methods={'0.0': ['full'], '0.1': ['full', 'random', 'pd', 'pd_high'],
                                             '0.3': ['full', 'random', 'random_epochs', 'pd', 'pd_high']},
                     n_per_aspect=12, dpo_steps=6, n_candidates=8, heldout_pairs=40, diag_samples=1, config=c)

def hypotheses_or_none(runs:pandas.DataFrame, p:Protocol2) -> pandas.DataFrame|None:
    "`hypothesis_tests2`, or None when the gate failed (the run is uninformative)."
    try: return hypothesis_tests2(runs, p)
    except UninformativeRun: return None

def table2(summary:pandas.DataFrame, share:float) -> str:
    "Plain text: exact held-out gold (mean ± 95% CI), paired differences vs full and random, diagnostics."
    s = summary[np.isclose(summary['share'], share)].reset_index(drop=True)
    formats = {'kl': '{:.2f}', 'implicit_acc': '{:.0%}', 'identical': '{:.0%}', 'grammatical': '{:.0%}',
               'train_conflict': '{:.0%}', 'steps': '{:.0f}', 'gold_topic': '{:+.3f}'}
    return format_table(s, metrics=('gold',), baselines=('sft', 'full', 'random'), formats=formats)

def gate_text(gate:dict) -> str:
    "The gate's outcome in one sentence, numbers included."
    verdict = 'PASSED' if gate['passed'] else 'FAILED: the run is uninformative (not a null result)'
    return (f"learning gate {verdict}. {gate['method']} at conflict share {gate['share']:.0%} raised held-out expected "
            f"gold over SFT by {gate['gain']:+.3f} (95% CI [{gate['gain_low']:+.3f}, {gate['gain_high']:+.3f}], "
            f"n={gate['n_seeds']} seeds; needed >= {gate['min_gain']} with the CI excluding 0) and reached implicit-reward "
            f"accuracy {gate['implicit_acc']:.3f} (95% CI [{gate['acc_low']:.3f}, {gate['acc_high']:.3f}]; needed >= "
            f"{gate['min_implicit_acc']})")

def write_protocol2_results(res:Results, p:Protocol2, out:str|Path) -> list[Path]:
    "results.json/.csv, runs.csv, data.csv, gate.json-like table, hypotheses.csv (if the gate passed), table.txt."
    gate = learning_gate(res.runs, p)
    res.tables['gate'] = pandas.DataFrame([gate])
    hyp = hypotheses_or_none(res.runs, p)
    if hyp is not None: res.tables['hypotheses'] = hyp
    text = gate_text(gate) + '\n\n'
    text += '\n\n'.join(f'conflict share {s:.0%}\n' + table2(res.summary, s) for s in p.shares)
    text += '\n\n' + (hyp.to_string(index=False) if hyp is not None else 'hypotheses: not read (the gate failed)')
    text += '\n' + method_key(('sft',) + tuple(dict.fromkeys(m for s in p.shares for m in p.methods_at(s)))) + '\n'
    return write_results(res, out, texts={'table.txt': text})

def read_protocol2_results(folder:str|Path) -> dict:
    "A written run, read back: protocol, runs, summary, data, the gate recomputed from the runs, hypotheses or None."
    doc = json.loads((Path(folder) / 'results.json').read_text())
    p = Protocol2(**doc['config']['protocol'])
    runs = pandas.DataFrame(doc['runs'])
    return dict(protocol=p, runs=runs, summary=summary2(runs, p), data=pandas.DataFrame(doc['data']),
                gate=learning_gate(runs, p), hypotheses=hypotheses_or_none(runs, p), config=doc['config'],
                provenance=doc['provenance'], samples=doc.get('samples', {}))

def run_text_toy2(protocol:str|Path|Protocol2|None=None, # a protocol-2 file or object
                  quick:bool=False, # `smoke_protocol2()` instead
                  out:str|Path|None=None, progress:bool=True, workers:int=1,
                 ) -> tuple[Results, dict, pandas.DataFrame|None]: # (results, gate, hypotheses or None)
    "Protocol 2 for the CLI: run, gate, hypotheses (only if the gate passed), optionally write the results."
    if quick == (protocol is not None): raise ValueError("give either a protocol or quick=True")
    p = smoke_protocol2() if quick else protocol if isinstance(protocol, Protocol2) else load_protocol2(protocol)
    res = run_protocol2(p, progress, workers)
    if out is not None: write_protocol2_results(res, p, out)
    return res, learning_gate(res.runs, p), hypotheses_or_none(res.runs, p)
