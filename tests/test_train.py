"""pd_align.train: LoRA/full DPO on a tiny Llama on CPU (learning, exact resume, reference, masking, dfpo, bf16, CLI)."""
import copy, json, math
from pathlib import Path
import numpy as np
import pytest
import torch

from pd_align.io import write_jsonl_atomic
from pd_align.losses import sequence_logps
from pd_align.tiny import tiny_model_and_tokenizer
from pd_align.train import (DPOConfig, train_dpo, evaluate_dpo, tokenize_pairs, collate_pairs, pair_logps, reference_logps,
                            latest_checkpoint, add_lora, load_run, reward_win_rate, sample_responses, is_peft)
from pd_align.synthetic import synthetic_pairs, DEMO




@pytest.fixture(scope='module')
def tiny():
    rows = synthetic_pairs(24, seed=0, **DEMO)
    texts = [r[k] for r in rows for k in ('prompt', 'chosen', 'rejected')]
    model, tok = tiny_model_and_tokenizer(texts, vocab_size=400, hidden_size=32)
    return model, tok, rows


BASE = dict(lr=1e-2, beta=0.5, batch_size=8, lora_r=8, lora_alpha=16, lora_dropout=0.0, target_modules='all-linear', logging_steps=1)


def test_lora_dpo_learns_on_cpu(tiny):
    model, tok, rows = tiny
    before = evaluate_dpo(add_lora(copy.deepcopy(model), DPOConfig(**BASE)), tok, rows)
    assert before['accuracy'] < 0.2 and abs(before['loss'] - math.log(2)) < 1e-3  # policy == reference: no preference yet
    res = train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=24), tokenizer=tok)
    assert is_peft(res.model)
    losses = [h['loss'] for h in res.train_log]
    assert abs(losses[0] - math.log(2)) < 1e-4          # step 1 sees policy == reference
    assert sum(losses[-4:]) / 4 < losses[0] - 0.15       # and the loss goes down
    after = evaluate_dpo(res.model, tok, rows, res.config)
    assert after['accuracy'] > 0.7 and after['margin'] > 0.3
    assert after['loss'] < before['loss'] - 0.15
    assert set(res.train_log[-1]) >= {'loss', 'accuracy', 'chosen_reward', 'rejected_reward', 'margin', 'lr', 'grad_norm'}


def test_resume_reproduces_uninterrupted_run(tiny, tmp_path):
    model, tok, rows = tiny
    cfg = DPOConfig(**{**BASE, 'lora_dropout': 0.1, 'batch_size': 4}, grad_accum=2, max_steps=8, save_steps=2,
                    save_total_limit=2, warmup_ratio=0.25, lr_scheduler='cosine')
    straight = train_dpo(copy.deepcopy(model), rows, cfg.replace(output_dir=str(tmp_path / 'a')), tokenizer=tok)

    def crash(step, entry):
        if step == 5: raise KeyboardInterrupt('simulated interruption')
    with pytest.raises(KeyboardInterrupt):
        train_dpo(copy.deepcopy(model), rows, cfg.replace(output_dir=str(tmp_path / 'b')), tokenizer=tok, callback=crash)
    assert latest_checkpoint(tmp_path / 'b').name == 'checkpoint-4'
    assert sorted(p.name for p in (tmp_path / 'b').glob('checkpoint-*')) == ['checkpoint-2', 'checkpoint-4']  # save_total_limit
    assert not list((tmp_path / 'b').glob('.*tmp'))                                                         # no half-written folders
    resumed = train_dpo(copy.deepcopy(model), rows, cfg.replace(output_dir=str(tmp_path / 'b')), tokenizer=tok, resume_from_checkpoint=True)
    assert abs(straight.final_loss - resumed.final_loss) < 1e-6
    assert [h['loss'] for h in straight.train_log] == [h['loss'] for h in resumed.train_log]
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
    # an explicit checkpoint folder, resumed into a fresh output folder, gives the same
    again = train_dpo(copy.deepcopy(model), rows, cfg.replace(output_dir=str(tmp_path / 'c')), tokenizer=tok,
                      resume_from_checkpoint=tmp_path / 'a' / 'checkpoint-6')
    assert abs(again.final_loss - straight.final_loss) < 1e-6
    assert json.loads((tmp_path / 'a' / 'log_history.json').read_text())[-1]['loss'] == straight.final_loss


def test_reference_from_disabled_adapters_equals_base(tiny):
    model, tok, rows = tiny
    res = train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=3), tokenizer=tok)
    batch = collate_pairs(tokenize_pairs(rows[:6], tok), tok.pad_token_id)
    with torch.no_grad():
        policy = pair_logps(res.model.eval(), batch)
        base = pair_logps(copy.deepcopy(model).eval(), batch)
    assert not torch.equal(policy[0], base[0])              # the adapters did change the policy
    ref = reference_logps(res.model, batch)
    assert torch.equal(ref[0], base[0]) and torch.equal(ref[1], base[1])


def test_prompt_tokens_are_masked_and_truncation_policy(tiny):
    model, tok, rows = tiny
    ex = tokenize_pairs(rows[:4], tok)
    batch = collate_pairs(ex, tok.pad_token_id)
    B = len(ex)
    for i, e in enumerate(ex):
        for r, resp in ((i, e['chosen_ids']), (B + i, e['rejected_ids'])):
            m = batch['loss_mask'][r]
            assert not m[:len(e['prompt_ids'])].any()
            assert m[len(e['prompt_ids']):len(e['prompt_ids']) + len(resp)].all() and m.sum() == len(resp)
    with torch.no_grad(): logits = model.eval()(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits
    want = sequence_logps(logits, batch['input_ids'], batch['loss_mask'])
    noisy, labels = logits.clone(), batch['input_ids'].clone()
    outside = ~batch['loss_mask']
    noisy[:, :-1][outside[:, 1:]] = torch.randn_like(noisy[:, :-1][outside[:, 1:]]) * 50   # logits that score prompt/pad tokens
    labels[outside] = (labels[outside] + 7) % len(tok)                                    # change the prompt/pad label tokens
    assert torch.equal(sequence_logps(noisy, labels, batch['loss_mask']), want)
    # truncation: keep the prompt's end, cut the responses' ends
    short = tokenize_pairs(rows[:4], tok, DPOConfig(max_length=9, max_prompt_length=4))
    for s, e in zip(short, ex):
        assert s['prompt_ids'] == e['prompt_ids'][-4:]
        assert s['chosen_ids'] == e['chosen_ids'][:5] and s['rejected_ids'] == e['rejected_ids'][:5]


def test_dfpo_with_zero_pd_and_unit_weight_equals_dpo(tiny):
    model, tok, rows = tiny
    zero = [{**r, 'pd': 0.0} for r in rows]
    cfg = DPOConfig(**BASE, max_steps=4)
    a = train_dpo(copy.deepcopy(model), zero, cfg, tokenizer=tok)
    unscored = [{k: v for k, v in r.items() if not k.endswith('_scores')} for r in zero]
    one = [{**r, 'aspect': 'polite'} for r in unscored]        # one aspect, no scores naming others: the weight is 1
    b = train_dpo(copy.deepcopy(model), one, cfg.replace(loss='dfpo'), tokenizer=tok)
    assert [h['loss'] for h in a.train_log] == [h['loss'] for h in b.train_log]
    # two aspects: weights are normalised to sum 1, so {1, 1} is w = 1/2, and DFPO at pd = 0 is DPO at 2 beta
    c = train_dpo(copy.deepcopy(model), zero, cfg.replace(loss='dfpo', aspect_weights={'polite': 1.0, 'on_topic': 1.0}), tokenizer=tok)
    a2 = train_dpo(copy.deepcopy(model), zero, cfg.replace(beta=2 * cfg.beta), tokenizer=tok)
    assert [h['loss'] for h in a2.train_log] == pytest.approx([h['loss'] for h in c.train_log], abs=1e-6)
    # real pd and the default uniform weights 1/K change the objective
    d = train_dpo(copy.deepcopy(model), rows, cfg.replace(loss='dfpo'), tokenizer=tok)
    assert d.train_log[0]['loss'] != a.train_log[0]['loss']
    with pytest.raises(ValueError, match="'pd'"):
        train_dpo(copy.deepcopy(model), [{k: v for k, v in r.items() if k != 'pd'} for r in rows], cfg.replace(loss='dfpo'), tokenizer=tok)
    bad = [dict(r) for r in rows]; bad[3]['pd'] = float('nan')
    with pytest.raises(ValueError, match='polite-3'):
        train_dpo(copy.deepcopy(model), bad, cfg.replace(loss='dfpo'), tokenizer=tok)
    with pytest.raises(ValueError, match='on_topic'):
        train_dpo(copy.deepcopy(model), rows, cfg.replace(loss='dfpo', aspect_weights={'polite': 1.0}), tokenizer=tok)
    with pytest.raises(ValueError, match='uniform'):
        train_dpo(copy.deepcopy(model), rows, cfg.replace(loss='dfpo', aspect_weights=1.0), tokenizer=tok)


# ---------- issue 15: DFPO on a scored dataset (weights, units), reward scoring as in training

@pytest.fixture(scope='module')
def scored_world():
    "A synthetic 3-aspect world scored by an (untrained) tiny K-head reward model with weights 1:1:2, and a tiny policy."
    reward = pytest.importorskip('pd_align.reward')
    from pd_align.synthetic import synthetic_pairs, SYNTHETIC_ASPECTS
    world = synthetic_pairs(12, seed=0)
    rm, rtok = reward.tiny_reward_model(SYNTHETIC_ASPECTS, reward.pair_texts(world), vocab_size=300, hidden_size=32, seed=1)
    scored = reward.score_dataset(rm, rtok, world, weights={'polite': 1, 'on_topic': 1, 'positive': 2}, progress=False)
    texts = [t for r in world for t in (r['prompt'], r['chosen'], r['rejected'])]
    policy, ptok = tiny_model_and_tokenizer(texts, vocab_size=400, hidden_size=32)
    return scored, policy, ptok


def _subset_without(scored, aspect):
    return scored.select([i for i, a in enumerate(scored['aspect']) if a != aspect])


def test_dfpo_weights_are_the_scored_datasets_normalised_weights(scored_world):
    """Issue 15 item 1: w_k of DFPO is the weight PD was computed with, normalised over the scored dataset's K = 3
    aspects, also on a subset where selection dropped an aspect (and not 1/K_left, nor an unnormalised dict)."""
    scored, policy, ptok = scored_world
    sub = _subset_without(scored, 'positive')
    want = {'polite': 0.25, 'on_topic': 0.25}
    ex = tokenize_pairs(sub, ptok, DPOConfig(loss='dfpo'))
    assert [e['weight'] for e in ex] == pytest.approx([want[a] for a in sub['aspect']])
    ex2 = tokenize_pairs(sub, ptok, DPOConfig(loss='dfpo', aspect_weights={'polite': 2, 'on_topic': 2, 'positive': 4}))
    assert [e['weight'] for e in ex2] == pytest.approx([want[a] for a in sub['aspect']])
    with pytest.raises(ValueError, match='disagree'):
        tokenize_pairs(sub, ptok, DPOConfig(loss='dfpo', aspect_weights={'polite': 1, 'on_topic': 1, 'positive': 1}))


def test_dfpo_on_a_scored_dataset_uses_pd_in_reward_units(scored_world, tmp_path):
    """Issue 15 item 5: at step 0 (policy = reference, h = 0) the DFPO loss on a scored subset equals
    mean_i -log sigmoid(PD_i / w_k) with PD_i = -sum_{j != k} w_j clip(Delta_j, -s_j, s_j): the reward-model margins in
    reward units, clipped at each aspect's 0.9-quantile s_j of |Delta_j| over the whole scored set."""
    scored, policy, ptok = scored_world
    aspects = ['polite', 'on_topic', 'positive']
    w = np.array([0.25, 0.25, 0.5])
    d = np.array([[c[a] - r[a] for a in aspects] for c, r in zip(scored['chosen_scores'], scored['rejected_scores'])])
    s = np.quantile(np.abs(d), 0.9, axis=0)                       # the scale of every aspect, over the scored set
    sub = _subset_without(scored, 'positive')
    keep = [i for i, a in enumerate(scored['aspect']) if a != 'positive']
    k = np.array([aspects.index(a) for a in sub['aspect']])
    clipped = np.clip(d[keep], -s, s)
    other = np.ones_like(clipped); other[np.arange(len(k)), k] = 0
    pd_rew = -(other * w * clipped).sum(1)
    want = float(np.mean(np.logaddexp(0.0, -pd_rew / w[k])))
    ex = tokenize_pairs(sub, ptok, DPOConfig(loss='dfpo'))
    assert [e['pd'] for e in ex] == pytest.approx(pd_rew.tolist(), abs=1e-5)
    cfg = DPOConfig(**BASE, loss='dfpo')
    got = evaluate_dpo(add_lora(copy.deepcopy(policy), cfg), ptok, sub, cfg)['loss']
    assert got == pytest.approx(want, abs=1e-5)
    # the settings travel with the data: a subset saved to disk and read back as `pd-align train` reads it
    from pd_align.data import load_local
    sub.save_to_disk(str(tmp_path / 'sub'))
    again = tokenize_pairs(load_local(tmp_path / 'sub'), ptok, DPOConfig(loss='dfpo'))
    assert [e['pd'] for e in again] == pytest.approx(pd_rew.tolist(), abs=1e-5)


CHAT = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def test_win_rate_scores_conversations_as_the_reward_model_reads_them(tiny):
    """Issue 6: a K-head reward model judges (prompt, response) through `format_text`, the helper its training and
    scoring use, also for conversational prompts (a list of messages), not a JSON dump of them."""
    reward = pytest.importorskip('pd_align.reward')
    model, tok, rows = tiny
    chat = copy.deepcopy(tok); chat.chat_template = CHAT
    texts = [r[k] for r in rows for k in ('prompt', 'chosen', 'rejected')]
    rm, rtok = reward.tiny_reward_model(['polite', 'relevant'], texts, vocab_size=300, hidden_size=32)
    prompts = [[{'role': 'user', 'content': r['prompt']}] for r in rows[:4]]
    policy = add_lora(copy.deepcopy(model), DPOConfig(**BASE))
    wr = reward_win_rate(policy, None, chat, prompts, rm, rtok, max_new_tokens=4, seed=0)
    want = reward.score_texts(rm, rtok, [reward.format_text(p, s['policy'], rtok) for p, s in zip(prompts, wr['samples'])], progress=False)
    assert [s['policy_reward'] for s in wr['samples']] == pytest.approx(want.mean(1).tolist(), abs=1e-5)
    assert reward.format_text(prompts[0], 'hi', rtok) == reward.format_text('\n\nHuman: ' + rows[0]['prompt'], 'hi', rtok)


def test_win_rate_sequence_classification_reads_format_text(tiny):
    "Issue 6: a sequence-classification reward model also reads `format_text(prompt, response)`, not `prompt + response`."
    reward = pytest.importorskip('pd_align.reward')
    from transformers import LlamaConfig, LlamaForSequenceClassification
    model, tok, rows = tiny
    torch.manual_seed(0)
    cls = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                                                     pad_token_id=tok.pad_token_id)).eval()
    prompts = [r['prompt'] for r in rows[:4]]
    policy = add_lora(copy.deepcopy(model), DPOConfig(**BASE))
    wr = reward_win_rate(policy, None, tok, prompts, cls, tok, max_new_tokens=4, seed=0)
    with torch.no_grad():
        want = [cls(**tok([reward.format_text(p, s['policy'], tok)], return_tensors='pt')).logits[0, 0].item()
                for p, s in zip(prompts, wr['samples'])]
    assert [s['policy_reward'] for s in wr['samples']] == pytest.approx(want, abs=1e-5)


def test_bf16_path_runs_without_nan(tiny):
    model, tok, rows = tiny
    res = train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=4, bf16=True), tokenizer=tok)
    assert all(math.isfinite(h['loss']) and math.isfinite(h['margin']) for h in res.train_log)
    assert res.train_log[-1]['loss'] < res.train_log[0]['loss']
    m = evaluate_dpo(res.model, tok, rows[:8], res.config)
    assert math.isfinite(m['loss'])
    fp32 = train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=1), tokenizer=tok)  # fp32 again in the same process
    assert abs(fp32.final_loss - math.log(2)) < 1e-4


def test_precomputed_reference_and_full_finetune(tiny, tmp_path):
    model, tok, rows = tiny
    cfg = DPOConfig(**BASE, max_steps=4)
    live = train_dpo(copy.deepcopy(model), rows, cfg, tokenizer=tok)
    pre = train_dpo(copy.deepcopy(model), rows, cfg.replace(precompute_ref_logps=True, output_dir=str(tmp_path)), tokenizer=tok)
    assert (tmp_path / 'ref_logps.pt').exists()
    for a, b in zip(live.train_log, pre.train_log): assert abs(a['loss'] - b['loss']) < 1e-5
    full = DPOConfig(**{**BASE, 'lora_r': None, 'lr': 1e-3}, max_steps=6)
    ft = train_dpo(copy.deepcopy(model), rows, full, tokenizer=tok, eval_dataset=rows[:16])
    assert not is_peft(ft.model) and ft.ref_model is not None
    assert ft.eval_log[-1]['eval_loss'] < ft.train_log[0]['loss'] - 0.05  # it learned (one last batch's loss is noisy)
    e = evaluate_dpo(ft.model, tok, rows[:16], full, ref_model=ft.ref_model)
    assert abs(e['loss'] - ft.eval_log[-1]['eval_loss']) < 1e-5
    with pytest.raises(ValueError, match='ref_model'): evaluate_dpo(ft.model, tok, rows[:16], full)
    ftp = train_dpo(copy.deepcopy(model), rows, full.replace(precompute_ref_logps=True), tokenizer=tok, eval_dataset=rows[:16])
    assert ftp.ref_model is None                                              # no copy of the model was kept
    for a, b in zip(ft.history, ftp.history):
        for k in ('loss', 'eval_loss'):
            if k in a: assert abs(a[k] - b[k]) < 1e-4


def test_gradient_accumulation_matches_a_larger_batch(tiny):
    model, tok, rows = tiny
    one = train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=4), tokenizer=tok)
    two = train_dpo(copy.deepcopy(model), rows, DPOConfig(**{**BASE, 'batch_size': 4}, grad_accum=2, max_steps=4), tokenizer=tok)
    for a, b in zip(one.train_log, two.train_log): assert abs(a['loss'] - b['loss']) < 1e-5


def test_config_files_and_errors(tmp_path, tiny):
    model, tok, rows = tiny
    (tmp_path / 'c.yaml').write_text('learning_rate: 1e-3\nbeta: 0.2\nlora_r: null\ngradient_accumulation_steps: 2\n')
    c = DPOConfig.from_file(tmp_path / 'c.yaml', seed=5)
    assert (c.lr, c.beta, c.lora_r, c.grad_accum, c.seed) == (1e-3, 0.2, None, 2, 5)
    c.save(tmp_path / 'c.json')
    assert DPOConfig.from_file(tmp_path / 'c.json') == c
    with pytest.raises(ValueError, match="'betta'"): DPOConfig.from_dict({'betta': 0.1})
    with pytest.raises(ValueError, match='max_prompt_length'): DPOConfig(max_length=64, max_prompt_length=64)
    with pytest.raises(ValueError, match='loss'): DPOConfig(loss='ppo')
    with pytest.raises(ValueError, match='fewer than one optimizer step'):
        train_dpo(copy.deepcopy(model), rows[:4], DPOConfig(**BASE, max_steps=1), tokenizer=tok)
    with pytest.raises(ValueError, match='output_dir'):
        train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=1, save_steps=1), tokenizer=tok)


# `train_cli` / `eval_cli` (pd_align.cli): tests/test_cli_steps.py


def test_reward_win_rate_with_a_programmatic_reward(tiny):
    model, tok, rows = tiny
    res = train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=2), tokenizer=tok)
    prompts = [r['prompt'] for r in rows[:6]]
    length = lambda ps, rs: torch.tensor([[len(r), -len(r)] for r in rs], dtype=torch.float)  # two aspects that cancel
    wr = reward_win_rate(res.model, None, tok, prompts, length, max_new_tokens=5, seed=1)
    assert wr['n'] == 6 and wr['tie_rate'] == 1.0 and wr['win_rate'] == 0.5   # uniform weights: every pair ties
    wr1 = reward_win_rate(res.model, None, tok, prompts, length, weights=[1.0, 0.0], max_new_tokens=5, seed=1)
    longer = sum(len(s['policy']) > len(s['reference']) for s in wr1['samples'])
    ties = sum(len(s['policy']) == len(s['reference']) for s in wr1['samples'])
    assert wr1['win_rate'] == pytest.approx((longer + 0.5 * ties) / 6)
    # sampling is seeded and leaves the caller's RNG alone
    state = torch.get_rng_state()
    a = sample_responses(res.model, tok, prompts, max_new_tokens=5, seed=2)
    assert torch.equal(state, torch.get_rng_state())
    assert a == sample_responses(res.model, tok, prompts, max_new_tokens=5, seed=2)
    assert tok.padding_side == 'right'


def test_gradient_checkpointing_gives_the_same_losses(tiny):
    model, tok, rows = tiny
    cfg = DPOConfig(**BASE, max_steps=3)
    a = train_dpo(copy.deepcopy(model), rows, cfg, tokenizer=tok)
    b = train_dpo(copy.deepcopy(model), rows, cfg.replace(gradient_checkpointing=True), tokenizer=tok)
    for x, y in zip(a.train_log, b.train_log): assert abs(x['loss'] - y['loss']) < 1e-5


def test_win_rate_with_a_k_head_reward_model(tiny):
    reward = pytest.importorskip('pd_align.reward')
    model, tok, rows = tiny
    texts = [r[k] for r in rows for k in ('prompt', 'chosen', 'rejected')]
    rm, rtok = reward.tiny_reward_model(['polite', 'relevant'], texts, vocab_size=300, hidden_size=32)
    res = train_dpo(copy.deepcopy(model), rows, DPOConfig(**BASE, max_steps=2), tokenizer=tok)
    prompts = [r['prompt'] for r in rows[:4]]
    wr = reward_win_rate(res.model, None, tok, prompts, rm, rtok, max_new_tokens=4, seed=0)
    assert len(wr['policy_reward_per_aspect']) == 2 and 0.0 <= wr['win_rate'] <= 1.0
    want = reward.score_texts(rm, rtok, [reward.format_text(p, s['policy'], rtok) for p, s in zip(prompts, wr['samples'])], progress=False)
    assert abs(want.mean(1).mean().item() - wr['policy_reward']) < 1e-5


DDP_SCRIPT = '''
import json, os, sys, torch
torch.set_num_threads(1)
from pd_align.train import DPOConfig, train_dpo
from pd_align.synthetic import synthetic_pairs, DEMO
from pd_align.tiny import tiny_model_and_tokenizer
rows = synthetic_pairs(24, seed=0, **DEMO)
model, tok = tiny_model_and_tokenizer([r[k] for r in rows for k in ('prompt', 'chosen', 'rejected')], vocab_size=400, hidden_size=32)
cfg = DPOConfig(**json.loads(sys.argv[1]))
out = sys.argv[2]
a = train_dpo(model, rows, cfg.replace(output_dir=out + '/a'), tokenizer=tok, eval_dataset=rows[:10])
b = train_dpo(model, rows, cfg.replace(output_dir=out + '/b'), tokenizer=tok, eval_dataset=rows[:10], resume_from_checkpoint=out + '/a/checkpoint-2')
if int(os.environ['RANK']) == 0:
    json.dump({'a': a.history, 'b': b.history}, open(out + '/result.json', 'w'))
'''


@pytest.mark.skipif(not __import__('os').environ.get('PD_ALIGN_SLOW'), reason='spawns 2 processes (~30 s on 2 cores); set PD_ALIGN_SLOW=1')
def test_two_process_ddp_matches_one_process(tiny, tmp_path):
    "`torchrun` (gloo DDP on CPU): 2 processes x 4 pairs = 1 process x 8 pairs; resume works under DDP."
    import os, subprocess, sys
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available(): pytest.skip('no gloo backend')
    model, tok, rows = tiny
    kw = {**BASE, 'batch_size': 4, 'max_steps': 4, 'save_steps': 2}
    (tmp_path / 'ddp.py').write_text(DDP_SCRIPT)
    env = {**os.environ, 'ACCELERATE_USE_CPU': 'true', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29533',
                           str(tmp_path / 'ddp.py'), json.dumps(kw), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / 'result.json').read_text())
    single = train_dpo(copy.deepcopy(model), rows, DPOConfig(**{**kw, 'batch_size': 8, 'save_steps': 0}), tokenizer=tok, eval_dataset=rows[:10])
    want = [h.get('loss', h.get('eval_loss')) for h in single.history]
    for run in ('a', 'b'):
        losses = [h.get('loss', h.get('eval_loss')) for h in got[run]]
        assert len(losses) == len(want) and max(abs(x - y) for x, y in zip(losses, want)) < 1e-5
    assert [h['loss'] for h in got['a'] if 'loss' in h] == [h['loss'] for h in got['b'] if 'loss' in h]


def test_loop_cadence_of_log_eval_checkpoint_and_callback(tiny, tmp_path):
    """The loop's named steps fire when they should: a log entry every `logging_steps` and at the last step (the
    window's means), an evaluation every `eval_steps` plus one at the end, a checkpoint every `save_steps`, and the
    callback after every step with the entry or None. Logging changes nothing in the training itself."""
    model, tok, rows = tiny
    cfg = DPOConfig(**{**BASE, 'batch_size': 4, 'lora_dropout': 0.1}, max_steps=5, eval_steps=2)
    calls = []
    every = train_dpo(copy.deepcopy(model), rows, cfg, tokenizer=tok)                       # logging_steps=1
    two = train_dpo(copy.deepcopy(model), rows, cfg.replace(logging_steps=2, save_steps=2, output_dir=str(tmp_path)),
                    tokenizer=tok, eval_dataset=rows[:8], callback=lambda step, entry: calls.append((step, entry)))
    assert [s for s, _ in calls] == [1, 2, 3, 4, 5]
    assert [s for s, e in calls if e is not None] == [2, 4, 5] == [h['step'] for h in two.train_log]
    assert all(e is h for (_, e), h in zip([c for c in calls if c[1] is not None], two.train_log))
    assert [h['step'] for h in two.eval_log] == [2, 4, 5] and all(h['eval_n'] == 8 for h in two.eval_log)
    assert [h['step'] for h in two.history] == [2, 2, 4, 4, 5, 5]                       # train entry, then its eval
    assert sorted(p.name for p in tmp_path.glob('checkpoint-*')) == ['checkpoint-2', 'checkpoint-4']
    per_step = [h['loss'] for h in every.train_log]
    want = [np.mean(per_step[0:2]), np.mean(per_step[2:4]), per_step[4]]
    assert np.allclose([h['loss'] for h in two.train_log], want, rtol=0, atol=1e-7), (want, two.train_log)
    for (n, p), (_, q) in zip(every.model.named_parameters(), two.model.named_parameters()): assert torch.equal(p, q), n
