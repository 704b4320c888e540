"""`load_run` loads a run in the dtype the run recorded (final/config.json of a full fine-tune), passed explicitly to
`from_pretrained`, for the policy and for the reference alike; a dtype it cannot read is a clear error."""
import json
import pytest
import torch
import transformers
from pd_align.train import DPOConfig, train_dpo, load_run, evaluate_dpo

ROWS = [dict(prompt=f'question {i} about cats', chosen=f'a kind helpful answer {i}', rejected=f'no {i}') for i in range(8)]


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
    "A two-step full fine-tune of the tiny model, its `final/` re-saved in bf16 (what a bf16 run records)."
    run = tmp_path_factory.mktemp('runs') / 'full'
    res = train_dpo('tiny', ROWS, DPOConfig(max_steps=2, batch_size=4, lr=1e-3, lora_r=None, output_dir=str(run)))
    assert json.loads((run / 'final' / 'config.json').read_text())['dtype'] == 'float32'
    res.model.to(torch.bfloat16).save_pretrained(run / 'final')
    assert json.loads((run / 'final' / 'config.json').read_text())['dtype'] == 'bfloat16'
    return run, res


def test_load_run_passes_the_recorded_dtype(full_run, monkeypatch):
    run, res = full_run
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__
    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get('dtype', 'missing'))
        return real(cls, *args, **kwargs)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, 'from_pretrained', classmethod(spy))
    policy, tok, ref, cfg = load_run(run)
    assert seen == [torch.bfloat16], seen                            # passed explicitly, not left to 'auto'
    assert policy.dtype == torch.bfloat16 and ref.dtype == torch.bfloat16 and cfg.lora_r is None
    m = evaluate_dpo(policy.float(), tok, ROWS, cfg, ref_model=ref.float())
    assert m['n'] == len(ROWS) and 0 <= m['accuracy'] <= 1


def test_a_lora_run_loads_in_fp32_on_a_cpu(tmp_path):
    run = tmp_path / 'lora'
    train_dpo('tiny', ROWS, DPOConfig(max_steps=1, batch_size=4, lr=1e-3, bf16=True, output_dir=str(run)))
    policy, _, ref, _ = load_run(run)
    assert ref is None and next(policy.parameters()).dtype == torch.float32   # bf16 bases only where a GPU trained them


def test_an_unreadable_dtype_names_the_file(full_run, tmp_path):
    import shutil
    run = tmp_path / 'bad'
    shutil.copytree(full_run[0], run)
    cfg = json.loads((run / 'final' / 'config.json').read_text())
    (run / 'final' / 'config.json').write_text(json.dumps({**cfg, 'dtype': 'float128x'}))
    with pytest.raises(ValueError, match=r"final/config.json: dtype 'float128x' is not a torch dtype"): load_run(run)
