"""A PD-selected subset, written as prompt/chosen/rejected JSONL, trains with TRL's DPOTrainer unchanged, and our
tokenisation, dpo_loss and trainer reproduce TRL's numbers on the same batch."""
import copy
import pytest
import torch

trl = pytest.importorskip('trl')
from datasets import load_dataset
from pd_align.data import from_records
from pd_align.io import write_jsonl_atomic
from pd_align.losses import dpo_loss
from pd_align.selection import select
from pd_align.tiny import tiny_model_and_tokenizer, tiny_causal_lm
from pd_align.train import DPOConfig, tokenize_pairs, collate_pairs, pair_logps, train_dpo
from pd_align.synthetic import synthetic_pairs, DEMO




@pytest.fixture(scope='module')
def subset(tmp_path_factory):
    "The 25% most-negative-PD pairs of the demo set, as TRL-format JSONL, loaded back with `datasets`."
    rows = synthetic_pairs(16, seed=0, **DEMO)
    sel = select(from_records(rows), method='pd', ratio=0.25)
    assert len(sel) == 8 and max(sel['pd']) <= sorted(r['pd'] for r in rows)[7]
    path = tmp_path_factory.mktemp('subset') / 'subset.jsonl'
    write_jsonl_atomic(path, [{k: r[k] for k in ('prompt', 'chosen', 'rejected')} for r in sel])
    train = load_dataset('json', data_files=str(path), split='train')
    model, tok = tiny_model_and_tokenizer([r[k] for r in rows for k in ('prompt', 'chosen', 'rejected')], vocab_size=400, hidden_size=32)
    ref = tiny_causal_lm(len(tok), hidden_size=32, seed=1, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)   # a reference unlike the policy
    return train, model, ref, tok


def _trl_args(out, **kw):
    return trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3, beta=0.1,
                         logging_steps=1, use_cpu=True, report_to='none', bf16=False, save_strategy='no', seed=0, **kw)


def test_subset_trains_with_trl_and_losses_match(subset, tmp_path):
    train, model, ref, tok = subset
    policy0 = copy.deepcopy(model)
    trainer = trl.DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(ref), args=_trl_args(tmp_path),
                             train_dataset=train, processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if 'loss' in h]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(h['loss'])) for h in logs)
    # our tokenisation is TRL's
    ours = tokenize_pairs(train, tok)
    for t, o in zip(trainer.train_dataset, ours):
        assert (t['prompt_ids'], t['chosen_ids'], t['rejected_ids']) == (o['prompt_ids'], o['chosen_ids'], o['rejected_ids'])
    # our dpo_loss on the batch (all 8 pairs) equals TRL's logged loss and rewards at the first step
    batch = collate_pairs(ours, tok.pad_token_id)
    with torch.no_grad():
        pc, pr = pair_logps(policy0.eval(), batch)
        rc, rr = pair_logps(copy.deepcopy(ref).eval(), batch)
    losses, cw, cl = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert abs(losses.mean().item() - logs[0]['loss']) < 1e-5
    assert abs(cw.mean().item() - logs[0]['rewards/chosen']) < 1e-5
    assert abs(cl.mean().item() - logs[0]['rewards/rejected']) < 1e-5
    assert abs((cw > cl).float().mean().item() - logs[0]['rewards/accuracies']) < 1e-6
    # and our trainer (full fine-tune, same reference, AdamW, linear schedule, clipping) follows TRL's two steps
    res = train_dpo(copy.deepcopy(model), train, DPOConfig(lr=1e-3, beta=0.1, batch_size=8, max_steps=2, lora_r=None),
                    tokenizer=tok, ref_model=copy.deepcopy(ref))
    for a, b in zip(res.train_log, logs):
        assert abs(a['loss'] - b['loss']) < 1e-4 and abs(a['margin'] - b['rewards/margins']) < 1e-4


def test_subset_trains_with_trl_lora(subset, tmp_path):
    from peft import LoraConfig
    train, model, ref, tok = subset
    trainer = trl.DPOTrainer(model=copy.deepcopy(model), args=_trl_args(tmp_path), train_dataset=train, processing_class=tok,
                             peft_config=LoraConfig(r=4, lora_alpha=8, task_type='CAUSAL_LM'))
    trainer.train()
    logs = [h for h in trainer.state.log_history if 'loss' in h]
    assert len(logs) == 2
    assert abs(logs[0]['loss'] - 0.693147) < 1e-4     # adapters start at zero: policy == disabled-adapter reference
