"""Build README.md from nbs/index.ipynb (Quarto, which `nbdev_readme` needs, cannot be installed offline).

Markdown cells are copied as they are, code cells become fenced Python blocks, cells marked `#| hide`
are left out, and a cell marked `#| output: asis` (Quarto's directive) contributes its printed output as markdown
instead of its code (so a sentence rendered from results files lands in the README; execute the index first).
`--check` exits 1 when README.md is not what this script would write (used by CI).
"""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def printed(cell:dict, nb_path) -> str:
    "The text a code cell printed (stdout or markdown display data); an unexecuted cell is an error."
    out = ''.join(''.join(o.get('text', '')) if o.get('output_type') == 'stream' else
                  ''.join(o.get('data', {}).get('text/markdown', '')) for o in cell.get('outputs', []))
    if not out.strip():
        sys.exit(f'{nb_path}: a `#| output: asis` cell has no output; execute the notebook first')
    return out.strip()

def render(nb_path=root/'nbs'/'index.ipynb') -> str:
    parts = []
    for cell in json.loads(Path(nb_path).read_text())['cells']:
        src = ''.join(cell['source']).strip()
        if not src or src.startswith('#| hide') or src.startswith('#|hide'): continue
        if cell['cell_type'] == 'code' and re.search(r'^#\|\s*output:\s*asis\s*$', src, re.M):
            parts.append(printed(cell, nb_path))
            continue
        parts.append(src if cell['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    return '<!-- generated from nbs/index.ipynb by tools/make_readme.py: do not edit -->\n\n' + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit('README.md is out of date: run `python tools/make_readme.py`')
    else: readme.write_text(text)
