"Tutorial notebooks are committed executed, with their figures, and `nbdev_clean` keeps those outputs."
import configparser, json, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
# the tutorial notebooks a reader opens on GitHub: each must show at least one figure
TUTORIALS = ('02_divergence', '03_theory', '04_selection', '05_toy', '07b_text_toy_world', '08_text_toy', '08b_text_world',
             '10_real_data')
MAX_BYTES = 2_000_000 # committed notebooks stay small: PNGs at modest dpi


def image_outputs(nb:dict) -> int:
    "Number of image outputs (PNG or SVG) in a notebook."
    return sum(1 for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])
               if any(k.startswith('image/') for k in o.get('data', {})))


def error_outputs(nb:dict) -> list:
    return [o.get('ename') for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []) if o.get('output_type') == 'error']


@pytest.mark.parametrize('name', TUTORIALS)
def test_tutorial_notebook_is_committed_with_figures(name):
    path = NBS / f'{name}.ipynb'
    nb = json.loads(path.read_text())
    assert image_outputs(nb) > 0, f'{path.name}: no image output; execute it at default size and commit it with outputs'
    assert not error_outputs(nb), f'{path.name}: committed with an error output {error_outputs(nb)}'
    assert path.stat().st_size < MAX_BYTES, f'{path.name}: {path.stat().st_size} bytes; lower the figures\' dpi'


def test_image_check_can_fail():
    nb = {'cells': [{'cell_type': 'code', 'outputs': [{'output_type': 'stream', 'text': 'x'}]},
                    {'cell_type': 'markdown', 'source': '![x](y.png)'}]}
    assert image_outputs(nb) == 0
    nb['cells'][0]['outputs'].append({'output_type': 'display_data', 'data': {'image/png': 'iVBOR', 'text/plain': '<Figure>'}})
    assert image_outputs(nb) == 1


def test_settings_keep_outputs():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'settings.ini')
    assert cfg['DEFAULT'].get('clear_all', 'False').strip().lower() == 'false', 'nbdev_clean would strip the outputs'


@pytest.mark.skipif(shutil.which('nbdev_clean') is None, reason='nbdev not installed')
def test_nbdev_clean_keeps_outputs_and_strips_execution_counts(tmp_path):
    "Run nbdev_clean on a copy of an executed notebook inside a copy of the project settings."
    (tmp_path / 'nbs').mkdir()
    shutil.copy(ROOT / 'settings.ini', tmp_path / 'settings.ini')
    nb = {'cells': [{'cell_type': 'code', 'execution_count': 7, 'id': 'c000', 'metadata': {'scrolled': True}, 'source': ['1 + 1'],
                     'outputs': [{'output_type': 'execute_result', 'execution_count': 7, 'metadata': {},
                                  'data': {'text/plain': ['2'], 'image/png': 'iVBORw0KGgo='}}]}],
          'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}, 'widgets': {}},
          'nbformat': 4, 'nbformat_minor': 5}
    path = tmp_path / 'nbs' / 'x.ipynb'
    path.write_text(json.dumps(nb))
    subprocess.run(['nbdev_clean', '--fname', str(path)], cwd=tmp_path, check=True, capture_output=True)
    cleaned = json.loads(path.read_text())
    cell = cleaned['cells'][0]
    assert cell['execution_count'] is None and cell['metadata'] == {}
    assert cell['outputs'] and 'image/png' in cell['outputs'][0]['data'], cleaned


def notebook_map() -> dict:
    "{notebook: module or None} from the map of the notebooks in nbs/index.ipynb (the README's table)."
    import re
    text = ''.join(''.join(c['source']) for c in json.loads((NBS / 'index.ipynb').read_text())['cells'])
    rows = re.findall(r'^\| `(\w+)` \| (`pd_align\.(\w+)`|—) \|', text, flags=re.M)
    return {name: mod or None for name, _, mod in rows}


def default_exp(path:Path) -> str|None:
    "The module a notebook exports to (its `#| default_exp`), or None."
    import re
    for c in json.loads(path.read_text())['cells']:
        m = re.match(r'#\|\s*default_exp\s+(\S+)', ''.join(c['source']))
        if c['cell_type'] == 'code' and m: return m.group(1)
    return None


def test_index_map_lists_every_notebook_and_its_module():
    "The README's map of the notebooks stays true: every notebook, in file order, with the module it exports."
    listed = notebook_map()
    on_disk = sorted(p.stem for p in NBS.glob('*.ipynb') if p.stem != 'index')
    assert list(listed) == on_disk, f'map {list(listed)} != notebooks {on_disk}'
    wrong = {n: (m, default_exp(NBS / f'{n}.ipynb')) for n, m in listed.items() if default_exp(NBS / f'{n}.ipynb') != m}
    assert not wrong, f'map says module, notebook exports: {wrong}'


INTERNAL = re.compile(r'\bissues?\s*#?\d+|DESIGN\.md|\.\./shared') # our tracker and team notes, not the reader's


def internal_mentions(name:str, nb:dict) -> list[str]:
    "'notebook cell i: match' for every mention of the issue tracker or team notes in a cell's source or output."
    out = []
    for i, c in enumerate(nb['cells']):
        texts = [''.join(c['source'])]
        for o in c.get('outputs', []):
            texts.append(''.join(o.get('text', '')))
            texts += [''.join(v) for k, v in o.get('data', {}).items() if k.startswith('text/')]
        out += [f'{name} cell {i}: {m.group(0)}' for t in texts for m in INTERNAL.finditer(t)]
    return out


def test_reader_facing_text_names_no_issue_or_team_note():
    "Notebooks (sources and outputs) and the README speak to a reader: no issue numbers, the team's brief or ../shared."
    bad = [m for p in sorted(NBS.glob('*.ipynb')) for m in internal_mentions(p.stem, json.loads(p.read_text()))]
    bad += [f'README.md: {m.group(0)}' for m in INTERNAL.finditer((ROOT / 'README.md').read_text())]
    assert not bad, bad


def test_internal_mention_check_can_fail():
    nb = {'cells': [{'cell_type': 'markdown', 'source': ['see issue 25']},
                    {'cell_type': 'code', 'source': ['x'], 'outputs': [{'output_type': 'stream', 'text': ['(issue #3)']}]},
                    {'cell_type': 'code', 'source': ["open('../shared/a')"], 'outputs': []}]}
    assert internal_mentions('x', nb) == ['x cell 0: issue 25', 'x cell 1: issue #3', 'x cell 2: ../shared']
