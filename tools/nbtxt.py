"""Authoring aid: round-trip a notebook to a plain-text cell list and back.

The notebook stays the source of truth; this only makes it easy to write and review notebooks in a
text editor or a diff. Format: a line `#%% md` starts a markdown cell, a line `#%%` starts a code
cell; everything up to the next marker is the cell's source, verbatim.

    python tools/nbtxt.py to-nb  nbs/05_toy.txt nbs/05_toy.ipynb   # text -> notebook (outputs dropped)
    python tools/nbtxt.py to-txt nbs/05_toy.ipynb /tmp/05_toy.txt   # notebook -> text
"""
import json, sys
from pathlib import Path

def txt_to_cells(text):
    cells, kind, lines = [], None, []
    def flush():
        if kind is None: return
        src = '\n'.join(lines).strip('\n')
        cell = {'cell_type': kind, 'metadata': {}, 'source': src.splitlines(keepends=True)}
        if kind == 'code': cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    for line in text.splitlines():
        if line.rstrip() in ('#%% md', '#%%'):
            flush(); kind, lines = ('markdown' if line.rstrip() == '#%% md' else 'code'), []
        else: lines.append(line)
    flush()
    return cells

def to_nb(src, dst):
    nb = {'cells': txt_to_cells(Path(src).read_text()), 'metadata': {
        'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
        'nbformat': 4, 'nbformat_minor': 5}
    for i, c in enumerate(nb['cells']): c['id'] = f'c{i:03d}'
    Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def to_txt(src, dst):
    nb = json.loads(Path(src).read_text())
    out = []
    for c in nb['cells']:
        out.append('#%% md' if c['cell_type'] == 'markdown' else '#%%')
        out.append(''.join(c['source']))
    Path(dst).write_text('\n'.join(out) + '\n')

if __name__ == '__main__':
    cmd, src, dst = sys.argv[1:4]
    {'to-nb': to_nb, 'to-txt': to_txt}[cmd](src, dst)
