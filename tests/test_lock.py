"""One locked set of versions: `constraints.txt` (a link to the package's `pd_align/constraints.txt`) pins everything
`pip install -e ".[dev]"` installs; the README's install command and CI install with it, the Colab tutorial reads its
pins from it (tests/test_colab_notebook.py), and the installed packages are exactly the locked ones."""
import importlib.util, re, shutil, subprocess, sys, zipfile
from importlib.metadata import version
from pathlib import Path
import pytest
from packaging.version import Version
from conftest import ROOT
from test_ci import readme_commands

spec = importlib.util.spec_from_file_location('lock_tool', ROOT / 'tools' / 'lock.py')
lock_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_tool)
LOCKED = lock_tool.parse(lock_tool.LOCK.read_text())


def test_the_lock_is_one_file_in_the_package():
    assert (ROOT / 'constraints.txt').is_symlink() and (ROOT / 'constraints.txt').resolve() == lock_tool.LOCK.resolve()
    assert lock_tool.LOCK.parent.name == 'pd_align' and not lock_tool.LOCK.is_symlink()


def test_the_lock_pins_every_declared_requirement_within_its_range():
    assert len(LOCKED) > 50 and 'torch' not in LOCKED and 'pd-align' not in LOCKED
    for req in lock_tool.top_level():
        name = lock_tool.norm(req.name)
        if name == 'torch': continue
        assert name in LOCKED, f'{req} is declared in settings.ini but not locked'
        assert req.specifier.contains(Version(LOCKED[name]), prereleases=True), f'lock {name}=={LOCKED[name]} violates {req}'


def test_installed_versions_are_the_locked_ones():
    "What runs the tests is what the lock says, and the lock misses nothing the installed requirements pull in."
    wrong = {k: (v, version(k)) for k, v in LOCKED.items() if version(k) != v}
    assert not wrong, f'(locked, installed) differ: {wrong}; reinstall with the README command or run tools/lock.py --write'
    assert lock_tool.closure(lock_tool.top_level()) == LOCKED
    assert version('torch').split('+')[0] == re.search(r'torch==([\d.]+)', readme_commands()[0]).group(1)


def test_the_readme_installs_with_the_lock():
    install = readme_commands()[0]
    cmds = [c.strip() for c in install.split('&&')]
    assert len(cmds) == 2 and all(c.startswith('pip install ') and c.endswith(' -c constraints.txt') for c in cmds), install
    assert '-e ".[dev]"' in cmds[1]
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    assert ci.index(install) + 1 == ci.index(next(l for l in ci if l.startswith('python tools/lock.py --check')))


def test_parse_rejects_a_loose_line():
    assert lock_tool.parse('# c\nFoo_Bar==1.0  # why\n\n') == {'foo-bar': '1.0'}
    with pytest.raises(ValueError, match='line 2'): lock_tool.parse('a==1\nb>=2\n')


def test_the_wheel_ships_the_lock_and_the_smoke_fixtures(tmp_path):
    "Built offline from the tracked files, the wheel carries the lock and the fixture files the Colab smoke mode reads."
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    src = tmp_path / 'src'
    for f in files:
        if not (ROOT / f).is_file(): continue
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f, follow_symlinks=False)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(tmp_path / 'dist'),
                        str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    whl = zipfile.ZipFile(next((tmp_path / 'dist').glob('pd_align-*.whl')))
    assert whl.read('pd_align/constraints.txt') == lock_tool.LOCK.read_bytes()
    for name in ('ultrafeedback', 'helpsteer2'):
        assert whl.read(f'pd_align/fixtures/{name}.jsonl') == (ROOT / 'tests' / 'fixtures' / f'{name}.jsonl').read_bytes()
