"""Static checks of the GPU tutorial nbs/09_colab.ipynb that its smoke run (nbdev_test) cannot make: the runtime table
in its introduction is what its own cost model gives, the settings cell picks the right profile from the environment,
nothing hides from CI, and the command lines it shows parse with the real `pd-align` parser."""
import json, math, re, shlex
from pathlib import Path
from types import SimpleNamespace
import pytest
import torch

NB = Path(__file__).resolve().parents[1] / 'nbs' / '09_colab.ipynb'
CELLS = json.loads(NB.read_text())['cells']
SRC = [(c['cell_type'], ''.join(c['source'])) for c in CELLS]


def cell(kind: str, marker: str) -> str:
    "The one cell of `kind` whose source contains `marker`."
    found = [s for k, s in SRC if k == kind and marker in s]
    assert len(found) == 1, f'{len(found)} {kind} cells contain {marker!r}'
    return found[0]


def run_settings(monkeypatch, tmp_path, gpu=None, **env) -> dict:
    "Execute the settings and estimator cells with `env` in a fresh namespace; `gpu=(capability, GiB)` fakes a CUDA card."
    for k in ('IN_TEST', 'PD_ALIGN_SMOKE', 'PD_ALIGN_PROFILE', 'PD_ALIGN_DATASET'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('PD_ALIGN_RUN', str(tmp_path / 'run'))
    for k, v in env.items(): monkeypatch.setenv(k, v)
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpu is not None)
    if gpu is not None:
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d=None: gpu[0])
        monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda d=None: SimpleNamespace(total_memory=gpu[1] * 2**30))
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: f'fake {gpu}')
    n_threads = torch.get_num_threads()
    ns = {}
    try:
        exec(cell('code', 'PREC = pick_precision()'), ns)
        exec(cell('code', 'def estimate_minutes('), ns)
    finally: torch.set_num_threads(n_threads)     # the smoke settings use one thread
    return ns


def test_nothing_hides_from_ci():
    code = [s for k, s in SRC if k == 'code']
    assert not any('#| notest' in s or '#| export' in s or 'default_exp' in s for s in code)
    skipped = [s for s in code if '#| eval: false' in s]
    assert len(skipped) == 1 and skipped[0].strip().splitlines()[-1].startswith('!pip install'), 'only the install cell may skip CI'


def test_settings_pick_the_profile(monkeypatch, tmp_path):
    ns = run_settings(monkeypatch, tmp_path, IN_TEST='1')
    assert ns['SMOKE'] and ns['PROFILE'] == 'smoke' and ns['S'].rm_base == 'tiny' and ns['S'].gold == 'tiny'
    ns = run_settings(monkeypatch, tmp_path, PD_ALIGN_SMOKE='0')                 # forced full run, no bf16 GPU: t4 sizes
    assert not ns['SMOKE'] and ns['PROFILE'] == 't4' and ns['S'].policy == ns['QWEN'] and ns['DTYPE'] == 'fp32'
    ns = run_settings(monkeypatch, tmp_path, PD_ALIGN_SMOKE='0', PD_ALIGN_PROFILE='a100', PD_ALIGN_DATASET='helpsteer2')
    assert ns['PROFILE'] == 'a100' and ns['S'].dataset == 'helpsteer2' and not ns['S'].length_debias
    ns = run_settings(monkeypatch, tmp_path, gpu=((7, 5), 15), PD_ALIGN_SMOKE='0')    # a T4: fp32, loaded in fp32
    assert ns['PROFILE'] == 't4' and ns['DTYPE'] == 'fp32' and not ns['BF16'] and ns['LOAD_DTYPE'] == torch.float32
    ns = run_settings(monkeypatch, tmp_path, gpu=((8, 9), 22), PD_ALIGN_SMOKE='0')    # an L4
    assert ns['PROFILE'] == 'l4' and ns['DTYPE'] == 'bf16' and ns['BF16'] and ns['LOAD_DTYPE'] == torch.bfloat16
    ns = run_settings(monkeypatch, tmp_path, gpu=((8, 0), 40), PD_ALIGN_SMOKE='0')    # an A100-40GB
    assert ns['PROFILE'] == 'a100' and ns['DTYPE'] == 'bf16'
    ns = run_settings(monkeypatch, tmp_path)                                     # no GPU at all: smoke
    assert ns['SMOKE'] and ns['S'].length_debias
    shares = ns['S'].shares
    assert math.isclose(sum(shares.values()), 1.0) and set(shares) == {'rm', 'pool', 'eval'}
    for p in ns['PROFILES'].values(): assert set(p) == set(ns['PROFILES']['smoke']), 'profiles must set the same keys'


CARDS = ('T4', 'L4', 'A100')

def intro_table() -> dict:
    "{step: (T4, L4, A100 minutes)} from the runtime table of the introduction."
    text = cell('markdown', '| step | what runs')
    rows = {}
    for line in text.splitlines():
        m = re.fullmatch(r'\|\s*([^|]+?)\s*\|[^|]*' + r'\|\s*([\d.]+) min\s*' * 3 + r'\|', line.strip())
        if m: rows[m.group(1)] = tuple(float(m.group(i)) for i in (2, 3, 4))
    return rows


def estimates(ns) -> dict:
    "{card: estimate_minutes of the card's own profile on the assumed UltraFeedback figures}."
    out = {}
    for gpu, p in ns['GPU_PROFILE'].items():
        S = SimpleNamespace(**ns['COMMON'], **ns['PROFILES'][p])
        out[gpu] = ns['estimate_minutes'](S, ns['assumed_figures'](S), gpu)
    return out


def test_runtime_table_is_what_the_cost_model_gives(monkeypatch, tmp_path):
    ns = run_settings(monkeypatch, tmp_path, IN_TEST='1')
    table, got = intro_table(), estimates(ns)
    assert set(ns['GPU_PROFILE']) == set(CARDS) and set(table) == set(got['T4']) and len(table) == 10
    for step, mins in table.items():
        assert mins == tuple(round(got[g][step], 1) for g in CARDS), step
    for g in CARDS: assert abs(sum(v for k, v in got[g].items() if k != 'total') - got[g]['total']) < 1e-9
    assert 'estimate, not a measurement' in cell('markdown', '| step | what runs')


def test_runtime_model_counts_every_pass(monkeypatch, tmp_path):
    "The passes the first table left out are there and cost something; the core steps are what the issue recomputed."
    ns = run_settings(monkeypatch, tmp_path, IN_TEST='1')
    got = estimates(ns)
    for g in CARDS:
        for step in ('reward model evals', 'DPO evals', 'checkpoints', 'TRL demo'): assert got[g][step] > 0, (g, step)
    core = lambda e: e['reward model'] + e['scoring'] + e['DPO'] + e['generation'] + e['gold judging']
    assert core(got['T4']) == pytest.approx(28.5, abs=0.3) and core(got['A100']) == pytest.approx(20.5, abs=0.3)


def test_padding_is_not_counted_twice(monkeypatch, tmp_path):
    "Texts already cut at the cap cost the cap, not 1.5x the cap; short texts pay the 1.5 padding factor."
    ns = run_settings(monkeypatch, tmp_path, IN_TEST='1')
    S = SimpleNamespace(**ns['COMMON'], **ns['PROFILES']['t4'])
    d = ns['assumed_figures'](S)
    assert d['dpo_tokens'] == S.dpo_max_len and ns['padded'](d['dpo_tokens'], S.dpo_max_len) == S.dpo_max_len
    assert ns['padded'](100, 320) == 150
    e = ns['estimate_minutes'](S, d, 'T4')
    n_sel = sum(math.ceil(S.ratio * d['pool_pairs']) for _ in S.methods)
    flops = 2 * ns['PARAMS'][S.policy]['lm'] * 3 * n_sel * 2 * S.dpo_max_len
    assert e['DPO'] == pytest.approx(flops / ns['GPU_ASSUMED']['T4']['flops'] / 60)


def test_cost_model_scales_and_admits_unknown_models(monkeypatch, tmp_path):
    ns = run_settings(monkeypatch, tmp_path, IN_TEST='1')
    S = SimpleNamespace(**ns['COMMON'], **ns['PROFILES']['a100'])
    d = ns['assumed_figures'](S)
    base = ns['estimate_minutes'](S, d, 'A100')
    double = ns['estimate_minutes'](S, {**d, 'pool_pairs': 2 * d['pool_pairs']}, 'A100')
    assert math.isclose(double['DPO'], 2 * base['DPO'], rel_tol=0.01) and double['reward model'] == base['reward model']
    assert ns['estimate_minutes'](S, d, 'T4')['DPO'] == pytest.approx(base['DPO'] * 80 / 4)   # FLOP-bound: the throughput ratio
    smoke = SimpleNamespace(**ns['COMMON'], **ns['PROFILES']['smoke'])
    est = ns['estimate_minutes'](smoke, ns['assumed_figures'](smoke), 'T4')
    assert est['DPO'] is None and est['total'] is None and est['generation'] > 0    # tiny models have no size entry


def cli_lines() -> list[str]:
    "The `pd-align ...` command lines of the notebook's command-line section."
    text = cell('markdown', '## 8. The same pipeline from the command line')
    block = text.split('```bash', 1)[1].split('```', 1)[0]
    return [ln.split('#')[0].strip() for ln in block.splitlines() if ln.strip().startswith('pd-align ')]


@pytest.mark.parametrize('line', cli_lines())
def test_cli_lines_parse(line):
    from pd_align.cli import build_parser
    parser = build_parser()
    sub = shlex.split(line)[1]
    choices = next(a.choices for a in parser._actions if getattr(a, 'choices', None) and isinstance(a.choices, dict))
    if sub not in choices: pytest.skip(f"'pd-align {sub}' is not wired into the CLI yet")
    args = parser.parse_args(shlex.split(line)[1:])
    assert args.command == sub


def test_cli_section_shows_every_step():
    assert [shlex.split(l)[1] for l in cli_lines()] == ['reward', 'score', 'select', 'train', 'eval']


def test_no_design_md_reference():
    "The notebook stands on its own: it cites the paper and the project's notebooks, not a design file outside the repo."
    assert not any('DESIGN' in src or '§' in src for _, src in SRC)
    assert '2508.07638' in SRC[0][1]


def install_cell() -> str:
    return cell('code', 'PD_ALIGN_SOURCE =')


def install_python(src:str) -> str:
    "The install cell without its shell (`!`) and cell-option (`#|`) lines."
    return '\n'.join(l for l in src.splitlines() if not l.startswith(('!', '#|')))


def test_install_cell_installs_what_the_project_ships(monkeypatch):
    src = install_cell()
    assert 'github.com' not in src and 'git+' not in src and 'example.com' not in src
    assert not any('github.com/pd-align' in s for _, s in SRC)
    with pytest.raises(ValueError, match='Set PD_ALIGN_SOURCE'): exec(install_python(src), {})   # unset: nothing installed
    shell = [l for l in src.splitlines() if l.startswith('!')]
    assert shell == ['!pip install -q --no-deps "{PD_ALIGN_SOURCE}"', '!pip install -q "{PD_ALIGN_SOURCE}" {PINNED} sentencepiece']
    assert "if PD_ALIGN_SOURCE.startswith('/content/drive'):" in src, 'Drive is mounted only for a Drive source'


def test_install_cell_pins_the_versions_in_use(capsys):
    "The cell's pins are read from the lock shipped in the package, and they are the installed versions."
    from importlib.metadata import version
    src = install_python(install_cell()).replace("PD_ALIGN_SOURCE = ''", "PD_ALIGN_SOURCE = '/tmp/pd_align.whl'")
    ns = {}
    exec(src, ns)
    import pd_align
    assert ns['LOCK'] == Path(pd_align.__file__).parent / 'constraints.txt'
    assert ns['LOCK'].resolve() == (NB.parents[1] / 'constraints.txt').resolve(), 'the lock the README installs with'
    pins = dict(p.split('==') for p in ns['PINNED'].split())
    assert set(pins) == {'transformers', 'trl', 'peft', 'accelerate', 'datasets'}
    locked = dict(l.split('==') for l in ns['LOCK'].read_text().splitlines() if '==' in l and not l.startswith('#'))
    for pkg, v in pins.items():
        assert locked[pkg] == v and version(pkg) == v, f'{pkg}: pinned {v}, locked {locked[pkg]}, installed {version(pkg)}'
    assert 'pinned from' in capsys.readouterr().out


def test_stages_release_their_models():
    """Each stage hands the GPU back and keeps host RAM low: the reward model is released before DPO and reloaded from
    disk, each trained policy is released after its run and reloaded for its samples, the judge is freed before the
    proxy, and TRL trains the base itself (no deep copy)."""
    dpo = cell('code', 'def train_or_load(')
    assert dpo.index('offload(rm)') < dpo.index('rm = None') < dpo.index('for method in S.methods:')
    assert 'del policy' in dpo and "assert not on_gpu([policy_base])" in dpo and 'policies[' not in dpo
    ev = cell('code', "with timed('evaluation'):")
    assert 'policy = trained_policy(method)' in ev and 'offload(policy)' in ev and 'del policy' in ev
    assert 'del judge' in ev and 'gold_ref() is None' in ev and 'offload(rm)' in ev and 'rm = None' in ev
    assert ev.index('del judge') < ev.index('load_reward_model(RM_DIR') < ev.index('rm.to(DEVICE)')
    trl = cell('code', 'trl.DPOTrainer(')
    assert trl.index('assert rm is None and not on_gpu(') < trl.index('trl.DPOTrainer(')
    assert 'trl.DPOTrainer(model=policy_base,' in trl and 'deepcopy' not in trl
    timed = cell('code', 'class timed:')
    assert 'peak_memory_gb()' in timed and 'PEAK_GB' in timed and 'reset_host_peak()' in timed and 'HOST_GB' in timed


def test_trl_sees_cut_prompts_and_reports_drops():
    "Every row reaches TRL with its prompt cut as train_dpo cuts it; the cell prints the cut and the dropped counts."
    trl = cell('code', 'trl.DPOTrainer(')
    assert 'cut_prompts(' in trl and 'S.dpo_prompt_len' in trl
    assert trl.index('cut_prompts(') < trl.index('train_set = Dataset.from_list(rows)') < trl.index('trl.DPOTrainer(')
    assert 'n_dropped = len(train_set) - len(trainer.train_dataset)' in trl and 'prompts cut' in trl


def test_host_plan_and_cpu_runtime(monkeypatch, tmp_path, capsys):
    "The host-RAM prediction is in the plan; a runtime without a GPU (not under test) says how to get one, once."
    plan = cell('code', 'PREDICTED_GB = ')
    assert "host_plan('t4')" in plan and "assert hp['fits']" in plan and 'PREDICTED_HOST_GB' in plan
    run_settings(monkeypatch, tmp_path)
    out = capsys.readouterr().out
    assert out.count('No GPU') == 1 and 'Change runtime type' in out
    run_settings(monkeypatch, tmp_path, IN_TEST='1')
    assert 'No GPU' not in capsys.readouterr().out


def test_drive_only_for_a_drive_source():
    "Drive is mounted only by the install cell, for a Drive path; the output cell uses it only if it is mounted."
    mounts = [s for k, s in SRC if k == 'code' and 'drive.mount(' in s]
    assert len(mounts) == 1 and mounts[0] == install_cell()
    out = cell('code', 'class timed:')
    assert "DRIVE.is_dir()" in out and 'a disconnect erases' in out


def test_smoke_fixtures_ship_with_the_package():
    import pd_align
    data = cell('code', 'def fixture_rows(')
    assert "Path(pd_align.__file__).resolve().parent / 'fixtures'" in data and 'tests' not in data.split('FIXTURE_DIRS')[1].split('\n')[0]
    for name in ('ultrafeedback', 'helpsteer2'): assert (Path(pd_align.__file__).parent / 'fixtures' / f'{name}.jsonl').is_file()


def test_every_model_load_passes_the_precision():
    "No `from_pretrained` / loader call in the notebook leaves the dtype to transformers' 'auto'."
    code = '\n'.join(s for k, s in SRC if k == 'code')
    assert 'dtype=LOAD_DTYPE' in cell('code', 'def load_judge(')
    assert "load_policy(S.policy, texts=pair_texts(pool) + pair_texts(parts['eval']), dtype=LOAD_DTYPE)" in code
    assert 'seed=S.seed, dtype=LOAD_DTYPE)' in code and 'load_reward_model(RM_DIR, device=DEVICE, dtype=LOAD_DTYPE)' in code
    for m in re.finditer(r'AutoModel\w*\.from_pretrained\(([^)]*)\)', code): assert 'dtype=' in m.group(1), m.group(0)
    assert 'PREC = pick_precision()' in cell('code', 'PREC = pick_precision()')


def test_profiles_come_from_the_library_and_fit(monkeypatch, tmp_path):
    "The notebook runs the library's per-card profiles (the ones `pd-align train --profile` uses), and each fits its card."
    import pd_align.profiles as P
    ns = run_settings(monkeypatch, tmp_path, IN_TEST='1')
    assert ns['PROFILES'] is P.PROFILES and ns['LORA_TARGETS'] == P.LORA_TARGETS
    assert {k: ns['COMMON'][k] for k in P.COMMON} == P.COMMON, 'the notebook and the CLI must train with the same LoRA/beta'
    for p in P.CARDS: assert P.profile_fits(p)['fits'], p
    plan = cell('code', 'PREDICTED_GB = ')
    assert "assert f['fits']" in plan
    ns = run_settings(monkeypatch, tmp_path, gpu=((8, 6), 16), PD_ALIGN_SMOKE='0')      # a 16 GB bf16 card: the small sizes
    assert ns['PROFILE'] == 't4' and ns['BF16']
