"""Style of the exported code: no line longer than 120 characters, one statement per line.

The `__all__` list is not checked: nbdev writes it itself and wraps it at 120 characters after its 10-character
`__all__ = `. The module docstring (the notebook's one-line `>` summary) is: keep that summary short. A compound statement with
a one-line body (`if x: return y`, `try: v = f()`) is one statement per line; `a = 1; b = 2` is two.
"""
import ast
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / 'pd_align'
MAX_LEN = 120
CHECKED = sorted(p.stem for p in PKG.glob('*.py') if p.stem not in ('_modidx', '__init__'))
ALL_MODULES = sorted(p.stem for p in PKG.glob('*.py') if p.stem not in ('_modidx', '__init__'))


def generated_lines(tree:ast.Module) -> set[int]:
    "Line numbers of what nbdev writes by itself: the `__all__` assignment."
    out = set()
    for node in tree.body:
        names = [t.id for t in getattr(node, 'targets', []) if isinstance(t, ast.Name)]
        if names == ['__all__']: out.update(range(node.lineno, node.end_lineno + 1))
    return out


def long_lines(source:str, name:str='<string>') -> list[str]:
    "'name:line (length)' for every line longer than `MAX_LEN` outside the generated ones."
    skip = generated_lines(ast.parse(source))
    return [f'{name}:{n} ({len(line)} chars)' for n, line in enumerate(source.splitlines(), 1)
            if len(line) > MAX_LEN and n not in skip]


def statement_lists(tree:ast.AST):
    "Every list of statements in the tree: module and function bodies, if/else branches, try/except/finally, ..."
    for node in ast.walk(tree):
        for field in ('body', 'orelse', 'finalbody'):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt): yield block


def joined_statements(source:str, name:str='<string>') -> list[str]:
    "'name:line' for every line on which two statements of the same block start (`a; b`)."
    bad = set()
    for block in statement_lists(ast.parse(source)):
        for a, b in zip(block, block[1:]):
            if a.lineno == b.lineno or a.end_lineno == b.lineno: bad.add(b.lineno)
    return [f'{name}:{n}' for n in sorted(bad)]


def module_source(module:str) -> str: return (PKG / f'{module}.py').read_text(encoding='utf-8')


@pytest.mark.parametrize('module', CHECKED)
def test_exported_lines_fit_in_120_characters(module):
    bad = long_lines(module_source(module), f'pd_align/{module}.py')
    assert not bad, f'{len(bad)} exported lines longer than {MAX_LEN} characters (edit the notebook): ' + ', '.join(bad)


@pytest.mark.parametrize('module', CHECKED)
def test_one_statement_per_line(module):
    bad = joined_statements(module_source(module), f'pd_align/{module}.py')
    assert not bad, f'{len(bad)} lines start two statements (split them; edit the notebook): ' + ', '.join(bad)


def test_checked_modules_exist():
    "A module renamed or removed is taken out of the list, not silently skipped."
    assert set(CHECKED) <= set(ALL_MODULES), sorted(set(CHECKED) - set(ALL_MODULES))


def test_the_checks_can_fail():
    src = '"""' + 'd' * 100 + '"""\n__all__ = [' + "'x', " * 40 + "]\nx = 1\nif x: y = 2\n"
    assert long_lines(src) == [] and joined_statements(src) == [] # `__all__` and `if x: y` pass
    assert long_lines('"""' + 'd' * 200 + '"""\n', 'm.py') == ['m.py:1 (206 chars)'] # a long module summary fails
    src += 'z = 3; w = 4\nif x:\n    y = 1; raise ValueError(y)\ntry: y = 1\nexcept ValueError: pass\n' + 'v = 0' + ' ' * 120 + '\n'
    assert joined_statements(src, 'm.py') == ['m.py:5', 'm.py:7']
    assert long_lines(src, 'm.py') == ['m.py:10 (125 chars)']
