"""Truthful minimums, checked two ways.

1. A throwaway venv with the declared minimums (torch 2.13.0 CPU, transformers 5.0.0, datasets 4.7.0, peft 0.18.0,
   accelerate 1.10.1, trl 1.16.0) passed tests/test_load_run_dtype.py, test_data.py, test_train.py, test_reward.py and
   test_trl_interop.py (92 passed, 1 skipped). The previous minimums (transformers 4.56.0, datasets 2.20.0, peft 0.12.0,
   accelerate 0.34.0) failed 10 of them and errored 2; trl 1.15.0 failed the TRL tests on a CPU (see the table).
2. The table below: every API listed is used by the code (its pattern must match somewhere, so a row cannot go stale
   silently) and `settings.ini` declares at least the version that introduced it (evidence: release notes, pull requests,
   the installed sources, or the run above). torch>=2.4 rests on the table only (the venv ran torch 2.13).
"""
import configparser, json, re
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from conftest import ROOT

# (package, what we rely on, regex over our code, version that introduced it, evidence)
API_TABLE = [
    ('transformers', "`from_pretrained(..., dtype=...)` (the `torch_dtype` rename)", r"from_pretrained\([^)]*\bdtype=",
     '4.56.0', 'huggingface/transformers#39782, released in 4.56.0 (deprecates torch_dtype for dtype)'),
    ('transformers', 'chat templates: `tokenizer.apply_chat_template(..., tokenize=False)`', r"apply_chat_template\(",
     '4.34.0', 'transformers 4.34.0 release notes (chat templates)'),
    ('torch', '`torch.get_autocast_dtype(device_type)` / `torch.is_autocast_enabled(device_type)`',
     r"torch\.get_autocast_dtype\(|torch\.is_autocast_enabled\(\w", '2.4.0',
     'pytorch/pytorch#125103 (device-agnostic autocast API); huggingface/transformers#43509: introduced in PyTorch 2.4'),
    ('trl', '`DPOTrainer(processing_class=...)`', r"DPOTrainer\(.{0,300}?processing_class=", '0.12.0',
     'trl v0.12.0 release notes (tokenizer -> processing_class)'),
    ('trl', "DPOTrainer scores tokens with a fused LM head by default (the TRL memory rows assume no [2B, T, V] logits)",
     r"'TRL'\] = dpo_step_peak\(", '1.15.0', 'pypi.org/project/trl/1.15.0 "SFT, DPO ... now score tokens with a fused LM '
     'head by default"; installed trl 1.16.0 trainer/dpo_trainer.py add_fused_lm_head'),
    ('trl', 'DPOConfig: `max_length` only (no `max_prompt_length`), rows whose prompt reaches it dropped; '
     'gradient checkpointing on by default (we cut prompts ourselves and model checkpointing)',
     r"trl_prompt_cut\(|cut_prompts\(", '1.15.0',
     'huggingface/trl#3906 DPO refactor (before 1.15); installed trl 1.16.0 dpo_trainer.py "Drop examples whose prompt '
     'alone fills max_length", base_config.py gradient_checkpointing default=True'),
    ('datasets', '`Dataset.add_column(name, values, feature=...)`', r"add_column\(.{0,120}?feature=", '3.0.1',
     'huggingface/datasets#7143 (merged 2024-09, datasets 3.x); datasets 2.20.0: "add_column() got an unexpected keyword '
     "argument 'feature'\" (ran)"),
    ('transformers', '`model.generate(**tokenizer(...))` with the tokenizer\'s token_type_ids (sample_responses)',
     r"\.generate\(\*\*enc", '5.0.0', 'ran tests/test_train.py: 4.56.0 "model_kwargs are not used by the model: '
     "['token_type_ids']\", 5.0.0 passes"),
    ('trl', 'DPOTrainer on a CPU without Triton (`use_cpu=not CUDA`; the fused LM head needs a fallback)', r"use_cpu=",
     '1.16.0', 'ran tests/test_trl_interop.py: trl 1.15.0 AttributeError (ChunkedLogProbFunction is None without triton), '
     '1.16.0 passes'),
]


def declared() -> dict:
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    reqs = cfg['DEFAULT']['requirements'].split() + cfg['DEFAULT']['dev_requirements'].split()
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def minimum(req: Requirement) -> Version | None:
    "The lowest version `req` admits (its `>=` or `==` bound), None if it has none."
    lows = [Version(s.version) for s in req.specifier if s.operator in ('>=', '==', '~=')]
    return max(lows) if lows else None


def our_code() -> str:
    "Library, tools and notebook code cells: everything a user runs."
    parts = [p.read_text() for p in sorted((ROOT / 'pd_align').glob('*.py'))]
    parts += [p.read_text() for p in sorted((ROOT / 'tools').glob('*.py'))]
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        parts += [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
    return '\n'.join(parts)


CODE = our_code()


@pytest.mark.parametrize('pkg,api,pattern,introduced,evidence', API_TABLE, ids=[f'{r[0]}:{r[3]}' for r in API_TABLE])
def test_declared_minimum_covers_the_apis_we_use(pkg, api, pattern, introduced, evidence):
    assert re.search(pattern, CODE, flags=re.S), f'no code uses {api} any more: drop or update this row'
    req = declared()[pkg]
    low = minimum(req)
    assert low is not None and low >= Version(introduced), f'settings.ini declares {req}, but {api} needs {pkg}>={introduced} ({evidence})'


def test_python_minimum_is_what_the_locked_set_needs():
    """Some release of the min_python series satisfies every locked package's Requires-Python (transformers 5.24, trl 1.16:
    3.11; soupsieve, a jupyter dependency: 3.11.5, so a 3.11 older than 3.11.5 cannot install the dev set)."""
    from importlib.metadata import metadata
    from packaging.specifiers import SpecifierSet
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    ours = Version(cfg['DEFAULT']['min_python'])
    lock = [l.split('==')[0] for l in (ROOT / 'constraints.txt').read_text().splitlines() if '==' in l and not l.startswith('#')]
    needs = {}
    for name in lock:
        spec = metadata(name).get('Requires-Python')
        if spec and not SpecifierSet(spec).contains(f'{ours}.999'): needs[name] = spec
    assert not needs, f'min_python {ours} is below what these locked packages require: {needs}'
    assert f'requires-python=">={ours}"' in (ROOT / 'pyproject.toml').read_text()


def test_declared_minimums_cover_trls_own_floors():
    "Where we declare a floor for a package trl needs too, it is at least trl's own (trl 1.16: accelerate>=1.10.1)."
    from importlib.metadata import requires
    ours = declared()
    for spec in requires('trl') or []:
        req = Requirement(spec)
        name = req.name.lower().replace('_', '-')
        if req.marker is not None or name not in ours: continue
        floor = minimum(req)
        if floor is not None and minimum(ours[name]) is not None: assert minimum(ours[name]) >= floor, f'settings.ini {ours[name]} is below trl\'s {req}'
