"""The layer rule of the README: a module imports only from layers to its left (function-level imports included).

The layers are read from the README's layer line (made from nbs/index.ipynb), so the sentence a reader sees and the
imports the package makes cannot drift apart; a new module must be placed in that line. And every
`from pd_align.x import name` (in the package, tests, bench, tools and notebooks, inside functions too) names
something that exists: a name moved to another module is imported from its new home everywhere.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / 'pd_align'

def readme_tiers() -> list[tuple[str, ...]]:
    "The layers of the README's layer line (the one line starting with `io,), lowest first."
    lines = [l for l in (PKG.parent / 'README.md').read_text(encoding='utf-8').splitlines() if l.startswith('`io, ')]
    assert len(lines) == 1, 'the README states the layers in exactly one line starting with `io, '
    return [tuple(m.strip() for m in tier.split(',')) for tier in lines[0].split('`')[1].split('←')]

TIERS = readme_tiers()
TIER = {m: i for i, tier in enumerate(TIERS) for m in tier}
MODULES = sorted(p.stem for p in PKG.glob('*.py') if p.stem not in ('_modidx', '__init__'))


def package_imports(source:str) -> set[str]:
    "The pd_align modules a module's source imports, anywhere in it (`from .x`, `from pd_align.x`, `import pd_align.x`)."
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1: out.add(node.module.split('.')[0])
            elif node.module.startswith('pd_align.'): out.add(node.module.split('.')[1])
            elif node.module == 'pd_align': out.update(a.name for a in node.names if a.name in MODULES)
        if isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('pd_align.'))
    return out


def upward_imports(module:str, source:str) -> list[str]:
    "'module -> other' for every import of a module in the same or a higher tier."
    return [f'{module} -> {other}' for other in sorted(package_imports(source)) if TIER[other] >= TIER[module]]


def test_every_module_has_a_tier():
    named = [m for tier in TIERS for m in tier]
    assert len(named) == len(set(named)), f'a module is named twice in the layer line: {named}'
    assert set(named) == set(MODULES), f'the README layer line and the modules differ: {set(named) ^ set(MODULES)}'


def test_no_module_imports_upwards():
    bad = [b for m in MODULES if m in TIER for b in upward_imports(m, (PKG / f'{m}.py').read_text(encoding='utf-8'))]
    assert not bad, f'imports against the layer rule: {bad}'


def test_the_layer_check_can_fail():
    src = 'from .data import from_records\ndef f():\n    from pd_align.cli import main\n    import pd_align.io\n'
    assert package_imports(src) == {'data', 'cli', 'io'}
    assert upward_imports('data', src) == ['data -> cli', 'data -> data']
    assert upward_imports('cli', src) == ['cli -> cli']


def imported_names(source:str) -> list[tuple[str, str, int]]:
    "(module, name, line) of every `from pd_align... import name` in `source`, anywhere in it."
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('pd_align'):
            out += [(node.module, a.name, node.lineno) for a in node.names if a.name != '*']
    return out


def code_sources():
    "(where, source) of every module, test, benchmark and tool, and every notebook code cell (shell lines dropped)."
    import json
    root = PKG.parent
    for p in sorted([*PKG.glob('*.py'), *(root / 'tests').glob('*.py'), *(root / 'bench').glob('*.py'),
                     *(root / 'tools').glob('*.py')]):
        yield str(p.relative_to(root)), p.read_text(encoding='utf-8')
    for p in sorted((root / 'nbs').glob('*.ipynb')):
        for i, c in enumerate(json.loads(p.read_text())['cells']):
            lines = ''.join(c['source']).splitlines()
            if c['cell_type'] == 'code':
                yield f'{p.relative_to(root)} cell {i}', '\n'.join(l for l in lines if not l.lstrip().startswith(('!', '%')))


def missing_imports(sources) -> list[str]:
    "'where:line: module.name' for every imported name that its module does not have (nor has as a submodule)."
    import importlib
    def exists(module, name):
        submodule = module == 'pd_align' and (PKG / f'{name}.py').exists() # `from pd_align import train`
        return submodule or hasattr(importlib.import_module(module), name)
    return [f'{where}:{line}: {module}.{name}' for where, source in sources
            for module, name, line in imported_names(source) if not exists(module, name)]


def test_every_package_import_resolves():
    "A name moved between modules is imported from its new home everywhere, also in imports inside functions."
    bad = missing_imports(code_sources())
    assert not bad, f'{len(bad)} imports of names that do not exist: {bad}'


def test_the_import_check_can_fail():
    src = 'def f():\n    from pd_align.data import atomic_write_json\n    from pd_align import train, nope\n'
    assert missing_imports([('x.py', src)]) == ['x.py:2: pd_align.data.atomic_write_json', 'x.py:3: pd_align.nope']
