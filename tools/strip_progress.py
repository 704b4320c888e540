"""Drop progress-bar residue (tqdm bars, carriage-return lines, the IProgress warning) from notebooks' stderr outputs.

An executed notebook keeps every tqdm refresh as a stderr stream; this keeps the printed results and figures only.

    python tools/strip_progress.py nbs/08_text_toy.ipynb nbs/08a_text_toy2.ipynb
"""
import json, re, sys
from pathlib import Path

BAR = re.compile(r'\d+/\d+ \[|it/s|s/it|examples/s|TqdmWarning|IProgress')

def is_progress(o:dict) -> bool:
    "A stderr stream that is only progress-bar residue."
    if o.get('output_type') != 'stream' or o.get('name') != 'stderr': return False
    text = ''.join(o.get('text', ''))
    return not text.strip() or BAR.search(text) is not None

def strip(path:Path) -> int:
    "Remove progress outputs from the notebook at `path` in place; the number removed."
    nb = json.loads(path.read_text())
    n = 0
    for c in nb['cells']:
        if 'outputs' not in c: continue
        keep = [o for o in c['outputs'] if not is_progress(o)]
        n += len(c['outputs']) - len(keep)
        c['outputs'] = keep
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return n

if __name__ == '__main__':
    for p in sys.argv[1:]: print(p, 'removed', strip(Path(p)), 'progress outputs')
