"""Per-card profiles (pd_align.profiles): each fits its card by the memory model with the stated margin, carries the
card's precision, and reaches `pd-align train --profile`; tools/gpu_check.py runs every stage in its CPU dry mode."""
import json, subprocess, sys
import pytest
from conftest import ROOT
from pd_align.profiles import PROFILES, CARDS, MARGIN, profile, profile_fits, predicted_stage_peaks, dpo_overrides, card_bf16
from pd_align.memory import CARDS as MEMORY_CARDS, CUDA_CONTEXT, GiB, dpo_step_peak, PRESETS
from pd_align.train import DPOConfig
from pd_align.synthetic import synthetic_pairs, DEMO
from pd_align.cli import main


@pytest.mark.parametrize('name', sorted(CARDS))
def test_no_profile_exceeds_its_card(name):
    f = profile_fits(name)
    usable = (MEMORY_CARDS[CARDS[name]['card']] - CUDA_CONTEXT) / GiB
    assert MARGIN >= 0.2 and f['fits'] and f['limit_gib'] == pytest.approx((1 - MARGIN) * usable)
    for stage, gib in f['peaks'].items(): assert 0.5 < gib <= (1 - MARGIN) * usable, (name, stage, gib)
    assert set(f['peaks']) == {'reward model', 'scoring', 'DPO', 'evaluation', 'TRL'}


def test_prediction_follows_the_memory_model_and_can_fail():
    "The DPO stage is `dpo_step_peak` at the profile's micro-batch; a profile that is too big is caught."
    p = profile('a100')
    step = dpo_step_peak(PRESETS['qwen2.5-0.5b'], batch=p['dpo_batch'], seq_len=p['dpo_max_len'], dtype='bf16', autocast='bf16',
                         lora_r=16, lora_targets=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
                         prompt_frac=p['dpo_prompt_len'] / p['dpo_max_len'])
    assert predicted_stage_peaks('a100')['DPO'] == pytest.approx(step['peak'] / GiB)
    big = dict(PROFILES['t4'], dpo_batch=16, rm_batch=32)
    import pd_align.profiles as P
    old = P.PROFILES['t4']
    try:
        P.PROFILES['t4'] = big
        assert not profile_fits('t4')['fits']
    finally: P.PROFILES['t4'] = old


def test_t4_is_fp32_and_sized_below_the_bf16_cards():
    assert not card_bf16('t4') and card_bf16('l4') and card_bf16('a100') and CARDS['t4']['capability'] == (7, 5)
    peaks = {n: max(predicted_stage_peaks(n).values()) for n in CARDS}
    assert peaks['t4'] < MEMORY_CARDS['T4'] / GiB < peaks['a100'] * 2


def test_profiles_are_valid_configs():
    for name in PROFILES:
        cfg = DPOConfig.from_dict(dpo_overrides(name))
        assert cfg.batch_size == PROFILES[name]['dpo_batch'] and cfg.max_length == PROFILES[name]['dpo_max_len']
        assert cfg.bf16 == card_bf16(name)


def test_cli_train_profile(tmp_path):
    data = tmp_path / 'pairs.jsonl'
    data.write_text(''.join(json.dumps({k: r[k] for k in ('prompt', 'chosen', 'rejected', 'aspect')}) + '\n' for r in synthetic_pairs(4, **DEMO)))
    argv = ['train', '--data', str(data), '--out', str(tmp_path / 'run'), '--profile', 't4',
            '--set', 'grad_accum=1', '--set', 'max_steps=1', '--set', 'save_steps=0', '--set', 'target_modules=null']
    assert main(argv) == 0
    cfg = json.loads((tmp_path / 'run' / 'dpo_config.json').read_text())
    assert (cfg['batch_size'], cfg['max_length'], cfg['max_prompt_length'], cfg['bf16']) == (2, 320, 160, False)
    assert cfg['grad_accum'] == 1                                                # --set beats the profile
    assert main(['train', '--data', str(data), '--out', str(tmp_path / 'r2'), '--profile', 'l4', '--config', str(data)]) == 2
    assert not (tmp_path / 'r2').exists()
    with pytest.raises(SystemExit): main(['train', '--data', str(data), '--out', str(tmp_path / 'r3'), '--profile', 'h100'])


def test_gpu_check_dry_run(tmp_path):
    "The one-command GPU measurement runs every stage on a CPU (tiny models) and writes its JSON."
    out = tmp_path / 'gc.json'
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'gpu_check.py'), '--dry-run', '--steps', '2', '--out', str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    stages = [s['stage'] for s in res['stages']]
    assert stages == ['load', 'reward model', 'scoring', 'DPO', 'generation', 'judge', 'TRL']
    assert all(s['error'] is None and s['seconds'] > 0 for s in res['stages'])
    assert all(s['peak_gib'] is None for s in res['stages']) and res['device'] == 'cpu'       # no CUDA: no peaks claimed
    assert res['stages'][3]['finite'] and res['precision'] == 'fp32' and res['model'] == 'tiny'
    assert all(s['host_peak_gib'] > 0.1 for s in res['stages'])                              # host RAM per stage (Linux)
    assert res['stages'][-1]['prompts_cut'] > 0 and res['stages'][-1]['rows_dropped'] == 0    # TRL sees cut prompts
    assert 'stage' in r.stdout and '"stages"' in r.stdout                                     # table + JSON on stdout
