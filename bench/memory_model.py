"""Check of `pd_align.memory.dpo_step_peak` against measured CPU peaks: one LoRA DPO step of `pd_align.train`
(reference pass with adapters disabled, policy pass, backward, AdamW step) at three model sizes, lean and full-logits
head, each in a fresh process.

Measured: the peak resident memory of the step above the memory resident just before it (Linux: `VmHWM` reset through
/proc/self/clear_refs; glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 64 KiB so every freed tensor leaves the process at
once). Predicted: `dpo_step_peak(...)['peak']` minus what is resident before a step (weights, LoRA parameters and Adam
moments; gradients are freed by `zero_grad`). The second step is the one measured (the first creates Adam's state).

    python bench/memory_model.py            # three sizes x (lean, full): ~3-5 min on 2 shared cores
    python bench/memory_model.py --quick    # one small size
"""
from __future__ import annotations
import os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

MMAP_THRESHOLD = '65536'
SIZES = [  # name, model dims (Llama from a config: intermediate = 2 * hidden, tied head), batch pairs, tokens
    dict(name='small: H128 L4 V32000 4x128', hidden=128, layers=4, heads=4, vocab=32_000, batch=4, seq_len=128),
    dict(name='medium: H256 L8 V49152 4x192', hidden=256, layers=8, heads=4, vocab=49_152, batch=4, seq_len=192),
    dict(name='large head: H256 L4 V151936 2x192', hidden=256, layers=4, heads=4, vocab=151_936, batch=2, seq_len=192),
]
QUICK = [dict(name='quick: H128 L2 V8000', hidden=128, layers=2, heads=2, vocab=8000, batch=2, seq_len=64)]
TOLERANCE = 0.20   # |predicted - measured| / measured of the step's increment

def _vm(key: str) -> int:
    "A field of /proc/self/status, bytes."
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024
    raise KeyError(key)

def _reset_peak():
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')

def step_batch(vocab: int, batch: int, seq_len: int, prompt_frac: float = 1 / 3, seed: int = 0) -> dict:
    "A collate_pairs-like batch of 2*batch rows of exactly seq_len tokens, the first third prompt."
    import torch
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2 * batch, seq_len), generator=g)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, int(seq_len * prompt_frac):] = True
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask, index=torch.arange(batch))

def worker(hidden: int, layers: int, heads: int, vocab: int, batch: int, seq_len: int, lean: bool, name: str = '',
           grad_ckpt: bool = False) -> dict:
    import torch
    from pd_align import train as T
    from pd_align import dpo_data as D # where pair_logps's lean head is chosen
    from pd_align.memory import ModelDims, dpo_step_peak, lora_params
    from pd_align.tiny import tiny_causal_lm
    torch.manual_seed(0)
    cfg = T.DPOConfig(lora_r=16, lora_alpha=32, lora_dropout=0.05, lr=1e-4)
    model = tiny_causal_lm(vocab, hidden_size=hidden, n_layers=layers, n_heads=heads, max_positions=max(256, seq_len))
    if grad_ckpt: model.activation_checkpointing_enable({'use_reentrant': False})   # as train_dpo does
    model = T.add_lora(model, cfg)
    model.train()
    T._disable_dropout(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch_ = step_batch(vocab, batch, seq_len)
    if not lean: D._lean_site = lambda m, b: 'lean=False (measured baseline)'
    import warnings
    warnings.filterwarnings('ignore', message='pair_logps')
    def step():
        loss, _ = T._batch_loss(model, batch_, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()                                   # creates Adam's moments
    times, incs = [], []
    for _ in range(2):
        rss0 = _vm('VmRSS')
        _reset_peak()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        incs.append(_vm('VmHWM') - rss0)
    d = ModelDims.from_config(model.get_base_model().config)
    pred = dpo_step_peak(d, batch, seq_len, dtype='fp32', lora_r=16, lean_logits=lean, lora_dropout=True, grad_ckpt=grad_ckpt)
    resident = pred['weights'] + lora_params(d, 16) * 12      # params + two Adam moments (grads are freed)
    return dict(measured=min(incs), measured_all=incs, predicted=pred['peak'] - resident, parts=pred, step_s=times,
                n_params=sum(p.numel() for p in model.parameters()), rss_before=rss0)

def main():
    p = C.parser(__doc__.splitlines()[0])
    a = p.parse_args()
    os.environ['MALLOC_MMAP_THRESHOLD_'] = MMAP_THRESHOLD
    sizes = QUICK if a.quick else SIZES
    runs = [(s, lean, False) for s in sizes for lean in (True, False)] + [(sizes[-1 if a.quick else 1], True, True)]
    info = C.machine()
    print(f"memory model check: {len(sizes)} sizes x (lean, full) + gradient checkpointing; load {info['loadavg_start']}", flush=True)
    rows = []
    for s, lean, ckpt in runs:
        r = C.run_isolated(__file__, 'worker', {**s, 'lean': lean, 'grad_ckpt': ckpt}, threads=a.threads)
        err = (r['predicted'] - r['measured']) / r['measured']
        rows.append(dict(name=s['name'] + (' lean' if lean else ' full logits') + (' grad. ckpt' if ckpt else ''), lean=lean, grad_ckpt=ckpt, size=s,
                         measured_mib=r['measured'] / 2**20, predicted_mib=r['predicted'] / 2**20, rel_error=err,
                         measured_all_mib=[x / 2**20 for x in r['measured_all']], step_s=r['step_s'],
                         parts_mib={k: v / 2**20 for k, v in r['parts'].items()}, loadavg=C.loadavg()))
        print(f"  {rows[-1]['name']:40s} measured {rows[-1]['measured_mib']:7.0f} MiB  predicted {rows[-1]['predicted_mib']:7.0f} MiB"
              f"  error {err:+6.1%}   step {min(r['step_s']):.1f} s   load {rows[-1]['loadavg'][0]}", flush=True)
    worst = max(abs(r['rel_error']) for r in rows)
    target = C.target_line('worst |relative error| of the predicted step increment', worst, '<=', TOLERANCE)
    C.save('memory_model' + ('_quick' if a.quick else ''), dict(benchmark='memory_model', size='quick' if a.quick else 'default',
           tolerance=TOLERANCE, rows=rows, machine=info, target=target, mmap_threshold=MMAP_THRESHOLD), a.out)

if __name__ == '__main__':
    if not C.worker_main(dict(worker=worker)): main()
