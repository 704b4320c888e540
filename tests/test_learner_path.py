"""The learner's path (issue 26): `start_here` first, tutorial notebooks committed executed, every figure titled.

`start_here` runs under `nbdev_test` (smoke mode) and its knob runs write into a temporary folder, never under nbs/.
"""
import ast, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
PKG = ROOT / 'pd_align'
# the notebooks a learner reads (plumbing notebooks may stay without outputs)
TUTORIALS = ('index', 'start_here', '01_losses', '02_divergence', '03_theory', '04_selection', '04a_experiments',
             '05_toy', '06_reward', '06a_features', '07_train', '07b_text_toy_world', '08_text_toy', '10_real_data')
TITLE = re.compile(r'set_title\(|suptitle\(|\btitle\s*=')
# figures without a title in notebooks other helpers own: listed in issue 26's note for the coordinator
KNOWN_UNTITLED = {} # notebooks whose figures still lack a title (strict xfail: remove an entry once fixed)


def code_cells(nb:dict) -> list:
    return [c for c in nb['cells'] if c['cell_type'] == 'code']


def has_image(cell:dict) -> bool:
    return any(k.startswith('image/') for o in cell.get('outputs', []) for k in o.get('data', {}))


def titled_functions(sources) -> set:
    "Names of the functions defined in `sources` whose body sets a title (directly or through another such function)."
    bodies = {}
    for src in sources:
        try: tree = ast.parse(src)
        except SyntaxError: continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): bodies[node.name] = ast.unparse(node)
    titled = {n for n, b in bodies.items() if TITLE.search(b)}
    while True:
        more = {n for n, b in bodies.items() if n not in titled and any(re.search(rf'\b{t}\(', b) for t in titled)}
        if not more: return titled
        titled |= more


def package_titled() -> set:
    return titled_functions(p.read_text() for p in PKG.glob('*.py'))


def untitled_figures(nb:dict, known:set) -> list[int]:
    "Indices of code cells that show a figure but neither set a title nor call a function that does."
    cells = code_cells(nb)
    # cell magics (%...) are not Python: drop those lines before parsing
    srcs = ['\n'.join(l for l in ''.join(c['source']).splitlines() if not l.lstrip().startswith(('%', '!')))
            for c in cells]
    titled = known | titled_functions(srcs)
    bad = []
    for i, (c, src) in enumerate(zip(cells, srcs)):
        if not has_image(c): continue
        if TITLE.search(src) or any(re.search(rf'\b{t}\(', src) for t in titled): continue
        shown = re.findall(r'([\w.-]+\.png)', src)   # a saved figure displayed from a results folder
        if shown and all(saved_png_titled(name) for name in shown): continue
        bad.append(nb['cells'].index(c))
    return bad


def saved_png_titled(name:str) -> bool:
    "Whether every committed PNG of that name under nbs/results carries a Title (written by `save_figure`)."
    from PIL import Image
    found = list((NBS / 'results').rglob(name))
    def title(p):
        with Image.open(p) as im: return str(im.info.get('Title', ''))
    return bool(found) and all(title(p) for p in found)


def test_untitled_figure_check_can_fail():
    img = [{'output_type': 'display_data', 'data': {'image/png': 'iVBOR'}}]
    nb = {'cells': [{'cell_type': 'code', 'source': 'plt.plot([1, 2])', 'outputs': img},
                    {'cell_type': 'code', 'source': 'ax = f()\nax.set_title("run A")', 'outputs': img},
                    {'cell_type': 'code', 'source': 'def g(ax):\n    ax.set_title("x")', 'outputs': []},
                    {'cell_type': 'code', 'source': 'g(ax)', 'outputs': img}]}
    assert untitled_figures(nb, set()) == [0]
    assert 'plot_conflict_share' in package_titled() and 'plot_forest' not in package_titled()


# tutorial notebooks other helpers own that are still committed without outputs (listed for the coordinator)
KNOWN_UNEXECUTED = {}


def cases(known:dict) -> list:
    "TUTORIALS, the known gaps marked xfail (strict: once fixed, the entry must go)."
    return [pytest.param(n, marks=pytest.mark.xfail(reason=known[n], strict=True)) if n in known else n
            for n in TUTORIALS]


@pytest.mark.parametrize('name', cases(KNOWN_UNEXECUTED))
def test_tutorial_is_committed_executed(name):
    nb = json.loads((NBS / f'{name}.ipynb').read_text())
    outs = [c for c in code_cells(nb) if c.get('outputs')]
    assert outs, f'{name}: no outputs; execute it at default size and commit it with outputs'
    errors = [o.get('ename') for c in outs for o in c['outputs'] if o.get('output_type') == 'error']
    assert not errors, f'{name}: committed with errors {errors}'


@pytest.mark.parametrize('name', cases(KNOWN_UNTITLED))
def test_every_figure_has_a_title(name):
    bad = untitled_figures(json.loads((NBS / f'{name}.ipynb').read_text()), package_titled())
    assert not bad, f'{name}: cells {bad} show a figure without a title (ax.set_title / fig.suptitle)'


def test_start_here_comes_first():
    index = ''.join(''.join(c['source']) for c in json.loads((NBS / 'index.ipynb').read_text())['cells'])
    path = index[index.index('## Learning path'):index.index('## Map of the notebooks')]
    first = re.search(r'^1\. `(\w+)`', path, flags=re.M)
    assert first and first.group(1) == 'start_here', path[:300]


def tree(folder:Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*')
            if p.is_file() and '.ipynb_checkpoints' not in p.parts and '__pycache__' not in p.parts}


@pytest.mark.skipif(shutil.which('nbdev_test') is None, reason='nbdev not installed')
def test_start_here_smoke_run_writes_only_to_a_temporary_folder(tmp_path):
    "nbdev_test (smoke mode) runs start_here; nbs/ is unchanged and the knob run's files are in the temp folder."
    before = tree(NBS)
    env = {**os.environ, 'TMPDIR': str(tmp_path), 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1'}
    run = subprocess.run(['nbdev_test', '--path', str(NBS / 'start_here.ipynb')], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert tree(NBS) == before, 'start_here wrote under nbs/'
    knob_runs = list(tmp_path.glob('pd_align_knobs_*'))
    assert knob_runs, f'no knob results in the temporary folder {tmp_path}'
    written = {p.name for p in knob_runs[0].iterdir()}
    assert {'results.json', 'runs.csv', 'knobs.png', 'verdict.txt'} <= written, written
    doc = json.loads((knob_runs[0] / 'results.json').read_text())
    assert doc['seeds'] == [0, 1, 2] and doc['config']['shares'] == [0.3]   # smoke mode: 3 seeds, the default knob
