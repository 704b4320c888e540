"""Memory-lean log-probabilities (`losses.response_logps`, the default path of `train.pair_logps`) equal the naive
full-logits computation: values AND gradients, plain / peft / accelerate-wrapped models, and the DPO losses of
`train_dpo`; unusual models fall back to the full logits with a warning that says why."""
import copy, warnings
import pytest
import torch
import torch.nn.functional as F
from pd_align import dpo_data as D # pair_logps and its lean head live there
from pd_align.losses import response_logps, sequence_logps, chunk_positions
from pd_align.tiny import tiny_model_and_tokenizer
from pd_align.train import DPOConfig, add_lora, collate_pairs, pair_logps, reference_logps, tokenize_pairs, train_dpo
from pd_align.synthetic import synthetic_pairs, DEMO


def _naive(h, w, b, labels, mask, average=False): return sequence_logps(F.linear(h, w, b), labels, mask, average)


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize('chunk_elements', [1, 3 * 50, 10**7])      # 1 position per chunk, 3, all in one
@pytest.mark.parametrize('average', [False, True])
def test_response_logps_values_and_gradients_equal_naive(dtype, tol, chunk_elements, average):
    """Mutations caught: a wrong softmax in backward (e.g. missing `- lse`), the one-hot term dropped, chunk offsets
    off by one, the label shift, masked/ignored (-100) positions counted, bias ignored."""
    g = torch.Generator().manual_seed(0)
    B, T_, H, V = 5, 12, 16, 50
    h0, w0, b0 = (torch.randn(*s, generator=g, dtype=dtype) for s in ((B, T_, H), (V, H), (V,)))
    labels = torch.randint(0, V, (B, T_), generator=g)
    mask = torch.zeros(B, T_, dtype=torch.bool)
    for r, (a, e) in enumerate([(3, 12), (1, 7), (11, 12), (4, 12), (0, 0)]): mask[r, a:e] = True   # row 4: nothing
    labels[3, 6] = -100
    up = torch.randn(B, generator=g, dtype=dtype)
    res = {}
    for name in ('naive', 'lean'):
        h, w, b = (x.clone().requires_grad_() for x in (h0, w0, b0))
        v = (_naive(h, w, b, labels, mask, average) if name == 'naive'
             else response_logps(h, w, labels, mask, bias=b, average=average, chunk_elements=chunk_elements))
        (v * up).sum().backward()
        res[name] = (v, h.grad, w.grad, b.grad)
    assert res['lean'][0].dtype == dtype
    for what, x, y in zip(('value', 'd hidden', 'd weight', 'd bias'), res['naive'], res['lean']):
        assert torch.allclose(y, x, rtol=tol, atol=tol * x.abs().max().item()), what
    assert res['lean'][0][4].item() == 0.0 and res['lean'][1][4].abs().sum().item() == 0.0


def test_response_logps_rejects_bad_shapes():
    with pytest.raises(ValueError, match='hidden'): response_logps(torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match='weight'):
        response_logps(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    assert chunk_positions(151_936) == 220 and chunk_positions(10**9) == 1


@pytest.fixture(scope='module')
def tiny():
    rows = synthetic_pairs(12, seed=0, **DEMO)
    model, tok = tiny_model_and_tokenizer([r[k] for r in rows for k in ('prompt', 'chosen', 'rejected')], vocab_size=400)
    batch = collate_pairs(tokenize_pairs(rows[:6], tok), tok.pad_token_id)
    return model, tok, rows, batch


def _values_and_grads(model, batch, lean):
    params = [p for p in model.parameters() if p.requires_grad]
    c, r = pair_logps(model, batch, lean=lean)
    grads = torch.autograd.grad((c - 0.5 * r).sum(), params)
    return c.detach(), r.detach(), grads


def _check_equal(model, batch, tol=1e-6):
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='pair_logps')      # the lean path must really run
        lean = _values_and_grads(model, batch, True)
    full = _values_and_grads(model, batch, False)
    assert torch.allclose(lean[0], full[0], rtol=tol, atol=tol) and torch.allclose(lean[1], full[1], rtol=tol, atol=tol)
    for a, b in zip(lean[2], full[2]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, b.abs().max().item()))


def test_pair_logps_lean_equals_full_plain_peft_accelerate(tiny):
    "Plain HF model (tied embeddings: the head's weight gets the gradient), peft LoRA (with nonzero B), accelerate."
    from accelerate import Accelerator
    model, tok, rows, batch = tiny
    plain = copy.deepcopy(model).train()
    _check_equal(plain, batch)
    lora = add_lora(copy.deepcopy(model), DPOConfig(lora_r=4, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if 'lora_B' in n: p.normal_(0, 0.5)
    _check_equal(lora.train(), batch)
    _check_equal(Accelerator(cpu=True).prepare(copy.deepcopy(lora)), batch)
    # the reference (adapters disabled) through the lean path equals the base model's full logits
    rc, rr = reference_logps(lora, batch)
    with torch.no_grad(): bc, br = pair_logps(copy.deepcopy(model).eval(), batch, lean=False)
    assert torch.allclose(rc, bc, atol=1e-5) and torch.allclose(rr, br, atol=1e-5)


def test_pair_logps_lean_under_bf16_autocast(tiny):
    "Under autocast the head runs in bf16 like the model's own head would; the log-softmax stays fp32."
    model, tok, rows, batch = tiny
    m = copy.deepcopy(model).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        c, r = pair_logps(m, batch)
        c0, r0 = pair_logps(m, batch, lean=False)
    assert c.dtype == torch.float32
    assert torch.allclose(c, c0, rtol=1e-3, atol=0.05) and torch.allclose(r, r0, rtol=1e-3, atol=0.05)


def test_unusual_models_fall_back_with_a_reason(tiny):
    model, tok, rows, batch = tiny
    capped = copy.deepcopy(model)
    capped.config.final_logit_softcapping = 30.0
    with pytest.warns(UserWarning, match='final_logit_softcapping'): c, r = pair_logps(capped, batch)
    with torch.no_grad(): c0, _ = pair_logps(model, batch, lean=False)
    assert torch.allclose(c.detach(), c0)
    # a model whose forward changes the logits after the head (not declared in its config): caught by the check
    scaled = copy.deepcopy(model)
    fwd = type(scaled).forward
    scaled.forward = lambda *a, **k: (lambda o: setattr(o, 'logits', o.logits / 4) or o)(fwd(scaled, *a, **k))
    with pytest.warns(UserWarning, match='not lm_head'): c, _ = pair_logps(scaled, batch)
    with torch.no_grad(): assert torch.allclose(c.detach(), pair_logps(scaled, batch, lean=False)[0])


def test_train_dpo_losses_equal_full_logits_path(tiny, monkeypatch):
    "LoRA DPO and full fine-tune: every logged loss/margin of the lean trainer equals the full-logits trainer to 1e-6."
    model, tok, rows, _ = tiny
    for cfg, ref in ((DPOConfig(lr=1e-3, batch_size=4, max_steps=3, lora_r=4, lora_dropout=0.0, seed=0), None),
                     (DPOConfig(lr=1e-3, batch_size=4, max_steps=3, lora_r=None, seed=0), copy.deepcopy(model))):
        lean = train_dpo(copy.deepcopy(model), rows, cfg, tokenizer=tok, ref_model=copy.deepcopy(ref))
        with monkeypatch.context() as mp:
            mp.setattr(D, '_lean_site', lambda m, b: 'forced off by the test')
            with pytest.warns(UserWarning, match='forced off'):
                full = train_dpo(copy.deepcopy(model), rows, cfg, tokenizer=tok, ref_model=copy.deepcopy(ref))
        for a, b in zip(lean.train_log, full.train_log):
            for k in ('loss', 'margin', 'logps_chosen', 'logps_rejected'): assert abs(a[k] - b[k]) < 1e-6 * max(1, abs(b[k])), k
